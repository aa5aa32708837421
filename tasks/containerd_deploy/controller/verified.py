"""What the controller remembers of the daemons it checked in full: per host, the daemon (process
id, start time, binary), a digest of what it had to be, when, and what the checks that only a
restart can change found (its CRI plugins, its effective config). A no-op rerun whose node shows
the same daemon within `containerd_verify_interval` judges the rest from the node fact it asked
anyway (plan/verdict.py), instead of asking the daemon again.

Kept in the controller user's cache, never on the node: recording is no change to the node, so
a rerun stays a no-op. A record another local user could have written is not used.
"""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from containerd_deploy.controller.cache import host_file_name, read_private, write_private

RECORD_DIR = "~/.cache/containerd-deploy/verified"


@dataclass(frozen=True)
class VerifiedDaemon:
    identity: tuple  # (MainPID, start time in epoch seconds, binary) of the daemon checked
    expected: str  # digest of what it had to be (plan/verdict.py expected_digest)
    at: float  # epoch seconds of the full check
    checked: tuple  # what the checks of what its start fixes found (verdict lines)
    image_present: bool  # its sandbox image was in the k8s.io namespace


def _name(host_name: str) -> str:
    return host_file_name(host_name, ".json")


def _directory() -> Path:
    return Path(os.path.expanduser(RECORD_DIR))


def read(host_name: str) -> VerifiedDaemon | None:
    """The record of `host_name`'s last full check, or None (none, unreadable, or in a directory
    another local user could write)."""
    data = read_private(_directory(), _name(host_name))
    if data is None:
        return None
    try:
        raw = json.loads(data)
        return VerifiedDaemon(
            identity=tuple(raw["identity"]),
            expected=str(raw["expected"]),
            at=float(raw["at"]),
            checked=tuple(str(line) for line in raw["checked"]),
            image_present=raw["image_present"] is True,
        )
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return None  # whatever it is, it is no record: a full check


def write(host_name: str, record: VerifiedDaemon) -> bool:
    """Record `host_name`'s full check (whole or not at all); False when the directory is not
    this user's alone or cannot be written (the next run checks in full again)."""
    return write_private(_directory(), _name(host_name), json.dumps(asdict(record)).encode())

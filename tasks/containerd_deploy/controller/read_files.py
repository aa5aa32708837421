"""What the controller last read of each node's files: per host, the node's boot, and each file's
identity when it was read (``FILE_IDENTITY_FORMAT``: any write, chmod or rename over the path
changes it), its sha256, and the text where the deploy needs it again (config.toml's).

The node fact does not read again a file that still has the identity it had then, in the same
boot (remote/node_state.py `known`): on a small node, config.toml's base64 and the unit's and the
other files' sha256sum were the costliest programs a no-op rerun started after systemd's answer.
A file is passed over only once two runs read the same contents at that identity: a write in the
clock tick of the first read could leave the ctime as it was, but none after the second (a run
takes longer than a tick). Another boot (an image swapped under the same inode numbers and
times) reads everything again.

Kept in the controller user's cache, as verified.py's records; never a text holding a
credential (that file is read every run); a text whose sha256 is not the one recorded, or a
directory another local user could write, is not used (the node is asked in full).
"""

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from containerd_deploy.controller.cache import HEX, host_file_name, read_private, write_private
from containerd_deploy.data.values import redact_secrets

RECORD_DIR = "~/.cache/containerd-deploy/read"


@dataclass(frozen=True)
class ReadFile:
    identity: str  # the file's identity when it was read
    sha256: str  # of its contents (of a text: of its UTF-8)
    text: str | None = None  # its text, where the deploy needs it
    confirmed: bool = False  # a later run read the same contents at this identity


@dataclass(frozen=True)
class HostFiles:
    """What the controller last read of one host's files."""

    boot: str = ""  # the node's boot id then
    files: dict = field(default_factory=dict)  # path -> ReadFile


def sha256_of_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def keepable(entry: ReadFile) -> bool:
    """Whether `entry` may be kept on the controller's disk: no credential in its text."""
    return entry.text is None or not _holds_a_credential(entry.text)


@functools.lru_cache(maxsize=64)
def _holds_a_credential(text: str) -> bool:
    """(Asked twice a run per host, of texts a fleet mostly shares: decided once per text.)"""
    return redact_secrets(text) != text


def _usable(entry: ReadFile) -> bool:
    return (
        bool(entry.identity)
        and bool(HEX.match(entry.sha256))
        and (entry.text is None or sha256_of_text(entry.text) == entry.sha256)
        and keepable(entry)
    )


def _directory() -> Path:
    return Path(os.path.expanduser(RECORD_DIR))


def read(host_name: str) -> HostFiles:
    """What the controller last read of `host_name`'s files (a file it cannot vouch for left out:
    read again)."""
    data = read_private(_directory(), host_file_name(host_name, ".json"))
    try:
        raw = json.loads(data) if data is not None else {}
        files = {
            str(path): ReadFile(
                str(entry["identity"]),
                str(entry["sha256"]),
                None if entry.get("text") is None else str(entry["text"]),
                entry.get("confirmed") is True,
            )
            for path, entry in raw.get("files", {}).items()
        }
        boot = str(raw.get("boot", ""))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return HostFiles()
    return HostFiles(boot, {path: entry for path, entry in files.items() if _usable(entry)})


def write(host_name: str, record: HostFiles) -> bool:
    """Remember what was read of `host_name`'s files (all at once; an entry that may not be kept
    left out); False when it could not be (the next run reads them again)."""
    files = {
        path: {
            "identity": entry.identity,
            "sha256": entry.sha256,
            "text": entry.text,
            "confirmed": entry.confirmed,
        }
        for path, entry in record.files.items()
        if keepable(entry)
    }
    text = json.dumps({"boot": record.boot, "files": files})
    return write_private(_directory(), host_file_name(host_name, ".json"), text.encode())

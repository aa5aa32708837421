"""What the controller last read of each node's files: per host, each file's identity when it
was read (``FILE_IDENTITY_FORMAT``: any write, chmod or rename over the path changes it), its
sha256, and the text where the deploy needs it again (config.toml's).

The node fact does not read again a file that still has the identity it had then
(remote/node_state.py `known`): on a small node, config.toml's base64 and the unit's and the
other files' sha256sum were the costliest programs a no-op rerun started after systemd's answer.

Kept in the controller user's cache, as verified.py's records; a text whose sha256 is not the
one recorded, or a directory another local user could write, is not used (the node is asked in
full).
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from containerd_deploy.controller.cache import HEX, host_file_name, read_private, write_private

RECORD_DIR = "~/.cache/containerd-deploy/read"


@dataclass(frozen=True)
class ReadFile:
    identity: str  # the file's identity when it was read
    sha256: str  # of its contents (of a text: of its UTF-8)
    text: str | None = None  # its text, where the deploy needs it


def sha256_of_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _directory() -> Path:
    return Path(os.path.expanduser(RECORD_DIR))


def _usable(entry: ReadFile) -> bool:
    return (
        bool(entry.identity)
        and bool(HEX.match(entry.sha256))
        and (entry.text is None or sha256_of_text(entry.text) == entry.sha256)
    )


def read(host_name: str) -> dict[str, ReadFile]:
    """path -> what the controller last read of it on `host_name` (a file it cannot vouch for
    left out: read again)."""
    data = read_private(_directory(), host_file_name(host_name, ".json"))
    try:
        raw = json.loads(data) if data is not None else {}
        files = {
            str(path): ReadFile(
                str(entry["identity"]),
                str(entry["sha256"]),
                None if entry.get("text") is None else str(entry["text"]),
            )
            for path, entry in raw.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return {}
    return {path: entry for path, entry in files.items() if _usable(entry)}


def write(host_name: str, files: dict[str, ReadFile]) -> bool:
    """Remember what was read of `host_name`'s files (all at once); False when it could not be
    (the next run reads them again)."""
    record = {
        path: {"identity": entry.identity, "sha256": entry.sha256, "text": entry.text}
        for path, entry in files.items()
    }
    return write_private(
        _directory(), host_file_name(host_name, ".json"), json.dumps(record, sort_keys=True).encode()
    )

"""The node scripts run for real in the unit tests, root or not: without root, `chown` (all the
scripts need root for) is a stand-in on PATH that records which owner each file was given and
changes nothing, and `owner()` answers from that record."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = os.geteuid() == 0
_LOG_VARIABLE = "ROOTLESS_CHOWN_LOG"

# Files are recorded by device and inode: the scripts chown a file, then rename it into place.
_CHOWN = f"""#!/bin/sh
# chown for unit tests run without root: records "device:inode owner" of each path, changes nothing.
follow=-L
if [ "$1" = -h ]; then follow=; shift; fi
owner=$1; shift
if [ "$1" = -- ]; then shift; fi
for path; do stat $follow -c "%d:%i $owner" -- "$path" >> "${_LOG_VARIABLE}" || exit 1; done
"""

needs_root = pytest.mark.skipif(not ROOT, reason="makes a file another user's or mounts (run as root)")


_directory: Path | None = None  # this process's own (xdist workers inherit the controller's variable)


def install() -> None:
    """Put the stand-in first on PATH for this process and the scripts it starts (not as root)."""
    global _directory
    if ROOT or _directory is not None:
        return
    _directory = directory = Path(tempfile.mkdtemp(prefix="rootless-"))
    (directory / "chown").write_text(_CHOWN)
    (directory / "chown").chmod(0o755)
    (directory / "chown.log").touch()
    os.environ[_LOG_VARIABLE] = str(directory / "chown.log")
    os.environ["PATH"] = f"{directory}:{os.environ['PATH']}"


def uninstall() -> None:
    global _directory
    if _directory is None:
        return
    os.environ.pop(_LOG_VARIABLE)
    os.environ["PATH"] = os.environ["PATH"].removeprefix(f"{_directory}:")
    shutil.rmtree(_directory, ignore_errors=True)
    _directory = None


def forget() -> None:
    """Start a test with no record (inodes of an earlier test's deleted files are reused)."""
    if not ROOT:
        Path(os.environ[_LOG_VARIABLE]).write_text("")


def owner(path: str | os.PathLike) -> tuple[int, int]:
    """(uid, gid) a file has, or, without root, the last one a script's chown gave it."""
    info = os.stat(path)
    if not ROOT:
        key = f"{info.st_dev}:{info.st_ino}"
        given = [
            line.split(" ", 1)[1]
            for line in Path(os.environ[_LOG_VARIABLE]).read_text().splitlines()
            if line.split(" ", 1)[0] == key
        ]
        if given:
            uid, gid = given[-1].split(":")
            return int(uid), int(gid)
    return info.st_uid, info.st_gid

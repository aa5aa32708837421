"""What the controller fetches: the artifact cache (artifact_source = controller: fetch once, push
to many) and a release file's published digest.

Each release file is downloaded once per controller into `artifact_cache_dir`, named by its
sha256, verified, and only then renamed into the cache; every host gets it from there over
its SSH connection. A node then needs no route to the mirror.
"""

import grp
import hashlib
import os
import pwd
import re
import stat
import threading
from pathlib import Path

from containerd_deploy.data.artifacts import Artifact

CHUNK = 1 << 20
HEX = re.compile(r"^[0-9a-f]{64}$")
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class FetchError(RuntimeError):
    """The controller could not get a verified copy; the message says what and why."""


def cached_path(cache_dir: str, artifact: Artifact) -> Path:
    return Path(cache_dir) / f"{artifact.sha256}-{artifact.filename}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def lock_for(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _group_is_mine(gid: int) -> bool:
    """A user's private group (umask 002 makes directories group-writable): this user's own
    primary group, with no other user in it."""
    try:
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    me = pwd.getpwuid(os.geteuid())
    others = [user.pw_name for user in pwd.getpwall() if user.pw_gid == gid and user.pw_uid != me.pw_uid]
    return gid == me.pw_gid and not others and set(group.gr_mem) <= {me.pw_name}


def untrusted_cache(directory: Path) -> str | None:
    """Why another local user could change what is in `directory` (None: only this user, or
    root, can): it, or a directory above it, is theirs or writable by group (one other than
    this user's private group) or others (a root-owned sticky one, like /tmp, protects what
    this user owns in it)."""
    me = os.geteuid()
    path = Path(os.path.realpath(directory))
    for place in (path, *path.parents):
        try:
            info = place.stat()
        except (FileNotFoundError, NotADirectoryError):  # not there (yet): nothing in it to swap
            continue
        if info.st_uid not in (0, me):
            return f"{place} is owned by uid {info.st_uid}"
        sticky = place != path and info.st_uid == 0 and info.st_mode & stat.S_ISVTX
        if info.st_mode & 0o002 and not sticky:
            return f"{place} is writable by others"
        if info.st_mode & 0o020 and not sticky and not _group_is_mine(info.st_gid):
            return f"{place} is writable by group {info.st_gid}"
    return None


def private_directory(directory: Path) -> None:
    """`directory` and each missing directory above it made 0700, whatever the umask. (By the
    umask, not by chmod: nothing that exists already is ever changed.)"""
    previous = os.umask(0o077)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    finally:
        os.umask(previous)


def host_file_name(host_name: str, suffix: str) -> str:
    """The name of a host's file in one of the controller's private directories."""
    # Host names hold characters no file name should (`@local`, `user@host:port`, slashes).
    return f"{hashlib.sha256(host_name.encode()).hexdigest()}{suffix}"


def read_private(directory: Path, name: str) -> bytes | None:
    """The file `name` in `directory`, or None: not there, unreadable, not this user's own
    regular file writable by this user alone, or the directory (or one above it) another local
    user could write — before the read or after (one made meanwhile is looked at then)."""
    try:
        if untrusted_cache(directory):
            return None
        with open(os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
                return None
            data = handle.read()
        return None if untrusted_cache(directory) else data
    except OSError:
        return None


def write_private(directory: Path, name: str, data: bytes) -> bool:
    """`data` as the file `name` in `directory` (made this user's alone if missing), whole or not
    at all; False when the directory is not this user's alone or cannot be written."""
    try:
        private_directory(directory)
        if untrusted_cache(directory):
            return False
    except OSError:
        return False
    path = directory / name
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        # (A name there already, in a directory this user's alone, is a leftover of this user's.)
        handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(handle, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)
        return False
    return True


def ensure_cached(cache_dir: str, artifact: Artifact, timeout: float = 60) -> Path:
    """The verified cached copy of `artifact`, downloading it first if the cache lacks it."""
    path = cached_path(cache_dir, artifact)
    with lock_for(str(path)):  # hosts deployed at once wait for one download
        private_directory(path.parent)
        problem = untrusted_cache(path.parent)
        if problem:
            raise FetchError(
                f"the artifact cache {path.parent} is not this user's alone ({problem}): another local user "
                "could swap a release file before it is uploaded to the nodes; nothing was downloaded. Fix: set "
                "artifact_cache_dir to a directory only you can write (e.g. ~/.cache/containerd-deploy/artifacts)"
            )
        if path.is_file() and sha256_of(path) == artifact.sha256:
            return path
        import urllib.request  # here: most runs fetch nothing, and its import costs each of them

        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)  # a leftover of a run killed here (this process's number)
        digest = hashlib.sha256()
        try:
            # Made anew, never through a link: nothing planted there is written through.
            handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with (
                urllib.request.urlopen(artifact.url, timeout=timeout) as response,
                open(handle, "wb") as out,
            ):
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (OSError, ValueError) as error:  # URLError and HTTPError are OSErrors
            partial.unlink(missing_ok=True)
            raise FetchError(
                f"could not download {artifact.url} to the controller's cache: {error}"
            ) from None
        if digest.hexdigest() != artifact.sha256:
            partial.unlink(missing_ok=True)
            raise FetchError(
                f"checksum mismatch for {artifact.url}: expected sha256 {artifact.sha256}, got "
                f"{digest.hexdigest()}; nothing was cached or installed"
            )
        os.replace(partial, path)
        return path


def sum_file_urls(url: str) -> list[str]:
    directory = url.rsplit("/", 1)[0]
    return [f"{url}.sha256sum", f"{url}.sha256", f"{directory}/runc.sha256sum", f"{directory}/sha256sums.txt"]


def digest_in(text: str, filename: str) -> str | None:
    """The sha256 for `filename` in a checksum file (`<hex>  <name>`, `<hex> *<name>`, or a lone hex)."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    for fields in lines:
        if (
            len(fields) >= 2
            and fields[1].lstrip("*").rsplit("/", 1)[-1] == filename
            and HEX.match(fields[0].lower())
        ):
            return fields[0].lower()
    if len(lines) == 1 and len(lines[0]) == 1 and HEX.match(lines[0][0].lower()):
        return lines[0][0].lower()
    return None


class ChecksumLookupError(RuntimeError):
    """No published sha256 could be read for a URL; the message lists what was tried."""


def fetch_digest(url: str, timeout: float = 30) -> str:
    import urllib.request  # here: most runs fetch nothing, and its import costs each of them

    filename = url.rsplit("/", 1)[-1]
    tried = []
    for sums in sum_file_urls(url):
        try:
            with urllib.request.urlopen(sums, timeout=timeout) as response:
                text = response.read(1 << 20).decode(errors="replace")
        except (OSError, ValueError) as error:
            tried.append(f"{sums} ({error})")
            continue
        digest = digest_in(text, filename)
        if digest:
            return digest
        tried.append(f"{sums} (no line for {filename})")
    raise ChecksumLookupError(f"no published sha256 for {url}; tried: " + "; ".join(tried))

"""The controller-side artifact cache (artifact_source = controller): fetch once, push to many.

Each release file is downloaded once per controller into `artifact_cache_dir`, named by its
sha256, verified, and only then renamed into the cache; every host gets it from there over
its SSH connection. A node then needs no route to the mirror.
"""

import hashlib
import os
import threading
import urllib.request
from pathlib import Path

from .artifacts import Artifact

CHUNK = 1 << 20
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class FetchError(RuntimeError):
    """The controller could not get a verified copy; the message says what and why."""


def cached_path(cache_dir: str, artifact: Artifact) -> Path:
    return Path(cache_dir) / f"{artifact.sha256}-{artifact.filename}"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _lock_for(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def ensure_cached(cache_dir: str, artifact: Artifact, timeout: float = 60) -> Path:
    """The verified cached copy of `artifact`, downloading it first if the cache lacks it."""
    path = cached_path(cache_dir, artifact)
    with _lock_for(str(path)):  # hosts deployed at once wait for one download
        if path.is_file() and _sha256_of(path) == artifact.sha256:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        digest = hashlib.sha256()
        try:
            with (
                urllib.request.urlopen(artifact.url, timeout=timeout) as response,
                open(partial, "wb") as out,
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

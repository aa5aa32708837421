"""What the controller fetches: the artifact cache (artifact_source = controller: fetch once, push
to many) and a release file's published digest.

Each release file is downloaded once per controller into `artifact_cache_dir`, named by its
sha256, verified, and only then renamed into the cache; every host gets it from there over
its SSH connection. A node then needs no route to the mirror.
"""

import hashlib
import os
import re
import threading
import urllib.request
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

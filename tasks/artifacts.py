"""Which release files a host gets: URL and pinned sha256 per component, version and arch.

Pure functions: no host, no network. An artifact whose checksum is neither in
files/checksums.toml nor given in data is refused, never trusted.
"""

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .settings import DataError, Settings

CHECKSUMS_FILE = Path(__file__).resolve().parent.parent / "files" / "checksums.toml"


@dataclass(frozen=True)
class Artifact:
    component: str  # "containerd" or "runc"
    version: str
    arch: str
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@lru_cache(maxsize=None)
def pinned_checksums(path: Path = CHECKSUMS_FILE) -> dict:
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def _checksum(settings: Settings, component: str, version: str, arch: str) -> str:
    key = f"{component}_sha256"
    given = getattr(settings, key)
    if isinstance(given, dict):
        given = given.get(arch)
    if given:
        return given
    pinned = pinned_checksums().get(component, {}).get(version, {}).get(arch)
    if pinned:
        return pinned
    raise DataError(
        settings.host, key,
        f"is not set, and {component} {version} for {arch} has no pinned checksum in files/checksums.toml",
        f"set {key} to the sha256 from the release's .sha256sum file (or a mapping of arch to sha256), "
        "or choose a version listed in files/checksums.toml",
    )


def resolve(settings: Settings, arch: str) -> tuple[Artifact, Artifact]:
    """The containerd tarball and the runc binary for this host."""
    artifacts = []
    for component in ("containerd", "runc"):
        version = str(getattr(settings, f"{component}_version"))
        template = getattr(settings, f"{component}_download_url")
        url = template.format(mirror=settings.artifact_mirror, version=version, arch=arch)
        artifacts.append(Artifact(component, version, arch, url, _checksum(settings, component, version, arch)))
    return tuple(artifacts)

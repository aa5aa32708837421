"""Which release files a host gets: URL and pinned sha256 per component, version and arch.

Pure functions: no host, no network. An artifact whose checksum is neither in
files/checksums.toml nor given in data is refused, never trusted.
"""

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from containerd_deploy import resource
from containerd_deploy.data.settings import Settings
from containerd_deploy.data.values import DataError

CHECKSUMS_FILE = Path(str(resource("checksums.toml")))


@dataclass(frozen=True)
class Layout:
    """How a component's release file is shaped and where its files go."""

    tarball: bool  # a .tar.gz/.tgz to unpack, or a single binary
    member: str = ""  # the tarball's directory holding the files ("" for its top level)
    required: str = ""  # a file the tarball must have, or it is not this component's release
    dest_key: str = ""  # the data key naming the directory (tarballs) or path (a binary)


# Install order: containerd and runc always, the others when their version is set.
COMPONENTS = {
    "containerd": Layout(tarball=True, member="bin", required="containerd", dest_key="containerd_bin_dir"),
    "runc": Layout(tarball=False, dest_key="runc_path"),
    "cni_plugins": Layout(tarball=True, required="loopback", dest_key="cni_bin_dir"),
    "crictl": Layout(tarball=True, required="crictl", dest_key="containerd_bin_dir"),
}
# What the daemon runs: replacing one restarts it, and a rollback puts them back (the CNI plugins
# and crictl are run by others).
DAEMON_COMPONENTS = ("containerd", "runc")


@dataclass(frozen=True)
class Artifact:
    component: str  # a key of COMPONENTS
    version: str
    arch: str
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def layout(self) -> Layout:
        return COMPONENTS[self.component]


@lru_cache(maxsize=None)
def pinned_checksums(path: Path = CHECKSUMS_FILE) -> dict:
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def _checksum(
    settings: Settings,
    component: str,
    version: str,
    arch: str,
    url: str = "",
    published: Callable[[str], str] | None = None,
) -> str:
    key = f"{component}_sha256"
    given = getattr(settings, key)
    if isinstance(given, dict):
        given = given.get(arch)
    if given:
        return given
    pinned = pinned_checksums().get(component, {}).get(version, {}).get(arch)
    if pinned:
        return pinned
    if component in settings.artifact_trust_mirror_checksums and published is not None:
        # The operator named this component: its checksum may come from where the file does.
        try:
            return published(url)
        except Exception as error:  # noqa: BLE001 - any failure to read it is the same refusal
            raise DataError(
                settings.host,
                "artifact_trust_mirror_checksums",
                f"names {component}, but its published checksum could not be read ({error})",
                f"make {url}.sha256sum reachable from the controller, or set {key}",
            ) from None
    listed = ", ".join(pinned_checksums().get(component, {})) or "none"
    raise DataError(
        settings.host,
        key,
        f"gives no checksum for {component} {version} ({arch}), and files/checksums.toml pins none for it "
        f"(pinned: {listed})",
        f'set {key}={{"{version}": "<sha256>"}} with the sha256 from the release\'s .sha256sum file (or '
        f'{{"{version}": {{"amd64": …, "arm64": …}}}}), or set {component}_version to a pinned version',
    )


def wanted_components(settings: Settings) -> tuple[str, ...]:
    return tuple(name for name in COMPONENTS if getattr(settings, f"{name}_version") is not None)


def resolve(
    settings: Settings, arch: str, published: Callable[[str], str] | None = None
) -> dict[str, Artifact]:
    """component -> the release file this host gets, for every component the data asks for.

    `published(url)` reads the checksum a release publishes next to a file; it is asked only
    for components the operator named in artifact_trust_mirror_checksums.
    """
    artifacts = {}
    for component in wanted_components(settings):
        version = str(getattr(settings, f"{component}_version"))
        template = getattr(settings, f"{component}_download_url")
        url = template.format(mirror=settings.artifact_mirror, version=version, arch=arch)
        artifacts[component] = Artifact(
            component, version, arch, url, _checksum(settings, component, version, arch, url, published)
        )
    return artifacts


def destination(settings: Settings, artifact: Artifact) -> str:
    return getattr(settings, artifact.layout.dest_key)


def check_all_arches(settings: Settings) -> None:
    """Refuse, before the host is asked anything, a version no arch has a checksum for."""
    for component in wanted_components(settings):
        version = str(getattr(settings, f"{component}_version"))
        given = getattr(settings, f"{component}_sha256")
        trusted = component in settings.artifact_trust_mirror_checksums
        if not given and not trusted and not pinned_checksums().get(component, {}).get(version):
            _checksum(settings, component, version, "amd64")

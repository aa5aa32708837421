"""An artifact mirror with the upstream release layout, made from Debian's packages.

GitHub is out of reach here, so the real containerd and runc binaries come from Debian's
`containerd` and `runc` packages, repackaged the way upstream publishes them:

    <root>/containerd/containerd/releases/download/v1.6.20/containerd-1.6.20-linux-amd64.tar.gz
    <root>/containerd/containerd/releases/download/v1.6.20/containerd-1.6.20-linux-amd64.tar.gz.sha256sum
    <root>/opencontainers/runc/releases/download/v1.1.5/runc.amd64
    <root>/opencontainers/runc/releases/download/v1.1.5/runc.sha256sum

so a deploy pointed at `artifact_mirror = http://<mirror>` resolves the same paths it would
under https://github.com. Other Debian suites are reached with a private apt configuration;
the machine's own apt sources are never edited.
"""

import contextlib
import fcntl
import functools
import hashlib
import http.server
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from containerd_deploy.data.settings import DEFAULTS

from .paths import cache_root, debian_mirror_uri

ARCH = "amd64"  # this machine's, and the default test node's


@dataclass(frozen=True)
class Release:
    """The containerd and runc that one Debian suite ships."""

    suite: str
    arch: str
    containerd_version: str
    runc_version: str
    containerd_sha256: str
    runc_sha256: str


def _apt_dir(suite: str, arch: str) -> Path:
    return cache_root() / "apt" / (suite if arch == ARCH else f"{suite}-{arch}")


def _apt(suite: str, *args: str, cwd: Path | None = None, arch: str = ARCH) -> None:
    """apt-get against one Debian suite and arch through a private configuration in the cache."""
    base = _apt_dir(suite, arch)
    (base / "lists/partial").mkdir(parents=True, exist_ok=True)
    (base / "cache/archives/partial").mkdir(parents=True, exist_ok=True)
    sources = base / "sources.list"
    sources.write_text(
        f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {debian_mirror_uri()} {suite} main\n"
    )
    options = [
        f"-o=Dir::Etc::sourcelist={sources}",
        "-o=Dir::Etc::sourceparts=-",
        f"-o=Dir::State::Lists={base / 'lists'}",
        f"-o=Dir::Cache={base / 'cache'}",
        "-o=Acquire::Languages=none",
        f"-o=APT::Architecture={arch}",
        "-q",
    ]
    result = subprocess.run(["apt-get", *options, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"apt-get {' '.join(args)} for {suite} failed:\n{result.stderr}")


def _download_debs(suite: str, packages: list[str], into: Path, arch: str = ARCH) -> dict[str, Path]:
    """The .deb of each package in the suite, for `arch` (downloaded once, kept in the cache)."""
    into.mkdir(parents=True, exist_ok=True)
    found = {}
    for package in packages:
        if not list(into.glob(f"{package}_*.deb")):
            if not any((_apt_dir(suite, arch) / "lists").glob("*_Packages*")):
                _apt(suite, "update", arch=arch)
            _apt(suite, "download", package, cwd=into, arch=arch)  # apt-get download writes into cwd
        found[package] = sorted(into.glob(f"{package}_*.deb"))[-1]
    return found


def _upstream_version(deb: Path) -> str:
    """'1.6.20~ds1-1+b1' -> '1.6.20': the upstream release a Debian package was built from."""
    version = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True
    ).stdout
    match = re.match(r"(?:\d+:)?(\d+\.\d+\.\d+)", version.strip())
    if not match:
        raise RuntimeError(f"cannot read an upstream version from {deb.name}: {version!r}")
    return match.group(1)


def _deterministic_targz(members: dict[str, Path], dest: Path) -> None:
    """A .tar.gz whose bytes depend only on its members, so its sha256 is stable across builds."""
    import gzip

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, path in sorted(members.items()):
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            info.mode = 0o755
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    with open(dest, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())


def _publish_targz(members: dict[str, Path], tarball: Path, sumfile: str) -> None:
    """Write the tarball by rename (readers never see part of it), with its checksum file beside it."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    _deterministic_targz(members, tarball.with_suffix(".part"))
    tarball.with_suffix(".part").rename(tarball)
    _write_sumfile(tarball.with_name(sumfile), [tarball])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _runc_binaries(directory: Path) -> list[Path]:
    """Every arch's runc of one release: upstream's runc.sha256sum lists them all."""
    return sorted(path for path in directory.glob("runc.*") if path.suffix not in (".sha256sum", ".part"))


def _write_sumfile(path: Path, entries: list[Path]) -> None:
    # By rename: both arches of a release write runc.sha256sum, each under its own lock.
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    temp.write_text("".join(f"{_sha256(entry)}  {entry.name}\n" for entry in entries))
    temp.rename(path)


def mirror_root() -> Path:
    root = cache_root() / "mirror" / "root"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _layout_path(component: str, version: str, arch: str) -> Path:
    """Where upstream's layout (the deploy's default URL template) puts a release file."""
    return mirror_root() / DEFAULTS[f"{component}_download_url"].format(
        mirror="", version=version, arch=arch
    ).lstrip("/")


def containerd_tarball_path(version: str, arch: str = ARCH) -> Path:
    return _layout_path("containerd", version, arch)


def runc_binary_path(version: str, arch: str = ARCH) -> Path:
    return _layout_path("runc", version, arch)


def cni_plugins_path(version: str, arch: str = ARCH) -> Path:
    return _layout_path("cni_plugins", version, arch)


@contextlib.contextmanager
def _suite_debs(suite: str, packages: list[str], arch: str = ARCH):
    """The suite's .debs of `packages` for `arch` (downloaded once), with the suite's mirror lock held."""
    name = suite if arch == ARCH else f"{suite}-{arch}"
    with open(mirror_root().parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield _download_debs(suite, packages, cache_root() / "debs" / name, arch)


@functools.lru_cache(maxsize=None)
def release(suite: str, arch: str = ARCH) -> Release:
    """Make (once) the suite's containerd tarball and runc binary for `arch` in the mirror tree."""
    with _suite_debs(suite, ["containerd", "runc"], arch) as debs:
        containerd_version = _upstream_version(debs["containerd"])
        runc_version = _upstream_version(debs["runc"])
        tarball = containerd_tarball_path(containerd_version, arch)
        runc = runc_binary_path(runc_version, arch)
        if not tarball.exists() or not runc.exists():
            with tempfile.TemporaryDirectory() as scratch:
                work = Path(scratch)
                for deb in debs.values():
                    subprocess.run(["dpkg-deb", "-x", str(deb), str(work)], check=True)
                binaries = {
                    f"bin/{path.name}": path
                    for path in (work / "usr/bin").iterdir()
                    if path.name.startswith("containerd") or path.name == "ctr"
                }
                _publish_targz(binaries, tarball, tarball.name + ".sha256sum")
                runc.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(work / "usr/sbin/runc", runc.with_suffix(".part"))
                runc.with_suffix(".part").rename(runc)
                _write_sumfile(runc.with_name("runc.sha256sum"), _runc_binaries(runc.parent))
    return Release(suite, arch, containerd_version, runc_version, _sha256(tarball), _sha256(runc))


BROKEN_DIR = "broken"  # under the mirror root: releases that install but do not start
BROKEN_CONTAINERD = b"""#!/bin/sh
echo "containerd: this build is broken on purpose (containerd-deploy's rollout test)" >&2
exit 1
"""


def broken_release(suite: str, arch: str = ARCH) -> tuple[str, str]:
    """The suite's containerd tarball with a `containerd` that exits at once (ctr and the shims
    are the real ones), published under the mirror's broken/ tree in the release layout:
    (`containerd_download_url` template for it, its sha256). It passes every check before the
    restart, as a bad build with a pinned checksum would."""
    good = release(suite, arch)
    tarball = (
        mirror_root()
        / BROKEN_DIR
        / containerd_tarball_path(good.containerd_version, arch).relative_to(mirror_root())
    )
    if not tarball.exists():
        with tempfile.TemporaryDirectory() as scratch:
            work = Path(scratch)
            with tarfile.open(containerd_tarball_path(good.containerd_version, arch)) as tar:
                tar.extractall(work, filter="data")
            (work / "bin" / "containerd").write_bytes(BROKEN_CONTAINERD)
            _publish_targz(
                {f"bin/{path.name}": path for path in (work / "bin").iterdir()},
                tarball,
                tarball.name + ".sha256sum",
            )
    template = DEFAULTS["containerd_download_url"].replace("{mirror}", "{mirror}/" + BROKEN_DIR, 1)
    return template, _sha256(tarball)


@dataclass(frozen=True)
class CniRelease:
    version: str
    sha256: str


@functools.lru_cache(maxsize=None)
def cni_release(suite: str, arch: str = ARCH) -> CniRelease:
    """Debian's containernetworking-plugins as upstream's cni-plugins tarball (files at its top)."""
    with _suite_debs(suite, ["containernetworking-plugins"], arch) as debs:
        deb = debs["containernetworking-plugins"]
        version = _upstream_version(deb)
        tarball = cni_plugins_path(version, arch)
        if not tarball.exists():
            with tempfile.TemporaryDirectory() as scratch:
                work = Path(scratch)
                subprocess.run(["dpkg-deb", "-x", str(deb), str(work)], check=True)
                plugins = {
                    f"./{path.name}": path for path in (work / "usr/lib/cni").iterdir() if path.is_file()
                }
                _publish_targz(plugins, tarball, tarball.name + ".sha256")
    return CniRelease(version, _sha256(tarball))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


class Mirror:
    """The mirror tree served over HTTP on 127.0.0.1 (a thread in this process)."""

    def __init__(self, port: int = 0):
        handler = functools.partial(_QuietHandler, directory=str(mirror_root()))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def url_for_guests(self) -> str:
        """qemu's user network maps the guest's 10.0.2.2 to this machine's loopback."""
        return f"http://10.0.2.2:{self.port}"


def suite_debs(suite: str, packages: list[str], arch: str = ARCH) -> dict[str, Path]:
    """package -> its .deb from the suite for `arch` (downloaded once into the cache), e.g. to
    install a distro-packaged containerd on a node, or an arm64 node's kernel."""
    with _suite_debs(suite, packages, arch) as debs:
        return debs


def static_busybox(arch: str, suite: str = "bookworm") -> Path:
    """Debian's static busybox for `arch` (extracted once into the cache): what the conformance
    suite builds a foreign-arch node's test image from (`--busybox ARCH=PATH`)."""
    target = cache_root() / "busybox" / arch / "busybox"
    if not target.exists():
        deb = suite_debs(suite, ["busybox-static"], arch)["busybox-static"]
        with tempfile.TemporaryDirectory() as scratch:
            subprocess.run(["dpkg-deb", "-x", str(deb), scratch], check=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(scratch) / "bin/busybox", target.with_suffix(".part"))
            target.with_suffix(".part").rename(target)
    return target

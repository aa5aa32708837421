"""Build (once) a bootable Debian node image: an ext4 root filesystem plus its kernel and initrd.

The image is cached under ~/.cache/containerd-deploy/images/, keyed on this file, the Debian
suite and the harness SSH key, so only the first run pays for mmdebstrap (~2 minutes).
"""

import fcntl
import inspect
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .paths import cache_root, debian_mirror_uri, digest

# What a minimal systemd node needs to boot, be reached over SSH and fetch from the mirror.
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "procps",
    "iproute2",
    "openssh-server",
    "linux-image-amd64",
    "curl",
    "ca-certificates",
    # A second OCI runtime, for the extra-runtime-handler tests (containerd_runtimes).
    "crun",
    # The tests log in as unprivileged users too (pyinfra _sudo, conformance with sudo), and
    # run pyinfra on the node itself (@local).
    "sudo",
    "python3",
    "python3-venv",
]
IMAGE_SIZE = "4G"
MMDEBSTRAP_OPTIONS = [
    "--variant=minbase",
    "--mode=root",
    "--format=directory",
    '--aptopt=Acquire::Languages "none"',
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
]


@dataclass(frozen=True)
class Image:
    suite: str
    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "root.raw"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def host_key(self) -> str:
        """The node's SSH host public key, so clients verify it instead of trusting on first use."""
        return " ".join((self.directory / "ssh_host_ed25519_key.pub").read_text().split()[:2])


def ssh_key() -> Path:
    """The harness's SSH identity (private key path); created once per cache."""
    directory = cache_root() / "ssh"
    directory.mkdir(exist_ok=True)
    key = directory / "id_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "containerd-deploy-tests", "-f", str(key)],
            check=True,
        )
    return key


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _customize(root: Path, pubkey: str) -> None:
    _write(root / "etc/hostname", "node\n")
    _write(root / "etc/hosts", "127.0.0.1 localhost\n127.0.1.1 node\n")
    _write(root / "etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    _write(root / "etc/systemd/network/10-wired.network", "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n")
    _write(root / "root/.ssh/authorized_keys", pubkey, 0o600)
    (root / "root/.ssh").chmod(0o700)
    # Key auth only; no DNS lookups of the client (there is no DNS on the test network).
    _write(root / "etc/ssh/sshd_config.d/test-node.conf", "PasswordAuthentication no\nUseDNS no\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in ("systemd-networkd.service",):
        link = wants / unit
        if not link.exists():
            link.symlink_to(f"/lib/systemd/system/{unit}")
    # Nothing on the node should wait for a network it will never have, or wake up to do
    # housekeeping in the middle of a test.
    for unit in (
        "systemd-networkd-wait-online.service",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
        "man-db.timer",
        "dpkg-db-backup.timer",
        "systemd-timesyncd.service",
    ):
        mask = root / "etc/systemd/system" / unit
        if mask.exists() or mask.is_symlink():
            mask.unlink()
        mask.symlink_to("/dev/null")
    # The host key is baked into the image: every node of this image presents it, and the
    # harness writes it into known_hosts so SSH verifies it.
    for stale in (root / "etc/ssh").glob("ssh_host_*"):
        stale.unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "etc/ssh/ssh_host_ed25519_key")],
        check=True,
    )
    (root / "etc/machine-id").write_text("")


def build(suite: str = "bookworm") -> Image:
    key = ssh_key()
    pubkey = key.with_suffix(".pub").read_text()
    # Keyed on what shapes the image, not on the rest of this file.
    tag = digest(
        inspect.getsource(_customize),
        " ".join(MMDEBSTRAP_OPTIONS),
        IMAGE_SIZE,
        suite,
        pubkey,
        " ".join(PACKAGES),
    )
    images = cache_root() / "images"
    images.mkdir(exist_ok=True)
    image = Image(suite, images / f"debian-{suite}-{tag}")
    with open(images / f".{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (image.directory / "ready").exists():
            return image
        _build(image, pubkey)
        # Images of this suite built by an older harness or key: several GB each, never used again.
        for stale in images.glob(f"debian-{suite}-*"):
            if stale != image.directory:
                shutil.rmtree(stale, ignore_errors=True)
    return image


def _build(image: Image, pubkey: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="image-", dir=image.directory.parent))
    try:
        root = work / "root"
        subprocess.run(
            [
                "mmdebstrap",
                *MMDEBSTRAP_OPTIONS,
                "--include=" + ",".join(PACKAGES),
                image.suite,
                str(root),
                debian_mirror_uri(),
            ],
            check=True,
        )
        _customize(root, pubkey)
        out = work / "out"
        out.mkdir()
        kernel = sorted((root / "boot").glob("vmlinuz-*"))[-1]
        initrd = sorted((root / "boot").glob("initrd.img-*"))[-1]
        shutil.copy(kernel, out / "vmlinuz")
        shutil.copy(initrd, out / "initrd.img")
        shutil.copy(root / "etc/ssh/ssh_host_ed25519_key.pub", out / "ssh_host_ed25519_key.pub")
        subprocess.run(
            ["mkfs.ext4", "-q", "-L", "root", "-d", str(root), str(out / "root.raw"), IMAGE_SIZE], check=True
        )
        (out / "ready").write_text(image.suite + "\n")
        if image.directory.exists():
            shutil.rmtree(image.directory)
        out.rename(image.directory)
    finally:
        _remove_tree(work)


def _remove_tree(path: Path) -> None:
    """rm -rf that first unmounts whatever an interrupted mmdebstrap left mounted inside (its
    chroot's /proc, /sys, /dev): never delete through a mount into the host."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    inside = sorted((m for m in mounts if m == str(path) or m.startswith(f"{path}/")), key=len, reverse=True)
    for mount in inside:
        subprocess.run(["umount", "-l", mount], check=False)
    if any(line.split()[1].startswith(f"{path}/") for line in Path("/proc/mounts").read_text().splitlines()):
        raise RuntimeError(f"{path} still has mounts inside; not removing it")
    shutil.rmtree(path, ignore_errors=True)

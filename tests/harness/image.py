"""Build (once) a bootable Debian node image: an ext4 root filesystem plus its kernel and initrd.

The image is cached under ~/.cache/containerd-deploy/images/, keyed on what shapes it (Debian
suite, arch, packages, the harness SSH key), so only the first run pays for mmdebstrap (~2
minutes; an arm64 image, built through qemu-user, ~10).
"""

import fcntl
import inspect
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import mirror
from .paths import cache_root, debian_mirror_uri, digest
from .platforms import NATIVE, Platform, ensure_binfmt, platform

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
    # AppArmor's userspace, as Debian's and Ubuntu's servers have it: containerd then confines
    # every container with its default profile (on a VM; a machine shares this host's kernel).
    "apparmor",
    # As a cloud image has it: a node with a NoCloud seed provisions itself at first boot (with
    # no seed, cloud-init finds no datasource and stays off).
    "cloud-init",
    # What the conformance suite builds its test image from, installed by the operator.
    "busybox-static",
]
IMAGE_SIZE = "4G"
# cloud-init as the harness's cloud has it: a NoCloud seed or nothing (no network datasource
# to wait for; with no seed, ds-identify finds none and cloud-init stays off — it looks only
# when the list has more than one entry), and what it leaves as the harness made the node: the
# network (a machine's is this machine's), the baked host keys (in known_hosts), root's login,
# the disk, the apt sources; and the locale (a minimal image has no locales to set).
CLOUD_CONFIG = """\
datasource_list: [NoCloud, ConfigDrive]
network: {config: disabled}
ssh_deletekeys: false
ssh_genkeytypes: []
disable_root: false
resize_rootfs: false
growpart: {mode: "off"}
preserve_hostname: true
locale: false
apt: {preserve_sources_list: true}
"""
MMDEBSTRAP_OPTIONS = [
    "--variant=minbase",
    "--mode=root",
    "--format=directory",
    '--aptopt=Acquire::Languages "none"',
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
]


# Left out of a foreign-arch image: python3 byte-compiles under qemu-user for minutes, and only
# the @local and cloud-init tests (amd64) run Python on a node, or the conformance suite on the
# node itself (its busybox); its kernel is installed from this machine.
FOREIGN_LEFT_OUT = ("python3", "python3-venv", "cloud-init", "busybox-static")
# What the initrd of a foreign-arch image loads to mount its root (virtio disk, ext4), with
# their dependencies from modules.dep; crc32c for ext4's metadata checksums.
INITRD_MODULES = ("crc32c_generic", "virtio_pci", "virtio_blk", "ext4")


@dataclass(frozen=True)
class Image:
    suite: str
    directory: Path
    arch: str = NATIVE

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


def _cloud_config(root: Path) -> None:
    _write(root / "etc/cloud/cloud.cfg.d/90-harness.cfg", CLOUD_CONFIG)


def packages(target: Platform) -> list[str]:
    if not target.foreign:
        return PACKAGES
    return [
        package
        for package in PACKAGES
        if package not in FOREIGN_LEFT_OUT and not package.startswith("linux-image-")
    ]


def build(suite: str = "bookworm", arch: str = NATIVE) -> Image:
    target = platform(arch)
    key = ssh_key()
    pubkey = key.with_suffix(".pub").read_text()
    # Keyed on what shapes the image, not on the rest of this file.
    shaped_by = [inspect.getsource(_customize), " ".join(MMDEBSTRAP_OPTIONS), IMAGE_SIZE, suite, pubkey]
    shaped_by.append(" ".join(packages(target)))
    if target.foreign:  # (with no cloud-init)
        shaped_by += [arch, target.kernel_package, inspect.getsource(_foreign_kernel), INIT_SCRIPT]
        shaped_by.append(inspect.getsource(module_load_order))
    else:
        shaped_by += [CLOUD_CONFIG, inspect.getsource(_cloud_config)]
    tag = digest(*shaped_by)
    name = suite if arch == NATIVE else f"{suite}-{arch}"
    images = cache_root() / "images"
    images.mkdir(exist_ok=True)
    image = Image(suite, images / f"debian-{name}-{tag}", arch)
    with open(images / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (image.directory / "ready").exists():
            return image
        _build(image, pubkey, target)
        # Images of this suite and arch built by an older harness or key: several GB each,
        # never used again.
        for stale in images.iterdir():
            if (
                re.fullmatch(rf"debian-{re.escape(name)}-[0-9a-f]{{16}}", stale.name)
                and stale != image.directory
            ):
                shutil.rmtree(stale, ignore_errors=True)
    return image


def _build(image: Image, pubkey: str, target: Platform) -> None:
    ensure_binfmt(target)
    work = Path(tempfile.mkdtemp(prefix="image-", dir=image.directory.parent))
    try:
        root = work / "root"
        subprocess.run(
            [
                "mmdebstrap",
                *MMDEBSTRAP_OPTIONS,
                f"--arch={target.arch}",
                "--include=" + ",".join(packages(target)),
                image.suite,
                str(root),
                debian_mirror_uri(),
            ],
            check=True,
        )
        _customize(root, pubkey)
        if not target.foreign:
            _cloud_config(root)
        out = work / "out"
        out.mkdir()
        if target.foreign:
            _foreign_kernel(image.suite, target, root, out, work / "initrd")
        else:
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


INIT_SCRIPT = """#!/bin/busybox sh
# A foreign-arch node's initrd: load what mounts the root disk, then hand over to systemd.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /modules); do insmod "/$module" || echo "initrd: insmod $module failed"; done
tries=0
while [ ! -b /dev/vda ] && [ $tries -lt 600 ]; do sleep 0.1; tries=$((tries + 1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initrd: cannot mount /dev/vda"; sleep 5; poweroff -f; }
umount /proc /sys /dev
exec switch_root /newroot /sbin/init
"""


def module_load_order(modules_dep: str, wanted: tuple[str, ...]) -> list[str]:
    """The module files (paths as modules.dep gives them) that load `wanted` modules, each
    after what it depends on, each once."""
    dependencies = {}
    for line in modules_dep.splitlines():
        module, _, needs = line.partition(":")
        dependencies[Path(module).name.removesuffix(".ko")] = (module, needs.split())
    order: list[str] = []

    def add(module_path: str) -> None:
        for need in dependencies[Path(module_path).name.removesuffix(".ko")][1]:
            add(need)
        if module_path not in order:
            order.append(module_path)

    for name in wanted:
        if name not in dependencies:
            raise RuntimeError(
                f"the kernel has no module {name} (built in, or renamed?); the initrd needs it"
            )
        add(dependencies[name][0])
    return order


def _foreign_kernel(suite: str, target: Platform, root: Path, out: Path, initrd: Path) -> None:
    """Install the suite's kernel for `target` into the root and build its initrd, all on this
    machine: its maintainer scripts (mkinitramfs) would take most of the build under qemu-user.
    The initrd is busybox and the few modules that mount /dev/vda."""
    meta = mirror.suite_debs(suite, [target.kernel_package], target.arch)[target.kernel_package]
    depends = subprocess.run(
        ["dpkg-deb", "-f", str(meta), "Depends"], check=True, capture_output=True, text=True
    )
    kernel_package = depends.stdout.split()[0].rstrip(",")
    debs = mirror.suite_debs(suite, [kernel_package, "busybox-static"], target.arch)
    unpacked = initrd.with_name("kernel")
    subprocess.run(["dpkg-deb", "-x", str(debs[kernel_package]), str(unpacked)], check=True)
    (release,) = [path.name for path in (unpacked / "lib/modules").iterdir()]
    shutil.copy(unpacked / f"boot/vmlinuz-{release}", out / "vmlinuz")
    # /lib is a symlink to usr/lib in a merged-/usr root: relative, or it would name this machine's.
    if (root / "lib").is_symlink() and Path(os.readlink(root / "lib")).is_absolute():
        raise RuntimeError(f"{root}/lib is an absolute symlink; not installing modules through it")
    modules = root / "lib/modules"
    shutil.copytree(unpacked / "lib/modules", modules, symlinks=True, dirs_exist_ok=True)
    subprocess.run(["depmod", "-b", str(root), release], check=True)
    shutil.rmtree(unpacked)

    initrd.mkdir()
    for directory in ("bin", "proc", "sys", "dev", "newroot"):
        (initrd / directory).mkdir()
    subprocess.run(["dpkg-deb", "-x", str(debs["busybox-static"]), str(initrd / "busybox")], check=True)
    shutil.move(initrd / "busybox/bin/busybox", initrd / "bin/busybox")
    shutil.rmtree(initrd / "busybox")
    _write(initrd / "init", INIT_SCRIPT, 0o755)
    order = module_load_order((modules / release / "modules.dep").read_text(), INITRD_MODULES)
    for module_path in order:
        (initrd / module_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(modules / release / module_path, initrd / module_path)
    _write(initrd / "modules", "\n".join(order) + "\n")
    files = subprocess.run(["find", "."], cwd=initrd, check=True, capture_output=True).stdout
    archive = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
        cwd=initrd,
        input=files,
        check=True,
        capture_output=True,
    ).stdout
    (out / "initrd.img").write_bytes(archive)


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

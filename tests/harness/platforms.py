"""The machine kinds a test node can be: this machine's own (amd64) and arm64, emulated.

Both run under TCG. An arm64 image is built through qemu-user (binfmt_misc) and booted with
qemu-system-aarch64; its kernel and initrd are made on this machine, not in the emulated
chroot (mkinitramfs under qemu-user is most of a 20-minute build).
"""

import subprocess
from dataclasses import dataclass
from pathlib import Path

NATIVE = "amd64"
BINFMT = Path("/proc/sys/fs/binfmt_misc")


@dataclass(frozen=True)
class Platform:
    arch: str  # Debian's and the containerd release's name for it
    kernel_package: str  # Debian's meta package of the current kernel
    qemu: str
    machine: tuple[str, ...]
    console: str  # the serial console's device name in the guest
    binfmt: str = ""  # binfmt_misc entry that runs its binaries here (foreign arches only)

    @property
    def foreign(self) -> bool:
        return bool(self.binfmt)


PLATFORMS = {
    "amd64": Platform(
        "amd64",
        "linux-image-amd64",
        "qemu-system-x86_64",
        ("-machine", "pc", "-cpu", "max", "-vga", "none"),
        "ttyS0",
    ),
    "arm64": Platform(
        "arm64",
        "linux-image-arm64",
        "qemu-system-aarch64",
        # pauth-impdef: pointer authentication with a cheap hash; `max`'s default (QARMA) makes
        # TCG several times slower.
        ("-machine", "virt", "-cpu", "max,pauth-impdef=on"),
        "ttyAMA0",
        binfmt="qemu-aarch64",
    ),
}


def platform(arch: str) -> Platform:
    try:
        return PLATFORMS[arch]
    except KeyError:
        raise ValueError(f"no test node platform {arch!r}; known: {', '.join(PLATFORMS)}") from None


def ensure_binfmt(target: Platform) -> None:
    """Make this machine run `target`'s binaries (qemu-user-static through binfmt_misc), as
    mmdebstrap needs for a foreign chroot: mount binfmt_misc if nothing has, register the entry."""
    if not target.foreign:
        return
    if not (BINFMT / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    if not (BINFMT / target.binfmt).exists():
        # qemu-user-static's postinst could not register it when binfmt_misc was not mounted.
        if subprocess.run(["update-binfmts", "--enable", target.binfmt], check=False).returncode:
            subprocess.run(["update-binfmts", "--import", target.binfmt], check=True)
            subprocess.run(["update-binfmts", "--enable", target.binfmt], check=False)
    if not (BINFMT / target.binfmt).exists():
        raise RuntimeError(
            f"binfmt_misc has no {target.binfmt} entry: install qemu-user-static and binfmt-support "
            f"(make deps does), then: update-binfmts --enable {target.binfmt}"
        )
    if (BINFMT / target.binfmt).read_text().splitlines()[0].strip() != "enabled":
        raise RuntimeError(f"binfmt_misc entry {target.binfmt} is registered but disabled")

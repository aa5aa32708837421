"""Machines: systemd-nspawn nodes booting the same Debian image the VMs boot (its root.raw,
loop-mounted read-only and shared), each with an overlay of its own, systemd as PID 1 and its
own sshd on a 127.0.0.1 port of this machine's network (`up --kind machine`).

A TCG VM spends host CPU even idle and runs everything emulated; a machine runs natively and
idles at next to nothing: the e2e tests of the deploy's logic run on machines (and 32 or 64 of
them let the fan-out benchmark measure the controller rather than starved nodes). They share
this machine's kernel: its cgroup layout, AppArmor, arch and boot are not the node's, so what
the kernel decides is proven on VMs (tests/e2e/conftest.py). Containers and CRI pods run in them:
each gets a writable cgroup of its own in every controller hierarchy, the capabilities and
system calls runc needs, and an ext4 directory of its own bound at /var/lib/containerd. Needs
root and `systemd-container`.

Each machine lives in .nodes/<name>/ like a VM (node.json, data.json, pid) so inventories/
local.py and `python -m tests.harness down` treat it the same.
"""

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from . import vm
from .image import Image
from .paths import cache_root

BOOT_TIMEOUT = 120
# Units of the VM image that must not run in a machine sharing the host's network (networkd
# would configure the host's interfaces) or that only wait for a console or a network it
# does not own.
MASKED = (
    "systemd-networkd.service",
    "systemd-networkd.socket",
    "systemd-networkd-wait-online.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
)


def _mounted(path: Path) -> bool:
    return os.path.ismount(path)


def lower(image: Image) -> Path:
    """The image's root filesystem, loop-mounted read-only once for every machine."""
    path = cache_root() / "nspawn" / image.directory.name
    path.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # machines of parallel test workers start at once
        if not _mounted(path):
            subprocess.run(["mount", "-o", "loop,ro", str(image.disk), str(path)], check=True)
    return path


# Every machine's systemd, journald and logind hold inotify instances, all of them root's: the
# kernel's default of 128 per user runs out at about 26 machines ("it exited" at boot).
INOTIFY_INSTANCES = 8192
INOTIFY_LIMIT = Path("/proc/sys/fs/inotify/max_user_instances")


def _enough_inotify_instances() -> None:
    if int(INOTIFY_LIMIT.read_text()) < INOTIFY_INSTANCES:
        INOTIFY_LIMIT.write_text(f"{INOTIFY_INSTANCES}\n")


# This machine's cgroups are hybrid: the controllers (cpu, memory, pids, ...) are v1 hierarchies,
# and nspawn gives a machine those read-only, so runc could place no container. Each machine gets
# a cgroup of its own in every controller hierarchy (nspawn's cgroup namespace roots the machine's
# view there, so machines do not see each other's), remounted writable in the machine once it is
# up. (A host with cgroup v2 only has no such hierarchies: nothing to do there.)
CONTROLLER_CGROUPS = "containerd-deploy-machines"


def settle_script(name: str, hierarchies: list[Path]) -> str:
    """What a machine runs once it answers, in one SSH round trip: say it is `name` (every
    machine has the image's host key, so a port another node took meanwhile would answer for
    this one), then make its controller hierarchies (nspawn mounts them where this machine has
    them) writable."""
    q = shlex.quote
    return "\n".join(
        [
            f'answered=$(cat /etc/hostname); [ "$answered" = {q(name)} ] || '
            '{ echo "answered by $answered" >&2; exit 3; }',
            *(
                f"mount -o remount,rw,bind {q(str(h))} && [ -w {q(str(h))} ] || "
                f"{{ echo '{h} stays read-only' >&2; exit 1; }}"
                for h in hierarchies
            ),
        ]
    )


def controller_hierarchies(mounts: str) -> list[Path]:
    """The v1 controller hierarchies among `mounts` (/proc/self/mounts): not systemd's named one."""
    found = []
    for line in mounts.splitlines():
        fields = line.split()
        if (
            len(fields) > 3
            and fields[2] == "cgroup"
            and not any(o.startswith("name=") for o in fields[3].split(","))
        ):
            found.append(Path(fields[1]))
    return found


def this_machines_hierarchies() -> list[Path]:
    return controller_hierarchies(Path("/proc/self/mounts").read_text())


def own_cgroups(name: str) -> list[Path]:
    return [hierarchy / CONTROLLER_CGROUPS / name for hierarchy in this_machines_hierarchies()]


def _cgroups_lock():
    """Held while a machine's cgroups are made or removed: their shared parent comes and goes."""
    path = cache_root() / "nspawn" / ".cgroups.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def _make_cgroups(name: str) -> list[Path]:
    cgroups = own_cgroups(name)
    with _cgroups_lock():
        for cgroup in cgroups:
            for level in (cgroup.parent, cgroup):
                level.mkdir(exist_ok=True)
                for inherited in ("cpuset.cpus", "cpuset.mems"):  # a new cpuset is empty: no task may join
                    if (level / inherited).exists() and not (level / inherited).read_text().strip():
                        (level / inherited).write_text((level.parent / inherited).read_text())
    return cgroups


def _remove_cgroups(name: str) -> None:
    """The machine's cgroups and whatever its containers left in them (their processes are gone),
    then the parent they share once no machine's is left."""
    with _cgroups_lock():
        _remove_cgroups_locked(name)


def _remove_cgroups_locked(name: str) -> None:
    for top in own_cgroups(name):
        for directory, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(directory)
            except OSError as error:
                print(f"{name}: cgroup {directory} stays: {error}", file=sys.stderr)
        try:
            top.parent.rmdir()
        except OSError:
            pass  # another machine's cgroup is in it


def _prepare(root: Path, name: str, port: int, files: dict[str, str]) -> None:
    (root / "etc/ssh/sshd_config.d/port.conf").write_text(f"Port {port}\nListenAddress 127.0.0.1\n")
    for path, text in files.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(text)
    for unit in MASKED:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    (root / "etc/hostname").write_text(name + "\n")


def start(name: str, image: Image, port: int | None = None, files: dict[str, str] | None = None) -> vm.Node:
    """A fresh machine from the image: its own overlay on the shared read-only root, and an
    ext4 directory of its own bound at /var/lib/containerd (overlayfs cannot hold containerd's
    overlay snapshots). `files`: path -> text written into it before it boots."""
    vm.ssh_config_host(name)  # refused before anything is made for it
    vm.stop(name)
    _enough_inotify_instances()
    directory = vm.node_dir(name)
    if _mounted(directory / "root"):  # left by a start that failed before node.json was written
        subprocess.run(["umount", "-l", str(directory / "root")], check=False)
    shutil.rmtree(directory, ignore_errors=True)
    for part in ("upper", "work", "root", "containerd"):
        (directory / part).mkdir(parents=True)
    port = port or vm.free_port()
    node = vm.Node(name, port, str(directory), image.host_key, image.suite, image.arch, kind=vm.MACHINE)
    try:
        _boot(node, image, files or {})
    except BaseException:
        stop(node)
        raise
    return node


def _boot(node: vm.Node, image: Image, files: dict[str, str]) -> None:
    name, port, directory = node.name, node.port, Path(node.directory)
    subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower(image)},upperdir={directory / 'upper'},workdir={directory / 'work'}",
            str(directory / "root"),
        ],
        check=True,
    )
    _prepare(directory / "root", name, port, files)
    vm.write_known_hosts(port, image.host_key)
    _remove_cgroups(name)
    cgroups = _make_cgroups(name)

    def enter_own_cgroups() -> None:
        for cgroup in cgroups:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    with open(directory / "console.log", "w") as console:
        process = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "--register=no",  # no systemd-machined on the host
                "--keep-unit",  # nor a host systemd to make it a scope
                "--boot",
                "--console=passive",
                f"--machine={name}",
                f"--directory={directory / 'root'}",
                f"--bind={directory / 'containerd'}:/var/lib/containerd",
                # What runc needs to make a container: every capability this machine has, and the
                # system calls nspawn filters out by default (the session keyring, device cgroups).
                "--capability=all",
                "--system-call-filter=add_key keyctl request_key bpf",
            ],
            preexec_fn=enter_own_cgroups,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (directory / "pid").write_text(str(process.pid))
    vm.replace_file(directory / "node.json", json.dumps(asdict(node)))
    vm.write_ssh_config()
    vm.wait_for_ssh(node, BOOT_TIMEOUT)
    settled = node.ssh(settle_script(name, this_machines_hierarchies()), check=False)
    if settled.returncode:
        raise RuntimeError(f"node {name} on port {port}: {settled.stderr.strip()}; start it again")


def release_images() -> None:
    """Unmount the shared image roots (once no machine uses them: `down` of every node)."""
    for path in sorted(p for p in (cache_root() / "nspawn").glob("*") if p.is_dir()):
        with open(path.parent / f".{path.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # not while a machine of another worker mounts it
            if _mounted(path):
                subprocess.run(["umount", str(path)], check=False)


def stop(node: vm.Node) -> None:
    """Power the machine off (SIGTERM makes nspawn ask its systemd to), then take its mounts down."""
    vm.kill(node, timeout=30)
    root = Path(node.directory) / "root"
    if _mounted(root):
        subprocess.run(["umount", "-l", str(root)], check=False)
    _remove_cgroups(node.name)
    (Path(node.directory) / "pid").unlink(missing_ok=True)


def processes(pid: int) -> list[int]:
    """`pid` and every process below it (the machine: nspawn, its systemd and all they run)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found

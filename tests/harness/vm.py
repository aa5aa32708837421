"""Throw-away systemd nodes: qemu VMs (TCG) on a cached image, reached over SSH on 127.0.0.1.

Booting a Debian kernel under TCG takes a minute or more, so the first node of an image is
booted once, stopped and saved (qemu `migrate` to a file) together with the disk it had at
that moment. Every later node is a fresh qcow2 overlay on that saved disk, resumed from the
saved memory with `-incoming`: SSH answers in seconds instead.

Each node lives in .nodes/<name>/ (overlay, QMP socket, pid file, console log) and is
stopped by the PID qemu wrote there.
"""

import fcntl
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .image import Image, ssh_key
from .paths import cache_root, digest, run_root
from .platforms import NATIVE, platform
from .qmp import QMP

MEMORY_MB = 1024
CPUS = 2
BOOT_TIMEOUT = 600  # a cold TCG boot on a loaded 2-core machine
RESUME_TIMEOUT = 180

# The two kinds of node: a qemu VM (its own kernel: for what the kernel or the boot decides) and
# a systemd-nspawn machine (tests/harness/nspawn.py: the same image natively, for the deploy's logic).
VM, MACHINE = "vm", "machine"
KINDS = (VM, MACHINE)
# Where a node reaches this machine's loopback services (the mirror, the registries): a VM
# through qemu's user network; a machine shares this machine's network.
CONTROLLER_ADDRESS = {VM: "10.0.2.2", MACHINE: "127.0.0.1"}


@dataclass
class Node:
    name: str
    port: int
    directory: str
    host_key: str
    suite: str
    arch: str = NATIVE
    kind: str = VM  # or MACHINE

    @property
    def controller_address(self) -> str:
        return CONTROLLER_ADDRESS[self.kind]

    @property
    def pid(self) -> int | None:
        try:
            return int((Path(self.directory) / "pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def ssh_command(self, *command: str) -> list[str]:
        return ["ssh", *ssh_options(self.port), "root@127.0.0.1", *command]

    def ssh(self, *command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.ssh_command(*command), check=check, capture_output=True, text=True, timeout=timeout
        )


def ssh_options(port: int) -> list[str]:
    return [
        "-p",
        str(port),
        "-i",
        str(ssh_key()),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts_file()}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
        # Reuse one connection per node: each new SSH handshake costs ~2 s under TCG.
        "-o",
        "ControlMaster=auto",
        "-o",
        f"ControlPath={control_dir()}/%C",
        "-o",
        "ControlPersist=120",
    ]


def control_dir() -> Path:
    """Where SSH connection sockets live: private to this user (0700, checked), never a shared
    /tmp, where another local user could make the socket first and answer for the node."""
    directory = cache_root() / "ssh" / "control"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = directory.lstat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not directory.is_dir() or directory.is_symlink():
        raise RuntimeError(f"{directory} must be a directory of this user's own with mode 0700")
    return directory


def known_hosts_file() -> Path:
    return run_root() / "known_hosts"


def ssh_config_file() -> Path:
    """An OpenSSH client config naming every node (for `ssh -F`, testinfra's --ssh-config)."""
    return run_root() / "ssh_config"


def replace_file(path: Path, text: str) -> None:
    """Write by rename: ssh processes of other test workers read these files at any moment."""
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(text)
    os.replace(temp, path)


def ssh_config_word(value: str, tokens: str = "") -> str:
    """`value` (then `tokens`, ssh's own `%` tokens) as one word of an ssh_config line: a `%` in
    `value` doubled (ssh expands tokens in file paths), double-quoted when it has a space; a
    value that would end the line or the quotes (and so add directives, a ProxyCommand) is
    refused."""
    if not value or any(char in value for char in '"\\') or not value.isprintable():
        raise ValueError(f"{value!r} cannot be written into ssh_config as one word")
    word = value.replace("%", "%%") + tokens
    return f'"{word}"' if any(char.isspace() for char in word) else word


def ssh_config_host(name: str) -> str:
    """A node name as ssh_config's Host and HostKeyAlias: letters, digits, '.', '_', '-' only
    (a Host pattern reads '*', '?', '!' and ',' as wildcards and lists)."""
    if not name or not all(char.isascii() and (char.isalnum() or char in "._-") for char in name):
        raise ValueError(f"node name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def write_ssh_config() -> None:
    with open(run_root() / ".ssh_config.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # nodes of parallel test workers come and go at once
        entries = []
        for path in sorted(run_root().glob("*/node.json")):
            node = json.loads(path.read_text())
            entries.append(
                f"Host {ssh_config_host(node['name'])}\n"
                f"  HostName 127.0.0.1\n  Port {int(node['port'])}\n  User root\n"
                f"  IdentityFile {ssh_config_word(str(ssh_key()))}\n  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {ssh_config_word(str(known_hosts_file()))}\n  StrictHostKeyChecking yes\n"
                # One TCP+SSH handshake per node for a whole test run: each costs ~2 s under TCG.
                f"  ControlMaster auto\n  ControlPath {ssh_config_word(f'{control_dir()}/', '%C')}\n  ControlPersist 120\n"
                "  LogLevel ERROR\n"
            )
        replace_file(ssh_config_file(), "\n".join(entries))


def _qemu_version(arch: str) -> str:
    return subprocess.run(
        [platform(arch).qemu, "--version"], check=True, capture_output=True, text=True
    ).stdout


def _qemu_command(image: Image, disk: Path, directory: Path, port: int, kernel_args: tuple = ()) -> list[str]:
    # Everything but the disk path, the run directory and the forwarded port must be the same
    # for the saved state and every node resumed from it.
    target = platform(image.arch)
    return [
        target.qemu,
        *target.machine,
        "-accel",
        "tcg,thread=multi",
        "-smp",
        str(CPUS),
        "-m",
        str(MEMORY_MB),
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        " ".join([f"root=/dev/vda rw console={target.console} net.ifnames=0 panic=-1", *kernel_args]),
        "-drive",
        f"file={disk},if=virtio,format=qcow2,cache=unsafe",
        "-netdev",
        f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device",
        "virtio-net-pci,netdev=net0,romfile=",  # no PXE boot ROM needed (or installed)
        "-device",
        "virtio-rng-pci",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{directory / 'console.log'}",
        "-qmp",
        f"unix:{directory / 'qmp.sock'},server=on,wait=off",
        "-pidfile",
        str(directory / "pid"),
        "-no-reboot",
        "-daemonize",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _overlay(backing: Path, backing_format: str, dest: Path) -> None:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", backing_format, str(dest)],
        check=True,
    )


def write_known_hosts(port: int, host_key: str) -> None:
    path = known_hosts_file()
    with open(run_root() / ".known_hosts.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = f"[127.0.0.1]:{port} "
        lines = [
            line
            for line in (path.read_text().splitlines() if path.exists() else [])
            if not line.startswith(marker)
        ]
        lines.append(marker + host_key)
        replace_file(path, "\n".join(lines) + "\n")


def wait_for_ssh(node: Node, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if node.pid is None or not alive(node.pid):
            raise RuntimeError(f"node {node.name}: it exited; console log: {node.directory}/console.log")
        try:
            result = node.ssh("true", check=False, timeout=30)
            if result.returncode == 0:
                return
            last = result.stderr.strip()
        except subprocess.TimeoutExpired:
            last = "ssh timed out"
        time.sleep(1)
    raise TimeoutError(f"node {node.name}: no SSH on 127.0.0.1:{node.port} after {timeout:.0f}s ({last})")


def alive(pid: int) -> bool:
    """Whether `pid` runs. A node process this process started (an nspawn machine) is reaped
    here once it exits, else it would stay a zombie that answers kill(0) for ever; one it did not
    start (qemu daemonizes) runs until its parent has reaped it."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _saved_state(image: Image, kernel_args: tuple = ()) -> Path:
    """Boot the image once and save the running VM (disk overlay + memory), keyed on qemu, the
    image and the kernel's command line (e.g. a cgroup v1 boot is a saved state of its own)."""
    # A saved state only resumes under the same qemu and command line, from the same disk.
    key = digest(
        _qemu_version(image.arch),
        inspect.getsource(_qemu_command),
        repr(platform(image.arch)),
        f"{MEMORY_MB} {CPUS}",
        str(image.directory),
        *kernel_args,
    )
    # <image>[+<variant>]-<key>: a variant's states are kept apart from the plain boot's.
    variant = image.directory.name + ("+" + digest(*kernel_args)[:8] if kernel_args else "")
    snapshot = cache_root() / "snapshots" / f"{variant}-{key}"
    snapshot.parent.mkdir(exist_ok=True)
    with open(snapshot.parent / f".{snapshot.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (snapshot / "ready").exists():
            return snapshot
        shutil.rmtree(snapshot, ignore_errors=True)
        snapshot.mkdir()
        port = free_port()
        _overlay(image.disk, "raw", snapshot / "disk.qcow2")
        write_known_hosts(port, image.host_key)
        # qemu's pid, console and QMP socket live in a short directory of their own: a socket
        # path under the cache can pass the 107 bytes AF_UNIX allows.
        boot = Path(tempfile.mkdtemp(prefix="containerd-deploy-boot-"))
        node = Node("snapshot", port, str(boot), image.host_key, image.suite, image.arch)
        subprocess.run(_qemu_command(image, snapshot / "disk.qcow2", boot, port, kernel_args), check=True)
        try:
            wait_for_ssh(node, BOOT_TIMEOUT)
            node.ssh("sync")
            with QMP(boot / "qmp.sock") as qmp:
                qmp.command("stop")
                qmp.command("migrate", uri=f"exec:cat > {snapshot / 'state.part'}")
                while qmp.command("query-migrate").get("status") not in ("completed", "failed"):
                    time.sleep(0.2)
                if qmp.command("query-migrate")["status"] != "completed":
                    raise RuntimeError("saving the VM state failed")
                qmp.command("quit")
        finally:
            kill(node)
            if (boot / "console.log").exists():  # kept for a boot that failed
                shutil.copy(boot / "console.log", snapshot / "console.log")
            shutil.rmtree(boot, ignore_errors=True)
        (snapshot / "state.part").rename(snapshot / "state")
        (snapshot / "ready").write_text("")
        # Saved states of images that are gone, or of this variant under an older qemu or harness.
        for stale in snapshot.parent.iterdir():
            stale_variant = stale.name.rsplit("-", 1)[0]
            if (
                stale.is_dir()
                and stale != snapshot
                and (
                    stale_variant == variant
                    or not (image.directory.parent / stale_variant.split("+", 1)[0]).exists()
                )
            ):
                shutil.rmtree(stale, ignore_errors=True)
    return snapshot


def kill(node: Node, timeout: float = 20) -> None:
    pid = node.pid
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while alive(pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        time.sleep(0.2)
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
    (Path(node.directory) / "pid").unlink(missing_ok=True)


def node_dir(name: str) -> Path:
    return run_root() / name


def start(name: str, image: Image, port: int | None = None, kernel_args: tuple = ()) -> Node:
    """A fresh node resumed from the image's saved state (made on first use), booted with
    `kernel_args` added to the kernel's command line."""
    ssh_config_host(name)  # refused before anything is made for it
    stop(name)
    snapshot = _saved_state(image, kernel_args)
    directory = node_dir(name)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    port = port or free_port()
    node = Node(name, port, str(directory), image.host_key, image.suite, image.arch)
    _overlay(snapshot / "disk.qcow2", "qcow2", directory / "disk.qcow2")
    write_known_hosts(port, image.host_key)
    command = _qemu_command(image, directory / "disk.qcow2", directory, port, kernel_args)
    command += ["-incoming", f"exec:cat {snapshot / 'state'}"]
    subprocess.run(command, check=True)
    replace_file(directory / "node.json", json.dumps(asdict(node)))
    write_ssh_config()
    try:
        with QMP(directory / "qmp.sock") as qmp:
            while qmp.command("query-status")["status"] == "inmigrate":
                time.sleep(0.1)
            deadline = time.monotonic() + 120
            while qmp.command("query-migrate").get("status") not in ("completed", None):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {name}: loading the saved state did not finish")
                time.sleep(0.1)
            qmp.command("cont")
        wait_for_ssh(node, RESUME_TIMEOUT)
        # The guest's clock stopped when the state was saved.
        node.ssh(f"date -u -s @{int(time.time())} >/dev/null && hwclock -w 2>/dev/null; true")
    except BaseException:
        kill(node)
        raise
    return node


def load(name: str) -> Node | None:
    path = node_dir(name) / "node.json"
    if not path.exists():
        return None
    return _node(json.loads(path.read_text()))


def _node(fields: dict) -> Node:
    if fields.get("kind") == "nspawn":  # how a machine's node.json said it before the two kinds
        fields["kind"] = MACHINE
    return Node(**fields)


def known() -> list[str]:
    """Every node this checkout has a directory for, running or not."""
    return sorted(path.parent.name for path in run_root().glob("*/node.json"))


def stop(name: str) -> None:
    node = load(name)
    if node is not None and node.kind == MACHINE:
        from . import nspawn

        nspawn.stop(node)
    elif node is not None:
        kill(node)
    shutil.rmtree(node_dir(name), ignore_errors=True)
    write_ssh_config()


def running() -> list[Node]:
    nodes = []
    for path in sorted(run_root().glob("*/node.json")):
        node = _node(json.loads(path.read_text()))
        if node.pid and alive(node.pid):
            nodes.append(node)
    return nodes

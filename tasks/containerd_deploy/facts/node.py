"""The node's facts. One combined fact, `ContainerdNode`: everything the deploy needs to know
about a node, in one SSH round trip (what it knows of it: `NodeState`); and the small facts an
operation asks on its own when the deploy gives it no state.

pyinfra keeps no fact cache and every `host.get_fact` is a command on the node, so instead of
a dozen small facts the deploy asks once, at the start, for: the architecture and init system,
what earlier runs installed (their manifests) and whether those files are still intact, the
unit file's and config file's current contents, the service's state, and what the running
daemon reports.
"""

import base64
import shlex
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from containerd_deploy.remote.lock import LockState, lock_state_lines, parse_lock_state
from containerd_deploy.remote.manifest import SUFFIX as MANIFEST_SUFFIX
from containerd_deploy.remote.manifest import Manifest, read_manifest
from containerd_deploy.remote.node_state import (
    SECTION,
    USER_HZ,
    manifest_state_lines,
    missing_binaries_lines,
    node_state_command,
    stat_lines,
)
from containerd_deploy.remote.paths import ancestors
from containerd_deploy.remote.shell import reader_lines, untrusted_lines


@dataclass(frozen=True)
class DistroPackage:
    """A package of the node's own package manager that installed a containerd binary."""

    manager: str  # "dpkg" or "rpm"
    name: str
    version: str
    path: str


@dataclass(frozen=True)
class AppArmor:
    """What containerd reads to decide, once per process (at the first container it creates),
    whether it confines a kubelet's containers with AppArmor (remote/node_state.py's
    `apparmor_lines`)."""

    enabled: bool = False  # the kernel's AppArmor is on (its switch is Y, its securityfs is there)
    parser_changed: float | None = None  # when apparmor_parser was installed (ctime; None: absent)
    daemon_container: str = ""  # the daemon's `container` variable: under one, containerd uses none


@dataclass
class NodeState:
    machine: str = ""
    kernel: str = ""  # uname -s
    systemd: bool = False
    manifests: dict = field(default_factory=dict)  # component -> Manifest
    unit_sha256: str | None = None
    config_text: str | None = None
    service: dict = field(default_factory=dict)  # systemctl show properties
    ctr_client: str | None = None
    ctr_server: str | None = None
    ctr_not_asked: bool = False  # MainPID is the daemon the controller last checked in full
    default_config: str | None = None
    files: dict = field(default_factory=dict)  # path -> sha256 of the other files the deploy manages
    managed_hosts: list = field(default_factory=list)  # hosts.toml files this deploy wrote
    exe: str = ""  # the running daemon's binary ("… (deleted)" once replaced on disk)
    lock: LockState = LockState("unavailable")  # the run lock (remote/lock.py)
    started: float | None = None  # epoch seconds the running daemon started
    mtimes: dict = field(
        default_factory=dict
    )  # path -> epoch mtime of each file looked at (those it loads among them)
    kubelet_config: str | None = None  # /var/lib/kubelet/config.yaml, if a kubelet is set up
    apparmor: AppArmor = AppArmor()  # what the daemon decides AppArmor by
    distro_packages: list = field(default_factory=list)  # DistroPackage of each packaged containerd binary
    staging_leftovers: list = field(default_factory=list)  # what runs cut short left in the staging dir
    hidden_leftovers: list = field(
        default_factory=list
    )  # hidden new files/dirs runs cut short left beside final paths
    missing_binaries: list = field(
        default_factory=list
    )  # of those asked for: runtime handlers' binaries not on the node
    # (path, why) of each directory the deploy keeps things in, or one above it, another user
    # could change (remote/shell.py untrusted): the run is refused before any change.
    untrusted_directories: list = field(default_factory=list)
    rolled_back: str = ""  # "<attempt> <when>" the last rollback undid (remote/rollback.py)
    kept_release: str = ""  # the version of a release kept to roll back to (remote/rollback.py)
    # path -> identity (FILE_IDENTITY_FORMAT) of each regular file looked at.
    identities: dict = field(default_factory=dict)
    # Files not read because they are as the controller last read them (their contents, config
    # text or digest, come from what it keeps: controller/read_files.py).
    unread: list = field(default_factory=list)
    boot: str = ""  # the node's boot id (/proc/sys/kernel/random/boot_id)
    images: frozenset = frozenset()  # names of the CRI namespace's images (when asked: `images`)

    @property
    def main_pid(self) -> int:
        try:
            return int(self.service.get("MainPID", "0"))
        except ValueError:
            return 0

    @property
    def active(self) -> bool:
        return self.service.get("ActiveState") == "active"

    @property
    def need_daemon_reload(self) -> bool:
        return self.service.get("NeedDaemonReload") == "yes"

    @property
    def enabled(self) -> bool:
        return self.service.get("UnitFileState") == "enabled"


def process_start(body: list[str]) -> float | None:
    """Epoch seconds a process started, from its /proc/PID/stat line and the boot time."""
    fields = dict(line.strip().partition(" ")[::2] for line in body if line.strip())
    try:
        # Field 22 is the start in clock ticks after boot, counted after the command name
        # (in parentheses, which may hold spaces and parentheses itself).
        ticks = int(fields["stat"].rpartition(") ")[2].split()[19])
        return round(int(fields["btime"]) + ticks / USER_HZ, 2)
    except (KeyError, IndexError, ValueError):
        return None


def parse_process_section(name: str, body: list[str], state) -> None:
    """Fill `exe`, `started` and `mtimes` of a NodeState or DaemonState from their sections."""
    if name == "exe":
        state.exe = "".join(body).strip()
    elif name == "started":
        state.started = process_start(body)
    elif name == "mtimes":
        for line in body:
            mtime, _, path = line.strip().partition(" ")
            if path and mtime.isdigit():
                state.mtimes[path] = int(mtime)


def newer_than_daemon(started: float | None, mtimes: dict, paths: tuple) -> list[str]:
    """Which of `paths` changed after the daemon started (so it runs without them)."""
    if not started:
        return []
    # /proc's boot time is whole seconds: allow that much (and a little) of clock slack.
    return [path for path in paths if mtimes.get(path, 0) > started + 1.5]


def decode_lines(lines: list[str]) -> str | None:
    joined = "".join(line.strip() for line in lines)
    return base64.b64decode(joined).decode(errors="replace") if joined else None


def parse_ctr_version(lines: list[str]) -> tuple[str | None, str | None]:
    """(client, server) versions from `ctr version` output; server is None if it did not answer."""
    versions: dict[str, str] = {}
    section = None
    for line in lines:
        stripped = line.strip()
        if stripped in ("Client:", "Server:"):
            section = stripped[:-1].lower()
        elif section and stripped.startswith("Version:"):
            versions.setdefault(section, stripped.split(":", 1)[1].strip())
    return versions.get("client"), versions.get("server")


def _sha256sums(lines: list[str]) -> dict[str, str]:
    """path -> digest from `sha256sum` output lines."""
    digests = {}
    for line in lines:
        digest, _, path = line.strip().partition("  ")
        if path:
            digests[path] = digest
    return digests


def parse_apparmor(body: list[str]) -> AppArmor:
    values = dict(line.strip().partition(" ")[::2] for line in body if line.strip())
    changed = values.get("parser")
    return AppArmor(
        enabled=values.get("enabled") == "Y",
        parser_changed=float(changed) if changed is not None and changed.isdigit() else None,
        daemon_container=values.get("container", ""),
    )


def split_sections(lines: list[str]) -> list[tuple[str, list[str]]]:
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith(SECTION):
            sections.append((line[len(SECTION) :].strip(), []))
        elif sections:
            sections[-1][1].append(line)
    return sections


def _lines(body: list[str]) -> list[str]:
    return [line.strip() for line in body if line.strip()]


def _manifest_of(state: NodeState, argument: str) -> "Manifest":
    return state.manifests.setdefault(argument.removesuffix(MANIFEST_SUFFIX), Manifest())


def _service(state: NodeState, body: list[str]) -> None:
    for line in body:
        key, _, value = line.strip().partition("=")
        if key:
            state.service[key] = value


def _packages(state: NodeState, body: list[str]) -> None:
    for line in body:
        fields = line.split()
        if len(fields) == 4 and fields[0] in ("dpkg", "rpm"):
            state.distro_packages.append(DistroPackage(*fields))


def _ctr(state: NodeState, body: list[str]) -> None:
    state.ctr_client, state.ctr_server = parse_ctr_version(body)


# The sections that set one field of the state: section -> (field, its value from the header's
# argument and the body).
FIELDS: dict[str, tuple[str, Callable[[str, list[str]], object]]] = {
    "machine": ("machine", lambda argument, body: argument),
    "kernel": ("kernel", lambda argument, body: argument),
    "systemd": ("systemd", lambda argument, body: True),
    "ctr_not_asked": ("ctr_not_asked", lambda argument, body: True),
    "unit": ("unit_sha256", lambda argument, body: next(iter(_sha256sums(body).values()), None)),
    "config": ("config_text", lambda argument, body: decode_lines(body)),
    "default": ("default_config", lambda argument, body: decode_lines(body)),
    "managed": ("managed_hosts", lambda argument, body: _lines(body)),
    "lock": ("lock", lambda argument, body: parse_lock_state(" ".join(_lines(body)))),
    "kubelet": ("kubelet_config", lambda argument, body: decode_lines(body)),
    "apparmor": ("apparmor", lambda argument, body: parse_apparmor(body)),
    "staging": ("staging_leftovers", lambda argument, body: _lines(body)),
    "hidden": ("hidden_leftovers", lambda argument, body: [line for line in body if line]),
    "untrusted": (
        "untrusted_directories",
        lambda argument, body: [tuple(line.split("\t", 1)) for line in body if "\t" in line],
    ),
    "missing": ("missing_binaries", lambda argument, body: [line for line in body if line]),
    "kept": ("kept_release", lambda argument, body: "".join(line.strip() for line in body)),
    "rolled_back": ("rolled_back", lambda argument, body: "".join(line.strip() for line in body)),
    "unread": ("unread", lambda argument, body: [line for line in body if line]),
    "boot": ("boot", lambda argument, body: argument.strip()),
    "images": ("images", lambda argument, body: frozenset(_lines(body))),
}
# The others: section -> what it fills in, given (state, the header's argument, the body).
READERS: dict[str, Callable[[NodeState, str, list[str]], None]] = {
    "manifest": lambda state, argument, body: read_manifest(body, _manifest_of(state, argument)),
    "actual": lambda state, argument, body: _manifest_of(state, argument).actual.update(_sha256sums(body)),
    "service": lambda state, argument, body: _service(state, body),
    "exe": lambda state, argument, body: parse_process_section("exe", body, state),
    "started": lambda state, argument, body: parse_process_section("started", body, state),
    "mtimes": lambda state, argument, body: parse_process_section("mtimes", body, state),
    "ctr": lambda state, argument, body: _ctr(state, body),
    "files": lambda state, argument, body: state.files.update(_sha256sums(body)),
    "packages": lambda state, argument, body: _packages(state, body),
}


@dataclass(frozen=True)
class FileStat:
    """What STAT_FORMAT (remote/shell.py) says of one path."""

    identity: str  # FILE_IDENTITY_FORMAT
    mtime: int
    regular: bool  # a regular file (not a link, a directory, …)


def parse_stat_lines(body: list[str]) -> dict[str, FileStat]:
    """path -> FileStat from STAT_FORMAT lines: owner, mode (hex), mtime, identity, then the
    name, which may hold spaces."""
    found = {}
    for line in body:
        fields = line.split(" ", 4)
        if len(fields) == 5 and fields[2].removeprefix("-").isdigit() and fields[4]:
            try:
                regular = stat.S_ISREG(int(fields[1], 16))
            except ValueError:
                continue
            found[fields[4]] = FileStat(
                fields[3], int(fields[2]), regular
            )  # (an mtime before 1970 is negative)
    return found


def parse_node_state(lines: list[str]) -> NodeState:
    state = NodeState()
    stats: dict[str, FileStat] = {}
    for header, body in split_sections(lines):
        name, _, argument = header.partition(" ")
        if name in FIELDS:
            field_name, value_of = FIELDS[name]
            setattr(state, field_name, value_of(argument, body))
        elif name in READERS:
            READERS[name](state, argument, body)
        elif name == "stat":
            stats.update(parse_stat_lines(body))
    with_stats(state, stats)
    return state


def with_stats(state: NodeState, stats: dict[str, FileStat]) -> None:
    """What one stat of everything said, given to what asked: each manifest's files' identities
    now, the mtimes of the files the daemon loads (``loaded``: whatever the fact looked at), the
    identities of the regular files."""
    for manifest in state.manifests.values():
        manifest.actual.update({path: stats[path].identity for path in manifest.files if path in stats})
    state.mtimes.update({path: found.mtime for path, found in stats.items()})
    state.identities.update({path: found.identity for path, found in stats.items() if found.regular})


class ContainerdNode(FactBase):
    """
    Returns a ``NodeState``: arch, init system, installed artifacts and their integrity, the
    unit and config files, the service state and the running daemon's version.
    """

    @staticmethod
    def default():
        return NodeState()

    def command(
        self,
        bin_dir,
        config_path,
        unit_path,
        state_dir,
        files=(),
        certs_dir="",
        marker="",
        always_defaults=False,
        loaded=(),
        staging_dir="",
        install_dirs=(),
        anchor_pid=0,
        handler_binaries=(),
        trusted_dirs=(),
        known_pid=0,
        known_files=(),
        known_boot="",
        images=False,
    ):
        return node_state_command(
            bin_dir,
            config_path,
            unit_path,
            state_dir,
            files,
            certs_dir,
            marker,
            always_defaults,
            tuple(loaded),
            staging_dir,
            tuple(install_dirs),
            anchor_pid,
            tuple(handler_binaries),
            tuple(trusted_dirs),
            int(known_pid),
            tuple(known_files),
            known_boot,
            bool(images),
        )

    def process(self, output):
        return parse_node_state(output)


class ContainerdDefaultConfig(FactBase):
    """
    Returns the text of ``containerd config default`` from the installed binary (None if absent).
    """

    def command(self, bin_dir):
        containerd = shlex.quote(f"{bin_dir}/containerd")
        return f"{containerd} config default | base64 -w0; echo"

    def process(self, output):
        return decode_lines(output)


class ReleaseManifests(FactBase):
    """
    Returns the manifests of what this deploy installed (component -> ``Manifest``: version,
    sha256, each file with its recorded and its current identity), for operations called
    on their own; the deploy reads them with ``ContainerdNode``.
    """

    @staticmethod
    def default():
        return {}

    def command(self, state_dir):
        return "\n".join([*reader_lines(), "set --", *manifest_state_lines(state_dir), *stat_lines()])

    def process(self, output):
        return parse_node_state(list(output)).manifests


class UnitState(FactBase):
    """
    Returns ``(active, enabled)`` of one systemd unit, read the way the ``ContainerdNode`` fact
    reads them (``ActiveState`` is ``active``, ``UnitFileState`` is ``enabled``), in one call.
    """

    @staticmethod
    def default():
        return (False, False)

    def command(self, unit):
        return f"systemctl show -p ActiveState -p UnitFileState -- {shlex.quote(unit)} 2>/dev/null || true"

    def process(self, output):
        properties = dict(line.strip().partition("=")[::2] for line in output if "=" in line)
        state = NodeState(service=properties)
        return (state.active, state.enabled)


class MissingBinaries(FactBase):
    """
    Returns which of ``binaries`` (paths, or names looked up as containerd does: ``bin_dir``, then
    the service's PATH) the node does not have, the way the ``ContainerdNode`` fact asks.
    """

    @staticmethod
    def default():
        return []

    def command(self, bin_dir, binaries):
        return "\n".join(["true", *missing_binaries_lines(bin_dir, tuple(binaries))])

    def process(self, output):
        return [line for line in output if line]


@dataclass(frozen=True)
class DataDirectory:
    """What `purged` needs to know of a directory it would delete (``DataDirectories``)."""

    path: str
    entries: tuple | None  # the names in it (None: there is no such directory)
    untrusted: tuple = ()  # (path, why) of it or a directory above it another user could change


class DataDirectories(FactBase):
    """
    Returns, for each of ``paths``, a ``DataDirectory``: the names in it (NUL-separated on the
    node, so any name is read whole) and each directory on its path another user could change.
    """

    @staticmethod
    def default():
        return {}

    def command(self, paths):
        q = shlex.quote
        lines = [*untrusted_lines()]
        for path in paths:  # (plain paths: no line break)
            lines += [
                f"echo {q(SECTION + 'entries ' + path)}",
                f"if [ -d {q(path)} ] && [ ! -L {q(path)} ]; then "
                f"find {q(path)} -mindepth 1 -maxdepth 1 -printf '%f\\0' | base64 -w0; echo; echo .; fi",
                f"echo {q(SECTION + 'untrusted ' + path)}",
                f"untrusted {' '.join(q(directory) for directory in ancestors(path))}",
            ]
        return "\n".join([*lines, "exit 0"])

    def process(self, output):
        found: dict = {}
        for header, body in split_sections(list(output)):
            name, _, path = header.partition(" ")
            found.setdefault(path, {"entries": None, "untrusted": ()})
            if name == "entries" and body:
                names = base64.b64decode("".join(body[:-1]).strip()).split(b"\0")
                found[path]["entries"] = tuple(entry.decode(errors="replace") for entry in names if entry)
            elif name == "untrusted":
                found[path]["untrusted"] = tuple(tuple(line.split("\t", 1)) for line in body if "\t" in line)
        return {path: DataDirectory(path, **fields) for path, fields in found.items()}


class RunLock(FactBase):
    """
    Returns the node's run lock as this run sees it, taking nothing (a ``LockState``); for the
    lock operation called on its own (the deploy reads it with ``ContainerdNode``).
    """

    @staticmethod
    def default():
        return LockState("unavailable")

    def command(self, anchor_pid=0):
        return "\n".join(lock_state_lines(anchor_pid))

    def process(self, output):
        return parse_lock_state(" ".join(line.strip() for line in output if line.strip()))

"""One combined fact: everything the deploy needs to know about a node, in one SSH round trip.

pyinfra keeps no fact cache and every `host.get_fact` is a command on the node, so instead of
a dozen small facts the deploy asks once, at the start, for: the architecture and init system,
what earlier runs installed (their manifests) and whether those files are still intact, the
unit file's and config file's current contents, the service's state, and what the running
daemon reports.
"""

import base64
import posixpath
import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from .lock import LockState, lock_state_lines, parse_lock_state

# Marks the start of each section of the fact's output (a line that no section's content has).
SECTION = "##containerd-deploy:"
# A file's identity (inode, size, ctime to the nanosecond): any write, chmod or rename over
# the path changes it, and userspace cannot set a ctime back. Recorded in a manifest when a
# file is installed, it proves the file untouched without hashing ~90 MB of binaries per run.
FILE_IDENTITY_FORMAT = "%i:%s:%.9Z"


@dataclass
class Manifest:
    """What one install of a release artifact put on the node (written last, by that install)."""

    fields: dict = field(default_factory=dict)  # component, version, sha256, url
    files: dict = field(
        default_factory=dict
    )  # path -> identity (FILE_IDENTITY_FORMAT) recorded at install time
    actual: dict = field(default_factory=dict)  # path -> identity now (missing files absent)

    def intact(self) -> bool:
        return bool(self.files) and all(
            self.actual.get(path) == digest for path, digest in self.files.items()
        )


@dataclass(frozen=True)
class DistroPackage:
    """A package of the node's own package manager that installed a containerd binary."""

    manager: str  # "dpkg" or "rpm"
    name: str
    version: str
    path: str


# Where distribution packages (Debian/Ubuntu containerd, docker.io's, Docker's containerd.io,
# Fedora/RHEL's) put containerd: a second containerd beside this deploy's, which package
# upgrades restart under the same unit name.
DISTRO_BINARIES = ("/usr/bin/containerd", "/usr/sbin/containerd")
KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"


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
    default_config: str | None = None
    files: dict = field(default_factory=dict)  # path -> sha256 of the other files the deploy manages
    managed_hosts: list = field(default_factory=list)  # hosts.toml files this deploy wrote
    exe: str = ""  # the running daemon's binary ("… (deleted)" once replaced on disk)
    lock: LockState = LockState("unavailable")  # the run lock (tasks/lock.py)
    started: float | None = None  # epoch seconds the running daemon started
    mtimes: dict = field(default_factory=dict)  # path -> epoch mtime of the files it loads at start
    kubelet_config: str | None = None  # /var/lib/kubelet/config.yaml, if a kubelet is set up
    distro_packages: list = field(default_factory=list)  # DistroPackage of each packaged containerd binary
    staging_leftovers: list = field(default_factory=list)  # what runs cut short left in the staging dir
    hidden_leftovers: list = field(
        default_factory=list
    )  # hidden new files/dirs runs cut short left beside final paths
    missing_binaries: list = field(
        default_factory=list
    )  # of those asked for: runtime handlers' binaries not on the node
    kept_release: str = ""  # the version of a release kept to roll back to (tasks/rollback.py)

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


# Clock ticks per second in /proc/PID/stat: USER_HZ, fixed at 100 in the kernel's ABI on the
# arches this deploy serves (amd64, arm64).
USER_HZ = 100


def service_lines(unit_expr: str, properties: str) -> list[str]:
    """Shell lines printing `systemctl show` properties of a unit (MainPID among them) and
    setting $pid to its main process, with one systemctl call (each costs on a small node)."""
    return [
        f"props=$(systemctl show {unit_expr} {properties} 2>/dev/null)",
        'echo "$props"',
        "pid=${props#*MainPID=}",
        "pid=${pid%%[!0-9]*}",
    ]


def daemon_process_lines(loaded_files: tuple) -> list[str]:
    """Shell lines printing the daemon's binary and start (for $pid, from `service_lines`), and
    the mtimes of the files it loads at start: a file newer than the daemon was never loaded.
    Shell builtins where they do (every command started costs on a small node); the start
    time is worked out by the controller."""
    q = shlex.quote
    return [
        'if [ "${pid:-0}" -gt 0 ] 2>/dev/null; then',
        f'  echo "{SECTION}exe"',
        '  readlink "/proc/$pid/exe"',
        f'  echo "{SECTION}started"',
        '  read -r stat < "/proc/$pid/stat" && echo "stat $stat"',
        '  while read -r key value; do [ "$key" != btime ] || echo "btime $value"; done < /proc/stat',
        "fi",
        f'echo "{SECTION}mtimes"',
        "set --",
        *[f'[ ! -e {q(path)} ] || set -- "$@" {q(path)}' for path in loaded_files],
        "[ $# -eq 0 ] || stat -c '%Y %n' \"$@\"",
    ]


def process_start(body: list[str]) -> float | None:
    """Epoch seconds a process started, from its /proc/PID/stat line and the boot time (or a
    number, as older runs printed it)."""
    fields = dict(line.strip().partition(" ")[::2] for line in body if line.strip())
    try:
        if "stat" in fields:
            # Field 22 is the start in clock ticks after boot, counted after the command name
            # (in parentheses, which may hold spaces and parentheses itself).
            ticks = int(fields["stat"].rpartition(") ")[2].split()[19])
            return round(int(fields["btime"]) + ticks / USER_HZ, 2)
        return float("".join(body).strip())
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


def kubelet_config_lines() -> list[str]:
    """Shell lines printing the `kubelet` section: a kubelet's config, base64 (none: no kubelet)."""
    q = shlex.quote
    return [
        f'echo "{SECTION}kubelet"',
        f"[ -f {q(KUBELET_CONFIG)} ] && base64 -w0 {q(KUBELET_CONFIG)} && echo",
    ]


def newer_than_daemon(started: float | None, mtimes: dict, paths: tuple) -> list[str]:
    """Which of `paths` changed after the daemon started (so it runs without them)."""
    if not started:
        return []
    # /proc's boot time is whole seconds: allow that much (and a little) of clock slack.
    return [path for path in paths if mtimes.get(path, 0) > started + 1.5]


def staging_leftovers_lines(staging_dir: str, action: str = "echo") -> list[str]:
    """Shell lines running `action` on each thing a run cut short can leave in the staging
    directory: fetched files, partial downloads, per-install work directories (mktemp's
    <component>.XXXXXX). Only those names: the directory may be shared with other files."""
    q = shlex.quote
    from .artifacts import COMPONENTS

    globs = [".fetched-*", "*.partial", *(f"{component}.??????" for component in COMPONENTS)]
    return [
        f"for leftover in {' '.join(q(staging_dir) + '/' + glob for glob in globs)}; do",
        f'  if [ -e "$leftover" ]; then {action} "$leftover"; fi',
        "done",
    ]


# What a run cut short can leave beside the paths it writes: the hidden copy of a file about to
# be renamed over its path (`.<name>.containerd-deploy-new`), a manifest's, the hidden directory
# of a release being installed (`.containerd-deploy-new.<pid>`), and the private directory an
# upload through sudo goes through.
NEW_SUFFIX = ".containerd-deploy-new"
KEPT_DIR_NAME = "previous-release"  # in the state dir: the release a rollback puts back (tasks/rollback.py)
HIDDEN_DIR_PREFIX = ".containerd-deploy-new."
UPLOAD_DIR_PREFIX = "/tmp/containerd-deploy-upload."


def hidden_copy(path: str) -> str:
    """The hidden file written beside `path` and renamed over it."""
    directory, _, name = path.rpartition("/")
    return f"{directory}/.{name}{NEW_SUFFIX}"


def hidden_leftovers_lines(files: tuple, directories: tuple, globs: tuple) -> list[str]:
    """Shell lines printing each hidden leftover that exists: the hidden copy of each of
    `files`, a release's hidden directory in each of `directories`, and `globs` (already
    quoted shell patterns)."""
    q = shlex.quote
    candidates = [q(hidden_copy(path)) for path in files]
    candidates += [q(directory.rstrip("/") + "/" + HIDDEN_DIR_PREFIX) + "*" for directory in directories]
    candidates += list(globs)
    return (
        [
            f"for leftover in {' '.join(candidates)}; do",
            '  if [ -e "$leftover" ] || [ -L "$leftover" ]; then printf "%s\\n" "$leftover"; fi',
            "done",
        ]
        if candidates
        else []
    )


def distro_package_lines() -> list[str]:
    """Shell lines printing "<manager> <package> <version> <path>" for each containerd binary
    that the node's package manager owns (an unowned one is an operator's, and not reported)."""
    return [
        f"for path in {' '.join(DISTRO_BINARIES)}; do",
        '  [ -e "$path" ] || continue',
        '  if command -v dpkg-query >/dev/null 2>&1 && owner=$(dpkg-query -S "$path" 2>/dev/null); then',
        "    package=${owner%%:*}",
        '    echo "dpkg $package $(dpkg-query -W -f=\'${Version}\' "$package" 2>/dev/null) $path"',
        "  elif command -v rpm >/dev/null 2>&1 && owner=$(rpm -qf --qf '%{NAME} %{VERSION}-%{RELEASE}' \"$path\" 2>/dev/null); then",
        '    echo "rpm $owner $path"',
        "  fi",
        "done",
    ]


def manifest_lines(state_dir: str) -> list[str]:
    """Shell lines printing each manifest in `state_dir` and the identity each file it lists
    has now (sections `manifest <name>` and `actual <name>`)."""
    q = shlex.quote
    return [
        f"for m in {q(state_dir)}/*.manifest; do",
        '  [ -f "$m" ] || continue',
        f'  echo "{SECTION}manifest ${{m##*/}}"',
        '  cat "$m"',
        f'  echo "{SECTION}actual ${{m##*/}}"',
        # One stat for all of a manifest's files (each command started costs on a small node).
        "  set --",
        # `file <path> <identity>`: the path (spaces and all) runs to the last space.
        "  while IFS= read -r line; do",
        '    case "$line" in "file "*) ;; *) continue;; esac',
        "    rest=${line#file }",
        "    path=${rest% *}",
        "    recorded=${rest##* }",
        '    [ -f "$path" ] || continue',
        # A manifest written before identities were recorded holds digests: hash those files.
        '    case "$recorded" in *:*) set -- "$@" "$path";; *) sha256sum "$path";; esac',
        '  done < "$m"',
        f"  [ $# -eq 0 ] || stat -c '{FILE_IDENTITY_FORMAT}  %n' \"$@\"",
        "done",
    ]


# The PATH systemd gives containerd (the unit sets none); containerd's own directory goes first.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing_binaries_lines(bin_dir: str, binaries: tuple) -> list[str]:
    """Shell lines printing each of `binaries` (paths, or names looked up as containerd does)
    that the node does not have."""
    q = shlex.quote
    if not binaries:
        return []
    return [
        f"for binary in {' '.join(q(binary) for binary in binaries)}; do",
        '  case "$binary" in',
        '    /*) [ -x "$binary" ] || printf "%s\\n" "$binary";;',
        f'    *) PATH={q(bin_dir + ":" + SERVICE_PATH)} command -v -- "$binary" >/dev/null 2>&1 || printf "%s\\n" "$binary";;',
        "  esac",
        "done",
    ]


def node_state_command(
    bin_dir: str,
    config_path: str,
    unit_path: str,
    state_dir: str,
    files: tuple = (),
    certs_dir: str = "",
    marker: str = "",
    always_defaults: bool = False,
    loaded: tuple = (),
    staging_dir: str = "",
    install_dirs: tuple = (),
    anchor_pid: int = 0,
    handler_binaries: tuple = (),
) -> str:
    q = shlex.quote
    ctr, containerd = q(f"{bin_dir}/ctr"), q(f"{bin_dir}/containerd")
    # Defaults come from the installed binary: needed when there is no config file to start
    # from, or always when the operator chose to start from defaults.
    defaults_when = "true" if always_defaults else f"[ ! -f {q(config_path)} ]"
    return "\n".join(
        [
            f'echo "{SECTION}lock"',
            *lock_state_lines(anchor_pid),
            "# shellcheck disable=SC2046 # split on purpose: kernel name, machine",
            "set -- $(uname -sm)",
            f'echo "{SECTION}machine $2"',
            f'echo "{SECTION}kernel $1"',
            f'if [ -d /run/systemd/system ]; then echo "{SECTION}systemd"; fi',
            f'echo "{SECTION}missing"',
            *missing_binaries_lines(bin_dir, handler_binaries),
            *manifest_lines(state_dir),
            f'echo "{SECTION}unit"',
            f"[ -f {q(unit_path)} ] && sha256sum {q(unit_path)}",
            f'echo "{SECTION}config"',
            # base64 keeps the file's exact bytes (blank lines, no trailing newline) through the
            # line-based fact output.
            f"[ -f {q(config_path)} ] && base64 -w0 {q(config_path)} && echo",
            f'echo "{SECTION}service"',
            # The unit the operations install and start: named by containerd_unit_path.
            *service_lines(
                q(posixpath.basename(unit_path)),
                "-p ActiveState -p UnitFileState -p MainPID -p NeedDaemonReload",
            ),
            *daemon_process_lines(loaded),
            f'echo "{SECTION}ctr"',
            f"[ -x {ctr} ] && [ -S /run/containerd/containerd.sock ] && timeout 10 {ctr} version 2>&1",
            f'echo "{SECTION}default"',
            f"{defaults_when} && [ -x {containerd} ] && {containerd} config default 2>/dev/null | base64 -w0 && echo",
            f'echo "{SECTION}files"',
            *[f"[ -f {q(path)} ] && sha256sum {q(path)}" for path in files],
            f'echo "{SECTION}managed"',
            (
                f"[ -d {q(certs_dir)} ] && grep -l -s -F -- {q(marker)} {q(certs_dir)}/*/hosts.toml"
                if certs_dir
                else ":"
            ),
            *kubelet_config_lines(),
            f'echo "{SECTION}packages"',
            *distro_package_lines(),
            f'echo "{SECTION}staging"',
            *(staging_leftovers_lines(staging_dir) if staging_dir else []),
            # An emptied staging directory a run was stopped before removing (rmdir: only if empty).
            *(
                [f'[ -d {q(staging_dir)} ] && [ -z "$(ls -A {q(staging_dir)})" ] && echo {q(staging_dir)}']
                if staging_dir
                else []
            ),
            f'echo "{SECTION}kept"',
            f"cat {q(state_dir + '/' + KEPT_DIR_NAME + '/version')} 2>/dev/null",
            f'echo "{SECTION}hidden"',
            *hidden_leftovers_lines(
                (config_path, unit_path, *files),
                (bin_dir, *install_dirs),
                (
                    f"{q(state_dir)}/*.manifest{NEW_SUFFIX}",
                    f"{q(state_dir)}/{KEPT_DIR_NAME}{NEW_SUFFIX}",
                    q(UPLOAD_DIR_PREFIX) + "*",
                    *([f"{q(certs_dir)}/*/{q('.hosts.toml' + NEW_SUFFIX)}"] if certs_dir else []),
                ),
            ),
            "exit 0",
        ]
    )


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


def split_sections(lines: list[str]) -> list[tuple[str, list[str]]]:
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith(SECTION):
            sections.append((line[len(SECTION) :].strip(), []))
        elif sections:
            sections[-1][1].append(line)
    return sections


def parse_node_state(lines: list[str]) -> NodeState:
    state = NodeState()
    for header, body in split_sections(lines):
        name, _, argument = header.partition(" ")
        if name == "machine":
            state.machine = argument
        elif name == "kernel":
            state.kernel = argument
        elif name == "systemd":
            state.systemd = True
        elif name == "manifest":
            manifest = state.manifests.setdefault(argument.removesuffix(".manifest"), Manifest())
            for line in body:
                key, _, value = line.strip().partition(" ")
                if key == "file":
                    path, _, digest = value.rpartition(" ")
                    manifest.files[path] = digest
                elif key:
                    manifest.fields[key] = value
        elif name == "actual":
            manifest = state.manifests.setdefault(argument.removesuffix(".manifest"), Manifest())
            manifest.actual.update(_sha256sums(body))
        elif name == "unit":
            state.unit_sha256 = next(iter(_sha256sums(body).values()), None)
        elif name == "config":
            state.config_text = decode_lines(body)
        elif name == "service":
            for line in body:
                key, _, value = line.strip().partition("=")
                if key:
                    state.service[key] = value
        elif name in ("exe", "started", "mtimes"):
            parse_process_section(name, body, state)
        elif name == "ctr":
            state.ctr_client, state.ctr_server = parse_ctr_version(body)
        elif name == "default":
            state.default_config = decode_lines(body)
        elif name == "files":
            state.files.update(_sha256sums(body))
        elif name == "managed":
            state.managed_hosts = [line.strip() for line in body if line.strip()]
        elif name == "lock":
            state.lock = parse_lock_state(" ".join(line.strip() for line in body if line.strip()))
        elif name == "kubelet":
            state.kubelet_config = decode_lines(body)
        elif name == "staging":
            state.staging_leftovers = [line.strip() for line in body if line.strip()]
        elif name == "hidden":
            state.hidden_leftovers = [line for line in body if line]
        elif name == "missing":
            state.missing_binaries = [line for line in body if line]
        elif name == "kept":
            state.kept_release = "".join(line.strip() for line in body)
        elif name == "packages":
            for line in body:
                fields = line.split()
                if len(fields) == 4 and fields[0] in ("dpkg", "rpm"):
                    state.distro_packages.append(DistroPackage(*fields))
    return state


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
        return "\n".join(manifest_lines(state_dir))

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

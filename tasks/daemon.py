"""The running containerd as the verify step sees it: one fact that asks the daemon itself (ctr,
the CRI plugins, a container under the systemd cgroup driver) and the binaries its runtime
handlers need."""

import base64
import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from .facts import (
    SECTION,
    daemon_process_lines,
    decode_lines,
    parse_ctr_version,
    parse_process_section,
    service_lines,
    split_sections,
)


@dataclass
class DaemonState:
    """The running containerd as the deploy's verify step sees it."""

    active_state: str = ""
    need_daemon_reload: bool = False
    main_pid: int = 0
    exe: str = ""
    started: float | None = None  # epoch seconds the daemon process started
    mtimes: dict = field(default_factory=dict)  # path -> epoch mtime of files it should have loaded
    ctr_client: str | None = None
    ctr_server: str | None = None
    ctr_error: str = ""
    plugins: dict = field(default_factory=dict)  # (type, id) -> status, from `ctr plugins ls`
    dump: str | None = None
    dump_error: str = ""
    kubelet_config: str | None = None
    container: str = "absent"  # "absent", "failed <why>", or "task <status>" of the container it ran
    container_cgroups: list = field(default_factory=list)
    container_scope: str | None = None
    missing_binaries: list = field(default_factory=list)  # runtime handlers' binaries not on the node


# Seconds each ctr call of the verify fact may take: generous, since a loaded node starts Go
# binaries slowly and a timeout here would read as a broken daemon.
CTR_TIMEOUT = 60
VERIFY_NAMESPACE = "k8s.io"  # the sandbox image is where the CRI (and so a kubelet) has it


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


def daemon_state_command(
    bin_dir: str,
    config_path: str,
    unit: str,
    files: tuple,
    image: str,
    systemd_cgroup: bool,
    binaries: tuple = (),
) -> str:
    q = shlex.quote
    ctr = f"{q(f'{bin_dir}/ctr')} -n {VERIFY_NAMESPACE}"
    # ctr's own systemd-cgroup flag puts the task in system.slice/containerd-deploy-<id>.scope,
    # as the CRI puts a pod's containers in scopes.
    cgroup = '--runc-systemd-cgroup --cgroup "system.slice:containerd-deploy:$id" ' if systemd_cgroup else ""
    return "\n".join(
        [
            f"unit={q(unit)}",
            f"image={q(image)}",
            # The read-only questions to the daemon run side by side (each starts a Go binary:
            # most of this fact's time on a small node), each answer in its own file with its
            # section header, printed in order after.
            "answers=$(mktemp -d)",
            "trap 'rm -rf \"$answers\"' EXIT",
            f'{{ echo "{SECTION}ctr"; timeout {CTR_TIMEOUT} {ctr} version 2>&1; }} > "$answers/1" &',
            f'{{ echo "{SECTION}plugins"; timeout {CTR_TIMEOUT} {ctr} plugins ls 2>&1; }} > "$answers/2" &',
            # stdout is the TOML; warnings (e.g. "configuration migrated from version 2") go to stderr.
            f'{{ echo "{SECTION}dump"; if {q(f"{bin_dir}/containerd")} --config {q(config_path)} config dump '
            '> "$answers/dump" 2> "$answers/dump.err"; then echo "ok $(base64 -w0 < "$answers/dump")"; '
            'else echo "error $(base64 -w0 < "$answers/dump.err")"; fi; } > "$answers/3" &',
            f'if [ -n "$image" ]; then {{ if timeout {CTR_TIMEOUT} {ctr} images ls -q > "$answers/images" 2>&1; '
            'then echo ok; else echo error; fi > "$answers/images.rc"; } & fi',
            f'echo "{SECTION}service"',
            *service_lines('"$unit"', "-p ActiveState -p MainPID -p NeedDaemonReload"),
            *daemon_process_lines(files),
            f'echo "{SECTION}kubelet"',
            "[ -f /var/lib/kubelet/config.yaml ] && base64 -w0 /var/lib/kubelet/config.yaml && echo",
            f'echo "{SECTION}missing"',
            *missing_binaries_lines(bin_dir, binaries),
            "wait",
            'cat "$answers/1" "$answers/2" "$answers/3"',
            f'echo "{SECTION}container"',
            'id="verify-$$"',
            'listed=""',
            'found=""',
            'if [ -n "$image" ]; then',
            '  read -r listed < "$answers/images.rc"',
            '  while IFS= read -r line; do [ "$line" != "$image" ] || found=1; done < "$answers/images"',
            "fi",
            'if [ -n "$image" ] && [ "$listed" != ok ]; then',
            '  why=""',
            '  while IFS= read -r line; do why="$why$line "; done < "$answers/images"',
            '  echo "failed could not list the k8s.io images: $why"',
            'elif [ -n "$found" ]; then',
            f'  if out=$(timeout {CTR_TIMEOUT} {ctr} run -d {cgroup}"$image" "containerd-deploy-$id" 2>&1); then',
            f"""    task=$({ctr} tasks ls 2>/dev/null | awk -v id="containerd-deploy-$id" '$1 == id {{ print $2, $3 }}')""",
            '    echo "task ${task#* }"',
            '    [ -n "$task" ] && sed "s/^/cgroup /" "/proc/${task%% *}/cgroup"',
            "  else",
            '''    echo "failed $(printf %s "$out" | tr '\\n' ' ')"''',
            "  fi",
            f'  timeout {CTR_TIMEOUT} {ctr} tasks rm -f "containerd-deploy-$id" >/dev/null 2>&1',
            f'  timeout {CTR_TIMEOUT} {ctr} containers rm "containerd-deploy-$id" >/dev/null 2>&1',
            "else",
            "  echo absent",
            "fi",
            "exit 0",
        ]
    )


def parse_daemon_state(lines: list[str]) -> DaemonState:
    state = DaemonState()
    for name, body in split_sections(lines):
        if name == "service":
            props = dict(line.strip().partition("=")[::2] for line in body if "=" in line)
            state.active_state = props.get("ActiveState", "")
            state.need_daemon_reload = props.get("NeedDaemonReload") == "yes"
            state.main_pid = int(props.get("MainPID") or 0) if (props.get("MainPID") or "0").isdigit() else 0
        elif name in ("exe", "started", "mtimes"):
            parse_process_section(name, body, state)
        elif name == "ctr":
            state.ctr_client, state.ctr_server = parse_ctr_version(body)
            state.ctr_error = "\n".join(body) if not state.ctr_server else ""
        elif name == "plugins":
            for line in body[1:]:
                columns = line.split()
                if len(columns) >= 4:
                    state.plugins[(columns[0], columns[1])] = columns[-1]
        elif name == "dump":
            outcome, _, encoded = "".join(body).strip().partition(" ")
            text = base64.b64decode(encoded).decode(errors="replace") if encoded else ""
            if outcome == "ok":
                state.dump = text
            else:
                state.dump_error = text or "no output"
        elif name == "kubelet":
            state.kubelet_config = decode_lines(body) if any(line.strip() for line in body) else None
        elif name == "missing":
            state.missing_binaries = [line for line in body if line]
        elif name == "container":
            for line in body:
                if line.startswith("cgroup "):
                    state.container_cgroups.append(line[len("cgroup ") :].strip())
                elif line.strip():
                    state.container = line.strip()
            state.container_scope = next(
                (
                    cgroup.split(":", 2)[-1]
                    for cgroup in state.container_cgroups
                    if cgroup.endswith(".scope") and "containerd-deploy-" in cgroup
                ),
                None,
            )
    return state


class ContainerdDaemon(FactBase):
    """
    Returns a ``DaemonState``: the running containerd's service state, process, version,
    CRI plugins, effective config, a kubelet's config, and whether a container runs.
    """

    @staticmethod
    def default():
        return DaemonState()

    def command(self, bin_dir, config_path, unit, files=(), image="", systemd_cgroup=True, binaries=()):
        return daemon_state_command(
            bin_dir, config_path, unit, tuple(files), image, systemd_cgroup, tuple(binaries)
        )

    def process(self, output):
        return parse_daemon_state(output)

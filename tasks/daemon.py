"""The running containerd as the verify step sees it: one fact that asks the daemon itself (ctr,
the CRI plugins, its effective config, whether the sandbox image is there) and the binaries its
runtime handlers need; and the command that runs a container from that image, which the verify
operation runs when the run changed the node."""

import base64
import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from .facts import (
    SECTION,
    daemon_process_lines,
    decode_lines,
    kubelet_config_lines,
    missing_binaries_lines,
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
    sandbox_image: str = "absent"  # in the k8s.io namespace: "present", "absent" or "unlisted <why>"
    missing_binaries: list = field(default_factory=list)  # runtime handlers' binaries not on the node


# Seconds each ctr call of the verify fact may take: generous, since a loaded node starts Go
# binaries slowly and a timeout here would read as a broken daemon.
CTR_TIMEOUT = 60
VERIFY_NAMESPACE = "k8s.io"  # the sandbox image is where the CRI (and so a kubelet) has it


def daemon_state_command(
    bin_dir: str,
    config_path: str,
    unit: str,
    files: tuple,
    image: str,
    binaries: tuple = (),
) -> str:
    q = shlex.quote
    ctr = f"{q(f'{bin_dir}/ctr')} -n {VERIFY_NAMESPACE}"
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
            *kubelet_config_lines(),
            f'echo "{SECTION}missing"',
            *missing_binaries_lines(bin_dir, binaries),
            "wait",
            'cat "$answers/1" "$answers/2" "$answers/3"',
            f'echo "{SECTION}image"',
            'if [ -z "$image" ]; then echo absent',
            'elif [ "$(cat "$answers/images.rc")" != ok ]; then',
            '  why=""',
            '  while IFS= read -r line; do why="$why$line "; done < "$answers/images"',
            '  echo "unlisted $why"',
            'elif grep -q -x -F -e "$image" "$answers/images"; then echo present',
            "else echo absent",
            "fi",
            "exit 0",
        ]
    )


RUNC_STATE_ROOT = "/run/containerd/runc"  # the runc shim's --root, one directory per namespace


def scope_retry_lines() -> list[str]:
    """Shell: `retry_scope BINARY`, after `start` failed. When systemd failed the container's
    scope (runc: "error creating systemd unit"; seen once in a loaded CI run, and a kubelet
    would retry its pod), takes systemd's reason from the journal, clears the failed unit and
    starts the container once more under a new name; $retried and $why carry the reason into
    the report. Any other failure fails at once (status 1)."""
    return [
        "retry_scope() {",
        '  case "$out" in *"error creating systemd unit"*) ;; *) return 1;; esac',
        '  scope="containerd-deploy-$name.scope"',
        """  reason=$(journalctl -q -o cat -n 3 -u "$scope" 2>/dev/null | tr '\\n' ' ' | cut -c1-300)""",
        '  [ -n "$reason" ] || reason="nothing in its journal"',
        '  reason="systemd said about $scope: ${reason%% }"',
        '  systemctl reset-failed "$scope" >/dev/null 2>&1',
        "  remove",
        '  name="$name-again"',
        '  id="containerd-deploy-$name"',
        '  retried=" (on a second try; at the first, $reason)"',
        '  why="; at the first try, $reason"',
        '  start "$1" && return 0',
        '  systemctl reset-failed "containerd-deploy-$name.scope" >/dev/null 2>&1',
        "  return 1",
        "}",
    ]


def container_check_script(
    host_name: str,
    bin_dir: str,
    image: str,
    systemd_cgroup: bool,
    unit: str,
    handlers: tuple = (("runc", ""),),
    rollback_lines: list[str] | None = None,
) -> str:
    """A command that runs a container from `image` (in the k8s.io namespace, where the CRI has
    it) through each of `handlers` — (name, runc-compatible binary, "" for runc itself) — as the
    CRI would, checks that it runs (in a systemd scope under the systemd cgroup driver) and, for
    a handler's own binary, that this binary runs it; removes it, and prints where it ran; or
    fails, naming the problem and its fix (after putting back a release kept before this run's
    restart, given `rollback_lines`: ``rollback.rollback_lines``)."""
    q = shlex.quote
    ctr = f"timeout {CTR_TIMEOUT} {q(f'{bin_dir}/ctr')} -n {VERIFY_NAMESPACE}"
    # ctr's own systemd-cgroup flag puts the task in system.slice/containerd-deploy-verify-<pid>-<handler>.scope,
    # as the CRI puts a pod's containers in scopes.
    cgroup = '--runc-systemd-cgroup --cgroup "system.slice:containerd-deploy:$name" ' if systemd_cgroup else ""
    header = f"containerd-deploy: {host_name} is not a conformant containerd node:"
    return "\n".join(
        [
            "remove() {",
            f'  {ctr} tasks rm -f "$id" >/dev/null 2>&1',
            f'  {ctr} containers rm "$id" >/dev/null 2>&1',
            "}",
            *(rollback_lines or ["rollback() { return 1; }"]),
            f'fail() {{ remove; printf "%s\\n" {q(header)} "  - $what $1" >&2; rollback || true; exit 1; }}',
            # start's $1: the container's runc-compatible binary (empty: runc's own); $name and $id
            # name it (and its scope: containerd-deploy-$name.scope).
            "start() {",
            f'  out=$({ctr} run -d {cgroup}${{1:+--runc-binary "$1"}} {q(image)} "$id" 2>&1)',
            "}",
            *(scope_retry_lines() if systemd_cgroup else ["retry_scope() { return 1; }"]),
            # run_one's $1: the handler, $2: its runc-compatible binary (empty: runc's own).
            "run_one() {",
            '  name="verify-$$-$1"',
            '  why=""',
            '  retried=""',
            '  id="containerd-deploy-$name"',
            f"  what={q(f'a container from {image}')}",
            '  [ -z "$2" ] || what="$what through runtime handler $1 ($2)"',
            '  if ! start "$2" && ! retry_scope "$2"; then',
            """    fail "did not run: $(printf %s "$out" | tr '\\n' ' ' | cut -c1-500)$why""" + '"',
            "  fi",
            f"""  task=$({ctr} tasks ls 2>/dev/null | awk -v id="$id" '$1 == id {{ print $2, $3 }}')""",
            "  status=${task#* }",
            '  if [ "$status" != RUNNING ]; then',
            f'    fail "started but is not running (task ${{status:-gone}}): see journalctl -u {unit}"',
            "  fi",
            # The scope itself, or a cgroup inside it: crun puts the process in <scope>/container.
            """  scope=$(awk -F: '$3 ~ /containerd-deploy-[^\\/]*[.]scope(\\/|$)/ { sub(/[.]scope\\/.*/, ".scope", $3); print $3; exit }' "/proc/${task%% *}/cgroup" 2>/dev/null)""",
            *(
                [
                    '  if [ -z "$scope" ]; then',
                    """    fail "ran, but not in a systemd scope (its /proc/PID/cgroup: $(tr '\\n' ';' < "/proc/${task%% *}/cgroup" | cut -c1-300)): runc cannot use systemd cgroups here (is dbus running?)"""
                    + '"',
                    "  fi",
                ]
                if systemd_cgroup
                else []
            ),
            # Only the binary that created a container can read its state back: proof that the
            # handler's own binary ran it, not runc.
            f'  if [ -n "$2" ] && ! "$2" --root {RUNC_STATE_ROOT}/{VERIFY_NAMESPACE} state "$id" >/dev/null 2>&1; then',
            '    fail "ran, but not through $2 (it does not know the container): is BinaryName right?"',
            "  fi",
            "  remove",
            '  echo "a container ran${2:+ through $1}${scope:+ in $scope}$retried"',
            "}",
            *[f"run_one {q(name)} {q(binary or '')}" for name, binary in handlers],
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
            text = base64.b64decode(encoded).decode(errors="replace")
            if outcome == "ok":
                state.dump = text
            else:
                state.dump_error = text or "no output"
        elif name == "kubelet":
            state.kubelet_config = decode_lines(body) if any(line.strip() for line in body) else None
        elif name == "missing":
            state.missing_binaries = [line for line in body if line]
        elif name == "image":
            state.sandbox_image = " ".join(line.strip() for line in body if line.strip()) or "absent"
    return state


class ContainerdDaemon(FactBase):
    """
    Returns a ``DaemonState``: the running containerd's service state, process, version,
    CRI plugins, effective config, a kubelet's config, and whether the sandbox image is there.
    """

    @staticmethod
    def default():
        return DaemonState()

    def command(self, bin_dir, config_path, unit, files=(), image="", binaries=()):
        return daemon_state_command(bin_dir, config_path, unit, tuple(files), image, tuple(binaries))

    def process(self, output):
        return parse_daemon_state(output)

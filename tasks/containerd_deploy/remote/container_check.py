"""The verify step's container: a node-side script that runs one from the sandbox image through
each runc-type handler as the CRI would, checks where it runs, removes it, and names the problem
(and rolls back a release kept before this run's restart) when it does not.
"""

import shlex

from containerd_deploy.remote.daemon_state import CTR_TIMEOUT
from containerd_deploy.remote.paths import CRI_NAMESPACE, RUNC_STATE_ROOT

PULL_TIMEOUT = 120  # seconds a pull of the sandbox image may take (a node with no route fails sooner)
# How the script says it ran no container because the image could not be pulled (the report reads it).
NOT_PULLED = "no container run: the sandbox image"
NOT_PULLED_WHY = "could not be pulled through the node's registries"
CONTAINER_RAN = "a container ran"  # what the script says when the container ran, then where


def scope_retry_lines() -> list[str]:
    """Shell: `retry_scope BINARY`, after `start` failed. When systemd failed the container's
    scope (runc: "error creating systemd unit"; seen once in a loaded CI run, and a kubelet
    would retry its pod), takes systemd's reason from the journal, clears the failed unit and
    starts the container once more under a new name; the reason goes into the report either
    way ($retried when the second try ran, $why when it did not). Any other failure fails at
    once (status 1)."""
    return [
        "retry_scope() {",
        '  case "$out" in *"error creating systemd unit"*) ;; *) return 1;; esac',
        '  scope="containerd-deploy-$name.scope"',
        # Only this run's lines: a scope of the same name (a reused pid) may have failed before.
        """  reason=$(journalctl -q -o cat --since "@$started" -n 3 -u "$scope" 2>/dev/null | tr '\\n' ' ' | cut -c1-300)""",
        '  [ -n "$reason" ] || reason="nothing in its journal"',
        '  reason="systemd said about $scope: ${reason%% }"',
        '  systemctl reset-failed "$scope" >/dev/null 2>&1',
        "  remove",
        '  name="$name-again"',
        '  id="containerd-deploy-$name"',
        '  start "$1" && retried=" (on a second try; at the first, $reason)" && return 0',
        '  why="; at the first try, $reason"',
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
    pull_hosts_dir: str = "",
) -> str:
    """A command that runs a container from `image` (in the k8s.io namespace, where the CRI has
    it) through each of `handlers` — (name, runc-compatible binary, "" for runc itself) — as the
    CRI would, checks that it runs (in a systemd scope under the systemd cgroup driver) and, for
    a handler's own binary, that this binary runs it; removes it, and prints where it ran; or
    fails, naming the problem and its fix (after putting back a release kept before this run's
    restart, given `rollback_lines`: ``rollback.rollback_lines``).

    With `pull_hosts_dir` (the node's registry hosts directory) the image is pulled first, through
    the node's registries as a kubelet's first pod would pull it; a node that cannot pull it (no
    route, no credentials) runs no container and says why on one line: a warning, not a failure
    (an air-gapped node gets its images another way)."""
    q = shlex.quote
    ctr = f"timeout {CTR_TIMEOUT} {q(f'{bin_dir}/ctr')} -n {CRI_NAMESPACE}"
    # ctr's own systemd-cgroup flag puts the task in system.slice/containerd-deploy-verify-<pid>-<handler>.scope,
    # as the CRI puts a pod's containers in scopes.
    cgroup = (
        '--runc-systemd-cgroup --cgroup "system.slice:containerd-deploy:$name" ' if systemd_cgroup else ""
    )
    header = f"containerd-deploy: {host_name} is not a conformant containerd node:"
    pull = (
        [
            f"if ! pulled=$(timeout {PULL_TIMEOUT} {q(f'{bin_dir}/ctr')} -n {CRI_NAMESPACE} images pull "
            f"--hosts-dir {q(pull_hosts_dir)} {q(image)} 2>&1); then",
            f"  printf '%s %s %s (%s)\\n' {q(NOT_PULLED)} {q(image)} {q(NOT_PULLED_WHY)} "
            + "\"$(printf %s \"$pulled\" | tail -n 2 | tr '\\n' ' ' | cut -c1-300)\"",
            "  exit 0",
            "fi",
        ]
        if pull_hosts_dir
        else []
    )
    return "\n".join(
        [
            *pull,
            "remove() {",
            f'  {ctr} tasks rm -f "$id" >/dev/null 2>&1',
            f'  {ctr} containers rm "$id" >/dev/null 2>&1',
            "}",
            *(rollback_lines or ["rollback() { return 1; }"]),
            f'fail() {{ remove; printf "%s\\n" {q(header)} "  - $what $1$retried" >&2; rollback || true; exit 1; }}',
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
            *(["  started=$(date +%s)"] if systemd_cgroup else []),  # for retry_scope's journal
            '  id="containerd-deploy-$name"',
            f"  what={q(f'a container from {image}')}",
            '  [ -z "$2" ] || what="$what through runtime handler $1 ($2)"',
            '  if ! start "$2" && ! retry_scope "$2"; then',
            """    fail "did not run: $(printf %s "$out" | tr '\\n' ' ' | cut -c1-500)$why""" + '"',
            "  fi",
            f"""  task=$({ctr} tasks ls 2>/dev/null | awk -v id="$id" '$1 == id {{ print $2, $3 }}')""",
            "  status=${task#* }",
            '  if [ "$status" != RUNNING ]; then',
            f'    fail "started but is not running (task ${{status:-gone}}): see journalctl -u "{q(unit)}',
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
            f'  if [ -n "$2" ] && ! "$2" --root {RUNC_STATE_ROOT}/{CRI_NAMESPACE} state "$id" >/dev/null 2>&1; then',
            '    fail "ran, but not through $2 (it does not know the container): is BinaryName right?"',
            "  fi",
            "  remove",
            f"""  printf '%s\\n' "{CONTAINER_RAN}${{2:+ through $1}}${{scope:+ in $scope}}$retried\"""",
            "}",
            *[f"run_one {q(name)} {q(binary or '')}" for name, binary in handlers],
        ]
    )


def failure_script(host_name: str, problems: list[str], rollback_lines: list[str] | None = None) -> str:
    """A command that prints the problems on stderr and fails, so the run fails with them; with
    `rollback_lines` (``rollback.rollback_lines``), a release kept before this run's restart is
    put back first."""
    lines = [f"containerd-deploy: {host_name} is not a conformant containerd node:"]
    lines += [f"  - {text}" for text in problems]
    said = "printf '%s\\n' " + " ".join(shlex.quote(line) for line in lines) + " >&2"
    if not rollback_lines:
        return said + "; exit 1"
    return "\n".join([*rollback_lines, said, "rollback || true", "exit 1"]) + "\n"

"""The node-side half of the `ContainerdDaemon` fact: the script that asks the running daemon
itself, its questions side by side (facts/daemon.py parses what it prints).
"""

import shlex

from containerd_deploy.remote.node_state import (
    SECTION,
    apparmor_lines,
    daemon_process_lines,
    kubelet_config_lines,
    missing_binaries_lines,
    mtimes_lines,
    service_lines,
)
from containerd_deploy.remote.paths import CRI_NAMESPACE

# Seconds each ctr call of the verify fact may take: generous, since a loaded node starts Go
# binaries slowly and a timeout here would read as a broken daemon.
CTR_TIMEOUT = 60


def daemon_state_command(
    bin_dir: str,
    config_path: str,
    unit: str,
    files: tuple,
    image: str,
    binaries: tuple = (),
) -> str:
    """The script the ContainerdDaemon fact runs: the unit's state, the daemon's process, its ctr
    version, CRI plugins and effective config, a kubelet's config, which of `binaries` are
    missing, and whether `image` is in the k8s.io namespace; each in its section."""
    q = shlex.quote
    ctr = f"{q(f'{bin_dir}/ctr')} -n {CRI_NAMESPACE}"
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
            *daemon_process_lines(f"{bin_dir}/containerd"),
            *apparmor_lines(),
            *mtimes_lines(files),
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

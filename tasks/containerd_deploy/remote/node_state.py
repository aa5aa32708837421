"""The node-side half of the `ContainerdNode` fact: the script that prints, in sections, everything
the deploy asks a node in one round trip (facts/node.py parses it).
"""

import posixpath
import shlex

from containerd_deploy.data.artifacts import COMPONENTS
from containerd_deploy.remote.lock import lock_state_lines
from containerd_deploy.remote.manifest import SUFFIX as MANIFEST_SUFFIX
from containerd_deploy.remote.manifest import manifest_entry_lines, manifest_path
from containerd_deploy.remote.paths import (
    APPARMOR_ENABLED,
    APPARMOR_PARSER,
    APPARMOR_SECURITYFS,
    CRI_NAMESPACE,
    DISTRO_BINARIES,
    HIDDEN_DIR_PREFIX,
    KEPT_DIR_NAME,
    KUBELET_CONFIG,
    LOCK_PATH,
    NEW_SUFFIX,
    ROLLED_BACK_NAME,
    SERVICE_PATH,
    ancestors,
    hidden_copy,
)
from containerd_deploy.remote.shell import STAT, STAT_FORMAT, untrusted_of_lines

# Marks the start of each section of the fact's output (a line that no section's content has).
SECTION = "##containerd-deploy:"


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


def daemon_process_lines(containerd: str) -> list[str]:
    """Shell lines printing the daemon's binary (as readlink names it; `containerd`, the installed
    binary's path, when it is that very file) and start (for $pid, from `service_lines`); the
    start time is worked out by the controller. Shell builtins where they do (every command
    started costs on a small node)."""
    q = shlex.quote
    return [
        'if [ "${pid:-0}" -gt 0 ] 2>/dev/null; then',
        f'  echo "{SECTION}exe"',
        # -ef: dash's, bash's and busybox's test; a shell without it errs, and readlink answers.
        "  # shellcheck disable=SC3013",
        f'  if [ "/proc/$pid/exe" -ef {q(containerd)} ] 2>/dev/null; then echo {q(containerd)}; else readlink "/proc/$pid/exe"; fi',
        f'  echo "{SECTION}started"',
        '  read -r stat < "/proc/$pid/stat" && echo "stat $stat"',
        '  while read -r key value; do [ "$key" != btime ] || echo "btime $value"; done < /proc/stat',
        "fi",
    ]


def mtimes_lines(loaded_files: tuple) -> list[str]:
    """Shell lines printing the mtimes of the files the daemon loads at start: a file newer than
    the daemon was never loaded."""
    q = shlex.quote
    return [
        f'echo "{SECTION}mtimes"',
        "set --",
        *[f'[ ! -e {q(path)} ] || set -- "$@" {q(path)}' for path in loaded_files],
        f"[ $# -eq 0 ] || {STAT} -c '%Y %n' \"$@\"",
    ]


def apparmor_lines() -> list[str]:
    """Shell lines printing the `apparmor` section: the kernel's switch (`enabled Y`) when its
    securityfs directory is there, the parser's ctime (`parser <epoch>`: when it was installed),
    and the daemon's (`$pid`'s, from `service_lines`) `container` environment variable."""
    q = shlex.quote
    return [
        f'echo "{SECTION}apparmor"',
        f"if [ -d {q(APPARMOR_SECURITYFS)} ] && [ -r {q(APPARMOR_ENABLED)} ]; then",
        f'  read -r enabled < {q(APPARMOR_ENABLED)} && echo "enabled $enabled"',
        f"  {STAT} -c 'parser %Z' {q(APPARMOR_PARSER)} 2>/dev/null",
        '  if [ "${pid:-0}" -gt 0 ] 2>/dev/null && [ -r "/proc/$pid/environ" ]; then',
        # Split at the NULs (a value may hold a newline that reads as another variable).
        "    sed -zn 's/^container=/container /p' \"/proc/$pid/environ\" | tr '\\0' '\\n'",
        "  fi",
        "fi",
    ]


def kubelet_config_lines() -> list[str]:
    """Shell lines printing the `kubelet` section: a kubelet's config, base64 (none: no kubelet)."""
    q = shlex.quote
    return [
        f'echo "{SECTION}kubelet"',
        f"[ -f {q(KUBELET_CONFIG)} ] && base64 -w0 {q(KUBELET_CONFIG)} && echo",
    ]


def staging_leftovers_lines(staging_dir: str, action: str = "echo") -> list[str]:
    """Shell lines running `action` on each thing a run cut short can leave in the staging
    directory: fetched files, partial downloads, per-install work directories (mktemp's
    <component>.XXXXXX). Only those names: the directory may be shared with other files."""
    q = shlex.quote

    globs = [".fetched-*", "*.partial", *(f"{component}.??????" for component in COMPONENTS)]
    return [
        "nl='\n'",
        f"for leftover in {' '.join(q(staging_dir) + '/' + glob for glob in globs)}; do",
        '  case "$leftover" in *"$nl"*) continue;; esac',  # as hidden_leftovers_lines
        f'  if [ -e "$leftover" ]; then {action} "$leftover"; fi',
        "done",
    ]


def hidden_leftovers_lines(files: tuple, directories: tuple, globs: tuple) -> list[str]:
    """Shell lines printing each hidden leftover that exists: the hidden copy of each of
    `files`, a release's hidden directory in each of `directories`, and `globs` (already
    quoted shell patterns)."""
    q = shlex.quote
    candidates = [q(hidden_copy(path)) for path in files]
    for directory in directories:
        candidates += [
            q(directory.rstrip("/") + "/" + HIDDEN_DIR_PREFIX) + "*",
            # A release file a rollback was putting back.
            q(directory.rstrip("/") + "/.") + "*" + q(NEW_SUFFIX),
        ]
    candidates += list(globs)
    return (
        [
            "nl='\n'",
            f"for leftover in {' '.join(candidates)}; do",
            # One name a line: a name holding a newline (root's directories only, all the way up,
            # make none) is never printed as two.
            '  case "$leftover" in *"$nl"*) continue;; esac',
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


def manifest_state_lines(state_dir: str) -> list[str]:
    """Shell lines printing each manifest in `state_dir` (section `manifest <name>`) and adding
    each file it lists to "$@", for `stat_lines` to print what each is now (one stat for all:
    each command started costs on a small node); `text_of` (shell.reader_lines) defined before
    them."""
    q = shlex.quote
    return [
        *manifest_entry_lines(),
        f"for m in {q(state_dir)}/*{MANIFEST_SUFFIX}; do",
        '  [ -f "$m" ] || continue',
        f'  echo "{SECTION}manifest ${{m##*/}}"',
        '  text_of "$m"',
        "  while IFS= read -r line; do",
        '    if manifest_entry "$line" && [ -f "$entry_path" ]; then',
        # A manifest written before identities were recorded holds digests: hash those files.
        '      case "$entry_identity" in',
        '        *:*) set -- "$@" "$entry_path";;',
        f'        *) echo "{SECTION}actual ${{m##*/}}"; sha256sum "$entry_path";;',
        "      esac",
        "    fi",
        '  done < "$m"',
        "done",
    ]


def known_file_lines(boot: str) -> list[str]:
    """Shell lines defining `known IDENTITY PATH`: true, and PATH added to $unread (a line each),
    when the node is in `boot` (its boot id; read into $boot) and the stat lines in $stats show
    PATH with IDENTITY (the controller has what it read of it then: not read again)."""
    return [
        "nl='\n'",
        "known() {",
        f'  [ "$boot" = {shlex.quote(boot)} ] || return 1',
        '  case "$nl$stats$nl" in *" $1 $2$nl"*) unread="$unread$2$nl"; return 0;; esac',
        "  return 1",
        "}",
    ]


def unless_known(path: str, known: dict, command: str) -> str:
    """A shell line running `command` (which reads `path`) only when `path` is not as the
    controller last read it (``known_file_lines``); always, when the controller has nothing of it."""
    q = shlex.quote
    return f"known {q(known[path])} {q(path)} || {{ {command}; }}" if known.get(path) else command


def stat_lines() -> list[str]:
    """Shell lines printing the `stat` section: STAT_FORMAT of each path in "$@"."""
    return [f'[ $# -eq 0 ] || {{ echo "{SECTION}stat"; {STAT} -c \'{STAT_FORMAT}\' -- "$@" 2>/dev/null; }}']


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
    trusted_dirs: tuple = (),
    known_pid: int = 0,
    known_files: tuple = (),
    known_boot: str = "",
    images: bool = False,
) -> str:
    """The fact's script. `images`: also list the names of the images in the CRI's namespace. `known_pid`: the MainPID of the daemon the controller last checked in
    full (0: none); when it still runs as MainPID, its ctr is not asked. `known_files`: (path,
    identity) of the files the controller has what it read of them last (controller/read_files.py),
    in boot `known_boot`: one with that identity now, in that boot, is not read again, but named in
    the `unread` section."""
    q = shlex.quote
    slow_lines = [
        f'echo "{SECTION}service"',
        # The unit the operations install and start: named by containerd_unit_path.
        f"systemctl show {q(posixpath.basename(unit_path))} -p ActiveState -p UnitFileState -p MainPID -p NeedDaemonReload",
    ]
    # Every directory the deploy keeps or makes things in, and each above it, asked once.
    chain = dict.fromkeys(directory for path in trusted_dirs for directory in ancestors(path))
    read_files = dict.fromkeys((config_path, unit_path, *files))
    looked_at = dict.fromkeys((*chain, *loaded, *read_files))
    known = dict(known_files) if known_boot else {}
    ctr, containerd = q(f"{bin_dir}/ctr"), q(f"{bin_dir}/containerd")
    # Defaults come from the installed binary: needed when there is no config file to start
    # from, or always when the operator chose to start from defaults.
    defaults_when = "true" if always_defaults else f"[ ! -f {q(config_path)} ]"
    return "\n".join(
        [
            # The questions that start the slowest programs (~0.1-0.2 s each on an emulated node,
            # which has two CPUs) run in a first stage, beside the rest, the lock's among it.
            "{",
            # Between the run lock's generation before and after (raised at every take and free).
            f'  g=""; read -r g < {q(LOCK_PATH)}.generation; echo "{SECTION}generation_before $g"',
            *[f"  {line}" for line in slow_lines],
            f'  g=""; read -r g < {q(LOCK_PATH)}.generation; echo "{SECTION}generation_after $g"',
            "} 2>/dev/null | {",
            # Its answers are read last, from fd 3: nothing before reads them by mistake.
            "exec 3<&0 </dev/null",
            f'echo "{SECTION}lock"',
            *lock_state_lines(anchor_pid),
            # uname's answers, read by the shell itself where the kernel has them (Linux 6.1+).
            "if ! { read -r kernel < /proc/sys/kernel/ostype && read -r machine < /proc/sys/kernel/arch; } 2>/dev/null; then",
            "  # shellcheck disable=SC2046 # split on purpose: kernel name, machine",
            "  set -- $(uname -sm)",
            "  kernel=${1:-} machine=${2:-}",
            "fi",
            f'echo "{SECTION}machine $machine"',
            f'echo "{SECTION}kernel $kernel"',
            # Which boot: what the controller read of a file is of this boot only.
            'boot=""; { read -r boot < /proc/sys/kernel/random/boot_id; } 2>/dev/null',
            f'echo "{SECTION}boot $boot"',
            f'if [ -d /run/systemd/system ]; then echo "{SECTION}systemd"; fi',
            # One stat for the manifests' files, the directories root keeps things in and the
            # files the daemon loads (each command started costs on a small node).
            "set --",
            *manifest_state_lines(state_dir),
            f'set -- "$@" {" ".join(q(path) for path in looked_at)}',
            f"stats=$({STAT} -c '{STAT_FORMAT}' -- \"$@\" 2>/dev/null)",
            f'echo "{SECTION}stat"',
            'printf "%s\\n" "$stats"',
            f'echo "{SECTION}untrusted"',
            *(untrusted_of_lines() if chain else []),
            # Root runs the node's ctr and containerd below only when no other user could have
            # put them there (a refused run must not have run their code first).
            (
                # A pipe, not a here-document: a shell that cannot make the latter's temporary
                # file (a full /tmp) would skip the check, and run what it was to refuse.
                "found=$(printf '%s\\n' \"$stats\" | untrusted_of "
                + " ".join(q(directory) for directory in chain)
                + ")"
                if chain
                else 'found=""'
            ),
            '[ -z "$found" ] || printf "%s\\n" "$found"',
            f'echo "{SECTION}missing"',
            *missing_binaries_lines(bin_dir, handler_binaries),
            # The files whose contents the controller compares: each read only when the one stat
            # shows it is not as the controller read it last (each command started costs on a
            # small node).
            "unread=''",
            *(known_file_lines(known_boot) if known else []),
            f'echo "{SECTION}config"',
            # base64 keeps the file's exact bytes (blank lines, no trailing newline) through the
            # line-based fact output.
            unless_known(
                config_path, known, f"[ -f {q(config_path)} ] && base64 -w0 {q(config_path)} && echo"
            ),
            f'echo "{SECTION}unit"',
            unless_known(unit_path, known, f"[ -f {q(unit_path)} ] && sha256sum {q(unit_path)}"),
            f'echo "{SECTION}files"',
            "set --",
            *[unless_known(path, known, f'[ -f {q(path)} ] && set -- "$@" {q(path)}') for path in files],
            '[ $# -eq 0 ] || sha256sum -- "$@"',
            f'echo "{SECTION}unread"',
            'printf "%s" "$unread"',
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
            f"text_of {q(state_dir + '/' + KEPT_DIR_NAME + '/version')}",
            f'echo "{SECTION}rolled_back"',
            f"text_of {q(state_dir + '/' + ROLLED_BACK_NAME)}",
            f'echo "{SECTION}hidden"',
            *hidden_leftovers_lines(
                (
                    config_path,
                    unit_path,
                    *files,
                    *(manifest_path(state_dir, component) for component in COMPONENTS),
                ),
                (bin_dir, *install_dirs),
                (
                    # A manifest's new copy as an older version of this deploy named it.
                    f"{q(state_dir)}/*{MANIFEST_SUFFIX}{NEW_SUFFIX}",
                    f"{q(state_dir)}/{KEPT_DIR_NAME}{NEW_SUFFIX}",
                    *([f"{q(certs_dir)}/*/{q('.hosts.toml' + NEW_SUFFIX)}"] if certs_dir else []),
                ),
            ),
            # What the first stage printed, after all that (which it ran beside), and the daemon
            # it named; asked again when another run held the node, or took or freed its lock,
            # as it asked (what it read may be that run's half-done work).
            "nl='\n' answers='' before='' after=''",
            "while IFS= read -r line <&3; do",
            '  case "$line" in',
            f'    "{SECTION}generation_before "*) before=${{line#* }};;',
            f'    "{SECTION}generation_after "*) after=${{line#* }};;',
            '    *) answers="$answers$line$nl";;',
            "  esac",
            "done",
            f'now=""; {{ read -r now < {q(LOCK_PATH)}.generation; }} 2>/dev/null',
            'if [ "$waited" = 1 ] || [ "$before" != "$after" ] || [ "$after" != "$now" ]; then',
            "  answers=$({",
            *[f"    {line}" for line in slow_lines],
            "  } 2>/dev/null)",
            '  answers="$answers$nl"',
            "fi",
            'printf "%s" "$answers"',
            "pid=${answers#*MainPID=}",
            "pid=${pid%%[!0-9]*}",
            *daemon_process_lines(f"{bin_dir}/containerd"),
            *apparmor_lines(),
            f'echo "{SECTION}ctr"',
            # The daemon the controller last checked in full answers as it did then (its version
            # is fixed at start; a restart makes another MainPID): not asked again (~0.2 s on a
            # small node).
            *(
                [
                    f'if [ "${{pid:-0}}" = {int(known_pid)} ] && [ -S /run/containerd/containerd.sock ]; then '
                    f'echo "{SECTION}ctr_not_asked"; else'
                ]
                if known_pid > 0
                else []
            ),
            f'[ -z "$found" ] && [ -x {ctr} ] && [ -S /run/containerd/containerd.sock ] && timeout 10 {ctr} version 2>&1',
            *(["fi"] if known_pid > 0 else []),
            *(
                [
                    f'echo "{SECTION}images"',
                    f'[ -z "$found" ] && [ -x {ctr} ] && [ -S /run/containerd/containerd.sock ] && '
                    f"timeout 10 {ctr} -n {CRI_NAMESPACE} images ls -q 2>/dev/null",
                ]
                if images
                else []
            ),
            f'echo "{SECTION}default"',
            f'{defaults_when} && [ -z "$found" ] && [ -x {containerd} ] && {containerd} config default 2>/dev/null | base64 -w0 && echo',
            "}",
            "exit 0",
        ]
    )

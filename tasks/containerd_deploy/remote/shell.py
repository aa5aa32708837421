"""What every node-side script shares, each written once: how a script starts, how it fetches a
URL, how a file goes into place, and how it waits for containerd to answer.
"""

from containerd_deploy.remote.paths import NEW_SUFFIX

PRELUDE = r"""set -eu
umask 022
fail() { echo "containerd-deploy: $*" >&2; exit 1; }
"""

# `--` before the URL: whatever it holds is never read as an option.
FETCH = r"""fetch() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 2 --connect-timeout 20 -o "$2" -- "$1"
  elif command -v wget >/dev/null 2>&1; then
    wget -q -T 20 -t 3 -O "$2" -- "$1"
  else
    fail "neither curl nor wget is installed on this host; install one of them"
  fi
}
"""

# A tab between the fields of the lists scripts keep (a manifest's files, an install's and a
# rollback's plans): paths may hold spaces, never a tab (settings refuse control characters).
TAB = "\t"


def reader_lines() -> list[str]:
    """Shell lines defining `text_of FILE` (its text, as cat prints it, but read by the shell
    itself; a last line without a newline gets one; status 1 when it cannot be read) and
    `parent_of PID` (field 4 of /proc/PID/stat, after the command name in parentheses, which may
    hold anything). No program is started: each costs ~40 ms on an emulated node, and the node
    fact, which reads a dozen small files, runs on every run."""
    return [
        "text_of() {",
        '  [ -r "$1" ] || return 1',
        '  while IFS= read -r text_line || [ -n "$text_line" ]; do printf "%s\\n" "$text_line"; done 2>/dev/null < "$1"',
        "}",
        "parent_of() {",
        '  read -r proc_stat 2>/dev/null < "/proc/$1/stat" || return 1',
        "  # shellcheck disable=SC2086 # split on purpose: the fields after the command name",
        "  set -- ${proc_stat##*) }",
        '  echo "$2"',
        "}",
    ]


def untrusted_lines() -> list[str]:
    """Shell lines defining `untrusted DIR...`: prints "<path><TAB><why>" for each DIR that exists
    and another user could change (owned by neither root nor the user checking, as sshd's
    StrictModes allows, or writable by group or others, sticky or not), that is a symbolic link (followed, it puts root's files where its owner chose) or not
    a directory. Given a path and every directory above it (``paths.ancestors``), it says
    whether what root keeps there is root's alone, as sshd's StrictModes asks of a key file.
    One stat for all (each command started costs on a small node)."""
    return [
        "untrusted() {",
        # The effective uid, as `id -u` prints it, read by the shell itself.
        '  while read -r key _ me _; do [ "$key" != Uid: ] || break; done < /proc/self/status',
        "  stat -c '%u %f %n' -- \"$@\" 2>/dev/null | while read -r uid mode name; do",
        "    kind=$(( 0x$mode & 0xF000 ))",
        "    if [ \"$kind\" -eq $(( 0xA000 )) ]; then why='is a symbolic link'",
        "    elif [ \"$kind\" -ne $(( 0x4000 )) ]; then why='is not a directory'",
        '    elif [ "$uid" != 0 ] && [ "$uid" != "$me" ]; then why="is owned by uid $uid, not root"',
        "    elif [ $(( 0x$mode & 0x12 )) -ne 0 ]; then why='is writable by group or others'",
        "    else continue",
        "    fi",
        f'    printf "%s{TAB}%s\\n" "$name" "$why"',
        "  done",
        "}",
    ]


def hidden_copy_expression(variable: str) -> str:
    """The shell expression for ``paths.hidden_copy`` of the path in $`variable` (a script that
    learns a path on the node names its new copy by the same rule the node fact looks for)."""
    return f'"${{{variable}%/*}}/.${{{variable}##*/}}{NEW_SUFFIX}"'


def put_in_place_lines() -> list[str]:
    """Shell lines defining `put_in_place NEW PATH [MODE]`: NEW, a whole file written beside
    PATH (``paths.hidden_copy``), is renamed over PATH, so PATH is never seen half written and a
    run cut short leaves it as it was. With MODE, NEW is made root-owned with MODE first;
    without, it keeps its owner and mode (a kept file put back: a copy made with `cp -p`)."""
    return [
        "put_in_place() {",
        '  if [ -n "${3:-}" ]; then chown 0:0 "$1" && chmod "$3" "$1" || return 1; fi',
        '  mv -fT -- "$1" "$2"',  # -T: onto a directory of that name is an error, not a move into it
        "}",
    ]


def answer_wait_lines() -> list[str]:
    """Shell lines defining `wait_answer CTR SECONDS [VERSION]`: wait until `CTR version` answers
    (as VERSION, when given), leaving what it said in $answer and the daemon's version in
    $server; returns 1 once SECONDS have passed without."""
    return [
        "wait_answer() {",
        "  deadline=$(( $(date +%s) + $2 ))",
        "  while :; do",
        '    if answer=$(timeout 10 "$1" version 2>&1); then',
        """      server=$(printf '%s\\n' "$answer" | sed -n 's/^ *Version: *//p' | sed -n 2p)""",
        '      [ -n "${3:-}" ] || return 0',
        '      case "$server" in "$3"*|"v$3"*) return 0;; esac',
        "    fi",
        '    [ "$(date +%s)" -lt "$deadline" ] || return 1',
        "    sleep 1",
        "  done",
        "}",
    ]

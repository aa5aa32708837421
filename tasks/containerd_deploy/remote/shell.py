"""What every node-side script shares, each written once: how a script starts, how it fetches a
URL, how a file goes into place, and how it waits for containerd to answer.
"""

import shlex

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
    `parent_of PID`, which sets $parent (field 4 of /proc/PID/stat, after the command name in
    parentheses, which may hold anything). No program is started, nor a subshell: each costs on
    an emulated node, and the node fact, which reads a dozen small files, runs on every run."""
    return [
        "text_of() {",
        '  [ -r "$1" ] || return 1',
        '  while IFS= read -r text_line || [ -n "$text_line" ]; do printf "%s\\n" "$text_line"; done 2>/dev/null < "$1"',
        "}",
        "parent_of() {",
        '  parent=""',
        '  read -r proc_stat 2>/dev/null < "/proc/$1/stat" || return 1',
        "  # shellcheck disable=SC2086 # split on purpose: the fields after the command name",
        "  set -- ${proc_stat##*) }",
        "  # shellcheck disable=SC2034 # read by the caller",
        "  parent=${2:-}",
        "}",
    ]


# What `stat -c` prints of a file wherever a script looks at files: owner, mode (hex), mtime, the
# file's identity (a manifest's: inode, size, ctime to the nanosecond; any write, chmod or rename
# over the path changes it, and userspace cannot set a ctime back), then the name (which may hold
# spaces). One format, so one stat of everything serves each reader.
FILE_IDENTITY_FORMAT = "%i:%s:%.9Z"
# stat as every script runs it: in the C locale, whose decimal point in %.9Z is "." (a run under
# another locale's "," would find every identity recorded under the first changed).
STAT = "LC_ALL=C stat"
NOT_LOOKED_AT = "could not be looked at (stat failed)"
STAT_FORMAT = f"%u %f %Y {FILE_IDENTITY_FORMAT} %n"


def untrusted_of_lines() -> list[str]:
    """Shell lines defining `untrusted_of DIR...`: prints "<path><TAB><why>" for each DIR that
    STAT_FORMAT lines on its standard input show another user could change (owned by neither
    root nor the user checking, as sshd's StrictModes allows, or writable by group or others,
    sticky or not), that is a symbolic link (followed, it puts root's files where its owner
    chose) or not a directory; lines of other files are left alone (one stat of everything serves
    each reader: each command started costs on a small node). Given a path and every directory
    above it (``paths.ancestors``), it says whether what root keeps there is root's alone, as
    sshd's StrictModes asks of a key file."""
    return [
        "untrusted_of() {",
        # The effective uid, as `id -u` prints it, read by the shell itself.
        '  while read -r key _ me _; do [ "$key" != Uid: ] || break; done < /proc/self/status',
        # The DIRs, one a line (none holds a line break: settings refuse control characters).
        "  nl='\n' asked=''",
        '  for dir in "$@"; do asked="$asked$nl$dir"; done',
        '  asked="$asked$nl" looked=""',
        "  while IFS= read -r line; do",
        # Fields cut by hand: `read` would trim a name's trailing spaces (a directory above the
        # data's path may end in one), and a name it does not match exactly is never judged.
        "    uid=${line%% *} rest=${line#* }",
        "    mode=${rest%% *} rest=${rest#* } rest=${rest#* } name=${rest#* }",
        '    case "$asked" in *"$nl$name$nl"*) ;; *) continue;; esac',
        '    looked="$looked$nl$name"',
        "    kind=$(( 0x$mode & 0xF000 ))",
        "    if [ \"$kind\" -eq $(( 0xA000 )) ]; then why='is a symbolic link'",
        "    elif [ \"$kind\" -ne $(( 0x4000 )) ]; then why='is not a directory'",
        '    elif [ "$uid" != 0 ] && [ "$uid" != "$me" ]; then why="is owned by uid $uid, not root"',
        "    elif [ $(( 0x$mode & 0x12 )) -ne 0 ]; then why='is writable by group or others'",
        "    else continue",
        "    fi",
        f'    printf "%s{TAB}%s\\n" "$name" "$why"',
        "  done",
        # One that is there but was not looked at (its stat failed, or never ran) is not passed.
        '  looked="$looked$nl"',
        '  for dir in "$@"; do',
        '    case "$looked" in *"$nl$dir$nl"*) continue;; esac',
        f'    if [ -e "$dir" ] || [ -L "$dir" ]; then printf "%s{TAB}%s\\n" "$dir" {shlex.quote(NOT_LOOKED_AT)}; fi',
        "  done",
        "}",
    ]


def untrusted_lines() -> list[str]:
    """Shell lines defining `untrusted DIR...`: `untrusted_of` (``untrusted_of_lines``) of each DIR
    that exists, lstat'ed."""
    return [
        *untrusted_of_lines(),
        f'untrusted() {{ {STAT} -c \'{STAT_FORMAT}\' -- "$@" 2>/dev/null | untrusted_of "$@"; }}',
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

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

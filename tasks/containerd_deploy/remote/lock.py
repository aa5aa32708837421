"""The node's run lock: one containerd-deploy run at a time per node, held for as long as the
run's SSH connection (or, with @local, its pyinfra process) lives.

The node fact only reads it (free, held by this run, busy, or unavailable, with its generation);
the deploy's first operation takes it, and only when the run will change the node. A
generation number, raised each time the lock is taken and again when it is freed, tells that
operation whether another run held the node between this run's look and its lock: then what
this run read is stale, and it stops before changing anything."""

import shlex
from dataclasses import dataclass

from containerd_deploy.remote.paths import LOCK_PATH
from containerd_deploy.remote.shell import STAT, reader_lines

# Held, while a run's SSH connection lasts, by a small process on the node: a second run
# waits for it, then is refused; a run killed or cut off frees it within a second.
LOCK_WAIT_SECONDS = 10


# The lock holder: `sh -c LOCK_HOLDER lock-holder <sshd pid> <$SSH_CONNECTION of the run>
# <the sshd's start, in clock ticks> <the cgroup.procs of the run's login session, or "">
# <the login user's uid>`.
# Once the connection's sshd is gone, the run's commands that outlive it (a killed controller
# or a dropped link does not stop them) are stopped: TERM, then KILL after 10 s, as if the run
# had been cut off at that point, a point every step is safe to stop at. They are the
# processes of the run's own login session (a systemd session scope: one per connection, never
# reused) or, on a node without one, the processes of root or the login user (by real uid)
# whose environment carries the run's SSH_CONNECTION, started since its sshd, and no longer under
# a living sshd: a later connection that reuses the address and port is under its own sshd, and
# no other user can make a process the holder takes for the run's. With each, all it started. So the next run never works beside a
# dead one's leftovers, and nothing else is stopped. Last, still holding the lock, it raises the
# generation: a run that looked at the node meanwhile knows it changed.
LOCK_HOLDER = "\n".join(
    [
        'while kill -0 "$1" 2>/dev/null; do sleep 1; done',
        "connection=$2",
        "started=${3:-0}",
        "procs=${4:-}",
        "login_uid=${5:-0}",
        # Field 4 (ppid), 22 (start), and the name, of /proc/PID/stat (the name may hold ") ").
        "stat_of() {",
        """  awk '{ name = $0; sub(/^[^(]*\\(/, "", name); sub(/\\) [^)]*$/, "", name); sub(/.*\\) /, ""); """
        """print $2, $20, $4, $1, name }' "/proc/$1/stat" 2>/dev/null""",
        "}",
        # True when a living sshd is among PID's ancestors.
        "under_sshd() {",
        "  p=$1",
        '  while [ "${p:-0}" -gt 1 ]; do',
        "    # shellcheck disable=SC2046 # the fields of /proc/PID/stat, one word each",
        '    set -- $(stat_of "$p")',
        '    case "${5:-}" in sshd|sshd-session) return 0;; esac',
        "    p=${1:-0}",
        "  done",
        "  return 1",
        "}",
        "candidates() {",
        '  if [ -n "$procs" ]; then cat "$procs" 2>/dev/null; return 0; fi',
        '  [ -n "$connection" ] || return 0',
        '  grep -l -s -z -x -F "SSH_CONNECTION=$connection" /proc/[0-9]*/environ | while read -r environ; do',
        "    pid=${environ#/proc/}",
        "    pid=${pid%/environ}",
        # The real uid (a setuid program another user started runs as root, but is theirs).
        """    uid=$(awk '/^Uid:/ { print $2; exit }' "/proc/$pid/status" 2>/dev/null)""",
        '    case "$uid" in 0|"$login_uid") ;; *) continue;; esac',
        "    # shellcheck disable=SC2046 # the fields of /proc/PID/stat, one word each",
        '    set -- $(stat_of "$pid")',
        '    [ "${2:-0}" -ge "$started" ] && ! under_sshd "$pid" && echo "$pid"',
        "  done",
        "  true",
        "}",
        # The run's processes and all they started: through sudo only sudo carries the
        # connection, and a KILL to it does not reach the command it runs.
        "with_descendants() {",
        '  roots=" $(tr "\\n" " ") "',
        '  cat /proc/[0-9]*/stat 2>/dev/null | awk -v roots="$roots" \'',
        """    { line = $0; sub(/.*\\) /, "", line); split(line, field, " "); parent[$1] = field[2] }""",
        """    END {""",
        """      for (p in parent) if (index(roots, " " p " ")) keep[p] = 1""",
        """      do { changed = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } } while (changed)""",
        """      for (p in keep) print p""",
        """    }'""",
        "}",
        "leftovers() {",
        "  candidates | with_descendants | while read -r pid; do",
        # Not this holder's own session (it is a session leader: setsid), so not its helpers;
        # nor a zombie, which is gone already.
        "    # shellcheck disable=SC2046 # the fields of /proc/PID/stat, one word each",
        '    set -- $(stat_of "$pid")',
        '    [ -n "${1:-}" ] && [ "$4" != Z ] && [ "$3" != "$$" ] && echo "$pid"',
        "  done",
        "  true",
        "}",
        "waited=0",
        "# shellcheck disable=SC2086 # the pids: one word each",
        'while pids=$(leftovers) && [ -n "$pids" ] && [ "$waited" -lt 20 ]; do',
        '  if [ "$waited" -eq 0 ]; then kill -TERM $pids 2>/dev/null; fi',
        '  if [ "$waited" -ge 10 ]; then kill -KILL $pids 2>/dev/null; fi',
        "  waited=$((waited + 1))",
        "  sleep 1",
        "done",
        f"generation=$(cat {shlex.quote(LOCK_PATH)}.generation 2>/dev/null)",
        f"echo $((${{generation:-0}} + 1)) > {shlex.quote(LOCK_PATH)}.generation",
    ]
)


def session_lines(anchor_pid: int = 0, connection: bool = True) -> list[str]:
    """Shell lines setting `session` (the pid whose life the lock is held for: the sshd serving
    this connection, or `anchor_pid`, the process of a run on the node itself, pyinfra's
    @local; 1 or empty when there is none) and, with `connection`, `connection` (the run's
    SSH_CONNECTION)."""
    if anchor_pid:
        return [
            *reader_lines(),
            f"session={int(anchor_pid)}",
            '[ -d "/proc/$session" ] || session=1',
            *(['connection=""'] if connection else []),
        ]
    return [
        *reader_lines(),
        "session=$$",
        # sshd's child is the login shell, whose environment holds the connection.
        *(["child=$$"] if connection else []),
        # The sshd process of this connection: the first sshd/sshd-session ancestor.
        'while [ "${session:-1}" -gt 1 ]; do',
        # Read by the shell itself, not in a subshell: each costs on a small node.
        '  comm=""',
        '  read -r comm 2>/dev/null < "/proc/$session/comm"',
        '  case "$comm" in sshd|sshd-session) break;; esac',
        *(["  child=$session"] if connection else []),
        '  parent_of "$session"',
        "  session=$parent",
        "done",
        # Through sudo the environment is reset: the connection is read from the login
        # shell sshd started (the run's sudo processes carry it too, and relay a TERM to
        # the commands they run).
        *(
            [
                'connection=${SSH_CONNECTION:-$(tr "\\000" "\\n" 2>/dev/null < "/proc/$child/environ" | '
                "sed -n 's/^SSH_CONNECTION=//p')}"
            ]
            if connection
            else []
        ),
    ]


def run_identity_lines(anchor_pid: int = 0) -> list[str]:
    """Shell lines setting what tells the run's own processes from any other (``LOCK_HOLDER``):
    `started`, when its sshd started (clock ticks since boot), `procs`, the process list of its
    login session's systemd scope, when it has one (cgroup v2, hybrid or v1), and `login_uid`. A run on the
    node itself (`anchor_pid`) stops nothing of its own: both are left empty."""
    if anchor_pid:
        return ["started=0", 'procs=""', "login_uid=0"]
    return [
        # The login shell sshd started (`child`, from session_lines): the run's user.
        f'login_uid=$({STAT} -c %u "/proc/$child" 2>/dev/null)',
        "login_uid=${login_uid:-0}",
        """started=$(awk '{ sub(/.*\\) /, ""); print $20 }' "/proc/$session/stat" 2>/dev/null)""",
        "started=${started:-0}",
        'procs=""',
        r"scope=$(sed -n 's/^0::\(.*\/session-[0-9]*\.scope\)$/\1/p' /proc/self/cgroup)",
        'for candidate in "/sys/fs/cgroup$scope" "/sys/fs/cgroup/unified$scope"; do',
        '  if [ -n "$scope" ] && [ -r "$candidate/cgroup.procs" ]; then procs="$candidate/cgroup.procs"; break; fi',
        "done",
        'if [ -z "$procs" ]; then',
        r"  scope=$(sed -n 's/^[0-9]*:name=systemd:\(.*\/session-[0-9]*\.scope\)$/\1/p' /proc/self/cgroup)",
        '  if [ -n "$scope" ] && [ -r "/sys/fs/cgroup/systemd$scope/cgroup.procs" ]; then procs="/sys/fs/cgroup/systemd$scope/cgroup.procs"; fi',
        "fi",
    ]


# What flock exits with when the lock is held (a conflict), told apart from its other failures.
HELD_EXIT = 75


def lock_held_lines() -> list[str]:
    """Shell lines defining `lock_held`, true while a run holds the flock on LOCK_PATH. Asked of
    the lock itself: a shared lock tried without waiting and given back at once (nothing is
    created, nothing kept). Not read from /proc/locks: in a PID namespace of its own (a node that
    is a container) the kernel leaves out a lock whose taker has exited, as a run's has (the
    take hands it to a holder process and exits)."""
    lock = shlex.quote(LOCK_PATH)
    return [
        "lock_held() {",
        f"  [ -e {lock} ] || return 1",
        # On a descriptor of the shell's: flock starts no program of its own to hold it.
        f"  {{ flock -n -s -E {HELD_EXIT} 9; }} 9< {lock} 2>/dev/null",
        f"  [ $? -eq {HELD_EXIT} ]",
        "}",
    ]


NO_FLOCK = "flock is not installed"
NO_SESSION = "not run through sshd (nor by pyinfra on the node itself)"


@dataclass(frozen=True)
class LockState:
    """The run lock as a run reads it (`lock_state_lines` print it, `parse_lock_state` reads it)."""

    kind: str  # "free", "held" (this run has it already), "busy" (another run has it), "unavailable"
    generation: int | None = None  # free, busy: raised at each take and free; None: any
    owner: str = ""  # busy: who holds it
    why: str = ""  # unavailable: why it cannot be taken ("": the node did not say)


def parse_lock_state(text: str) -> LockState:
    """What `lock_state_lines` printed; anything else is unavailable."""
    word, _, rest = text.strip().partition(" ")
    if word in ("free", "busy"):
        number, _, owner = rest.partition(" ")
        generation = int(number) if number.isdigit() else None
        return LockState(word, generation, owner.strip() if generation is not None else rest.strip())
    if word == "held":
        return LockState("held")
    return LockState("unavailable", why=rest.strip() if word == "unavailable" else "")


def lock_state_lines(anchor_pid: int = 0) -> list[str]:
    """Shell lines that print the lock's state, changing nothing: "free <generation>", "held"
    (this run has it already), "busy <generation> <owner>", or "unavailable <why>" (no flock, or
    neither sshd nor an anchor process to hold it for). Another run's lock is waited for first
    (up to LOCK_WAIT_SECONDS), so a run started as another ends (or is cut off, and its holder
    is stopping what it left running) looks at the node that run left; then $waited is 1."""
    q = shlex.quote
    return [
        *session_lines(anchor_pid, connection=False),
        *lock_held_lines(),
        # waited: another run held the lock, and this one waited for it (what was read before is stale).
        "# shellcheck disable=SC2034 # waited: read by the node fact",
        "held=0 waited=0",
        "lock_held && held=1",
        f'if [ "$held" = 1 ] && [ "${{session:-1}}" -gt 1 ] && [ "$(text_of {q(LOCK_PATH)}.session)" != "$session" ]; then',
        "  # shellcheck disable=SC2034 # waited: read by the node fact",
        "  tries=0 waited=1",
        f'  while [ "$held" = 1 ] && [ "$tries" -lt {LOCK_WAIT_SECONDS * 5} ]; do',
        "    sleep 0.2",
        "    tries=$((tries + 1))",
        "    lock_held || held=0",
        "  done",
        "fi",
        f'if ! command -v flock >/dev/null 2>&1; then echo "unavailable {NO_FLOCK}"',
        f'elif [ "${{session:-1}}" -le 1 ]; then echo "unavailable {NO_SESSION}"',
        f'elif [ "$held" = 0 ]; then echo "free $(text_of {q(LOCK_PATH)}.generation || echo 0)"',
        f'elif [ "$(text_of {q(LOCK_PATH)}.session)" = "$session" ]; then echo held',
        "else",
        # Who holds it, as the node sees it: the process whose life the lock is held for.
        f"  holder=$(text_of {q(LOCK_PATH)}.session)",
        '  seen=""',
        '  if [ -n "$holder" ] && [ -r "/proc/$holder/cmdline" ]; then',
        f'    seen="; on the node: uid $({STAT} -c %u "/proc/$holder") pid $holder '
        """($(tr '\\000' ' ' < "/proc/$holder/cmdline" | cut -c 1-80 | sed 's/ *$//'))\"""",
        "  fi",
        f'  echo "busy $(text_of {q(LOCK_PATH)}.generation || echo 0) $(text_of {q(LOCK_PATH)}.owner)$seen"',
        "fi",
    ]


def unavailable_message(host_name: str, why: str) -> str:
    return (
        f"{host_name}: could not take the node's run lock ({LOCK_PATH}): {why}. Without it two runs "
        "could change the node at once. Fix: run over SSH (pyinfra's default connector) or with pyinfra "
        "@local on the node itself, and make sure flock (util-linux) is installed."
    )


def busy_message(host_name: str, owner: str) -> str:
    return (
        f"{host_name}: another containerd-deploy run holds this node ({owner or 'another run'}); it is released "
        f"when that run ends or its SSH connection drops. Waited {LOCK_WAIT_SECONDS}s; rerun when it is done."
    )


def untrusted_lock_message(host_name: str, directory: str) -> str:
    return (
        f"{host_name}: the run lock's directory {directory} is not root's alone (root-owned, mode 0700, not a "
        "symbolic link), so another user could hold or forge the lock; nothing was changed. Fix: remove it "
        f"(it holds nothing but the lock) and rerun."
    )


def stale_message(host_name: str, generation: int, now: str) -> str:
    return (
        f"{host_name}: another containerd-deploy run held this node while or after this run looked at it (the run "
        f"lock's generation was {generation}, now {now}), so what this run planned is out of date; it changed "
        "nothing. Rerun to start from the node as it is now."
    )


MARK = "\0"  # where a shell variable goes in a message (no host name or owner holds a NUL)


def with_variable(message: str, variable: str) -> str:
    """`message` as one shell word, with `variable` (e.g. '$owner') expanded at MARK."""
    before, after = message.split(MARK)
    return f'{shlex.quote(before)}"{variable}"{shlex.quote(after)}'


def take_lock_script(host_name: str, owner: str, generation: int | None, anchor_pid: int = 0) -> str:
    """A command that takes the node's run lock for as long as this SSH connection lives (or,
    with `anchor_pid`, the process of a run on the node itself), waiting up to
    LOCK_WAIT_SECONDS for another run to free it. It fails, saying why, when it cannot, or when
    the lock's generation is no longer `generation` (None: any): another run held the node since
    this run read it. The flock on LOCK_PATH is handed to a detached process that exits when the
    sshd serving this connection (or the anchor process) does; a run that holds it already
    passes."""
    q = shlex.quote
    lock = q(LOCK_PATH)
    check_generation = (
        []
        if generation is None
        else [
            f'if [ "$generation" != {int(generation)} ]; then',
            f"  fail {with_variable(stale_message(host_name, int(generation), MARK), '$generation')}",
            "fi",
        ]
    )
    return "\n".join(
        [
            "fail() { printf '%s\\n' \"$1\" >&2; exit 1; }",
            *session_lines(anchor_pid),
            *lock_held_lines(),
            f"command -v flock >/dev/null 2>&1 || fail {q(unavailable_message(host_name, NO_FLOCK))}",
            f'[ "${{session:-1}}" -gt 1 ] || fail {q(unavailable_message(host_name, NO_SESSION))}',
            # The lock's directory is root's alone (0700; /run is root's): made so, or refused.
            f"lock_dir=$(dirname -- {lock})",
            "umask 077",
            '[ -e "$lock_dir" ] || [ -L "$lock_dir" ] || mkdir -m 700 -- "$lock_dir"',
            f'if [ -L "$lock_dir" ] || [ "$({STAT} -c %u:%a -- "$lock_dir")" != "$(id -u):700" ]; then',
            f"  fail {with_variable(untrusted_lock_message(host_name, MARK), '$lock_dir')}",
            "fi",
            f'if lock_held && [ "$(cat {lock}.session 2>/dev/null)" = "$session" ]; then exit 0; fi',
            f"exec 9>>{lock}",
            f"if ! flock -w {LOCK_WAIT_SECONDS} 9; then",
            f"  owner=$(cat {lock}.owner 2>/dev/null)",
            f"  fail {with_variable(busy_message(host_name, MARK), '${owner:-another run}')}",
            "fi",
            f"generation=$(cat {lock}.generation 2>/dev/null)",
            "generation=${generation:-0}",
            *check_generation,
            f"echo $((generation + 1)) > {lock}.generation",
            f'echo "$session" > {lock}.session',
            f'printf "%s since %s\\n" {q(owner)} "$(date -u +%FT%TZ)" > {lock}.owner',
            # The holder keeps fd 9 (the lock) until this connection's sshd is gone and what the
            # run still had running has been stopped.
            *run_identity_lines(anchor_pid),
            f'setsid sh -c {q(LOCK_HOLDER)} lock-holder "$session" "$connection" "$started" "$procs" "$login_uid" </dev/null >/dev/null 2>&1 &',
        ]
    )

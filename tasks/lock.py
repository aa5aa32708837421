"""The node's run lock: one containerd-deploy run at a time per node, held for as long as the
run's SSH connection (or, with @local, its pyinfra process) lives. The node fact takes it in
the same round trip as everything else it asks."""

import shlex

# Held, while a run's SSH connection lasts, by a small process on the node: a second run
# waits for it, then is refused; a run killed or cut off frees it within a second.
LOCK_PATH = "/run/containerd-deploy.lock"
LOCK_WAIT_SECONDS = 10


# The lock holder: `sh -c LOCK_HOLDER lock-holder <sshd pid> <$SSH_CONNECTION of the run>`.
# Once the connection's sshd is gone, the run's commands that outlive it (a killed controller
# or a dropped link does not stop them) are stopped: TERM, then KILL after 10 s, as if the run
# had been cut off at that point, a point every step is safe to stop at. They are the
# processes whose environment carries the run's SSH_CONNECTION (its client address and port).
# So the next run never works beside a dead one's leftovers.
LOCK_HOLDER = "\n".join(
    [
        'while kill -0 "$1" 2>/dev/null; do sleep 1; done',
        "connection=$2",
        '[ -n "$connection" ] || exit 0',
        "leftovers() {",
        '  grep -l -s -z -x -F "SSH_CONNECTION=$connection" /proc/[0-9]*/environ | while read -r environ; do',
        "    pid=${environ#/proc/}",
        "    pid=${pid%/environ}",
        # Not this holder's own session (it is a session leader: setsid), so not its helpers;
        # nor a zombie, which is gone already.
        """    sid=$(awk '{ sub(/.*\\) /, ""); if ($1 != "Z") print $4 }' "/proc/$pid/stat" 2>/dev/null)""",
        '    [ -n "$sid" ] && [ "$sid" != "$$" ] && echo "$pid"',
        "  done",
        "  true",
        "}",
        "waited=0",
        'while pids=$(leftovers) && [ -n "$pids" ] && [ "$waited" -lt 20 ]; do',
        '  if [ "$waited" -eq 0 ]; then kill -TERM $pids 2>/dev/null; fi',
        '  if [ "$waited" -ge 10 ]; then kill -KILL $pids 2>/dev/null; fi',
        "  waited=$((waited + 1))",
        "  sleep 1",
        "done",
    ]
)


def node_lock_lines(owner: str, anchor_pid: int = 0) -> list[str]:
    """Shell lines that take the node's run lock for as long as this SSH connection lives (or,
    with `anchor_pid`, the process of a run on the node itself: pyinfra's @local).

    The lock is a flock on LOCK_PATH, handed to a detached process that exits when the sshd
    serving this connection (or the anchor process) does. Prints "acquired", "held" (this run
    has it already), "busy <owner>", or "unavailable <why>" (no flock, or neither sshd nor an
    anchor to hold it for).
    """
    q = shlex.quote
    if anchor_pid:
        find_session = [f"session={int(anchor_pid)}", '[ -d "/proc/$session" ] || session=1', 'connection=""']
    else:
        find_session = [
            "session=$$",
            "child=$$",
            # The sshd process of this connection: the first sshd/sshd-session ancestor.
            'while [ "${session:-1}" -gt 1 ]; do',
            '  case "$(cat /proc/$session/comm 2>/dev/null)" in sshd|sshd-session) break;; esac',
            "  child=$session",
            "  session=$(awk '{ sub(/.*\\) /, \"\"); print $2 }' /proc/$session/stat 2>/dev/null)",
            "done",
            # Through sudo the environment is reset: the connection is read from the login
            # shell sshd started (the run's sudo processes carry it too, and relay a TERM to
            # the commands they run).
            'connection=${SSH_CONNECTION:-$(tr "\\000" "\\n" < "/proc/$child/environ" 2>/dev/null | '
            "sed -n 's/^SSH_CONNECTION=//p')}",
        ]
    return [
        *find_session,
        'if ! command -v flock >/dev/null 2>&1; then echo "unavailable flock is not installed";',
        'elif [ "${session:-1}" -le 1 ]; then echo "unavailable not run through sshd (nor by pyinfra on the node itself)";',
        f'elif [ "$(cat {q(LOCK_PATH)}.session 2>/dev/null)" = "$session" ]; then echo held;',
        "else",
        f"  exec 9>>{q(LOCK_PATH)}",
        f"  if flock -w {LOCK_WAIT_SECONDS} 9; then",
        f'    echo "$session" > {q(LOCK_PATH)}.session',
        f'    printf "%s since %s\\n" {q(owner)} "$(date -u +%FT%TZ)" > {q(LOCK_PATH)}.owner',
        # The holder keeps fd 9 (the lock) until this connection's sshd is gone and what the
        # run still had running has been stopped.
        f'    setsid sh -c {q(LOCK_HOLDER)} lock-holder "$session" "$connection" </dev/null >/dev/null 2>&1 &',
        "    echo acquired",
        "  else",
        f'    echo "busy $(cat {q(LOCK_PATH)}.owner 2>/dev/null)"',
        "  fi",
        "  exec 9>&-",
        "fi",
    ]

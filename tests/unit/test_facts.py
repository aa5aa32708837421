import base64

import pytest

from containerd_deploy.facts.node import parse_ctr_version, parse_node_state
from containerd_deploy.remote.node_state import SECTION

CTR_VERSION = """Client:
  Version:  v1.7.11
  Revision: 64b8a811b07ba6288238eefc14d898ee0b5b99ba
  Go version: go1.20.12

Server:
  Version:  v1.7.11
  Revision: 64b8a811b07ba6288238eefc14d898ee0b5b99ba
  UUID: 2f758747-ea47-4b81-8f2c-66133063dad5
""".splitlines()


def test_ctr_version_client_and_server():
    assert parse_ctr_version(CTR_VERSION) == ("v1.7.11", "v1.7.11")


def test_ctr_version_without_a_daemon():
    lines = CTR_VERSION[:4] + [
        'ctr: failed to dial "/run/containerd/containerd.sock": context deadline exceeded'
    ]
    assert parse_ctr_version(lines) == ("v1.7.11", None)


def test_node_state_sections():
    config = "# mine\n\nversion = 2\n"
    output = [
        f"{SECTION}machine x86_64",
        f"{SECTION}systemd",
        f"{SECTION}manifest containerd.manifest",
        "component containerd",
        "version 1.7.11",
        "sha256 " + "a" * 64,
        "url http://m/c.tar.gz",
        "file /usr/local/bin/containerd " + "b" * 64,
        "file /usr/local/bin/ctr " + "c" * 64,
        f"{SECTION}actual containerd.manifest",
        "b" * 64 + "  /usr/local/bin/containerd",
        f"{SECTION}unit",
        "d" * 64 + "  /etc/systemd/system/containerd.service",
        f"{SECTION}config",
        base64.b64encode(config.encode()).decode(),
        f"{SECTION}service",
        "MainPID=482",
        "ActiveState=active",
        "UnitFileState=enabled",
        "NeedDaemonReload=no",
        f"{SECTION}ctr",
        *CTR_VERSION,
        f"{SECTION}default",
    ]
    state = parse_node_state(output)
    assert state.machine == "x86_64" and state.systemd
    manifest = state.manifests["containerd"]
    assert manifest.fields["version"] == "1.7.11"
    assert manifest.files == {"/usr/local/bin/containerd": "b" * 64, "/usr/local/bin/ctr": "c" * 64}
    assert not manifest.intact(), "ctr is missing on the node"
    manifest.actual["/usr/local/bin/ctr"] = "c" * 64
    assert manifest.intact()
    assert state.unit_sha256 == "d" * 64
    assert state.config_text == config
    assert (state.main_pid, state.active, state.enabled) == (482, True, True)
    assert (state.ctr_client, state.ctr_server) == ("v1.7.11", "v1.7.11")
    assert state.default_config is None


def test_a_bare_node():
    state = parse_node_state(
        [
            f"{SECTION}machine aarch64",
            f"{SECTION}unit",
            f"{SECTION}config",
            f"{SECTION}service",
            "MainPID=0",
            "ActiveState=inactive",
            "UnitFileState=",
            f"{SECTION}ctr",
            f"{SECTION}default",
        ]
    )
    assert state.machine == "aarch64" and not state.systemd
    assert state.manifests == {} and state.unit_sha256 is None and state.config_text is None
    assert (state.main_pid, state.active, state.enabled) == (0, False, False)


def test_node_state_reads_the_daemon_process_and_the_files_it_loaded():
    from containerd_deploy.facts.node import newer_than_daemon

    output = [
        f"{SECTION}machine x86_64",
        f"{SECTION}service",
        "MainPID=482",
        "ActiveState=active",
        "NeedDaemonReload=yes",
        f"{SECTION}exe",
        "/usr/local/bin/containerd (deleted)",
        f"{SECTION}started",
        "stat 482 (containerd) S 1 482 482 0 -1 4194560 0 0 0 0 5 3 0 0 20 0 12 0 10025 0",
        "btime 900",
        f"{SECTION}mtimes",
        "990 /etc/containerd/config.toml",
        "1003 /etc/systemd/system/containerd.service",
    ]
    state = parse_node_state(output)
    assert state.need_daemon_reload and state.exe.endswith(" (deleted)") and state.started == 1000.25
    loaded = ("/etc/containerd/config.toml", "/etc/systemd/system/containerd.service", "/absent")
    assert newer_than_daemon(state.started, state.mtimes, loaded) == [
        "/etc/systemd/system/containerd.service"
    ]
    # Within the clock's resolution of the start: not stale (the deploy writes, then restarts).
    assert newer_than_daemon(1000.25, {"/c": 1001}, ("/c",)) == []
    assert newer_than_daemon(None, {"/c": 5000}, ("/c",)) == [], "no daemon, nothing stale"


def _orphan(environment: dict, name: str = "sleep") -> int:
    """A process whose parent has exited (as a run's command is once its sshd is gone)."""
    import subprocess

    out = subprocess.run(
        ["sh", "-c", f"setsid {name} 300 >/dev/null 2>&1 </dev/null & echo $!"],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out)


def _ticks_now() -> int:
    up = open("/proc/uptime").read().split()[0]
    seconds, _, fraction = up.partition(".")
    return int(seconds) * 100 + int(fraction[:2].ljust(2, "0"))


def _alive(pid: int) -> bool:
    import os

    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    finally:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


@pytest.mark.other_process
def test_the_lock_holder_stops_what_a_dead_run_left_behind_and_nothing_else(tmp_path):
    """Once the run's sshd (here: a process that has exited) is gone, the holder stops the
    processes carrying the run's SSH_CONNECTION that started since its sshd and are under no
    living sshd; it leaves another connection's, an older one that reused the address and port,
    a later connection's under its own sshd, and its own helpers alone, raises the lock's
    generation, and exits: the lock is free. Regression (#26): any process with the same
    SSH_CONNECTION was stopped."""
    import os
    import signal
    import subprocess
    import time

    from containerd_deploy.remote.lock import LOCK_HOLDER
    from containerd_deploy.remote.paths import LOCK_PATH

    holder_script = LOCK_HOLDER.replace(LOCK_PATH, str(tmp_path / "lock"))
    (tmp_path / "lock.generation").write_text("7\n")
    gone = subprocess.Popen(["true"])
    gone.wait()
    connection = f"127.0.0.1 {os.getpid()} 10.0.2.15 22"
    environment = {**os.environ, "SSH_CONNECTION": connection}
    older = _orphan(environment)  # a connection long gone that used the same address and port
    time.sleep(0.05)
    started = _ticks_now()
    time.sleep(0.05)
    leftover = _orphan(environment)
    other_connection = _orphan({**environment, "SSH_CONNECTION": connection + "0"})
    sshd = tmp_path / "sshd"  # a later connection that reuses the port, under its own sshd
    sshd.write_bytes(open("/bin/dash", "rb").read())
    sshd.chmod(0o755)
    later = subprocess.Popen([str(sshd), "-c", "sleep 300; true"], env=environment)
    pids = [older, leftover, other_connection, later.pid]
    try:
        began = time.monotonic()
        holder = subprocess.run(
            [
                *(
                    "setsid",
                    "sh",
                    "-c",
                    holder_script,
                    "lock-holder",
                    str(gone.pid),
                    connection,
                    str(started),
                ),
                *("", str(os.getuid())),  # no session scope; the login user: this test's
            ],
            env=environment,  # the holder inherits the run's SSH_CONNECTION too, as on a node
            timeout=30,
        )
        assert holder.returncode == 0
        time.sleep(0.2)
        assert not _alive(leftover), "the run's leftover got SIGTERM"
        assert time.monotonic() - began < 5
        assert _alive(other_connection), "another connection's process is left alone"
        assert _alive(older), "a process older than the run's sshd is not the run's"
        assert later.poll() is None, "a process under a living sshd is another connection's"
        assert (tmp_path / "lock.generation").read_text() == "8\n", "a run that looked meanwhile knows"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        later.kill()
    # Without an SSH_CONNECTION (not run through sshd) it only waits for the connection.
    assert (
        subprocess.run(["sh", "-c", holder_script, "lock-holder", str(gone.pid), ""], timeout=5).returncode
        == 0
    )
    assert (tmp_path / "lock.generation").read_text() == "9\n"


@pytest.mark.other_process
def test_a_process_of_another_user_is_never_the_runs_whatever_its_environment(tmp_path):
    """An unprivileged local user can read a run's address and port (/proc/net/tcp) and start
    processes carrying its SSH_CONNECTION: the holder stops only root's and the login user's."""
    import os
    import signal
    import subprocess
    import time

    from containerd_deploy.remote.lock import LOCK_HOLDER
    from containerd_deploy.remote.paths import LOCK_PATH

    from .rootless import ROOT

    if not ROOT:
        pytest.skip("starts a process as another user (run as root)")
    holder_script = LOCK_HOLDER.replace(LOCK_PATH, str(tmp_path / "lock"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    connection = "192.0.2.7 50001 192.0.2.1 22"
    environment = {**os.environ, "SSH_CONNECTION": connection}
    theirs = _orphan(environment, "setpriv --reuid=65534 --regid=65534 --clear-groups sleep")
    # A setuid program another user started: it runs as root (euid 0), but is theirs (real uid).
    setuid = _orphan(environment, "setpriv --ruid=65534 sleep")
    ours = _orphan(environment)
    # What the run started through sudo: sudo carries the connection, its command does not.
    through_sudo = _orphan(environment, "sh -c 'env -u SSH_CONNECTION sleep 300 & wait' sleep")
    children: list[str] = []
    for _ in range(100):  # its shell starts the child a moment after it starts itself
        children = subprocess.run(
            ["pgrep", "-P", str(through_sudo)], capture_output=True, text=True
        ).stdout.split()
        if children:
            break
        time.sleep(0.05)
    try:
        holder = subprocess.run(
            ["setsid", "sh", "-c", holder_script, "lock-holder", str(gone.pid), connection, "0", "", "0"],
            timeout=30,
        )
        assert holder.returncode == 0
        assert not _alive(ours) and _alive(theirs) and _alive(setuid)
        assert children and not any(_alive(int(child)) for child in children), "what the run started goes too"
    finally:
        for pid in (theirs, setuid, ours, through_sudo, *map(int, children)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.other_process
def test_with_a_login_session_scope_the_lock_holder_stops_exactly_its_processes(tmp_path):
    """Where the run's connection has a systemd session scope (pam_systemd), its processes are
    the scope's: a process elsewhere is never stopped, whatever its environment says."""
    import os
    import signal
    import subprocess

    from containerd_deploy.remote.lock import LOCK_HOLDER
    from containerd_deploy.remote.paths import LOCK_PATH

    holder_script = LOCK_HOLDER.replace(LOCK_PATH, str(tmp_path / "lock"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    connection = "192.0.2.7 50000 192.0.2.1 22"
    environment = {**os.environ, "SSH_CONNECTION": connection}
    in_scope, elsewhere = _orphan(environment), _orphan(environment)
    procs = tmp_path / "cgroup.procs"
    procs.write_text(f"{in_scope}\n")
    try:
        holder = subprocess.run(
            ["setsid", "sh", "-c", holder_script, "lock-holder", str(gone.pid), connection, "0", str(procs)],
            timeout=30,
        )
        assert holder.returncode == 0
        assert not _alive(in_scope) and _alive(elsewhere)
    finally:
        for pid in (in_scope, elsewhere):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_process_start_from_its_proc_stat_line_and_the_boot_time():
    from containerd_deploy.facts.node import process_start

    # Field 22 (starttime, in ticks of 1/100 s) follows a command name that may hold ") ".
    fields = [
        "S",
        "1",
        "482",
        "482",
        "0",
        "-1",
        "4194560",
        "0",
        "0",
        "0",
        "0",
        "5",
        "3",
        "0",
        "0",
        "20",
        "0",
        "12",
        "0",
        "123456",
    ]
    assert fields[19] == "123456"
    assert (
        process_start([f"stat 482 (conta) inerd) {' '.join(fields)} 99 100", "btime 1700000000"])
        == 1700001234.56
    )
    assert process_start(["1000.25"]) is None, "only what today's fact prints"
    assert process_start(["stat 482 (containerd) S 1"]) is None
    assert process_start([]) is None


def test_a_units_state_is_read_as_the_node_fact_reads_it():
    from containerd_deploy.facts.node import UnitState

    fact = UnitState()
    assert fact.process(["ActiveState=active", "UnitFileState=enabled"]) == (True, True)
    assert fact.process(["ActiveState=activating", "UnitFileState=disabled"]) == (False, False)
    assert fact.process(["ActiveState=inactive", "UnitFileState="]) == (False, False)
    assert fact.process([]) == (False, False)
    assert fact.command("a b.service").endswith("-- 'a b.service' 2>/dev/null || true")

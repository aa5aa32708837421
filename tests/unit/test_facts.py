import base64

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


def test_the_lock_holder_stops_what_a_dead_run_left_behind(tmp_path):
    """Once the run's sshd (here: a process that has exited) is gone, the holder stops the
    processes carrying the run's SSH_CONNECTION, leaves others and its own helpers alone,
    raises the lock's generation, and exits: the lock is free."""
    import os
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
    leftover = subprocess.Popen(["setsid", "sleep", "300"], env=environment)
    other_run = subprocess.Popen(
        ["setsid", "sleep", "300"], env={**environment, "SSH_CONNECTION": connection + "0"}
    )
    try:
        started = time.monotonic()
        # The holder inherits the run's SSH_CONNECTION too, as on a node.
        holder = subprocess.run(
            ["setsid", "sh", "-c", holder_script, "lock-holder", str(gone.pid), connection],
            env=environment,
            timeout=30,
        )
        assert holder.returncode == 0
        assert leftover.wait(timeout=5) == -15, "the leftover got SIGTERM"
        assert time.monotonic() - started < 5
        assert other_run.poll() is None, "another connection's process is left alone"
        assert (tmp_path / "lock.generation").read_text() == "8\n", "a run that looked meanwhile knows"
    finally:
        leftover.kill()
        other_run.kill()
    # Without an SSH_CONNECTION (not run through sshd) it only waits for the connection.
    assert (
        subprocess.run(["sh", "-c", holder_script, "lock-holder", str(gone.pid), ""], timeout=5).returncode
        == 0
    )
    assert (tmp_path / "lock.generation").read_text() == "9\n"


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

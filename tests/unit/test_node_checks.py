"""The refusals the deploy makes from the node fact, before any operation: a host without
systemd, a kubelet on another cgroup driver, a containerd from the distribution's packages."""

import base64
import os
import re
import shlex
import stat
import subprocess
import time
from pathlib import Path

import pytest
from pyinfra.api.exceptions import DeployError

from containerd_deploy.data.settings import resolve
from containerd_deploy.deploy.node import check_distro_package, check_kubelet, check_supported
from containerd_deploy.facts.node import DistroPackage, parse_node_state
from containerd_deploy.remote.node_state import SECTION, distro_package_lines
from containerd_deploy.remote.paths import LOCK_PATH

from .rootless import needs_root

KUBELET = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: {}\n"
DEBIAN = DistroPackage("dpkg", "containerd", "1.7.24~ds1-6+deb13u1", "/usr/bin/containerd")


def node_with(*sections: str):
    return parse_node_state(
        [f"{SECTION}machine x86_64", f"{SECTION}kernel Linux", f"{SECTION}systemd", *sections]
    )


def test_the_fact_reads_a_kubelet_config_and_distro_packages():
    config = KUBELET.format("cgroupfs")
    state = node_with(
        f"{SECTION}kubelet",
        base64.b64encode(config.encode()).decode(),
        f"{SECTION}packages",
        "dpkg containerd 1.7.24~ds1-6+deb13u1 /usr/bin/containerd",
        "rpm containerd.io 1.7.27-3.1.el9 /usr/bin/containerd",
    )
    assert state.kubelet_config == config
    assert state.distro_packages == [
        DEBIAN,
        DistroPackage("rpm", "containerd.io", "1.7.27-3.1.el9", "/usr/bin/containerd"),
    ]
    bare = node_with(f"{SECTION}kubelet", f"{SECTION}packages")
    assert bare.kubelet_config is None and bare.distro_packages == []


def fake_tool(directory, name: str, script: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_package_probe_names_the_owner_of_a_containerd_binary(tmp_path):
    """The fact's shell lines, run by a real shell against a dpkg-query that owns only
    /usr/bin/containerd: one line per owned binary, with the package's version."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(
        bin_dir,
        "dpkg-query",
        'case "$1" in\n'
        '  -S) [ "$2" = /usr/bin/containerd ] && echo "containerd:amd64: $2" && exit 0; exit 1;;\n'
        '  -W) echo -n "1.7.24~ds1-6+deb13u1";;\n'
        "esac\n",
    )
    script = "\n".join(distro_package_lines()).replace('[ -e "$path" ] || continue', ":")
    result = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["dpkg containerd 1.7.24~ds1-6+deb13u1 /usr/bin/containerd"]


def test_a_host_without_systemd_is_refused_by_name():
    state = parse_node_state([f"{SECTION}machine x86_64"])
    with pytest.raises(DeployError, match=r"^n1: systemd is not running as PID 1 .*Use a systemd host"):
        check_supported(resolve("n1", {}), state)


def test_a_host_that_is_not_linux_is_refused_by_name():
    freebsd = parse_node_state([f"{SECTION}machine amd64", f"{SECTION}kernel FreeBSD"])
    with pytest.raises(DeployError, match=r"^n1: the node runs FreeBSD, not Linux; .*Use a Linux host"):
        check_supported(resolve("n1", {}), freebsd)
    with pytest.raises(DeployError, match=r"^n1: could not read the node's state \(is it a Linux host"):
        check_supported(resolve("n1", {}), parse_node_state(["uname: not found"]))


@pytest.mark.parametrize(
    "kubelet, systemd_cgroup, refused",
    [
        ("systemd", True, False),
        ("cgroupfs", False, False),
        ("cgroupfs", True, True),
        ("systemd", False, True),
    ],
)
def test_a_kubelet_on_another_cgroup_driver_is_refused(kubelet, systemd_cgroup, refused):
    config = KUBELET.format(kubelet)
    state = node_with(f"{SECTION}kubelet", base64.b64encode(config.encode()).decode())
    settings = resolve("n1", {"containerd_systemd_cgroup": systemd_cgroup})
    if not refused:
        check_kubelet(settings, state)
        return
    with pytest.raises(DeployError) as refusal:
        check_kubelet(settings, state)
    message = str(refusal.value)
    assert message.startswith(f"n1: the kubelet's cgroupDriver is {kubelet} (/var/lib/kubelet/config.yaml)")
    assert "'containerd_systemd_cgroup'" in message and "Fix: set both to systemd" in message


def test_a_kubelet_config_without_a_driver_means_cgroupfs():
    state = node_with(f"{SECTION}kubelet", base64.b64encode(b"kind: KubeletConfiguration\n").decode())
    with pytest.raises(DeployError, match="cgroupDriver is cgroupfs"):
        check_kubelet(resolve("n1", {}), state)
    check_kubelet(resolve("n1", {}), node_with(f"{SECTION}kubelet"))  # no kubelet: nothing to match


def test_a_distro_containerd_is_refused_unless_the_operator_says_remove():
    state = node_with(
        f"{SECTION}packages",
        "dpkg containerd 1.7.24~ds1-6+deb13u1 /usr/bin/containerd",
        f"{SECTION}service",
        "ActiveState=active",
        "MainPID=77",
    )
    with pytest.raises(DeployError) as refusal:
        check_distro_package(resolve("n1", {}), state)
    message = str(refusal.value)
    assert message.startswith(
        "n1: a distribution package installs containerd here: containerd "
        "1.7.24~ds1-6+deb13u1 (dpkg, /usr/bin/containerd); containerd.service is running."
    )
    assert "'containerd_distro_package' to 'remove'" in message
    check_distro_package(resolve("n1", {"containerd_distro_package": "remove"}), state)
    check_distro_package(resolve("n1", {}), node_with(f"{SECTION}packages"))


def test_the_distro_package_policy_is_a_choice():
    from containerd_deploy.data.values import DataError

    with pytest.raises(DataError, match="containerd_distro_package"):
        resolve("n1", {"containerd_distro_package": "replace"})


def test_a_run_that_could_not_take_the_lock_stops():
    """Regression: a run not coming through sshd reported the lock "unavailable" and went on unguarded."""
    from containerd_deploy.deploy.node import check_locked

    settings = resolve("node1", {})
    for lock in (
        "unavailable not run through sshd (nor by pyinfra on the node itself)",
        "unavailable flock is not installed",
        "",
    ):
        with pytest.raises(
            DeployError, match=r"^node1: could not take the node's run lock .*Fix: run over SSH"
        ):
            check_locked(settings, node_with(f"{SECTION}lock", lock))
    # Busy is the lock operation's to wait for; the look itself goes on.
    for lock in ("free 0", "held", "busy 4 controller c1 pid 7 since now"):
        check_locked(settings, node_with(f"{SECTION}lock", lock))


def lock_scripts(tmp_path, anchor_pid: int, wait: int = 1):
    """The lock's look (fact lines) and a take (the operation's command) for a run anchored to
    `anchor_pid`, on a lock file under tmp_path; the take waits `wait` s instead of 10."""
    from containerd_deploy.remote.lock import LOCK_WAIT_SECONDS, lock_state_lines, take_lock_script
    from containerd_deploy.remote.paths import LOCK_PATH

    def local(script: str) -> str:
        return (
            script.replace(LOCK_PATH, str(tmp_path / "lock"))
            .replace(f"flock -w {LOCK_WAIT_SECONDS} ", f"flock -w {wait} ")
            .replace(f'[ "$tries" -lt {LOCK_WAIT_SECONDS * 5} ]', f'[ "$tries" -lt {wait * 5} ]')
        )

    def look() -> str:
        script = local("\n".join(lock_state_lines(anchor_pid=anchor_pid)))
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30).stdout.strip()

    def take(owner: str, generation: int | None) -> subprocess.CompletedProcess:
        script = local(take_lock_script("node1", owner, generation, anchor_pid=anchor_pid))
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)

    return look, take


def test_the_lock_is_looked_at_without_taking_it_and_taken_by_the_operation(tmp_path):
    """pyinfra @local (no sshd above the commands): the lock is held for the run's process. The
    look changes nothing (it waits for another run's lock, then says busy); the take holds it
    until that process ends; a second run waits, then is refused naming the holder; a run that
    looked before another run held the node stops."""
    import time

    first_run, second_run = subprocess.Popen(["sleep", "120"]), subprocess.Popen(["sleep", "120"])
    try:
        look, take = lock_scripts(tmp_path, first_run.pid)
        look_second, take_second = lock_scripts(tmp_path, second_run.pid)
        assert look() == "free 0" and look() == "free 0", "looking takes nothing"
        assert not (tmp_path / "lock").exists()
        taken = take("controller c1 pid 1", 0)
        assert taken.returncode == 0, taken.stderr
        assert look() == "held", "the same run looks again"
        assert take("controller c1 pid 1", 0).returncode == 0, "and takes it again: it has it"
        assert (tmp_path / "lock.generation").read_text() == "1\n"
        started = time.monotonic()
        seen = look_second()
        assert seen.startswith("busy 1 controller c1 pid 1 since "), seen
        # The real holder, as the node sees it (the owner record says what the run wrote).
        assert seen.endswith(f"; on the node: uid {os.getuid()} pid {first_run.pid} (sleep 120)"), seen
        assert time.monotonic() - started >= 1, "the look waited for the other run first"
        started = time.monotonic()
        refused = take_second("controller c2 pid 2", 1)
        assert refused.returncode == 1 and time.monotonic() - started >= 1, "it waited for the lock"
        assert refused.stderr.startswith(
            "node1: another containerd-deploy run holds this node (controller c1 pid 1 since "
        ), refused.stderr
        assert "Waited 10s; rerun when it is done." in refused.stderr

        first_run.kill()  # the first run ends: its holder raises the generation and frees the lock
        first_run.wait()
        for _ in range(100):
            if look_second().startswith("free"):
                break
            time.sleep(0.1)
        assert look_second() == "free 2"
        stale = take_second("controller c2 pid 2", 1)
        assert stale.returncode == 1
        assert stale.stderr.strip() == (
            "node1: another containerd-deploy run held this node while or after this run looked at it (the run "
            "lock's generation was 1, now 2), so what this run planned is out of date; it changed nothing. "
            "Rerun to start from the node as it is now."
        )
        assert look_second() == "free 2", "the stale run left the lock as it was"
        assert take_second("controller c2 pid 2", 2).returncode == 0
        look_third, _ = lock_scripts(tmp_path, os.getpid())
        assert look_second() == "held" and look_third().startswith("busy 3 controller c2 pid 2 since ")
    finally:
        first_run.kill()
        second_run.kill()


@needs_root
def test_a_node_that_is_a_container_sees_a_held_lock(tmp_path):
    """Regression (found on a systemd-nspawn machine): in a PID namespace of its own the kernel's
    /proc/locks leaves out a lock whose taker has exited, as a run's has (the take hands the lock
    to a holder and exits), so the look said "free" while another run held the node."""
    from containerd_deploy.remote.lock import LOCK_WAIT_SECONDS, lock_state_lines
    from containerd_deploy.remote.paths import LOCK_PATH

    lock = tmp_path / "lock"
    # The take as a run's: a short-lived shell locks, hands the lock to a process that stays, exits.
    holder = subprocess.Popen(
        ["sh", "-c", 'exec 9>>"$0"; flock 9; sleep 60 & echo $!', str(lock)],
        stdout=subprocess.PIPE,
        text=True,
    )
    holder_pid = int(holder.stdout.readline())
    holder.wait()
    # The look runs as in the container, anchored to a process there (pid 2: `sleep`, started
    # by the namespace's first process), waiting 0.4 s instead of LOCK_WAIT_SECONDS.
    look = (
        "\n".join(lock_state_lines(anchor_pid=2))
        .replace(LOCK_PATH, str(lock))
        .replace(f"-lt {LOCK_WAIT_SECONDS * 5} ]", "-lt 2 ]")
    )
    in_container = [
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "sh",
        "-c",
        'sleep 30 & sh -c "$0"; kill $!',
        look,
    ]
    try:
        seen = subprocess.run(in_container, capture_output=True, text=True, timeout=30)
        assert seen.stdout.strip() == "busy 0", seen.stdout + seen.stderr
    finally:
        os.kill(holder_pid, 9)
    seen = subprocess.run(in_container, capture_output=True, text=True, timeout=30)
    assert seen.stdout.strip() == "free 0", "freed when its holder is gone"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock"], "the look made no file"


def test_the_node_fact_asks_systemd_again_when_it_waited_for_another_run(tmp_path):
    """Its first stage asks systemd beside the lock's look: what it said while another run held
    the node is stale, so once that run is done it is asked again, and only that is printed."""
    from containerd_deploy.remote.lock import LOCK_WAIT_SECONDS
    from containerd_deploy.remote.node_state import node_state_command

    fake = tmp_path / "fake"
    fake.mkdir()
    calls = tmp_path / "calls"
    (fake / "systemctl").write_text(f'#!/bin/sh\necho x >> {calls}\necho "MainPID=$(wc -l < {calls})"\n')
    (fake / "systemctl").chmod(0o755)
    lock = tmp_path / "lock"
    (tmp_path / "lock.session").write_text("1\n")  # another run's
    script = (
        node_state_command("/b", "/c", "/u", str(tmp_path / "state"), anchor_pid=os.getpid())
        .replace(LOCK_PATH, str(lock))
        .replace(f"-lt {LOCK_WAIT_SECONDS * 5} ]", "-lt 10 ]")
    )
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    for held, asked in [(True, 2), (False, 1)]:
        calls.write_text("")
        holder = subprocess.Popen(["flock", str(lock), "sleep", "0.6"]) if held else None
        time.sleep(0.2)
        result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=30)
        if holder:
            holder.wait()
        state = parse_node_state(result.stdout.splitlines())
        assert (state.lock.kind, state.main_pid, len(calls.read_text().split())) == ("free", asked, asked), (
            held
        )
        assert result.stdout.count("MainPID=") == 1


def test_the_node_fact_asks_systemd_again_when_the_lock_changed_hands_while_it_asked(tmp_path):
    """Another run took or freed the lock while the first stage asked systemd (its generation
    moved; no wait seen): what it said may be that run's half-done work, so it is asked again."""
    from containerd_deploy.remote.node_state import node_state_command

    fake = tmp_path / "fake"
    fake.mkdir()
    calls, generation = tmp_path / "calls", tmp_path / "lock.generation"
    (fake / "systemctl").write_text(
        f"#!/bin/sh\necho x >> {calls}\n"
        f'[ "$(wc -l < {calls})" -gt 1 ] || {{ echo 8 > {generation}; sleep 0.5; }}\n'
        f'echo "MainPID=$(wc -l < {calls})"\n'
    )
    (fake / "systemctl").chmod(0o755)
    script = node_state_command("/b", "/c", "/u", str(tmp_path / "state"), anchor_pid=os.getpid()).replace(
        LOCK_PATH, str(tmp_path / "lock")
    )
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    for first, asked in [("7", 2), ("8", 1)]:  # a run took the lock as it asked; nobody did
        calls.write_text("")
        generation.write_text(first + "\n")
        result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=30)
        state = parse_node_state(result.stdout.splitlines())
        assert (state.main_pid, len(calls.read_text().split())) == (asked, asked), first
        assert result.stdout.count("MainPID=") == 1


def test_without_sshd_or_an_anchor_or_flock_the_lock_is_unavailable(tmp_path):
    from containerd_deploy.remote.lock import lock_state_lines, take_lock_script
    from containerd_deploy.remote.paths import LOCK_PATH

    look = "\n".join(lock_state_lines()).replace(LOCK_PATH, str(tmp_path / "lock"))
    result = subprocess.run(["setsid", "sh", "-c", look], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "unavailable not run through sshd (nor by pyinfra on the node itself)"
    take = take_lock_script("node1", "controller x", 0).replace(LOCK_PATH, str(tmp_path / "lock"))
    result = subprocess.run(["setsid", "sh", "-c", take], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"node1: could not take the node's run lock ({tmp_path / 'lock'}): not run through sshd"
    )
    # An anchor that is gone is no anchor either.
    gone = subprocess.Popen(["true"])
    gone.wait()
    look, take_it = lock_scripts(tmp_path, gone.pid)
    assert look().startswith("unavailable not run through sshd")
    no_flock = tmp_path / "bin"
    no_flock.mkdir()
    for tool in ("sh", "cat", "awk", "stat", "printf", "tr", "sed"):
        found = subprocess.run(
            ["sh", "-c", f"command -v {tool}"], capture_output=True, text=True
        ).stdout.strip()
        if found.startswith("/"):
            (no_flock / tool).symlink_to(found)
    script = "\n".join(lock_state_lines(anchor_pid=os.getpid())).replace(LOCK_PATH, str(tmp_path / "lock"))
    result = subprocess.run(
        [str(no_flock / "sh"), "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": str(no_flock)},
    )
    assert result.stdout.strip() == "unavailable flock is not installed"


def test_every_hosts_data_is_checked_before_the_first_host_is_asked():
    from pyinfra.api import Config, Inventory, State

    from containerd_deploy.data.values import DataError
    from containerd_deploy.deploy.node import check_inventory_data

    def connected(inventory):
        state = State(inventory, Config())
        for one in inventory:
            state.activate_host(one)
        return state

    inventory = Inventory(([("good", {}), ("bad", {"containerd_staging_dir": "/var"})], {}))
    with pytest.raises(DataError, match=r"^bad: data key 'containerd_staging_dir'"):
        check_inventory_data(connected(inventory))
    check_inventory_data(connected(Inventory((["good"], {}))))


@pytest.mark.parametrize(
    "config, refused",
    [
        ('root = "/usr"\n', "a directory of the operating system"),
        ('state = "/run"\n', "a directory of the operating system"),
        ('root = "/var/lib/../.."\n', "not a plain path"),
        ('root = "/etc/containerd"\n', "which the deploy manages"),
        ('root = "relative"\n', "not an absolute path"),
        ('root = "/data/containerd"\nstate = "/run/containerd"\n', None),
        (None, None),
    ],
)
def test_purged_refuses_a_root_or_state_that_is_not_containerds_own(config, refused):
    """Regression: purged deleted whatever root/state config.toml named (only / was refused)."""
    from containerd_deploy.data.values import DataError
    from containerd_deploy.deploy.reset import check_purge

    node = node_with(*([f"{SECTION}config", base64.b64encode(config.encode()).decode()] if config else []))
    settings = resolve("node1", {"containerd_state": "purged"})
    if refused is None:
        check_purge(settings, node)
        return
    with pytest.raises(
        DataError, match=rf"^node1: data key 'containerd_state' is purged, .*{refused}.*Fix: set"
    ):
        check_purge(settings, node)
    check_purge(resolve("node1", {"containerd_state": "absent"}), node)  # absent keeps the data: no refusal


def test_the_node_fact_finds_what_runs_cut_short_left_beside_the_deploys_files(tmp_path):
    """Regression: a hidden hosts.toml copy left by a failed upload was never removed."""
    from containerd_deploy.remote.node_state import node_state_command

    certs, bins, sbin = tmp_path / "certs.d", tmp_path / "my bin", tmp_path / "sbin"
    for directory in (
        certs / "docker.io",
        certs / "quay.io",
        bins,
        sbin,
        tmp_path / "state",
        tmp_path / "etc",
    ):
        directory.mkdir(parents=True)
    leftovers = [
        certs / "docker.io" / ".hosts.toml.containerd-deploy-new",
        bins / ".containerd-deploy-new.4242",
        sbin / ".containerd-deploy-new.7",
        tmp_path / "etc" / ".config.toml.containerd-deploy-new",
        tmp_path / "state" / "runc.manifest.containerd-deploy-new",
        # What an install or a rollback cut short leaves: a manifest's and a binary's new copy.
        tmp_path / "state" / ".containerd.manifest.containerd-deploy-new",
        sbin / ".runc.containerd-deploy-new",
        bins / ".ctr.containerd-deploy-new",
    ]
    for path in leftovers:
        path.mkdir() if "new." in path.name else path.write_text("x")
    (certs / "quay.io" / "hosts.toml").write_text("kept")
    (bins / "containerd").write_text("kept")
    command = node_state_command(
        str(bins),
        str(tmp_path / "etc" / "config.toml"),
        str(tmp_path / "unit"),
        str(tmp_path / "state"),
        certs_dir=str(certs),
        install_dirs=(str(sbin),),
    )
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
    found = parse_node_state(result.stdout.splitlines()).hidden_leftovers
    assert sorted(found) == sorted(str(path) for path in leftovers)


def test_the_node_fact_asks_systemd_about_the_unit_the_deploy_installs(tmp_path):
    """Regression: the fact asked about containerd.service while the operations installed and
    started the unit named by containerd_unit_path (so a renamed unit was never seen running)."""
    from containerd_deploy.remote.node_state import node_state_command

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/systemctl-calls\necho ActiveState=active; echo MainPID=0\n'
    )
    (fake / "systemctl").chmod(0o755)
    unit = tmp_path / "etc" / "containerd-k8s.service"
    command = node_state_command(
        str(tmp_path / "bin-none"), str(tmp_path / "config.toml"), str(unit), str(tmp_path / "state")
    )
    result = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, env={"PATH": f"{fake}:/usr/bin:/bin"}
    )
    calls = (tmp_path / "systemctl-calls").read_text()
    assert "show containerd-k8s.service " in calls, calls
    assert "containerd.service" not in calls
    assert parse_node_state(result.stdout.splitlines()).service.get("ActiveState") == "active"


def test_the_node_fact_asks_the_ctr_of_any_daemon_but_the_one_last_checked_in_full(tmp_path):
    """Its version is fixed at its start: the ctr of the MainPID the controller names is not
    started (~0.2 s on a small node); any other daemon's is."""
    from containerd_deploy.remote.node_state import node_state_command

    fake, bins = tmp_path / "fake", tmp_path / "bin"
    fake.mkdir()
    bins.mkdir()
    (fake / "systemctl").write_text("#!/bin/sh\necho ActiveState=active; echo MainPID=4242\n")
    (bins / "ctr").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/ctr-calls\n')
    for script in (fake / "systemctl", bins / "ctr"):
        script.chmod(0o755)
    socket_test = "[ -S /run/containerd/containerd.sock ]"
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    for known_pid, asked in [(0, True), (4241, True), (4242, False)]:
        calls = tmp_path / "ctr-calls"
        calls.unlink(missing_ok=True)
        command = node_state_command(
            str(bins),
            str(tmp_path / "config.toml"),
            str(tmp_path / "unit"),
            str(tmp_path / "state"),
            known_pid=known_pid,
        ).replace(socket_test, "true")  # no daemon's socket here
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env)
        state = parse_node_state(result.stdout.splitlines())
        assert (calls.exists(), state.ctr_not_asked) == (asked, not asked), known_pid
        assert state.main_pid == 4242


def test_the_node_fact_names_the_daemons_binary_as_readlink_does(tmp_path):
    """The installed binary is named without starting readlink; one replaced since the daemon
    started still reads "… (deleted)" (a stale daemon, restarted)."""
    import shutil

    from containerd_deploy.remote.node_state import node_state_command

    fake, bins = tmp_path / "fake", tmp_path / "bin"
    fake.mkdir()
    bins.mkdir()
    shutil.copy("/bin/sleep", bins / "containerd")
    daemon = subprocess.Popen([str(bins / "containerd"), "30"])
    try:
        (fake / "systemctl").write_text(f"#!/bin/sh\necho ActiveState=active; echo MainPID={daemon.pid}\n")
        (fake / "systemctl").chmod(0o755)
        command = node_state_command(str(bins), "/c", "/u", str(tmp_path / "state"))
        env = {"PATH": f"{fake}:/usr/bin:/bin"}

        def exe() -> str:
            result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env)
            return parse_node_state(result.stdout.splitlines()).exe

        assert exe() == str(bins / "containerd")
        shutil.copy("/bin/sleep", bins / ".new")
        os.replace(bins / ".new", bins / "containerd")
        assert exe() == f"{bins / 'containerd'} (deleted)"
    finally:
        daemon.kill()
        daemon.wait()


def test_through_sudo_the_lock_holder_learns_the_connection_from_the_login_shell(tmp_path):
    """sudo resets the environment: without this the holder got no SSH_CONNECTION and could not
    stop what a dropped sudo run left running."""
    from containerd_deploy.remote.lock import take_lock_script

    sshd = tmp_path / "sshd"  # an ancestor named like OpenSSH's, as the lock lines look for
    sshd.write_bytes(open("/bin/dash", "rb").read())
    sshd.chmod(0o755)
    lines = take_lock_script("node1", "controller test", 0).replace(LOCK_PATH, str(tmp_path / "lock"))
    # The holder's arguments, recorded instead of starting it.
    record = f"setsid() {{ shift 3; printf '%s\\n' \"$@\" > {tmp_path}/holder-args; }}\n"
    (tmp_path / "lock-lines").write_text(record + lines)
    connection = "192.0.2.7 50000 192.0.2.1 22"
    # sshd -> login shell (with SSH_CONNECTION) -> a command whose environment was reset (sudo's).
    login = f"env -u SSH_CONNECTION sh {tmp_path / 'lock-lines'}; true"
    result = subprocess.run(
        [str(sshd), "-c", f"env SSH_CONNECTION={shlex.quote(connection)} sh -c {shlex.quote(login)}; true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0 and (tmp_path / "lock.owner").exists(), result.stdout + result.stderr
    name, _session, given, started, procs, login_uid = (tmp_path / "holder-args").read_text().splitlines()
    assert (name, given) == ("lock-holder", connection)
    assert int(started) > 0, "when the run's sshd started: its processes are none older"
    assert procs == "" or procs.endswith(".scope/cgroup.procs")
    assert login_uid == str(os.getuid()), "the login shell's user"


def test_the_flow_refuses_an_unsupported_host_before_saying_the_lock_was_unavailable(monkeypatch):
    """The deploy's flow on a fake node: in a container (no systemd, no sshd in its /proc) the
    lock cannot be taken either; the refusal names what the operator must change."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.context import ctx_host, ctx_state

    import containerd_deploy.deploy.node as flow

    inventory = Inventory((["node1"], {}))
    state = State(inventory, Config())
    host = inventory.get_host("node1")
    state.activate_host(host)
    container = parse_node_state(
        [
            f"{SECTION}machine x86_64",
            f"{SECTION}kernel Linux",
            f"{SECTION}lock",
            "unavailable not run through sshd (nor by pyinfra on the node itself)",
        ]
    )
    monkeypatch.setattr(flow, "gather", lambda settings: container)
    with ctx_state.use(state), ctx_host.use(host):
        with pytest.raises(DeployError, match="systemd is not running as PID 1"):
            flow.containerd_node._inner()
        systemd = node_with(f"{SECTION}lock", "unavailable flock is not installed")
        monkeypatch.setattr(flow, "gather", lambda settings: systemd)
        with pytest.raises(DeployError, match="could not take the node's run lock .*flock is not installed"):
            flow.containerd_node._inner()
        monkeypatch.setattr(flow, "for_host", lambda host: resolve("node1", {"containerd_state": "absent"}))
        with pytest.raises(DeployError, match="could not take the node's run lock"):
            flow.containerd_node._inner()


def test_an_unpinned_version_is_refused_for_every_host_before_any_is_asked_unless_it_is_being_removed():
    from pyinfra.api import Config, Inventory, State

    from containerd_deploy.data.values import DataError
    from containerd_deploy.deploy.node import check_inventory_data

    def connected(hosts):
        state = State(Inventory((hosts, {})), Config())
        for one in state.inventory:
            state.activate_host(one)
        return state

    unpinned = {"containerd_version": "1.7.99"}
    with pytest.raises(
        DataError, match=r"^later: data key 'containerd_sha256' gives no checksum for containerd 1.7.99"
    ):
        check_inventory_data(connected([("first", {}), ("later", unpinned)]))
    # Removing containerd needs no release: an unpinned version there is nothing to refuse.
    check_inventory_data(connected([("first", {}), ("later", {**unpinned, "containerd_state": "absent"})]))


def test_a_hook_a_hosts_name_or_address_would_turn_into_an_option_is_refused_before_any_host_is_asked():
    """Regression (#26): the check ran only when the hook ran, mid-run on that host."""
    from pyinfra.api import Config, Inventory, State

    from containerd_deploy.data.values import DataError
    from containerd_deploy.deploy.node import check_inventory_data

    hook = {
        "containerd_restart_hook_before": "kubectl drain {host}",
        "containerd_restart_hook_after": "ssh {address} true",
    }
    for hosts, refused in (
        ([("first", hook), ("--selector=kubernetes.io/os=linux", hook)], "--selector=kubernetes.io/os=linux"),
        ([("first", hook), ("later", {**hook, "ssh_hostname": "-oProxyCommand=x"})], "later"),
    ):
        state = State(Inventory((hosts, {})), Config())
        for one in state.inventory:
            state.activate_host(one)
        with pytest.raises(DataError, match=f"^{re.escape(refused)}: data key 'containerd_restart_hook_"):
            check_inventory_data(state)


def test_only_a_local_connector_runs_on_the_node():
    """@local ties the run lock to this process; any other connector to its connection."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.context import ctx_host, ctx_state

    from containerd_deploy.deploy.node import runs_on_the_node

    inventory = Inventory((["@local", "node1", "@docker/debian"], {}))
    state = State(inventory, Config())
    answers = {}
    with ctx_state.use(state):
        for one in inventory:
            with ctx_host.use(one):
                answers[one.name] = runs_on_the_node()
    assert answers == {"@local": True, "node1": False, "@docker/debian": False}


DEPLOY_PATHS = ("/usr/local/bin", "/srv/tools/runc", "/var/lib/containerd-deploy")


@pytest.mark.parametrize(
    "path, why",
    [
        ("/data/containerd", None),
        ("/data/containerd/", None),
        ("relative/containerd", "is not an absolute path"),
        ("/data/a\\b", "is not an absolute path"),
        ("/data/a\x01b", "is not an absolute path"),
        ("/data/../containerd", "is not a plain path (it has .., . or doubled slashes)"),
        ("/data/./containerd", "is not a plain path (it has .., . or doubled slashes)"),
        ("/data//containerd", "is not a plain path (it has .., . or doubled slashes)"),
        ("//data/containerd", "is not a plain path (it has .., . or doubled slashes)"),
        ("/", "is not a path of its own"),
        ("/usr", "is a directory of the operating system, or holds one"),
        ("/srv/tools", "holds /srv/tools/runc, which the deploy manages"),
        ("/srv/tools/runc", "holds /srv/tools/runc, which the deploy manages"),
        ("/srv/tool", None),
        ("/var/lib/containerd-deploy", "holds /var/lib/containerd-deploy, which the deploy manages"),
    ],
)
def test_what_purged_may_delete_and_why_not(path, why):
    from containerd_deploy.deploy.reset import purge_refusal

    assert purge_refusal(path, DEPLOY_PATHS) == why


def test_purged_never_deletes_the_registry_configuration_the_deploy_writes():
    from containerd_deploy.data.values import DataError
    from containerd_deploy.deploy.reset import check_purge

    config = base64.b64encode(b'root = "/data"\n').decode()
    node = node_with(f"{SECTION}config", config)
    settings = resolve(
        "node1", {"containerd_state": "purged", "containerd_registry_config_path": "/data/registries"}
    )
    with pytest.raises(
        DataError, match=r"names '/data' as root, which holds /data/registries, which the deploy"
    ):
        check_purge(settings, node)


def test_a_node_without_flock_is_told_to_install_it_before_anything_is_taken(tmp_path):
    from containerd_deploy.remote.lock import NO_FLOCK, take_lock_script, unavailable_message

    bin_dir = tmp_path / "bin"  # the system's tools, but flock
    bin_dir.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if tool.name != "flock":
            (bin_dir / tool.name).symlink_to(tool)
    script = take_lock_script("node1", "controller test", 0).replace(LOCK_PATH, str(tmp_path / "lock"))
    result = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, env={"PATH": str(bin_dir)}, timeout=30
    )
    said = unavailable_message("node1", NO_FLOCK).replace(LOCK_PATH, str(tmp_path / "lock"))
    assert (result.returncode, result.stderr) == (1, said + "\n")
    assert not (tmp_path / "lock").exists()


def test_the_run_lock_lives_in_a_directory_only_its_owner_can_enter(tmp_path):
    """Regression (#26): the lock was a 0644 file in /run, and flock needs only a read handle:
    any local user could hold it forever and every run stopped as "busy". Now the take makes
    the lock's directory 0700 (and the lock 0600) and refuses one that is not so, or a link."""
    from containerd_deploy.remote.lock import take_lock_script

    def take(lock_dir: Path) -> subprocess.CompletedProcess:
        script = take_lock_script("node1", "controller c1", None, anchor_pid=os.getpid())
        script = script.replace(LOCK_PATH, str(lock_dir / "lock"))
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)

    made = tmp_path / "run" / "containerd-deploy"
    made.parent.mkdir()
    assert take(made).returncode == 0
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert stat.S_IMODE((made / "lock").stat().st_mode) == 0o600
    for name, prepare in (
        ("open", lambda d: (d.mkdir(), d.chmod(0o755))),
        ("link", lambda d: d.symlink_to(made)),
    ):
        directory = tmp_path / name
        prepare(directory)
        result = take(directory)
        assert result.returncode == 1
        assert result.stderr == (
            f"node1: the run lock's directory {directory} is not root's alone (root-owned, mode 0700, not a "
            "symbolic link), so another user could hold or forge the lock; nothing was changed. Fix: remove "
            "it (it holds nothing but the lock) and rerun.\n"
        )
    assert sorted(p.name for p in (tmp_path / "open").iterdir()) == []


SSH = ("sshd_config", "ssh_host_ed25519_key", "moduli")


@pytest.mark.parametrize(
    "path, entries, untrusted, why",
    [
        # The examples: deeper system trees a list of them never ends on.
        (
            "/etc/ssh",
            SSH,
            (),
            "holds 'moduli', 'ssh_host_ed25519_key', 'sshd_config', which containerd does not make",
        ),
        ("/var/lib/dpkg", ("status", "info"), (), "holds 'info', 'status', which containerd does not make"),
        (
            "/usr/lib/x86_64-linux-gnu",
            ("libc.so.6",),
            (),
            "holds 'libc.so.6', which containerd does not make",
        ),
        ("/boot/efi", ("EFI",), (), "holds 'EFI', which containerd does not make"),
        (
            "/data/containerd",
            tuple(f"f{n}" for n in range(7)),
            (),
            "holds 'f0', 'f1', 'f2', 'f3', 'f4', …, which",
        ),
        # containerd's own: its layout and nothing else, an empty directory, no directory.
        (
            "/data/containerd",
            (
                "io.containerd.content.v1.content",
                "io.containerd.snapshotter.v1.overlayfs",
                "tmpmounts",
                "lost+found",
            ),
            (),
            None,
        ),
        (
            "/data/run",
            ("containerd.sock", "containerd.sock.ttrpc", "runc", "s", "io.containerd.runtime.v2.task"),
            (),
            None,
        ),
        ("/data/containerd", (), (), None),
        ("/data/containerd", None, (), None),
        # Its default holds what containerd's plugins of any release make there.
        ("/var/lib/containerd", ("io.containerd.something.new", "opt"), (), None),
        # On a path another user could change: never.
        (
            "/var/lib/containerd",
            (),
            (("/var/lib", "is writable by group or others"),),
            "is not root's alone (/var/lib is",
        ),
    ],
)
def test_purged_deletes_only_containerds_default_or_its_own_layout_on_a_root_only_path(
    path, entries, untrusted, why
):
    """Regression (#26): `purged` refused a short list of system trees, so a config naming a
    deeper one (/etc/ssh, /var/lib/dpkg, /boot/efi) had it deleted."""
    from containerd_deploy.deploy.reset import purge_refusal
    from containerd_deploy.facts.node import DataDirectory

    refusal = purge_refusal(path, DEPLOY_PATHS, DataDirectory(path, entries, untrusted))
    if why is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.startswith(why), refusal


def test_the_data_directories_fact_reads_any_name_whole_and_tells_a_missing_directory(tmp_path):
    from containerd_deploy.facts.node import DataDirectories

    layout = tmp_path / "root"
    layout.mkdir()
    for name in ["io.containerd.content.v1.content", "tmpmounts", "evil\nio.containerd.x", " spaced "]:
        (layout / name).mkdir()
    empty = tmp_path / "empty dir"
    empty.mkdir()
    fact = DataDirectories()
    paths = (str(layout), str(empty), str(tmp_path / "absent"))
    output = subprocess.run(["sh", "-c", fact.command(paths)], capture_output=True, text=True).stdout
    found = fact.process(output.splitlines())
    assert sorted(found[str(layout)].entries) == sorted(
        [" spaced ", "evil\nio.containerd.x", "io.containerd.content.v1.content", "tmpmounts"]
    )
    assert found[str(empty)].entries == () and found[str(tmp_path / "absent")].entries is None
    assert all(directory.untrusted == () for directory in found.values())


def test_purged_asks_the_node_and_refuses_a_config_root_holding_anything_else_before_any_change(monkeypatch):
    from containerd_deploy.data.values import DataError
    from containerd_deploy.facts.node import DataDirectory

    from .flow import converged, drifted, prepare, settings_for

    settings = settings_for({"containerd_state": "purged"})
    node = drifted(converged(settings), config_text='version = 2\nroot = "/etc/ssh"\n')
    with pytest.raises(
        DataError, match=r"names '/etc/ssh' as root, which holds 'moduli', .*Fix: set root in"
    ):
        prepare(
            monkeypatch,
            node,
            {"containerd_state": "purged"},
            data_directories={"/etc/ssh": DataDirectory("/etc/ssh", SSH)},
        )

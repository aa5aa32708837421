"""A node's life on one Debian 13 VM: upgrades and a downgrade with a container that keeps
running, restart discipline, one run at a time, runs killed at many points, and reset."""

import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib

import pytest
import testinfra

from containerd_deploy.conformance import oci
from containerd_deploy.conformance.images import import_image
from containerd_deploy.facts.node import parse_ctr_version
from containerd_deploy.plan.verdict import release_version
from tests.harness import __main__ as harness
from tests.harness import mirror, vm
from tests.harness.paths import REPO_ROOT

from .helpers import DEPLOY, NODE_CTR, changed_ops, main_pid, module_kind, pyinfra

pytestmark = [
    pytest.mark.xdist_group("lifecycle"),
    pytest.mark.machine("upgrades, restarts, the lock, runs cut short and reset are the deploy's logic"),
]
NAME = "life-1"
CRASH_NAME = "life-crash"
NAMESPACE = "lifecycle"
LONG_RUNNING = "lifecycle-sleeper"
# What a run may leave behind if it is cut short, and must not be there once a rerun is done.
STRAY = (
    "find / -xdev \\( -name '*.containerd-deploy-new*' -o -name '.fetched-*' -o -name '*.partial' \\) "
    "2>/dev/null; ls -d /var/cache/containerd-deploy /var/lib/containerd-deploy/previous-release 2>/dev/null; true"
)


class Node:
    def __init__(self, started: vm.Node, name: str = NAME):
        self.name, self.vm = name, started
        self.host = testinfra.get_host(f"ssh://{name}", ssh_config=str(vm.ssh_config_file()))


@pytest.fixture(scope="module")
def life(request):
    (started,) = harness.up([NAME], "trixie", kind=module_kind(request))
    yield Node(started)
    harness.down([NAME])


def release_data(suite: str) -> dict:
    """Data that selects the containerd and runc Debian `suite` ships (in the local mirror)."""
    release = mirror.release(suite)
    return {
        "containerd_version": release.containerd_version,
        "containerd_sha256": release.containerd_sha256,
        "runc_version": release.runc_version,
        "runc_sha256": release.runc_sha256,
    }


def deploy(node: Node, **data) -> dict:
    process, results = pyinfra(node.name, data=data)
    assert process.returncode == 0, f"deploy failed:\n{process.stderr[-5000:]}"
    return results


def short(names: list[str]) -> list[str]:
    return [name.rsplit(" | ", 1)[-1] for name in names]


def starts_since(node: Node, mark: str) -> int:
    """How many times containerd.service was started since `mark` (journal_mark)."""
    log = node.vm.ssh(
        f"journalctl -u containerd.service --after-cursor={shlex.quote(mark)} -o cat --no-pager"
    ).stdout
    return len(re.findall(r"^Started containerd\.service", log, re.MULTILINE))


def reloads_since(node: Node, mark: str) -> int:
    """How many times systemd reloaded its units (daemon-reload, or an enable's own) since `mark`."""
    log = node.vm.ssh(f"journalctl _PID=1 --after-cursor={shlex.quote(mark)} -o cat --no-pager").stdout
    return len(re.findall(r"^Reload requested from client PID", log, re.MULTILINE))


def journal_mark(node: Node) -> str:
    """Where the node's journal ends now. A cursor, not a time: on a machine a run can start
    containerd within the second before a time taken at second precision."""
    shown = node.vm.ssh("journalctl -n 1 --show-cursor --no-pager -q").stdout
    return shown.rsplit("-- cursor: ", 1)[1].strip()


def ctr_versions(node: Node) -> tuple:
    """(client, server) release versions that `ctr version` reports."""
    client, server = parse_ctr_version(node.vm.ssh("/usr/local/bin/ctr version").stdout.splitlines())
    return release_version(client), release_version(server)


def sleeper_pid(node: Node) -> int | None:
    out = node.vm.ssh(f"/usr/local/bin/ctr -n {NAMESPACE} tasks ls 2>/dev/null", check=False).stdout
    for line in out.splitlines()[1:]:
        fields = line.split()
        if fields[:1] == [LONG_RUNNING] and fields[2:3] == ["RUNNING"]:
            return int(fields[1])
    return None


def test_upgrades_and_a_downgrade_restart_once_and_keep_containers_running(life):
    deploy(life, **release_data("bookworm"))  # containerd 1.6.20 / runc 1.1.5
    import_image(life.host, NODE_CTR, NAMESPACE, oci.IMAGE_NAME)
    life.vm.ssh(f"/usr/local/bin/ctr -n {NAMESPACE} run -d {oci.IMAGE_NAME} {LONG_RUNNING} /bin/sleep 100000")
    pid = sleeper_pid(life)
    assert pid, "the long-running container started"

    for suite in ("trixie", "sid", "trixie"):  # 1.7.24, 2.1.9, and back to 1.7.24
        data = release_data(suite)
        since, before = journal_mark(life), main_pid(life)
        results = deploy(life, **data)
        changed = short(changed_ops(results, life.name))
        assert f"Install containerd {data['containerd_version']} into /usr/local/bin" in changed, changed
        assert starts_since(life, since) == 1, (
            f"containerd {data['containerd_version']}: not exactly one restart"
        )
        assert main_pid(life) != before
        assert ctr_versions(life) == (data["containerd_version"],) * 2, (
            "client and server are the new version"
        )
        # The shim (KillMode=process) kept the container through the restart, and the new
        # daemon still manages it.
        assert life.vm.ssh(f"kill -0 {pid}", check=False).returncode == 0, "the container's process died"
        assert sleeper_pid(life) == pid, f"ctr no longer sees the container after {suite}'s containerd"

    # The config stays in the schema it was written in (v2), which 1.x and 2.x both read.
    config = life.vm.ssh("cat /etc/containerd/config.toml").stdout
    assert tomllib.loads(config)["version"] == 2


def test_restart_discipline(life):
    base = release_data("trixie")
    deploy(life, **base)
    cases = [
        ("nothing", {}, 0, 0),
        ("the config", {"containerd_oom_score": -500}, 0, 1),
        ("the unit", {"containerd_oom_score": -500, "containerd_limit_nofile": 1048576}, 1, 1),
        (
            "a binary",
            {"containerd_oom_score": -500, "containerd_limit_nofile": 1048576, **release_data("bookworm")},
            0,
            1,
        ),
        # Back to 1.7.24 (a binary), oom_score -400 (the config), no LimitNOFILE (the unit).
        ("all three", {"containerd_oom_score": -400, **release_data("trixie")}, 1, 1),
    ]
    for what, data, reloads, restarts in cases:
        since, before = journal_mark(life), main_pid(life)
        results = deploy(life, **{**base, **data})
        changed = short(changed_ops(results, life.name))
        assert (changed == []) == (what == "nothing"), f"changing {what}: {changed}"
        assert reloads_since(life, since) == reloads, f"changing {what}: {reloads} systemd reload(s) expected"
        assert starts_since(life, since) == restarts, f"changing {what}: {restarts} restart(s) expected"
        assert (main_pid(life) == before) == (restarts == 0)


def test_a_second_run_waits_then_is_refused_while_one_holds_the_node(life):
    deploy(life, **release_data("trixie"))
    # A run that holds the node: one that changes it (a run with nothing to change takes no
    # lock), stopped right after it took the lock, so its SSH connection stays open.
    first = subprocess.Popen(
        [
            *(sys.executable, "-m", "pyinfra", "inventories/local.py", "deploy.py", "-y", "--limit", NAME),
            *("--data", "containerd_max_container_log_line_size=32768"),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Held still as it starts its second operation, the lock (its first) taken: polling for
        # the lock instead can miss a run that ends within the poll, as it does on a machine.
        starts = (line for line in first.stderr if line.startswith("--> Starting operation:"))
        assert next(starts, None) and next(starts, None), "the first run did not get past the lock"
        first.send_signal(signal.SIGSTOP)  # the run (and its connection) stays, doing nothing
        owner = life.vm.ssh("cat /run/containerd-deploy/lock.owner", check=False).stdout
        assert f"pid {first.pid} since" in owner, f"the first run does not hold the lock: {owner!r}"
        started = time.monotonic()
        process, _ = pyinfra(life.name)
        waited = time.monotonic() - started
        assert process.returncode != 0
        assert f"{NAME}: another containerd-deploy run holds this node (controller " in process.stderr
        assert f"pid {first.pid} since " in process.stderr, process.stderr[-2000:]
        assert waited >= 10, "it waited for the lock before refusing"
    finally:
        first.kill()
        first.wait()
    # The holder's connection is gone: the lock is free again at once.
    deploy(life)


def run_until(node: Node, operation: str, how: str, data: dict) -> list[str]:
    """Start the deploy and cut it short when it starts the operation whose name holds
    `operation`: kill -9 of pyinfra, or the node dropping its SSH connection. The operations it
    started, the cut one last."""
    command = [
        *DEPLOY,
        "-y",
        "--limit",
        node.name,
    ]
    for key, value in data.items():
        command += ["--data", f"{key}={value}"]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    seen = []
    try:
        for line in process.stderr:
            if line.startswith("--> Starting operation:"):
                seen.append(line.strip())
                if operation in line:
                    if how == "kill -9":
                        process.kill()
                    else:
                        # Held still while its connection is cut: a short last operation would
                        # otherwise let the run end (and its sshd go) before the cut.
                        process.send_signal(signal.SIGSTOP)
                        try:
                            session = node.vm.ssh("cat /run/containerd-deploy/lock.session").stdout.strip()
                            node.vm.ssh(f"kill -9 {session}")
                        finally:  # a stopped run would hold the wait below, hiding why the cut failed
                            process.send_signal(signal.SIGCONT)
                    break
    finally:
        process.wait(timeout=300)
        process.stderr.close()
    assert seen and operation in seen[-1], f"the run ended without an operation {operation!r}: {seen}"
    return seen


def assert_whole(node: Node) -> None:
    """What a cut-short run leaves is old or new, never half: binaries run, config parses."""
    for binary in ("/usr/local/bin/containerd", "/usr/local/bin/ctr", "/usr/local/sbin/runc"):
        result = node.vm.ssh(f"[ ! -e {binary} ] || {binary} --version", check=False)
        assert result.returncode == 0, f"{binary} is broken after the kill: {result.stderr}"
    config = node.vm.ssh("cat /etc/containerd/config.toml 2>/dev/null", check=False).stdout
    if config:
        tomllib.loads(config)


# (the operation to cut at, how): every operation of a run, on a machine (seconds each), over
# first installs and over upgrades and downgrades between containerd 1.7.24 and 2.1.9, each
# operation cut both ways across the two. A run adds only the operations that change the node
# (and the verify step's): a first install takes the run lock, fetches, installs containerd and
# runc, writes the config and the unit, enables and starts, verifies (runs a container); an
# upgrade or downgrade keeps the running release after the fetch, writes neither file (the
# unit is the same, and 2.1 reads 1.7's config as it is), restarts, and drops the kept release
# after the verify step. What only one of the two does is cut both ways there. An SSH drop needs the run's connection, known once it holds the
# lock: the lock is cut by kill -9 alone.
LOCK, FETCH, VERIFY = "Take the node's run lock", "Fetch and verify release files", "(containerd_verify)"
CONTAINERD, RUNC, CONFIG = "Install containerd ", "Install runc ", "Write /etc/containerd/config.toml"
UNIT, SERVICE = "Install /etc/systemd/system/containerd.service", "Enable, start and check containerd"
KEEP, DROP = "Keep the running release", "Drop the kept release"
KILL, SSH = "kill -9", "ssh drop"
INSTALL_CUTS = [
    (LOCK, KILL),
    (FETCH, SSH),
    (CONTAINERD, KILL),
    (RUNC, SSH),
    (CONFIG, KILL),
    (CONFIG, SSH),
    (UNIT, SSH),
    (UNIT, KILL),
    (SERVICE, KILL),
    (VERIFY, SSH),
]
SWITCH_CUTS = [
    (LOCK, KILL),
    (FETCH, KILL),
    (KEEP, KILL),
    (KEEP, SSH),
    (CONTAINERD, SSH),
    (RUNC, KILL),
    (SERVICE, SSH),  # a running daemon's restart
    (SERVICE, KILL),
    (VERIFY, KILL),
    (DROP, KILL),
    (DROP, SSH),
]


@pytest.fixture(scope="module")
def crash_node(request):
    """A node of its own, so the longest test here runs beside the others (its own xdist group)."""
    (started,) = harness.up([CRASH_NAME], "trixie", kind=module_kind(request))
    yield Node(started, CRASH_NAME)
    harness.down([CRASH_NAME])


@pytest.mark.xdist_group("lifecycle-crash")
@pytest.mark.slowest_group  # the longest machine group: scheduled first (tests/e2e/conftest.py)
def test_runs_cut_short_anywhere_converge_on_rerun(crash_node):
    life = crash_node
    old, new = release_data("trixie"), release_data("sid")
    plan = [("install", cut, old) for cut in INSTALL_CUTS]
    plan += [
        ("upgrade" if i % 2 == 0 else "downgrade", cut, new if i % 2 == 0 else old)
        for i, cut in enumerate(SWITCH_CUTS)
    ]
    # The cuts name every operation of a whole install and of a whole upgrade, and no other.
    deploy(life, containerd_state="absent")
    for cuts, target in ((INSTALL_CUTS, old), (SWITCH_CUTS, new)):
        names = [op["name"] for op in deploy(life, **target)["results"]["operations"]]
        assert [cut for cut, _ in cuts if not any(cut in name for name in names)] == [], names
        assert [name for name in names if not any(cut in name for cut, _ in cuts)] == [], names
    for phase, (operation, how), target in plan:
        if phase == "install":
            deploy(life, containerd_state="absent")
        started = run_until(life, operation, how, target)
        where = started[-1]
        cuts = INSTALL_CUTS if phase == "install" else SWITCH_CUTS
        # every operation the run has is one the cuts name: none goes uncut
        assert [line for line in started if not any(name in line for name, _ in cuts)] == [], phase
        assert_whole(life)
        since = journal_mark(life)
        results = deploy(life, **target)  # its verify step proves the node conformant
        assert life.vm.ssh(STRAY).stdout.strip() == "", f"{phase}, {how} at {where}: stray files"
        assert starts_since(life, since) <= 1, f"{phase}, {how} at {where}: more than one restart"
        assert ctr_versions(life) == (target["containerd_version"],) * 2, f"{phase}, {how} at {where}"
        verified = [
            op
            for op in results["results"]["operations"]
            if op["name"].endswith("Verify containerd (containerd_verify)")
        ]
        assert [life.name in op["success"] + op["no_change"] for op in verified] == [True], verified


def test_reset_removes_what_the_deploy_installed_and_nothing_else(life):
    deploy(
        life,
        **release_data("trixie"),
        cni_plugins_version=mirror.cni_release("trixie").version,
        cni_plugins_sha256=mirror.cni_release("trixie").sha256,
    )
    life.vm.ssh(
        "echo mine > /opt/cni/bin/operator-plugin && echo mine > /etc/containerd/operator-notes "
        "&& echo mine > /usr/local/bin/operator-tool"
    )
    results = deploy(life, containerd_state="absent")
    assert changed_ops(results, life.name), "reset changed nothing"
    left = {
        directory: life.vm.ssh(f"ls -A {directory}").stdout.split()
        for directory in ("/usr/local/bin", "/usr/local/sbin", "/opt/cni/bin", "/etc/containerd")
    }
    assert left == {
        "/usr/local/bin": ["operator-tool"],
        "/usr/local/sbin": [],
        "/opt/cni/bin": ["operator-plugin"],
        "/etc/containerd": ["operator-notes"],
    }, left
    gone = life.vm.ssh(
        "ls -d /var/lib/containerd-deploy /etc/systemd/system/containerd.service 2>&1; "
        "systemctl is-active containerd; true"
    ).stdout
    assert gone.count("No such file or directory") == 2 and "inactive" in gone, gone
    assert life.vm.ssh("ls /var/lib/containerd").returncode == 0, "absent keeps containerd's data"
    again = deploy(life, containerd_state="absent")
    assert changed_ops(again, life.name) == [], "a second reset has nothing to do"
    # Purged: containerd's data goes too (a mount point there, a dedicated disk or a machine's
    # /var/lib/containerd, is emptied and kept); then a deploy converges the node again.
    deploy(life, containerd_state="purged")
    for directory in ("/var/lib/containerd", "/run/containerd"):
        left = life.vm.ssh(
            f"if findmnt -rn --mountpoint {directory} >/dev/null; then ls -A {directory}; "
            f"else ls -d {directory} 2>&1; fi; true"
        ).stdout
        assert left.strip() == "" or "No such file" in left, f"{directory}: {left}"
    deploy(life, **release_data("trixie"))

"""A node that provisions itself, with no controller in the loop: a machine booted with a
NoCloud seed (Debian's cloud-init) whose user-data `python -m containerd_deploy.cloud_init` made
installs the package from a wheelhouse this machine serves, every wheel checked by its sha256,
and converges at first boot through the pull-mode service, which leaves its report as the
status file; its timer converges it again to a changed data file, and then changes nothing.
Then `pyinfra @local` on the node, as root, from the operator's site directory (no checkout): an
operator's deploy file (`from containerd_deploy import containerd_node`) and the CLI form
`pyinfra @local containerd_deploy.containerd_node` rerun with no change; the installed package's
conformance suite (`python -m containerd_deploy.conformance --hosts=local://`) passes on the node
it runs on; the run takes the node's run lock for its own process: with another run holding it,
it waits and stops, never goes on unguarded."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

from containerd_deploy import cloud_init
from tests.harness import __main__ as harness
from tests.harness import image, mirror, nspawn, on_node, vm

from .helpers import module_kind

pytestmark = [
    pytest.mark.xdist_group("local"),
    pytest.mark.machine("cloud-init, pyinfra @local and the installed package run in the node's userland"),
]
NAME = "local-1"
SUITE = "bookworm"  # its python3 is the controller's 3.11: the same wheels
PULL_EVERY = "15s"  # the timer's schedule here; a fleet's is hours
FIRST_BOOT: dict = {}  # what the fixture measured of the first boot


def as_group_data(data: dict) -> str:
    """A pyinfra group data file setting `data`, as an operator writes group_data/all.py."""
    return "".join(f"{key} = {value!r}\n" for key, value in data.items())


@pytest.fixture(scope="module")
def node(request):
    port = harness.ensure_mirror()["port"]
    # The wheelhouse, served by the harness's mirror (a machine reaches this machine's loopback).
    wheels = on_node.wheelhouse(mirror.mirror_root() / "wheelhouse" / f"{NAME}-{os.getpid()}")
    url = f"http://{vm.CONTROLLER_ADDRESS[vm.MACHINE]}:{port}/wheelhouse/{wheels.name}/"
    try:
        data = harness.node_data(mirror.release(SUITE), port, vm.MACHINE)
        (wheels.parent / f"{wheels.name}.py").write_text(as_group_data(data))
        made = subprocess.run(
            [
                sys.executable,
                "-m",
                "containerd_deploy.cloud_init",
                "--data",
                str(wheels.parent / f"{wheels.name}.py"),
            ]
            + [
                "--wheels",
                str(wheels),
                "--wheels-url",
                url,
                "--pull-every",
                PULL_EVERY,
                "--pull-delay",
                "2s",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        seed = on_node.nocloud_seed(NAME, made.stdout, nspawn.this_machines_hierarchies())
        image.build(SUITE)  # (once, cached: not part of the first boot's time)
        started = time.monotonic()
        (booted,) = harness.up([NAME], SUITE, kind=module_kind(request), files=seed)
        try:
            waited = booted.ssh("cloud-init status --wait --long", check=False, timeout=900)
            # Read at once, then the timer stopped (the pull test starts it): its runs (PULL_EVERY
            # apart) would write over the first one's report and run beside the tests' own runs.
            FIRST_BOOT.update(
                seconds=time.monotonic() - started, status=waited, wheels=wheels, report=status_file(booted)
            )
            FIRST_BOOT["timer"] = booted.ssh(
                f"systemctl is-active {cloud_init.SERVICE}.timer", check=False
            ).stdout
            booted.ssh(f"systemctl stop {cloud_init.SERVICE}.timer {cloud_init.SERVICE}.service")
            booted.ssh(
                f"mkdir -p {on_node.SITE} && cat > {on_node.SITE}/deploy.py <<'EOF'\n{on_node.USER_DEPLOY}EOF"
            )
            yield booted
        finally:
            harness.down([NAME])
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
        (wheels.parent / f"{wheels.name}.py").unlink(missing_ok=True)


def wheel_names() -> list[str]:
    return [wheel.name for wheel in FIRST_BOOT["wheels"].glob("*.whl")]


def status_file(node: vm.Node) -> dict:
    found = node.ssh(f"cat {cloud_init.STATUS_FILE}", check=False).stdout
    return json.loads(found) if found.strip() else {}


def next_status(node: vm.Node, after: str, timeout: float = 300) -> dict:
    """The status file of the first timer run that finished after `after`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = status_file(node)
        if status.get("finished", "") > after:
            return status
        time.sleep(2)
    raise AssertionError(f"no pull run finished after {after} in {timeout:.0f} s: {status_file(node)}")


def main_pid(node: vm.Node) -> str:
    return node.ssh("systemctl show -p MainPID --value containerd").stdout.strip()


def test_a_node_provisions_itself_at_first_boot_and_its_timer_converges_it_to_its_data(node):
    waited = FIRST_BOOT["status"]
    assert waited.returncode == 0 and "status: done" in waited.stdout, waited.stdout + waited.stderr
    data = json.loads((vm.node_dir(NAME) / "data.json").read_text())
    # The first converge, through the pull-mode service: logged to the journal, the report left.
    [row] = FIRST_BOOT["report"]["hosts"]
    assert row["status"] == "changed", row
    # (No container: the node reaches no registry for its sandbox image, which the conformance
    # suite below imports itself.)
    assert row["verify"]["result"] == "passed", row
    assert row["versions"] == {"containerd": data["containerd_version"], "runc": data["runc_version"]}, row
    journal = node.ssh(f"journalctl -q -u {cloud_init.SERVICE}.service -o cat").stdout
    assert "Install containerd" in journal and "containerd-deploy report (1 " in journal, journal[-3000:]
    # Every wheel came from the wheelhouse, pinned: the venv has exactly them.
    listed = node.ssh(f"{cloud_init.VENV}/bin/pip list --format=json --disable-pip-version-check").stdout
    installed = {canonicalize_name(entry["name"]): entry["version"] for entry in json.loads(listed)}
    pinned = {name: str(version) for name, version, *_ in map(parse_wheel_filename, wheel_names())}
    assert installed == pinned, (installed, pinned)
    # (The conformance suite passes on it: the installed suite's test below, on this node.)
    print(f"first boot to a verified node: {FIRST_BOOT['seconds']:.0f} s")

    # Pull mode: the operator changes the data file; the timer's next run converges the node.
    assert FIRST_BOOT["timer"].strip() == "active"  # the user-data enabled it
    before = status_file(node)["finished"]
    changed_data = cloud_init.DATA_FILE + ".new"
    node.ssh(
        f"cp -p {cloud_init.DATA_FILE} {changed_data} && "
        f"echo 'containerd_max_container_log_line_size = 32768' >> {changed_data} && "
        f"mv {changed_data} {cloud_init.DATA_FILE} && systemctl start {cloud_init.SERVICE}.timer"
    )
    try:
        [row] = next_status(node, before)["hosts"]
        assert row["status"] == "restarted" and "config.toml" in row["detail"], row
        assert "max_container_log_line_size = 32768" in node.ssh("cat /etc/containerd/config.toml").stdout
        pid, after = main_pid(node), status_file(node)["finished"]
        # And the firing after that changes nothing.
        [row] = next_status(node, after)["hosts"]
        assert row["status"] == "unchanged" and row["verify"]["result"] == "passed", row
        assert main_pid(node) == pid
    finally:
        # The tests below run @local by hand, with the harness's data: no timer run in between,
        # and the node converged back to that data (one run of the service, as the timer's).
        node.ssh(
            f"systemctl disable --now {cloud_init.SERVICE}.timer && "
            f"while systemctl -q is-active {cloud_init.SERVICE}.service; do sleep 1; done && "
            f"sed -i '/^containerd_max_container_log_line_size/d' {cloud_init.DATA_FILE} && "
            f"systemctl start {cloud_init.SERVICE}.service",
            timeout=600,
        )


def run_local(node: vm.Node, operations: str = "deploy.py", timeout: float = 900):
    """pyinfra @local on the node (in the operator's site directory, no checkout), with the data
    the harness gives its nodes; (process, JSON results)."""
    data = json.loads((vm.node_dir(NAME) / "data.json").read_text())
    arguments = " ".join(f"--data {shlex.quote(f'{key}={value}')}" for key, value in data.items())
    process = node.ssh(
        f"cd {on_node.SITE} && {cloud_init.VENV}/bin/pyinfra -y --json @local {operations} {arguments}",
        check=False,
        timeout=timeout,
    )
    try:
        results = json.loads(process.stdout)
    except json.JSONDecodeError:
        results = {}
    return process, results


def changed(results: dict) -> list[str]:
    return [op["name"] for op in results["results"]["operations"] if op["success"]]


def test_an_operators_deploy_file_and_the_cli_form_rerun_the_node_with_no_change(node):
    pid = main_pid(node)
    process, results = run_local(node)
    assert process.returncode == 0 and changed(results) == [], process.stderr[-3000:]
    versions = node.ssh("/usr/local/bin/ctr version").stdout
    client, server = [line.split(":", 1)[1].strip() for line in versions.splitlines() if "Version:" in line][
        :2
    ]
    assert client == server
    assert (
        node.ssh(
            f"test ! -e {on_node.SITE}/tasks && {cloud_init.VENV}/bin/pip show containerd-deploy"
        ).returncode
        == 0
    )

    # The CLI form, without any deploy file: pyinfra imports the installed package's deploy.
    process, results = run_local(node, "containerd_deploy.containerd_node")
    assert process.returncode == 0 and changed(results) == [], process.stderr[-3000:]
    assert main_pid(node) == pid


def test_the_installed_conformance_suite_passes_on_the_node_it_runs_on(node):
    """No clone, no SSH: the package's own suite, from the operator's site directory."""
    process = node.ssh(
        f"cd {on_node.SITE} && {cloud_init.VENV}/bin/python -m containerd_deploy.conformance "
        "--hosts=local:// -v -rfE",
        check=False,
        timeout=900,
    )
    summary = process.stdout.strip().splitlines()[-1] if process.stdout.strip() else ""
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 10 and "failed" not in summary and "error" not in summary, (
        summary
    )
    # Through the CRI socket itself (no forward): a pod's container in its systemd slice and scope.
    for check in ("test_pod_container_runs_and_execs", "test_container_process_is_in_a_systemd_scope"):
        assert re.search(rf"test_cri\.py::{check}\S* PASSED", process.stdout), process.stdout[-3000:]


STANDALONE = """\
# An operator's own deploy using one of the package's operations on its own (no node state
# given: it reads the manifest from the node, and downloads and verifies the file itself).
from pyinfra import host

from containerd_deploy.data.artifacts import Artifact
from containerd_deploy.operations.release import release_artifact

version = host.data.runc_version
runc = Artifact(
    "runc", version, "amd64",
    f"{host.data.artifact_mirror}/opencontainers/runc/releases/download/v{version}/runc.amd64",
    host.data.runc_sha256,
)
release_artifact(name="Install runc", artifact=runc, dest="/opt/standalone/runc",
                 staging_dir="/var/cache/standalone", state_dir="/var/lib/standalone", fetched=False)
"""


def test_the_packages_operations_work_on_their_own_in_an_operators_deploy(node):
    node.ssh(f"cat > {on_node.SITE}/standalone.py <<'EOF'\n{STANDALONE}EOF")
    process, results = run_local(node, "standalone.py")
    assert process.returncode == 0, process.stderr[-3000:]
    assert changed(results) == ["Install runc"], changed(results)
    data = json.loads((vm.node_dir(NAME) / "data.json").read_text())
    assert data["runc_version"] in node.ssh("/opt/standalone/runc --version").stdout
    process, results = run_local(node, "standalone.py")
    assert process.returncode == 0 and changed(results) == [], process.stderr[-3000:]


def test_a_run_on_the_node_waits_for_the_lock_and_stops_when_another_run_holds_it(node):
    """Regression: a run not coming through sshd reported the lock "unavailable" and went on unguarded."""
    node.ssh(
        "setsid sh -c 'mkdir -p -m 700 /run/containerd-deploy; exec 9>>/run/containerd-deploy/lock; flock 9; "
        'echo "controller ci-holder pid 4242 since now" > /run/containerd-deploy/lock.owner; '
        "touch /run/holder-ready; sleep 120' </dev/null >/dev/null 2>&1 & "
        "while [ ! -e /run/holder-ready ]; do sleep 0.2; done"
    )
    try:
        process, _ = run_local(node)
        assert process.returncode != 0
        assert (
            "another containerd-deploy run holds this node (controller ci-holder pid 4242" in process.stderr
        ), process.stderr[-3000:]
    finally:
        node.ssh("pkill -f 'sleep 120'; rm -f /run/holder-ready", check=False)
    process, results = run_local(node)
    assert process.returncode == 0 and changed(results) == [], process.stderr[-3000:]

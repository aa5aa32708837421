"""`pyinfra @local` on the node itself, as root (a machine provisioning itself, as from
cloud-init), with the deploy installed from its wheel into a venv of its own: an operator's
deploy file (`from containerd_deploy import containerd_node`) deploys and verifies; the CLI
form `pyinfra @local containerd_deploy.containerd_node` reruns with no change; the installed
package's conformance suite (`python -m containerd_deploy.conformance --hosts=local://`) passes
on the node it runs on; the run takes the
node's run lock for its own process: with another run holding it, it waits and stops, never
goes on unguarded."""

import json
import re
import shlex

import pytest

from tests.harness import __main__ as harness
from tests.harness import on_node, vm

from .helpers import module_kind

pytestmark = [
    pytest.mark.xdist_group("local"),
    pytest.mark.machine("pyinfra @local and the installed package run in the node's userland"),
]
NAME = "local-1"


@pytest.fixture(scope="module")
def node(request):
    (started,) = harness.up(
        [NAME], "bookworm", kind=module_kind(request)
    )  # its python3 is the controller's 3.11: the same wheels
    on_node.install(started)
    yield started
    harness.down([NAME])


def run_local(node: vm.Node, operations: str = "deploy.py", timeout: float = 900):
    """pyinfra @local on the node (in the operator's site directory, no checkout), with the data
    the harness gives its nodes; (process, JSON results)."""
    data = json.loads((vm.node_dir(NAME) / "data.json").read_text())
    arguments = " ".join(f"--data {shlex.quote(f'{key}={value}')}" for key, value in data.items())
    process = node.ssh(
        f"cd {on_node.SITE} && {on_node.VENV}/bin/pyinfra -y --json @local {operations} {arguments}",
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


def test_a_node_deploys_itself_and_reruns_with_no_change(node):
    process, results = run_local(node)
    assert process.returncode == 0, process.stderr[-4000:]
    assert any("Install containerd" in name for name in changed(results)), changed(results)
    versions = node.ssh("/usr/local/bin/ctr version").stdout
    client, server = [line.split(":", 1)[1].strip() for line in versions.splitlines() if "Version:" in line][
        :2
    ]
    assert client == server
    pid = node.ssh("systemctl show -p MainPID --value containerd").stdout.strip()
    assert (
        node.ssh(
            f"test ! -e {on_node.SITE}/tasks && {on_node.VENV}/bin/pip show containerd-deploy"
        ).returncode
        == 0
    )

    # The CLI form, without any deploy file: pyinfra imports the installed package's deploy.
    process, results = run_local(node, "containerd_deploy.containerd_node")
    assert process.returncode == 0 and changed(results) == [], process.stderr[-3000:]
    assert node.ssh("systemctl show -p MainPID --value containerd").stdout.strip() == pid


def test_the_installed_conformance_suite_passes_on_the_node_it_runs_on(node):
    """No clone, no SSH: the package's own suite, from the operator's site directory."""
    process = node.ssh(
        f"cd {on_node.SITE} && {on_node.VENV}/bin/python -m containerd_deploy.conformance "
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

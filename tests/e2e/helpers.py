"""Running the deploy and looking at a node, as the e2e tests do."""

import contextlib
import fcntl
import json
import os
import shlex
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.harness import vm
from tests.harness.paths import REPO_ROOT, run_root

# The marker that says which kind of node a test needs (tests/e2e/conftest.py says which is for what).
KIND_MARKERS = {vm.MACHINE: "machine", vm.VM: "vm"}


def node_kind(item) -> str:
    """The kind of node a test asks for: its closest machine(why) or vm(why) marker (a test's own
    overrides its module's), which must give a reason."""
    for marker in item.iter_markers():  # closest first
        if marker.name in KIND_MARKERS.values():
            if len(marker.args) != 1 or not str(marker.args[0]).strip():
                raise pytest.UsageError(f"{item.nodeid}: its {marker.name} marker must say why")
            return next(kind for kind, name in KIND_MARKERS.items() if name == marker.name)
    raise pytest.UsageError(f"{item.nodeid}: mark it machine(why) or vm(why) (tests/e2e/conftest.py)")


def module_kind(request) -> str:
    """The kind of node a module-scoped fixture boots: what the module's pytestmark says."""
    return node_kind(request.node)


# The deploy of the local nodes, and the conformance suite from the clone, as an operator runs them
# (the tests add their own options).
DEPLOY = [sys.executable, "-m", "pyinfra", "inventories/local.py", "deploy.py"]
CONFORMANCE = [sys.executable, "-m", "containerd_deploy.conformance", "-q", "-rf"]


def pyinfra(
    node: str, *extra: str, data: dict | None = None, yes: bool = True, env: dict | None = None
) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the deploy against one local node, as an operator would; returns (process, JSON results).
    `yes=False`: without -y (and --json), so pyinfra detects changes first, as for --dry --diff.
    `env`: added to the controller's environment."""
    command = [
        *DEPLOY,
        *(["-y", "--json"] if yes else []),
        "--limit",
        node,
        *extra,
    ]
    for key, value in (data or {}).items():
        command += ["--data", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    process = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})}
    )
    try:
        results = json.loads(process.stdout)
    except json.JSONDecodeError:
        results = {}
    return process, results


def changed_ops(results: dict, node: str) -> list[str]:
    return [op["name"] for op in results["results"]["operations"] if node in op["success"]]


# Every run that changes a node takes its run lock first, and its verify step then runs a
# container (when the node has the sandbox image): both are changes of their own.
LOCK_OP = "containerd node | Take the node's run lock"
VERIFY_OP = "containerd node | Verify containerd (containerd_verify)"


def changed_steps(results: dict, node: str) -> list[str]:
    """The operations that changed the node, less the run lock and the verify step (asserted:
    a run that changed anything took the lock first)."""
    changed = changed_ops(results, node)
    steps = [name for name in changed if name not in (LOCK_OP, VERIFY_OP)]
    assert not steps or changed[0] == LOCK_OP, changed
    return steps


def unchanged_ops(results: dict, node: str) -> list[str]:
    return [op["name"] for op in results["results"]["operations"] if node in op["no_change"]]


def main_pid(node) -> int:
    return int(node.vm.ssh("systemctl show -p MainPID --value containerd").stdout.strip() or 0)


def node_snapshot(node) -> str:
    """Identity of everything the deploy owns, and any leftover staging or temporary files."""
    # An inode number changes with every rename over a path: cheaper than hashing under TCG.
    return node.vm.ssh(
        "stat -c '%n %i %s %Y %U:%G %a' /usr/local/bin/* /usr/local/sbin/runc /etc/containerd/config.toml "
        "/etc/systemd/system/containerd.service /var/lib/containerd-deploy/* 2>&1; "
        "ls -A /var/cache/containerd-deploy; find / -xdev -name '*.containerd-deploy-new*' 2>/dev/null"
    ).stdout


@contextlib.contextmanager
def one_at_a_time(what: str):
    """Holds something the test workers' nodes share (machines share this machine's network, so
    its port 80; every node's pulls land in the one registry's log) for one worker at a time."""
    with open(run_root() / f".{what}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def mirror_from_controller(url: str, node_vm) -> str:
    """A mirror URL of a node's data as this machine (the controller) reaches it: on its loopback
    (from a VM the node's 127.0.0.1 is the node itself)."""
    return url.replace(f"//{node_vm.controller_address}:", "//127.0.0.1:", 1)


def conformance(node, *extra: str) -> subprocess.CompletedProcess:
    """The conformance suite against one node, as an operator runs it."""
    return subprocess.run(
        [*CONFORMANCE, f"--hosts=ssh://{node.name}", f"--ssh-config={vm.ssh_config_file()}", *extra],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def deploy_ok(node, **data) -> dict:
    process, results = pyinfra(node.name, data=data)
    assert process.returncode == 0, f"deploy failed:\n{process.stderr[-4000:]}"
    return results


CRUN = [{"name": "crun", "binary_name": "/usr/bin/crun"}]  # Debian's, in the test images


@contextlib.contextmanager
def crun_handler(node):
    """The node with crun as an extra runtime handler, which needs a restart to be offered; then
    back to the first deploy's config (the deploy never removes keys it set from an existing-based
    config: the other policy rebuilds the file from defaults without it)."""
    pid = main_pid(node)
    deploy_ok(node, containerd_runtimes=CRUN)
    assert main_pid(node) != pid, "a new runtime handler needs a restart to be offered"
    try:
        yield
    finally:
        deploy_ok(node, containerd_config_base="default")


class OwnNode:
    """A node a test module boots for itself (not one of the matrix), with the data the harness gave it."""

    def __init__(self, name: str, started):
        self.name, self.vm = name, started

    def data(self) -> dict:
        return json.loads((vm.node_dir(self.name) / "data.json").read_text())


CONFIG = "/etc/containerd/config.toml"


def read(node, path: str) -> str:
    return node.vm.ssh(f"cat {shlex.quote(path)}").stdout


def write(node, path: str, text: str) -> None:
    node.vm.ssh(f"cat > {shlex.quote(path)} <<'CONTAINERD_DEPLOY_EOF'\n{text}CONTAINERD_DEPLOY_EOF")


def restore(node, config: str) -> None:
    """Put the node back as the first deploy left it (config file and the daemon using it)."""
    write(node, CONFIG, config)
    node.vm.ssh("systemctl restart containerd")
    deploy_ok(node)


def node_story(node, since: str = "-15min") -> str:
    """What the node said lately, for a failure message: containerd's journal and any kernel
    OOM kill (a container's shim dying shows there, not in the CRI error)."""
    journal = node.vm.ssh(
        f"journalctl -u containerd --since {shlex.quote(since)} --no-pager -o short-monotonic | tail -n 60; "
        "echo '--- kernel:'; dmesg | grep -iE 'oom|killed process|segfault' | tail -n 10; "
        "echo '--- memory:'; free -m",
        check=False,
        timeout=60,
    )
    return journal.stdout[-8000:]


# What containerd_deploy.conformance.images.import_image reads of the conformance suite's layout, for the
# default paths of an amd64 node.
NODE_CTR = SimpleNamespace(ctr="/usr/local/bin/ctr", busybox={})

"""A rolling upgrade of four nodes (issue #16): `python -m containerd_deploy.rollout` with a canary of 1,
then a batch of 3, drain/uncordon hooks given to a stand-in kubectl on the controller.

First the canary gets a release that installs (pinned checksum) but whose containerd does not
start: it rolls itself back to the release it ran, its container alive, and the rollout stops
with nodes 2-4 untouched. Then a good release goes to all four, each restarted exactly once,
the hooks called in order. Last, a drain that fails stops the canary's change and the rollout."""

import json
import re
import subprocess
import sys

import pytest

from containerd_deploy.conformance import oci
from containerd_deploy.conformance.images import import_image
from tests.harness import __main__ as harness
from tests.harness import mirror, vm
from tests.harness.paths import REPO_ROOT

from .helpers import DEPLOY, NODE_CTR, main_pid, module_kind, node_snapshot
from .test_lifecycle import Node, ctr_versions, journal_mark, release_data, starts_since

pytestmark = [
    pytest.mark.xdist_group("rollout"),
    pytest.mark.machine(
        "batches, hooks and rollback are the deploy's logic; the verify step runs its container with ctr"
    ),
]
NAMES = [f"rollout-{index}" for index in range(1, 5)]  # inventory order: rollout-1 is the canary
CANARY, REST = NAMES[0], NAMES[1:]
NAMESPACE = "rollout-test"
SLEEPER = "rollout-sleeper"
KEPT = "/var/lib/containerd-deploy/previous-release"


@pytest.fixture(scope="module")
def fleet(request):
    started = harness.up(
        NAMES, "trixie", kind=module_kind(request)
    )  # containerd 1.7.24 and runc from Debian 13 in their data
    yield [Node(node, name) for name, node in zip(NAMES, started, strict=True)]
    harness.down(NAMES)


def set_data(name: str, **changes) -> None:
    """Change a node's inventory data (what inventories/local.py gives pyinfra); None removes a key."""
    path = vm.node_dir(name) / "data.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    vm.replace_file(path, json.dumps(data))


def rollout() -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "containerd_deploy.rollout",
            "inventories/local.py",
            "deploy.py",
            "--limit",
            ",".join(NAMES),
            "--canary",
            "1",
            "--batch",
            "3",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def sleeper_pid(node: Node) -> int:
    out = node.vm.ssh(f"/usr/local/bin/ctr -n {NAMESPACE} tasks ls", check=False).stdout
    for line in out.splitlines()[1:]:
        fields = line.split()
        if fields[:1] == [SLEEPER] and fields[2:3] == ["RUNNING"]:
            return int(fields[1])
    return 0


def test_a_bad_release_stops_at_the_canary_which_rolls_back_then_a_good_one_reaches_all(fleet, tmp_path):
    calls = tmp_path / "kubectl.calls"
    kubectl = tmp_path / "kubectl"
    # Records its calls; refuses to drain a node named in the file `refuse` beside it.
    refuse = tmp_path / "refuse"
    kubectl.write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        f'if [ "$1" = drain ] && grep -qx "$2" {refuse} 2>/dev/null; then echo "error: cannot evict pod" >&2; exit 1; fi\n'
        'echo "node/$2 done"\n'
    )
    kubectl.chmod(0o755)
    old, new = release_data("trixie"), release_data("sid")  # containerd 1.7.24 -> 2.1.9
    for name in NAMES:
        set_data(
            name,
            containerd_ready_timeout=45,
            containerd_restart_hook_before=[str(kubectl), "drain", "{host}", "--ignore-daemonsets"],
            containerd_restart_hook_after=[str(kubectl), "uncordon", "{host}"],
        )

    # The fleet as it runs today: the old release everywhere, in one run (its verify step is
    # the rollouts' to prove: left out here, it is a container run per node under TCG); a
    # container on the canary and on a node of the second batch.
    first = subprocess.run(
        [
            *DEPLOY,
            "-y",
            *("--data", "containerd_verify=false"),
            *[arg for name in NAMES for arg in ("--limit", name)],
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert first.returncode == 0, first.stderr[-4000:]
    assert not calls.exists(), "a first install restarts nothing: no hook runs"
    for node in fleet[:2]:
        import_image(node.host, NODE_CTR, NAMESPACE, oci.IMAGE_NAME)
        node.vm.ssh(f"/usr/local/bin/ctr -n {NAMESPACE} run -d {oci.IMAGE_NAME} {SLEEPER} /bin/sleep 100000")
    sleepers = {node.name: sleeper_pid(node) for node in fleet[:2]}
    assert all(sleepers.values()), sleepers

    # 1. A release that installs but does not start, for the canary; the good one for the others.
    broken_url, broken_sha256 = mirror.broken_release("sid")
    for name in NAMES:
        set_data(name, **new)
    set_data(CANARY, containerd_download_url=broken_url, containerd_sha256=broken_sha256)
    before = {node.name: (main_pid(node), node_snapshot(node)) for node in fleet}
    result = rollout()
    said = result.stdout + result.stderr
    assert result.returncode == 1, said[-4000:]
    assert re.search(rf"{CANARY}\b.*(rolled back|answers again|did not answer)", said), said[-4000:]
    assert re.search(r"not touched: " + ", ".join(REST), said), said[-4000:]
    canary = fleet[0]
    assert ctr_versions(canary) == (old["containerd_version"],) * 2, "the canary runs the old release again"
    assert (
        f"version {old['containerd_version']}"
        in canary.vm.ssh("cat /var/lib/containerd-deploy/containerd.manifest").stdout
    )
    assert canary.vm.ssh(f"test -e {KEPT}", check=False).returncode == 1, (
        "the kept release was put back, not left"
    )
    assert sleeper_pid(canary) == sleepers[CANARY], "the canary's container did not survive the rollback"
    for node in fleet[1:]:
        assert (main_pid(node), node_snapshot(node)) == before[node.name], f"{node.name} was touched"
    assert calls.read_text().splitlines() == [f"drain {CANARY} --ignore-daemonsets"], (
        "drained, and left cordoned after the failed upgrade"
    )

    # 2. The good release for the canary too: all four go, canary first.
    set_data(CANARY, containerd_download_url=None, containerd_sha256=new["containerd_sha256"])
    calls.unlink()
    since = {node.name: journal_mark(node) for node in fleet}
    result = rollout()
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    for node in fleet:
        assert ctr_versions(node) == (new["containerd_version"],) * 2, node.name
        assert starts_since(node, since[node.name]) == 1, f"{node.name}: not exactly one restart"
        assert node.vm.ssh(f"test -e {KEPT}", check=False).returncode == 1, (
            f"{node.name}: the kept release stays"
        )
    for node in fleet[:2]:
        assert sleeper_pid(node) == sleepers[node.name], f"{node.name}: the container did not survive"
    hooks = calls.read_text().splitlines()
    assert hooks[:2] == [f"drain {CANARY} --ignore-daemonsets", f"uncordon {CANARY}"], hooks
    assert sorted(hooks[2:]) == sorted(
        [f"drain {name} --ignore-daemonsets" for name in REST] + [f"uncordon {name}" for name in REST]
    ), hooks
    for name in REST:
        assert hooks.index(f"drain {name} --ignore-daemonsets") < hooks.index(f"uncordon {name}"), hooks

    # 3. A drain that fails stops that node's change: a config change whose canary cannot be
    # drained changes nothing anywhere.
    refuse.write_text(CANARY + "\n")
    calls.unlink()
    for name in NAMES:
        set_data(name, containerd_max_container_log_line_size=32768)
    before = {node.name: (main_pid(node), node_snapshot(node)) for node in fleet}
    result = rollout()
    said = result.stdout + result.stderr
    assert result.returncode == 1, said[-4000:]
    assert "containerd_restart_hook_before" in said and "cannot evict pod" in said, said[-4000:]
    for node in fleet:
        assert (main_pid(node), node_snapshot(node)) == before[node.name], f"{node.name} was changed"
    assert calls.read_text().splitlines() == [f"drain {CANARY} --ignore-daemonsets"]

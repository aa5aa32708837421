"""A cgroup v1 node: Debian 12 booted with systemd.unified_cgroup_hierarchy=0 gets the same
deploy and passes the same conformance suite, down to the CRI, as the cgroup v2 nodes."""

import re

import pytest

from tests.harness import __main__ as harness

from .helpers import changed_ops, conformance, deploy_ok
from .test_lifecycle import Node

pytestmark = [
    pytest.mark.xdist_group("cgroup-v1"),
    pytest.mark.vm("the cgroup version is the kernel's: a machine has this machine's"),
]
NAME = "cgv1-1"
CGROUP_V1 = ("systemd.unified_cgroup_hierarchy=0",)


@pytest.fixture(scope="module")
def v1_node():
    (started,) = harness.up([NAME], "bookworm", kernel_args=CGROUP_V1)
    yield Node(started, NAME)
    harness.down([NAME])


def test_a_cgroup_v1_node_deploys_and_passes_conformance(v1_node):
    # Not cgroup2fs: the v1 controllers are mounted under a tmpfs at /sys/fs/cgroup.
    assert v1_node.vm.ssh("stat -fc %T /sys/fs/cgroup").stdout.strip() == "tmpfs"
    assert v1_node.vm.ssh("ls /sys/fs/cgroup").stdout.split().count("memory") == 1

    results = deploy_ok(v1_node)  # the deploy's own verify step runs last
    assert changed_ops(results, NAME), "the first deploy changed nothing"
    process = conformance(v1_node)
    assert process.returncode == 0, f"conformance failed on cgroup v1:\n{process.stdout[-6000:]}"
    passed = re.search(r"(\d+) passed", process.stdout)
    assert passed and int(passed.group(1)) >= 16, process.stdout[-2000:]
    assert changed_ops(deploy_ok(v1_node), NAME) == [], "a rerun changes nothing"

"""A cgroup v1 node: the oldest generation's VM (Debian 12, containerd 1.6) boots with
systemd.unified_cgroup_hierarchy=0 (conftest's MATRIX) and gets the same deploy; the whole
conformance suite, down to the CRI, passes there (test_deploy's conformance test, on this node)
as on the cgroup v2 nodes."""

import pytest

from .helpers import changed_ops, deploy_ok

pytestmark = [
    pytest.mark.vm("the cgroup version is the kernel's: a machine has this machine's"),
    pytest.mark.generations("debian12-containerd1.6"),
]


def test_a_cgroup_v1_node_deploys_and_reruns_unchanged(node, first_deploy):
    # Not cgroup2fs: the v1 controllers are mounted under a tmpfs at /sys/fs/cgroup.
    assert node.vm.ssh("stat -fc %T /sys/fs/cgroup").stdout.strip() == "tmpfs"
    assert node.vm.ssh("ls /sys/fs/cgroup").stdout.split().count("memory") == 1
    assert changed_ops(first_deploy, node.name), "the first deploy changed nothing"
    assert changed_ops(deploy_ok(node), node.name) == [], "a rerun changes nothing"

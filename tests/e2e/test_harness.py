"""The test harness itself: several nodes of each kind at once, each with a disk of its own,
stopped cleanly by PID; a stopped machine leaves no cgroup behind."""

import os

import pytest

from tests.harness import __main__ as harness
from tests.harness import nspawn, vm

pytestmark = pytest.mark.xdist_group("fleet")


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(vm.VM, marks=pytest.mark.vm("the VM harness itself is the subject")),
        pytest.param(vm.MACHINE, marks=pytest.mark.machine("the machine harness itself is the subject")),
    ],
)
def test_two_nodes_run_at_once_and_stop_by_pid(kind):
    names = [f"harness-{kind}-a", f"harness-{kind}-b"]
    a, b = harness.up(names, "bookworm", kind=kind)
    try:
        assert a.port != b.port and a.pid != b.pid
        for node in (a, b):
            assert node.ssh("systemctl is-system-running --wait || true").stdout.strip() in (
                "running",
                "degraded",
            )
        # Each is its own disk: a file written on one is not on the other.
        a.ssh("echo a > /root/which")
        assert b.ssh("cat /root/which", check=False).returncode != 0
        pid = a.pid
        harness.down([names[0]])
        assert not os.path.exists(f"/proc/{pid}"), f"{names[0]} still runs"
        assert [node.name for node in vm.running() if node.name in names] == [names[1]]
        assert b.ssh("true").returncode == 0
    finally:
        harness.down(names)
    assert not any(node.name in names for node in vm.running())
    assert not any(path.exists() for name in names for path in nspawn.own_cgroups(name)), "a cgroup left"

"""The test harness itself: several nodes at once, each its own VM, stopped cleanly by PID."""

import os

import pytest

from tests.harness import __main__ as harness
from tests.harness import vm

pytestmark = [pytest.mark.xdist_group("fleet"), pytest.mark.vm("the VM harness itself is the subject")]


def test_two_nodes_run_at_once_and_stop_by_pid():
    names = ["harness-a", "harness-b"]
    a, b = harness.up(names, "bookworm")
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
        harness.down(["harness-a"])
        assert not os.path.exists(f"/proc/{pid}"), "qemu of harness-a still runs"
        assert [node.name for node in vm.running() if node.name in names] == ["harness-b"]
        assert b.ssh("true").returncode == 0
    finally:
        harness.down(names)
    assert not any(node.name in names for node in vm.running())

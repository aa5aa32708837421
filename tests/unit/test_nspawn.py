"""The machines (tests/harness/nspawn.py): what is written into a machine before it boots, where
its cgroups go, and how its processes are found for the idle measure."""

import os
import subprocess
import time

from tests.harness import nspawn, vm


def test_a_machine_gets_its_port_its_name_and_no_unit_that_would_touch_the_hosts_network(tmp_path):
    root = tmp_path / "root"
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/systemd-networkd.service").write_text("[Unit]\n")  # replaced by a mask
    nspawn._prepare(root, "fanout-3", 40123, {"/etc/ssh/sshd_config.d/bench.conf": "LogLevel VERBOSE\n"})
    assert (root / "etc/ssh/sshd_config.d/port.conf").read_text() == "Port 40123\nListenAddress 127.0.0.1\n"
    assert (root / "etc/ssh/sshd_config.d/bench.conf").read_text() == "LogLevel VERBOSE\n"
    assert (root / "etc/hostname").read_text() == "fanout-3\n"
    for unit in (
        "systemd-networkd.service",
        "systemd-resolved.service",
        "systemd-networkd-wait-online.service",
    ):
        assert os.readlink(root / "etc/systemd/system" / unit) == "/dev/null", unit


def test_a_machines_processes_are_its_whole_tree_and_a_reaped_one_is_gone():
    process = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        for _ in range(50):
            found = nspawn.processes(process.pid)
            if len(found) >= 3:
                break
            time.sleep(0.1)
        assert found[0] == process.pid and len(found) == 3, found
        assert os.getpid() not in found
    finally:
        process.kill()
    process.wait()
    assert not vm.alive(process.pid)


def test_a_zombie_node_process_counts_as_stopped():
    """Regression: a stopped machine's nspawn process, not yet reaped by the bench that started
    it, answered kill(0) and kept `stop` waiting for ever."""
    process = subprocess.Popen(["true"])
    time.sleep(0.5)  # exited, not reaped: a zombie
    assert not vm.alive(process.pid)


def test_a_machine_gets_a_cgroup_in_each_v1_controller_hierarchy_and_nowhere_else():
    """Its cgroups go where the controllers are (v1 hierarchies), not into systemd's named one nor
    cgroup2: a machine's runc needs writable controllers."""
    mounts = (
        "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n"
        "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
        "cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,xattr,name=systemd 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n"
        "cgroup /mnt/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
    )
    assert [str(path) for path in nspawn.controller_hierarchies(mounts)] == [
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/memory",
        "/mnt/cpu,cpuacct",
    ]
    assert nspawn.controller_hierarchies("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n") == [], "cgroup v2 only"

"""The light machines of the fan-out benchmark (tests/harness/nspawn.py): what is written into a
machine before it boots, and how its processes are found for the idle measure."""

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

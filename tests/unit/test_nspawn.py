"""The machines (tests/harness/nspawn.py): what is written into a machine before it boots, where
its cgroups go, and how its processes are found for the idle measure."""

import os
import subprocess
import time
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(
    "name", ["node\n  ProxyCommand touch /tmp/pwned", "a b", "node*", "!node", "a,b", "", "nöde", 'a"b']
)
def test_a_node_name_that_would_be_more_than_one_ssh_config_word_is_refused(name):
    """Regression (#26): Host and HostName were written into ssh_config unquoted: a newline in
    a name added a ProxyCommand that ssh ran for every node."""
    with pytest.raises(ValueError, match="use letters, digits"):
        vm.ssh_config_host(name)


def test_ssh_config_words_are_quoted_when_spaced_and_refused_when_they_would_end_the_line():
    assert vm.ssh_config_host("e2e-debian13-containerd2.1_x") == "e2e-debian13-containerd2.1_x"
    assert vm.ssh_config_word("/home/a b/.ssh/key") == '"/home/a b/.ssh/key"'
    assert vm.ssh_config_word("/plain/", "%C") == "/plain/%C", "ssh's own token stays one"
    assert vm.ssh_config_word("/a%h/key") == "/a%%h/key", "a % in a path is not a token"
    for bad in ["/a\n  ProxyCommand x", '/a"b', "/a\\b", ""]:
        with pytest.raises(ValueError):
            vm.ssh_config_word(bad)


def test_the_ssh_config_has_one_host_block_per_node_and_nothing_else(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(vm, "run_root", lambda: tmp_path)
    monkeypatch.setattr(vm, "ssh_key", lambda: Path("/keys/my key"))
    monkeypatch.setattr(vm, "known_hosts_file", lambda: tmp_path / "known_hosts")
    monkeypatch.setattr(vm, "control_dir", lambda: tmp_path / "control")
    monkeypatch.setattr(vm, "ssh_config_file", lambda: tmp_path / "ssh_config")
    (tmp_path / "n1").mkdir()
    (tmp_path / "n1" / "node.json").write_text(json.dumps({"name": "n1", "port": 2222}))
    vm.write_ssh_config()
    text = (tmp_path / "ssh_config").read_text()
    assert [line.split()[0] for line in text.splitlines() if line.strip()][:2] == ["Host", "HostName"]
    assert '  IdentityFile "/keys/my key"\n' in text and text.count("Host ") == 1
    (tmp_path / "n2").mkdir()
    (tmp_path / "n2" / "node.json").write_text(
        json.dumps({"name": "n2\n  ProxyCommand touch /tmp/pwned", "port": 1})
    )
    with pytest.raises(ValueError):
        vm.write_ssh_config()
    assert (tmp_path / "ssh_config").read_text() == text, "nothing written"

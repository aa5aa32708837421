import pytest

from containerd_deploy.conformance.inventory import accept_new_wrapper, host_specs, select, ssh_config

HOSTS = [
    (
        "node1",
        ["local_nodes"],
        {
            "ssh_hostname": "127.0.0.1",
            "ssh_port": 2201,
            "ssh_user": "root",
            "ssh_key": "/keys/id",
            "ssh_known_hosts_file": "/kh",
            "ssh_strict_host_key_checking": "yes",
        },
    ),
    ("worker-arm-1.example.com", ["k8s_workers"], {"ssh_user": "admin", "_sudo": True}),
]


def test_each_host_becomes_an_openssh_entry_with_its_ssh_data():
    text = ssh_config(HOSTS, "/tmp/conformance-ssh-x1y2")
    assert "Host node1\n  HostName 127.0.0.1\n  Port 2201\n  User root\n  IdentityFile /keys/id\n" in text
    assert (
        "  UserKnownHostsFile /kh\n  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n  ControlMaster auto\n"
        in text
    )
    assert "Host worker-arm-1.example.com\n  HostName worker-arm-1.example.com\n  User admin\n" in text
    assert host_specs(HOSTS) == ["ssh://node1", "ssh://worker-arm-1.example.com?sudo=true"]
    # Regression: sockets were /tmp/conformance-ssh-%C, a name another local user could take first.
    assert text.count("  ControlPath /tmp/conformance-ssh-x1y2/%C\n") == 2


def test_the_harness_keeps_its_ssh_sockets_in_a_private_directory(tmp_path, monkeypatch):
    import os
    import stat

    import pytest

    from tests.harness import vm

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    directory = vm.control_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700 and directory.stat().st_uid == os.getuid()
    assert f"ControlPath={directory}/%C" in vm.ssh_options(22)
    directory.chmod(0o777)  # someone made it shared: refuse to use it
    with pytest.raises(RuntimeError, match="mode 0700"):
        vm.control_dir()


def test_accepting_new_host_keys_is_opt_in():
    assert "accept-new" not in ssh_config(HOSTS, "/d")
    assert ssh_config(HOSTS, "/d", accept_new_host_keys=True).count("StrictHostKeyChecking accept-new") == 2
    assert (
        accept_new_wrapper("/my/config")
        == "Host *\n  StrictHostKeyChecking accept-new\n\nInclude /my/config\n"
    )


def test_limit_by_name_group_or_glob():
    assert [h[0] for h in select(HOSTS, "k8s_workers")] == ["worker-arm-1.example.com"]
    assert [h[0] for h in select(HOSTS, "node*")] == ["node1"]
    assert len(select(HOSTS, None)) == 2 and select(HOSTS, "nothing") == []


def test_loading_the_example_inventory_with_its_group_data():
    from containerd_deploy.conformance.inventory import load

    hosts = {name: (groups, data) for name, groups, data in load("inventories/example.py")}
    assert "worker-arm-1.example.com" in hosts and len(hosts) == 5
    groups, data = hosts["worker-arm-1.example.com"]
    assert "k8s_workers" in groups and data["ssh_user"] == "admin" and data["_sudo"] is True
    assert data["containerd_version"] == "2.2.1", "group_data/k8s_workers.py applies"


def test_without_expected_versions_the_suite_reads_those_the_deploy_recorded():
    """The versions a node is held to come from the manifests the deploy wrote there, read as
    the deploy reads them (a path with spaces, the fields in any order)."""
    from types import SimpleNamespace

    from containerd_deploy.conformance.conftest import recorded_version

    files = {
        "/var/lib/containerd-deploy/runc.manifest": "component runc\nfile /usr/local/sbin/my runc 1:2:3.4\nversion 1.2.5\n"
    }

    def file(path):
        return SimpleNamespace(exists=path in files, content_string=files.get(path, ""))

    host = SimpleNamespace(file=file)
    assert recorded_version(host, "runc") == "1.2.5"
    assert recorded_version(host, "containerd") is None


@pytest.mark.other_process
def test_hosts_the_suite_cannot_reach_are_one_line_each_and_fail_the_run(tmp_path):
    """Regression: against an unreachable host the suite printed ~1,150 lines of tracebacks."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a port nothing listens on: "Connection refused" at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n  Port {port}\n  StrictHostKeyChecking yes\n  UserKnownHostsFile /dev/null\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "containerd_deploy.conformance",
            "-q",
            f"--ssh-config={config}",
            "--hosts=ssh://root@127.0.0.1,ssh://root@localhost",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert run.returncode == 1, run.stdout[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) <= 4, run.stdout
    for name in ("127.0.0.1", "localhost"):
        (said,) = [line for line in lines if line.startswith(f"ssh://{name}: ")]
        assert (
            f"could not connect over SSH (ssh: connect to host {name} port {port}: Connection refused)"
            in said
        )
        assert "Fix: start the host or correct its address" in said
    assert "Traceback" not in run.stdout + run.stderr

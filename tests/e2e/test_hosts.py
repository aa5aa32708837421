"""Hosts the deploy refuses, or serves only on the operator's word, on a Debian 13 VM of their
own: a shell without systemd, a containerd from Debian's own package, and a rollback to 1.x
of a config in the 2.x schema. Each refusal comes before any change."""

import subprocess

import pytest
import testinfra

from tests.harness import __main__ as harness
from tests.harness import mirror, vm

from .helpers import changed_ops, main_pid, module_kind, node_snapshot, pyinfra
from .test_lifecycle import Node, ctr_versions, deploy, release_data

pytestmark = [
    pytest.mark.xdist_group("hosts"),
    pytest.mark.machine("what the deploy refuses on a host, and removes on request, is its logic"),
]
NAME = "hosts-1"
NO_SYSTEMD_USER = "nosystemd"


@pytest.fixture(scope="module")
def hosts(request):
    (started,) = harness.up([NAME], "trixie", kind=module_kind(request))
    yield Node(started, NAME)
    harness.down([NAME])


def refused(node: Node, *messages: str, **data) -> None:
    """A run that must stop before its first operation, saying each of `messages`."""
    before, pid = node_snapshot(node), main_pid(node)
    process, _ = pyinfra(node.name, data=data)
    assert process.returncode != 0, "the run was not refused"
    for message in messages:
        assert message in process.stderr, process.stderr[-3000:]
    assert "Starting operation" not in process.stderr, "refused only after an operation ran"
    assert node_snapshot(node) == before and main_pid(node) == pid, "the refusal changed the node"


def put(node: Node, path: str, data: bytes) -> None:
    subprocess.run(node.vm.ssh_command(f"cat > {path}"), input=data, check=True, timeout=120)


def test_a_distro_containerd_is_refused_then_removed_on_request(hosts):
    debs = mirror.suite_debs("trixie", ["containerd", "runc"])
    for package, deb in debs.items():
        put(hosts, f"/tmp/{package}.deb", deb.read_bytes())
    hosts.vm.ssh("dpkg -i /tmp/runc.deb /tmp/containerd.deb && systemctl is-active containerd", timeout=300)
    packaged = hosts.vm.ssh("dpkg-query -W -f='${Version}' containerd").stdout.strip()

    refused(
        hosts,
        f"{NAME}: a distribution package installs containerd here: containerd {packaged} "
        "(dpkg, /usr/bin/containerd); containerd.service is running.",
        "set data key 'containerd_distro_package' to 'remove'",
    )
    assert hosts.vm.ssh("ls -A /usr/local/bin").stdout.strip() == ""

    results = deploy(hosts, containerd_distro_package="remove")
    assert any("Remove the distribution's containerd package" in name for name in changed_ops(results, NAME))
    status = hosts.vm.ssh("dpkg-query -W -f='${db:Status-Status}' containerd").stdout
    assert status == "config-files", f"the package is removed, its conffiles kept: {status}"
    assert (
        hosts.vm.ssh("readlink /proc/$(systemctl show -p MainPID --value containerd)/exe").stdout.strip()
        == "/usr/local/bin/containerd"
    )
    version = release_data("trixie")["containerd_version"]
    assert ctr_versions(hosts) == (version, version)
    # The package's config.toml was the starting point: its settings are still there.
    host = testinfra.get_host(f"ssh://{NAME}", ssh_config=str(vm.ssh_config_file()))
    assert 'bin_dir = "/usr/lib/cni"' in host.file("/etc/containerd/config.toml").content_string
    again = deploy(hosts, containerd_distro_package="remove")
    assert changed_ops(again, NAME) == [], "nothing left to remove or change"


def test_a_2x_config_is_refused_by_a_1x_rollback_until_rebuilt_from_defaults(hosts):
    deploy(hosts, containerd_state="purged")
    deploy(hosts, **release_data("sid"))  # a fresh 2.1.9: config.toml from its defaults, schema 3
    assert hosts.vm.ssh("grep -c '^version = 3' /etc/containerd/config.toml").stdout.strip() == "1"
    old = release_data("trixie")
    refused(
        hosts,
        f"{NAME}: /etc/containerd/config.toml declares version = 3, which containerd "
        f"{old['containerd_version']} cannot read",
        "containerd_config_base=default",
        **old,
    )
    deploy(hosts, containerd_config_base="default", **old)
    assert hosts.vm.ssh("grep -c '^version = 2' /etc/containerd/config.toml").stdout.strip() == "1"
    assert ctr_versions(hosts) == (old["containerd_version"],) * 2


def test_a_shell_without_systemd_is_refused(hosts):
    """A login whose commands run where systemd is not PID 1 and /run/systemd is absent (as in a
    container or a sysvinit host): a root alias whose sshd ForceCommand enters new PID and
    mount namespaces with an empty /run."""
    entry = (
        f"Match User {NO_SYSTEMD_USER}\n    ForceCommand unshare --mount --pid --fork --mount-proc "
        """sh -c 'mount -t tmpfs none /run && exec sh -c "$SSH_ORIGINAL_COMMAND"'\n"""
    )
    hosts.vm.ssh(
        f"id {NO_SYSTEMD_USER} >/dev/null 2>&1 || useradd -o -u 0 -g 0 -M -d /root -s /bin/sh {NO_SYSTEMD_USER}"
    )
    put(hosts, "/tmp/sshd-match", entry.encode())
    hosts.vm.ssh(
        "grep -q 'Match User nosystemd' /etc/ssh/sshd_config || cat /tmp/sshd-match >> /etc/ssh/sshd_config; "
        "sshd -t && systemctl reload ssh"
    )
    refused(
        hosts,
        f"{NAME}: systemd is not running as PID 1 (no /run/systemd/system)",
        "Use a systemd host",
        ssh_user=NO_SYSTEMD_USER,
    )

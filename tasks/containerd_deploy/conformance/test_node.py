"""Is this node a correct containerd node? Checks over SSH (pytest-testinfra), no agent needed.

python -m containerd_deploy.conformance --hosts=ssh://root@node1 [--ssh-config=...]
"""

import shlex
import uuid

import pytest

from containerd_deploy.data.config_toml import runc_systemd_cgroup
from containerd_deploy.facts.node import parse_ctr_version
from containerd_deploy.plan.files import exec_start
from containerd_deploy.plan.verdict import release_version

from . import oci
from .images import import_image

SOCKET = "/run/containerd/containerd.sock"
NAMESPACE = "containerd-deploy-conformance"


@pytest.mark.parametrize("name", ["containerd", "ctr", "containerd-shim-runc-v2"])
def test_containerd_binaries_are_root_owned_executables(host, layout, name):
    binary = host.file(f"{layout.bin_dir}/{name}")
    assert binary.is_file, (
        f"{binary.path} is missing: the containerd release tarball's bin/ was not installed"
    )
    assert (binary.user, binary.group) == ("root", "root"), (
        f"{binary.path} is owned by {binary.user}:{binary.group}, expected root:root"
    )
    assert binary.mode == 0o755, f"{binary.path} has mode {binary.mode:o}, expected 755"


def test_runc_is_a_root_owned_executable(host, layout):
    runc = host.file(layout.runc)
    assert runc.is_file, f"{layout.runc} is missing"
    assert (runc.user, runc.group) == ("root", "root"), (
        f"{layout.runc} is owned by {runc.user}:{runc.group}, expected root:root"
    )
    assert runc.mode == 0o755, f"{layout.runc} has mode {runc.mode:o}, expected 755"


def test_binaries_are_the_deployed_versions(host, layout, expected_versions):
    containerd, runc = expected_versions
    found = release_version(host.check_output(f"{shlex.quote(layout.containerd)} --version"))
    assert found == containerd, f"{layout.containerd} is version {found}, expected {containerd}"
    found = release_version(host.check_output(f"{shlex.quote(layout.runc)} --version"))
    assert found == runc, f"{layout.runc} is version {found}, expected {runc}"


def test_unit_is_installed_enabled_and_active(host, layout):
    unit_file = host.file(layout.unit_path)
    assert unit_file.is_file, f"{layout.unit_path} is missing"
    assert exec_start(layout.containerd) in unit_file.content_string, (
        f"{layout.unit_path} does not start {layout.containerd}"
    )
    service = host.service(layout.unit)
    assert service.is_enabled, (
        f"{layout.unit} is not enabled: it would not start at boot (systemctl enable {layout.unit})"
    )
    assert service.is_running, f"{layout.unit} is not running (journalctl -u {layout.unit})"


def test_socket_exists(host):
    assert host.file(SOCKET).is_socket, f"{SOCKET} is not a socket: containerd is not serving"


def test_effective_config_uses_systemd_cgroups(host, layout):
    dump = host.run(f"{shlex.quote(layout.containerd)} --config {shlex.quote(layout.config)} config dump")
    assert dump.rc == 0, f"containerd config dump failed: {dump.stderr}"
    setting = runc_systemd_cgroup(dump.stdout)
    assert setting is True, (
        f"the runc runtime's SystemdCgroup is {setting} in the effective config, expected true: "
        "kubelet's cgroupDriver systemd needs it (set it in the runc runtime options of the CRI plugin)"
    )


def test_ctr_talks_to_a_daemon_of_its_own_version(host, layout, expected_versions):
    client, server = parse_ctr_version(host.check_output(f"{shlex.quote(layout.ctr)} version").splitlines())
    assert server is not None, "ctr got no answer from the daemon"
    assert client == server, (
        f"ctr {client} talks to a containerd {server}: the daemon was not restarted after an upgrade"
    )
    assert release_version(server) == expected_versions[0]


def test_a_container_runs(host, layout):
    ctr = f"{shlex.quote(layout.ctr)} -n {NAMESPACE}"
    import_image(host, layout, NAMESPACE, oci.IMAGE_NAME)
    marker = f"conformance-{uuid.uuid4().hex[:8]}"
    result = host.run(f"{ctr} run --rm {oci.IMAGE_NAME} {marker} /bin/echo {marker}")
    assert result.rc == 0, f"ctr run failed (exit {result.rc}): {result.stderr}"
    assert result.stdout.strip() == marker, f"the container printed {result.stdout!r}, expected {marker!r}"

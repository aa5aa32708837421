"""A mixed fleet in one run: an amd64 node (a machine) and an arm64 node (an emulated VM)
deployed at once, each with its own arch's release files fetched and cached by the controller,
then checked at once from the inventory; a rerun changes neither."""

import json
import re
import subprocess

import pytest

from tests.harness import __main__ as harness
from tests.harness import mirror, vm
from tests.harness.paths import REPO_ROOT

from .helpers import CONFORMANCE, DEPLOY, VERIFY_OP, changed_ops, main_pid, mirror_from_controller

pytestmark = [
    pytest.mark.xdist_group("fleet"),
    pytest.mark.vm("an arm64 node needs its own (emulated) kernel; CRI pods run on both (amd64: a machine)"),
    pytest.mark.slowest_group,  # an emulated arm64 VM (and, on a fresh machine, its image): scheduled first
]
AMD64, ARM64 = "fleet-amd64", "fleet-arm64"
NAMES = [AMD64, ARM64]
ARCHES = {AMD64: "amd64", ARM64: "arm64"}


class Member:
    def __init__(self, name: str):
        self.name, self.vm = name, vm.load(name)


@pytest.fixture(scope="module")
def fleet():
    harness.up([AMD64], "bookworm", kind=vm.MACHINE)
    harness.up([ARM64], "bookworm", arch="arm64")
    yield [Member(name) for name in NAMES]
    harness.down(NAMES)


def deploy_fleet(*extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    process = subprocess.run(
        [*DEPLOY, "-y", "--json", *[arg for name in NAMES for arg in ("--limit", name)], *extra],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    return process, json.loads(process.stdout)


def node_data(name: str) -> dict:
    return json.loads((vm.node_dir(name) / "data.json").read_text())


def test_a_mixed_fleet_deploys_in_one_run_each_node_with_its_own_arch(fleet, tmp_path):
    # The controller fetches (from the mirror, on its loopback), verifies, caches and uploads.
    loopback = mirror_from_controller(node_data(AMD64)["artifact_mirror"], fleet[0].vm)
    cache = tmp_path / "cache"
    _, results = deploy_fleet(
        "--data",
        "artifact_source=controller",
        "--data",
        f"artifact_cache_dir={cache}",
        "--data",
        f"artifact_mirror={loopback}",
        "--data",
        "containerd_images_sandbox=false",  # the harness's sandbox image is on no registry
    )
    for member in fleet:
        arch = ARCHES[member.name]
        assert any("Install containerd" in op for op in changed_ops(results, member.name)), member.name
        assert member.vm.ssh("uname -m").stdout.strip() == {"amd64": "x86_64", "arm64": "aarch64"}[arch]
        if arch == "arm64":  # booted as Debian boots: the oldest generation's cgroup v2 proof (conftest)
            assert member.vm.ssh("stat -fc %T /sys/fs/cgroup").stdout.strip() == "cgroup2fs"
        manifest = member.vm.ssh("cat /var/lib/containerd-deploy/containerd.manifest").stdout
        assert f"-linux-{arch}.tar.gz" in manifest, manifest
        # The binary runs there: the daemon answers as the deployed version.
        data = node_data(member.name)
        assert f"Version:  {data['containerd_version']}" in member.vm.ssh("/usr/local/bin/ctr version").stdout
    # One verified copy of each arch's files, named by its sha256.
    cached = sorted(path.name for path in cache.iterdir())
    expected = []
    for name, arch in ARCHES.items():
        data = node_data(name)
        expected += [
            f"{data['containerd_sha256']}-containerd-{data['containerd_version']}-linux-{arch}.tar.gz",
            f"{data['runc_sha256']}-runc.{arch}",
        ]
    assert cached == sorted(expected)


def test_the_mixed_fleet_passes_conformance_from_the_inventory_and_reruns_unchanged(fleet):
    # The arm64 node's test image is built from an arm64 busybox (this machine's is amd64).
    check = subprocess.run(
        [
            *CONFORMANCE,
            "--inventory=inventories/local.py",
            f"--limit={','.join(NAMES)}",
            f"--busybox=arm64={mirror.static_busybox('arm64')}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert check.returncode == 0, check.stdout[-5000:]
    passed = re.search(r"(\d+) passed", check.stdout)
    # (the machine has no AppArmor: that test is skipped there)
    assert passed and int(passed.group(1)) >= 16 + 17, check.stdout[-2000:]
    # The CRI pod under a systemd slice ran on both arches.
    assert "FAILED" not in check.stdout

    # A change without a restart (a mirror's hosts.toml): the verify step runs a container on
    # each node (the sandbox image is there now, imported by the suite), then the rerun that
    # takes it away, then one that changes nothing.
    pids = {member.name: main_pid(member) for member in fleet}
    mirrors = json.dumps({"registry.invalid": {"mirrors": [{"host": "https://mirror.invalid"}]}})
    _, results = deploy_fleet("--data", f"containerd_registries={mirrors}")
    for member in fleet:
        assert VERIFY_OP in changed_ops(results, member.name), member.name
    deploy_fleet()
    _, results = deploy_fleet()
    for member in fleet:
        assert changed_ops(results, member.name) == [], member.name
        assert main_pid(member) == pids[member.name], f"{member.name} restarted"

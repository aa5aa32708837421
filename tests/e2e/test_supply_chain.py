"""The artifact supply chain on a fresh node: every way a download can go wrong leaves the node
as it was; the controller-side cache deploys a node that has no route to the mirror (a VM: a
network of its own); an upgrade replaces binaries by rename, so a concurrent `containerd
--version` never sees a partial file."""

import shutil
import subprocess

import pytest

from tests.harness import __main__ as harness
from tests.harness import mirror, registry, vm

from .helpers import (
    OwnNode,
    changed_ops,
    changed_steps,
    main_pid,
    mirror_from_controller,
    node_snapshot,
    pyinfra,
)

ON_A_MACHINE = pytest.mark.machine("what a download, a cache and an install leave is the deploy's logic")
ON_A_VM = pytest.mark.vm("a node that cannot reach an address the controller can needs a network of its own")
NAME, NO_ROUTE = "supply-1", "supply-no-route-1"
# Everything the deploy could have put on the node, and any staging leftovers.
FOOTPRINT = (
    "ls -A /usr/local/bin /usr/local/sbin /var/lib/containerd-deploy /var/cache/containerd-deploy "
    "/etc/containerd 2>&1; find / -xdev -name '*.containerd-deploy-new*' 2>/dev/null"
)


@pytest.fixture(scope="module")
def fresh():
    (started,) = harness.up([NAME], "trixie", kind=vm.MACHINE)
    yield OwnNode(NAME, started)
    harness.down([NAME])


@pytest.fixture(scope="module")
def no_route():
    (started,) = harness.up([NO_ROUTE], "trixie")
    yield OwnNode(NO_ROUTE, started)
    harness.down([NO_ROUTE])


def short(names: list[str]) -> list[str]:
    """Operation names without their deploy prefixes ("containerd node | … | ")."""
    return [name.rsplit(" | ", 1)[-1] for name in names]


def loopback_mirror(node: OwnNode) -> str:
    """The mirror as the controller sees it; from the node, 127.0.0.1 is the node itself."""
    return mirror_from_controller(node.data()["artifact_mirror"], node.vm)


def refused(node: OwnNode, *extra: str, **data) -> str:
    before = node.vm.ssh(FOOTPRINT).stdout
    process, _ = pyinfra(node.name, *extra, data=data)
    assert process.returncode != 0, "the deploy should have failed"
    assert node.vm.ssh(FOOTPRINT).stdout == before, "a failed download changed the node"
    return process.stdout + process.stderr


@ON_A_MACHINE
@pytest.mark.xdist_group("supply")
def test_download_failures_leave_a_fresh_node_untouched(fresh):
    port = fresh.data()["artifact_mirror"].rsplit(":", 1)[1]
    mirror_host = fresh.vm.controller_address
    # HTTP 404: a version the mirror does not have.
    output = refused(fresh, containerd_version="1.7.99", containerd_sha256="a" * 64)
    assert (
        f"could not download http://{mirror_host}:" in output
        and "containerd-1.7.99-linux-amd64.tar.gz" in output
    )
    assert "nothing was installed" in output
    # The mirror down: nothing listens on that port.
    output = refused(fresh, artifact_mirror=f"http://{mirror_host}:9")
    assert f"could not download http://{mirror_host}:9/containerd/containerd/releases/download/" in output

    # A truncated file: only its first half on the mirror, checked against the real sha256.
    real = mirror.containerd_tarball_path(fresh.data()["containerd_version"])
    truncated = mirror.containerd_tarball_path("1.7.98")
    truncated.parent.mkdir(parents=True, exist_ok=True)
    data = real.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    try:
        output = refused(
            fresh, containerd_version="1.7.98", containerd_sha256=fresh.data()["containerd_sha256"]
        )
        assert (
            f"checksum mismatch for http://{mirror_host}:{port}/containerd/containerd/releases/download/v1.7.98/"
            in output
        )
        assert f"expected sha256 {fresh.data()['containerd_sha256']}" in output
    finally:
        shutil.rmtree(truncated.parent)

    # A full disk where downloads are staged: a 64 KiB tmpfs.
    # root's alone (mode=755): a tmpfs is 1777 by default, where the deploy refuses to stage.
    fresh.vm.ssh("mkdir -p /mnt/tiny && mount -t tmpfs -o size=64k,mode=755 tmpfs /mnt/tiny")
    try:
        output = refused(fresh, containerd_staging_dir="/mnt/tiny/staging")
        assert "could not download" in output and "nothing was installed" in output
        assert fresh.vm.ssh("ls -A /mnt/tiny").stdout.strip() == "", "nothing is left in the staging area"
    finally:
        fresh.vm.ssh("umount /mnt/tiny")


@ON_A_VM
@pytest.mark.xdist_group("supply-no-route")
def test_controller_cache_deploys_a_node_that_cannot_reach_the_mirror(no_route, tmp_path):
    unreachable = loopback_mirror(no_route)
    # From the node the mirror's address is its own loopback: fetching there fails ...
    output = refused(no_route, artifact_mirror=unreachable)
    assert f"could not download {unreachable}/" in output

    # ... while the controller fetches once, verifies, and uploads over SSH.
    cache = tmp_path / "cache"
    # A tampered file is refused on the controller already, and never cached.
    output = refused(
        no_route,
        artifact_mirror=unreachable,
        artifact_source="controller",
        artifact_cache_dir=str(cache),
        runc_sha256={no_route.data()["runc_version"]: "b" * 64},
        containerd_images_sandbox=False,  # (the images are fetched first: this is about the release files)
    )
    assert f"checksum mismatch for {unreachable}/opencontainers/runc/releases/download/" in output
    assert "expected sha256 " + "b" * 64 in output
    assert not any(path.name.endswith("runc.amd64") for path in cache.glob("*")), "a bad file was cached"

    # The sandbox image comes from the controller too (from the harness's registry, which the
    # controller reaches through its own registries.conf): the verify step's container runs.
    info = registry.ensure()
    env = {"CONTAINERS_REGISTRIES_CONF": str(registry.controller_registries_conf(info))}
    data = {
        "artifact_mirror": unreachable,
        "artifact_source": "controller",
        "artifact_cache_dir": str(cache),
        "containerd_sandbox_image": registry.PAUSE_REFERENCE,
    }
    process, results = pyinfra(no_route.name, data=data, env=env)
    assert process.returncode == 0, process.stderr[-4000:]
    [line] = [line for line in process.stderr.splitlines() if line.strip().startswith(f"{no_route.name} ")]
    assert f"a container ran from {registry.PAUSE_REFERENCE}" in line, process.stderr[-3000:]
    changed = changed_ops(results, no_route.name)
    assert any("Install containerd" in name for name in changed) and any(
        "Install runc" in name for name in changed
    )
    node_data = no_route.data()
    assert sorted(path.name for path in cache.iterdir() if path.is_file()) == sorted(
        [
            f"{node_data['containerd_sha256']}-containerd-{node_data['containerd_version']}-linux-amd64.tar.gz",
            f"{node_data['runc_sha256']}-runc.amd64",
        ]
    ), "one verified copy of each file, named by its sha256"
    assert len(list((cache / "images").glob("*.tar"))) == 1, "the sandbox image, once"
    assert "containerd-deploy" not in no_route.vm.ssh("ls -A /var/cache").stdout.split(), (
        "uploads are consumed and the staging directory removed"
    )
    owners = no_route.vm.ssh(
        "stat -c '%n %U:%G %a' /usr/local/bin/containerd /usr/local/bin/ctr /usr/local/sbin/runc "
        "/etc/containerd/config.toml /etc/systemd/system/containerd.service"
    ).stdout.split("\n")
    assert [line.split()[1:] for line in owners if line] == [
        ["root:root", "755"],
        ["root:root", "755"],
        ["root:root", "755"],
        ["root:root", "644"],
        ["root:root", "644"],
    ]

    # Converged: a rerun in cache mode uploads nothing and changes nothing.
    before = node_snapshot(no_route)
    process, results = pyinfra(no_route.name, data=data, env=env)
    assert process.returncode == 0 and changed_ops(results, no_route.name) == [], process.stderr[-3000:]
    assert node_snapshot(no_route) == before


@ON_A_MACHINE
@pytest.mark.xdist_group("supply")
def test_cni_plugins_are_optional_and_removed_exactly(fresh):
    cni = mirror.cni_release("trixie")  # Debian's containernetworking-plugins, in upstream's layout
    process, _ = pyinfra(fresh.name)
    assert process.returncode == 0, process.stderr[-4000:]
    fresh.vm.ssh("mkdir -p /opt/cni/bin && echo mine > /opt/cni/bin/operator-plugin")
    pid = main_pid(fresh)
    data = {"cni_plugins_version": cni.version, "cni_plugins_sha256": cni.sha256}
    process, results = pyinfra(fresh.name, data=data)
    assert process.returncode == 0, process.stderr[-4000:]
    assert short(changed_steps(results, fresh.name)) == [
        "Fetch and verify release files",
        f"Install the CNI plugins {cni.version} into /opt/cni/bin",
    ]
    assert main_pid(fresh) == pid, "the CNI plugins are the kubelet's, not containerd's: no restart"
    listing = fresh.vm.ssh("stat -c '%n %U:%G %a' /opt/cni/bin/*").stdout
    assert "/opt/cni/bin/loopback root:root 755" in listing and "/opt/cni/bin/bridge root:root 755" in listing
    process, results = pyinfra(fresh.name, data=data)
    assert process.returncode == 0 and changed_ops(results, fresh.name) == []

    process, results = pyinfra(fresh.name)
    assert process.returncode == 0, process.stderr[-4000:]
    assert short(changed_steps(results, fresh.name)) == ["Remove the CNI plugins (no cni_plugins_version)"]
    assert fresh.vm.ssh("ls -A /opt/cni/bin").stdout.split() == ["operator-plugin"], (
        "only what it installed goes"
    )


@ON_A_MACHINE
@pytest.mark.xdist_group("supply")
def test_an_upgrade_never_shows_a_partial_binary(fresh):
    """Binaries are renamed over their paths: a reader sees the old file or the new, never a mix."""
    sid = mirror.release("sid")  # containerd 2.1.9 / runc 1.3.6 (needs this trixie node's glibc)
    process, _ = pyinfra(fresh.name)  # deployed with the node's own release (no change if already)
    assert process.returncode == 0, process.stderr[-4000:]
    reader = subprocess.Popen(
        fresh.vm.ssh_command(
            "i=0; while [ $i -lt 100000 ] && [ ! -e /tmp/stop-reader ]; do "
            "/usr/local/bin/containerd --version >/dev/null 2>/tmp/reader.err || echo FAIL; "
            "/usr/local/sbin/runc --version >/dev/null 2>>/tmp/reader.err || echo FAIL; "
            "i=$((i+1)); done; echo DONE $i"
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        process, results = pyinfra(
            fresh.name,
            data={
                "containerd_version": sid.containerd_version,
                "containerd_sha256": sid.containerd_sha256,
                "runc_version": sid.runc_version,
                "runc_sha256": sid.runc_sha256,
            },
        )
        assert process.returncode == 0, process.stderr[-4000:]
        assert any("Install containerd" in name for name in changed_ops(results, fresh.name))
    finally:
        fresh.vm.ssh("touch /tmp/stop-reader")
        out, _ = reader.communicate(timeout=120)
    assert "DONE" in out and "FAIL" not in out, out[-2000:] + fresh.vm.ssh("cat /tmp/reader.err").stdout
    loops = int(out.split("DONE")[1].split()[0])
    assert loops > 10, "the reader ran throughout the upgrade"
    assert sid.containerd_version in fresh.vm.ssh("/usr/local/bin/containerd --version").stdout

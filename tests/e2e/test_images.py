"""Images from the controller (containerd_images, and with artifact_source=controller the sandbox
image): a node with no route to any registry gets its images over SSH, checked by digest, and a
CRI pod runs nginx from them; a rerun uploads nothing; a wrong digest is refused before any change.

The node's config has no mirror: docker.io and registry.k8s.io themselves are unreachable from
here, so the node cannot pull either image. The controller (this machine) reaches the harness's
registry through its own containers configuration ($CONTAINERS_REGISTRIES_CONF), as an
operator's controller reaches theirs.
"""

import hashlib
import re

import pytest

from containerd_deploy.deploy.images import IMPORT_OPERATION
from tests.harness import registry

from .helpers import VERIFY_OP, changed_ops, conformance, deploy_ok, main_pid, one_at_a_time, pyinfra

pytestmark = pytest.mark.machine(
    "what the controller fetches, uploads and imports is the deploy's logic; ctr's import is on any node"
)
CTR = "/usr/local/bin/ctr"
FETCH_OP = "Fetch images on the controller"
IMPORT_OP = IMPORT_OPERATION


def images_on(node) -> set[str]:
    return set(node.vm.ssh(f"{CTR} -n k8s.io images ls -q").stdout.split())


@pytest.mark.generations("debian12-containerd1.6", "debian13-containerd2.1")  # the oldest ctr and the newest
def test_a_node_with_no_route_gets_its_images_from_the_controller_and_a_pod_runs_from_them(
    node, first_deploy, tmp_path
):
    with one_at_a_time("registry-tests"):  # nginx serves this machine's port 80
        info = registry.ensure()
        conf = registry.controller_registries_conf(info)
        env = {"CONTAINERS_REGISTRIES_CONF": str(conf)}
        nginx = f"{registry.NGINX_REFERENCE}@{registry.manifest_digest(registry.NGINX_REFERENCE, conf)}"
        digest_name = re.sub(r":[^/:@]+@", "@", nginx)  # docker.io/library/nginx@sha256:…
        wanted = {digest_name, registry.PAUSE_REFERENCE}  # the names a CRI pull of each gives
        node.vm.ssh(f"{CTR} -n k8s.io images rm {' '.join(sorted(wanted))}", check=False)
        data = {
            "artifact_source": "controller",
            "artifact_cache_dir": str(tmp_path / "cache"),
            "containerd_sandbox_image": registry.PAUSE_REFERENCE,
            "containerd_images": [nginx],
        }
        try:
            _no_route_node(node, data, env, nginx, digest_name, wanted)
        finally:
            deploy_ok(node)
            node.vm.ssh(f"{CTR} -n k8s.io images rm {' '.join(sorted(wanted))}", check=False)


def _no_route_node(node, data: dict, env: dict, nginx: str, digest_name: str, wanted: set) -> None:
    # The node itself cannot pull either image: no mirror, and the registries are unreachable.
    pull = node.vm.ssh(f"timeout 60 {CTR} -n k8s.io images pull {registry.NGINX_REFERENCE}", check=False)
    assert pull.returncode != 0, "the node pulled nginx itself: this test needs a node with no route"

    # A digest the registry does not have: refused on the controller, before the node changes.
    pid, before = main_pid(node), images_on(node)
    wrong = nginx.rsplit("@", 1)[0] + "@sha256:" + "0" * 64
    process, _ = pyinfra(node.name, data={**data, "containerd_images": [wrong]}, env=env)
    output = process.stdout + process.stderr
    assert process.returncode != 0 and f"could not fetch {wrong} for amd64" in output, output[-3000:]
    assert "manifest unknown" in output, output[-3000:]
    assert main_pid(node) == pid and images_on(node) == before, "a refused fetch changed the node"

    process, results = pyinfra(node.name, data=data, env=env)
    assert process.returncode == 0, process.stderr[-4000:]
    changed = changed_ops(results, node.name)
    assert any(FETCH_OP in op for op in changed) and any(IMPORT_OP in op for op in changed), changed
    assert wanted <= images_on(node), images_on(node)
    # The sandbox image pinned, as the CRI pins the one it pulls: a kubelet's image GC keeps it.
    labels = node.vm.ssh(f"{CTR} -n k8s.io images ls name=={registry.PAUSE_REFERENCE}").stdout
    assert "io.cri-containerd.pinned=pinned" in labels, labels
    # The sandbox image came too: the verify step's container ran from it.
    [line] = [line for line in process.stderr.splitlines() if line.strip().startswith(f"{node.name} ")]
    assert f"a container ran from {registry.PAUSE_REFERENCE}" in line, process.stderr[-3000:]
    assert VERIFY_OP in changed
    assert node.vm.ssh("ls -A /var/cache/containerd-deploy 2>/dev/null", check=False).stdout.strip() == "", (
        "the uploads were not removed"
    )

    # A kubelet's pod (IfNotPresent) runs nginx from the imported image, which serves its page.
    run = conformance(
        node, "-k", "pull", "--serve-port=80", "--pull-policy=IfNotPresent", f"--pull-image={nginx}"
    )
    assert run.returncode == 0, run.stdout[-4000:]
    assert f"{nginx} is on the node" in run.stdout and f"title '{registry.NGINX_PAGE_MARK}'" in run.stdout

    # Converged: nothing fetched, uploaded or imported again.
    process, results = pyinfra(node.name, data=data, env=env)
    assert process.returncode == 0 and changed_ops(results, node.name) == [], process.stderr[-3000:]


@pytest.mark.generations("debian13-containerd2.1")
def test_the_controller_fetches_with_the_nodes_registry_credentials(node, first_deploy, tmp_path):
    """The registry needs a login the controller has none of (its registries.conf routes docker.io
    there); the node's data has the credentials, for the host the controller reaches."""
    with one_at_a_time("registry-tests"):
        info = registry.ensure()
        env = {"CONTAINERS_REGISTRIES_CONF": str(registry.controller_registries_conf(info, instance="tls"))}
        digest = registry.manifest_digest(registry.NGINX_REFERENCE, registry.controller_registries_conf(info))
        nginx = f"{registry.NGINX_REFERENCE}@{digest}"
        name = re.sub(r":[^/:@]+@", "@", nginx)
        mirror = {"host": f"https://127.0.0.1:{info['tls']['port']}", "ca": registry.NODE_CA_PATH}
        data = {
            "artifact_cache_dir": str(tmp_path / "cache"),
            "containerd_images": [nginx],
            "containerd_images_sandbox": False,
            "containerd_registries": {"docker.io": {"mirrors": [mirror]}},
        }
        node.vm.ssh(f"{CTR} -n k8s.io images rm {name}", check=False)
        try:
            # No credentials anywhere: the registry refuses the controller, before any change.
            pid = main_pid(node)
            process, _ = pyinfra(node.name, data=data, env=env)
            output = process.stdout + process.stderr
            assert process.returncode != 0 and f"could not fetch {nginx} for amd64" in output, output[-3000:]
            assert "authentication required" in output or "unauthorized" in output, output[-3000:]
            assert main_pid(node) == pid and name not in images_on(node)

            headers = {"Authorization": registry.authorization()}
            data["containerd_registries"] = {"docker.io": {"mirrors": [{**mirror, "headers": headers}]}}
            process, results = pyinfra(node.name, data=data, env=env)
            assert process.returncode == 0, process.stderr[-4000:]
            assert name in images_on(node)
            assert registry.password() not in process.stdout + process.stderr
        finally:
            deploy_ok(node)
            node.vm.ssh(f"{CTR} -n k8s.io images rm {name}", check=False)


@pytest.mark.generations("debian13-containerd2.1")
def test_an_archive_on_the_controller_is_imported_only_where_its_images_are_missing(
    node, first_deploy, tmp_path
):
    name = "example.internal/archives/nginx:1"  # on no registry: only the archive has it
    archive = tmp_path / "nginx.tar"
    archive.write_bytes(registry.nginx_image(name))
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    node.vm.ssh(f"{CTR} -n k8s.io images rm {name}", check=False)

    # A sha256 that is not the file's: refused on the controller, before the node changes.
    pid, before = main_pid(node), images_on(node)
    process, _ = pyinfra(
        node.name, data={"containerd_image_archives": [{"path": str(archive), "sha256": "0" * 64}]}
    )
    output = process.stdout + process.stderr
    assert process.returncode != 0 and f"the image archive {archive} has the sha256 {sha256}" in output, (
        output[-3000:]
    )
    assert main_pid(node) == pid and images_on(node) == before, "a refused archive changed the node"

    data = {"containerd_image_archives": [{"path": str(archive), "sha256": sha256}]}
    try:
        process, results = pyinfra(node.name, data=data)
        assert process.returncode == 0, process.stderr[-4000:]
        assert any(IMPORT_OP in op for op in changed_ops(results, node.name))
        assert name in images_on(node)
        assert main_pid(node) == pid, "an import restarts nothing"
        # Converged: the node has its name, nothing is uploaded again.
        process, results = pyinfra(node.name, data=data)
        assert process.returncode == 0 and changed_ops(results, node.name) == [], process.stderr[-3000:]
    finally:
        node.vm.ssh(f"{CTR} -n k8s.io images rm {name}", check=False)

"""Pulls through real registries on every generation: the install guide's last step as written
(ctr pull, run, curl nginx), the kubelet's path (CRI pull, a pod whose sandbox image is pulled
through its own mirror, nginx serving), negative controls that fail for the right reason, and a
registry change that needs no restart.

The registry is Debian's docker-registry on this machine (tests/harness/registry.py): TLS from a
throw-away CA plus basic auth, and a plain-HTTP instance over the same storage. docker.io and
registry.k8s.io themselves are unreachable, so every pull that works went through hosts.toml.
"""

import re
import time

import pytest

from tests.harness import registry, vm

from .helpers import (
    VERIFY_OP,
    changed_ops,
    changed_steps,
    conformance,
    deploy_ok,
    main_pid,
    node_story,
    one_at_a_time,
    pyinfra,
)
from .test_cri import failed_tests

pytestmark = pytest.mark.machine(
    "hosts.toml is the deploy's logic; pulls and pods are containerd's, on any node"
)
CERTS_D = "/etc/containerd/certs.d"
CTR = "/usr/local/bin/ctr"
NGINX = registry.NGINX_REFERENCE
PAUSE = registry.PAUSE_REFERENCE


def guest_url(node, info: dict, kind: str) -> str:
    """A registry instance's URL as the node reaches this machine."""
    return f"{'https' if kind == 'tls' else 'http'}://{node.vm.controller_address}:{info[kind]['port']}"


def negative_controls(node, info: dict, closed_port: int) -> dict:
    """Registries that must fail, each for one reason. Their `server` is the same loopback host
    as the mirror: after a failed mirror containerd tries the server, which must not be a name
    that would leave this machine."""
    tls = guest_url(node, info, "tls")
    down = f"https://{node.vm.controller_address}:{closed_port}"
    return {
        "bad-auth.invalid": {
            "server": tls,
            "mirrors": [
                {
                    "host": tls,
                    "ca": registry.NODE_CA_PATH,
                    "headers": {"Authorization": registry.authorization(secret="not-the-password")},
                }
            ],
        },
        "no-ca.invalid": {
            "server": tls,
            "mirrors": [{"host": tls, "headers": {"Authorization": registry.authorization()}}],
        },
        "down.invalid": {"server": down, "mirrors": [{"host": down}]},
    }


def served_requests(kind: str, namespace: str, status: int, since: int = 0) -> int:
    """Access-log lines of one registry instance for manifest requests of a registry (`?ns=`)."""
    text = registry.log_path(kind).read_bytes()[since:].decode(errors="replace")
    return len(
        re.findall(
            rf'"(?:GET|HEAD) /v2/\S+/manifests/\S+\?ns={re.escape(namespace)} HTTP/1\.1" {status} ', text
        )
    )


@pytest.fixture(scope="module")
def mirrored(node, first_deploy):
    """The node with the TLS registry as the mirror of docker.io and registry.k8s.io (sandbox
    image pinned there, as a kubelet node's is), and the negative controls; put back afterwards.
    The module's tests serve port 80 and count the registry's log: one worker's at a time."""
    with one_at_a_time("registry-tests"):
        yield from _mirrored(node)


def _mirrored(node):
    info = registry.ensure()
    registry.install_ca(node.vm)
    closed_port = vm.free_port()
    data = {
        "containerd_registries": {
            **registry.node_registries(info, node.vm.controller_address),
            **negative_controls(node, info, closed_port),
        },
        "containerd_sandbox_image": PAUSE,
    }
    node.vm.ssh(f"{CTR} -n k8s.io images rm {PAUSE} {NGINX}; {CTR} images rm {NGINX}", check=False)
    log_start = registry.log_path("tls").stat().st_size
    process, results = pyinfra(node.name, data=data)
    assert process.returncode == 0, f"deploy failed:\n{process.stderr[-4000:]}"
    yield info, data, closed_port, results, (process.stderr, log_start)
    deploy_ok(node)
    node.vm.ssh(
        f"{CTR} -n k8s.io images rm {PAUSE} {NGINX}; {CTR} images rm {NGINX}; rm -f {registry.NODE_CA_PATH}"
    )


def test_a_node_without_the_sandbox_image_pulls_it_through_its_mirror_and_runs_a_container(node, mirrored):
    """The verify step of a run that changed the node, on a node without the sandbox image,
    pulls it through the node's own registries as a kubelet's first pod would, and runs a
    container from it; the report says so."""
    _, _, _, results, (stderr, log_start) = mirrored
    assert VERIFY_OP in changed_ops(results, node.name)
    assert served_requests("tls", "registry.k8s.io", 200, log_start) >= 1, "not pulled through the mirror"
    assert node.vm.ssh(f"{CTR} -n k8s.io images ls -q | grep -qxF {PAUSE}", check=False).returncode == 0
    [line] = [line for line in stderr.splitlines() if line.strip().startswith(f"{node.name} ")]
    assert "verify passed: a container ran" in line, stderr[-3000:]


def test_the_guides_commands_pull_and_serve_nginx_through_a_tls_mirror_with_auth(node, mirrored):
    info, _, _, results, _ = mirrored
    assert any("certs.d/docker.io/hosts.toml" in op for op in changed_ops(results, node.name))
    mode = node.vm.ssh(f"stat -c '%U:%G %a' {CERTS_D}/docker.io/hosts.toml").stdout.strip()
    assert mode == "root:root 600", f"hosts.toml with an Authorization header is {mode}"
    log_start = registry.log_path("tls").stat().st_size

    # The guide's commands as written, plus what ctr needs to read hosts.toml.
    pull = node.vm.ssh(f"{CTR} image pull --hosts-dir {CERTS_D} {NGINX}", check=False)
    assert pull.returncode == 0, pull.stderr[-2000:]
    try:
        run = node.vm.ssh(f"{CTR} run -d --net-host {NGINX} nginx", check=False)
        assert run.returncode == 0, run.stderr
        page = ""
        for _ in range(30):
            page = node.vm.ssh("curl -fsS --max-time 5 http://127.0.0.1:80/", check=False).stdout
            if registry.NGINX_PAGE_MARK in page:
                break
            time.sleep(1)
        assert registry.NGINX_PAGE_MARK in page, f"nginx did not serve its page: {page[:300]!r}"
    finally:
        node.vm.ssh(
            f"{CTR} task kill nginx; sleep 1; {CTR} task rm -f nginx; {CTR} container rm nginx", check=False
        )
    assert served_requests("tls", "docker.io", 200, log_start) >= 1, (
        "the pull did not go through the TLS mirror"
    )


def test_the_kubelets_path_and_negative_controls_fail_for_the_right_reason(node, mirrored):
    info, _, closed_port, _, _ = mirrored
    # the verify step pulled the sandbox image: the pod's own pull must go through the mirror again
    node.vm.ssh(f"{CTR} -n k8s.io images rm {PAUSE}")
    unrouted = f"{node.vm.controller_address}:{vm.free_port()}"  # no hosts.toml: containerd goes there itself
    references = {
        NGINX: None,
        f"bad-auth.invalid/{registry.NGINX_IMAGE}": "401 Unauthorized:",
        f"no-ca.invalid/{registry.NGINX_IMAGE}": "TLS verification failed:",
        f"down.invalid/{registry.NGINX_IMAGE}": "mirror down:",
        f"{unrouted}/{registry.NGINX_IMAGE}": "no route:",
    }
    log_start = registry.log_path("tls").stat().st_size
    process = conformance(
        node, "-k", "pull", "--serve-port=80", *(f"--pull-image={ref}" for ref in references)
    )
    output = process.stdout
    if not re.search(r"\b4 failed, 1 passed\b", output):
        # The kubelet's path itself failed: its own failure first, then what the node said.
        raise AssertionError(f"{output[:6000]}\n--- the node:\n{node_story(node)}")
    assert process.returncode == 1, output[-4000:]
    assert failed_tests(output) == {"test_image_pulls_through_the_configured_registries"}
    # The kubelet's path: pulled through the docker.io mirror, then a pod (its sandbox image
    # pulled through the registry.k8s.io mirror) whose nginx served the page.
    assert re.search(
        rf"pulled {re.escape(NGINX)}: \d+ bytes in [\d.]+ s \({CERTS_D}/docker.io/hosts.toml: "
        rf"{re.escape(guest_url(node, info, 'tls'))} -> ",
        output,
    ), output[-3000:]
    assert f"title '{registry.NGINX_PAGE_MARK}'" in output
    assert served_requests("tls", "registry.k8s.io", 200, log_start) >= 1, (
        "the sandbox image did not come through its mirror"
    )
    assert node.vm.ssh(f"{CTR} -n k8s.io images ls -q | grep -qxF {PAUSE}", check=False).returncode == 0
    # Each negative control: its own reason, the fix, and no raw gRPC traceback.
    for reference, reason in references.items():
        if reason:
            assert f"{reason} " in output and reference in output, (
                f"{reference}: no {reason!r} in\n{output[-6000:]}"
            )
    assert output.count("Fix: ") >= 4
    assert "_InactiveRpcError" not in output and "debug_error_string" not in output
    assert served_requests("tls", "bad-auth.invalid", 401, log_start) >= 1, (
        "the wrong password never reached the registry"
    )
    assert str(closed_port) in output
    assert registry.password() not in output and registry.authorization() not in output


def test_changing_only_the_registries_does_not_restart_and_the_next_pull_uses_the_new_mirror(node, mirrored):
    info, data, _, _, _ = mirrored
    pid = main_pid(node)
    registries = dict(data["containerd_registries"])
    registries["docker.io"] = {"mirrors": [{"host": guest_url(node, info, "plain")}]}  # plain HTTP, no auth
    results = deploy_ok(node, **{**data, "containerd_registries": registries})
    assert changed_steps(results, node.name) == [
        f"containerd node | Configure containerd | Write {CERTS_D}/docker.io/hosts.toml"
    ]
    assert main_pid(node) == pid, (
        "containerd reads hosts.toml per pull: a registry change must not restart it"
    )
    mode = node.vm.ssh(f"stat -c '%a' {CERTS_D}/docker.io/hosts.toml").stdout.strip()
    assert mode == "644", f"hosts.toml without credentials is {mode}"

    node.vm.ssh(f"{CTR} -n k8s.io images rm {NGINX}")
    plain_start, tls_start = (
        registry.log_path("plain").stat().st_size,
        registry.log_path("tls").stat().st_size,
    )
    process = conformance(node, "-k", "pull", f"--pull-image={NGINX}")
    assert process.returncode == 0, process.stdout[-4000:]
    assert served_requests("plain", "docker.io", 200, plain_start) >= 1, "the pull did not use the new mirror"
    assert served_requests("tls", "docker.io", 200, tls_start) == 0, "the pull still used the old mirror"
    assert (
        f"{CERTS_D}/docker.io/hosts.toml: {guest_url(node, info, 'plain')} -> https://registry-1.docker.io (server)"
        in process.stdout
    )
    assert main_pid(node) == pid

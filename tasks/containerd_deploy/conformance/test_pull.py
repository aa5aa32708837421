"""Pulls through the node's registries, as a kubelet makes them (opt-in: --pull-image=REF).

    python -m containerd_deploy.conformance --hosts=ssh://root@node1 --pull-image=docker.io/library/nginx:alpine \
        [--serve-port=80]

Each reference is pulled through the CRI, so containerd routes it by the node's hosts.toml files
exactly as it would for a kubelet; the time and bytes are reported at the end. With
--serve-port, the image then runs in a host-network pod (whose sandbox image containerd pulls
through its own registry's route) and must answer HTTP on that port. A failure says which
route was expected, what containerd reported and the likely fix. With --pull-policy=IfNotPresent
an image the node has is used as it is, as a kubelet's IfNotPresent does (a node with no route to
a registry, whose images the deploy brought from the controller).
"""

import shlex
import time

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from containerd_deploy.data.config_toml import PATHS, value_at

from .conftest import PULLS
from .cri import Pod
from .pull import DEFAULT_CONFIG_PATH, Route, explain_failure, page_title, registry_of, route

PULL_TIMEOUT = 600  # seconds; a large image through a slow mirror
SERVE_TIMEOUT = 60


def pytest_generate_tests(metafunc):
    if "pull_reference" in metafunc.fixturenames:
        references = metafunc.config.getoption("pull_image") or [None]
        metafunc.parametrize("pull_reference", references, ids=[ref or "none" for ref in references])


@pytest.fixture(scope="module")
def registry_config_path(host, layout) -> str:
    """Where the running config tells containerd to look for hosts.toml files."""
    dump = host.run(f"{shlex.quote(layout.containerd)} --config {shlex.quote(layout.config)} config dump")
    if dump.rc == 0:
        for schema in (3, 2):
            found = value_at(dump.stdout, PATHS["registry"][schema] + ("config_path",))
            if found:
                return found
    return DEFAULT_CONFIG_PATH


def route_on_node(host, config_path: str, reference: str) -> Route:
    registry = registry_of(reference)
    files = {}
    for name in (registry, "_default"):
        found = host.run(f"cat {shlex.quote(f'{config_path}/{name}/hosts.toml')}")
        if found.rc == 0:
            files[name] = found.stdout
    return route(registry, config_path, files)


def _pull_failure(host, config_path: str, reference: str, error: grpc.RpcError) -> str:
    return explain_failure(
        reference, route_on_node(host, config_path, reference), error.details() or str(error)
    )


def _get(host, port: int) -> tuple[bool, str]:
    """GET http://127.0.0.1:PORT/ on the node (curl, else wget, else python3)."""
    url = f"http://127.0.0.1:{port}/"
    result = host.run(
        f"if command -v curl >/dev/null; then curl -fsS --max-time 5 {url}; "
        f"elif command -v wget >/dev/null; then wget -q -T 5 -O - {url}; "
        f"else python3 -c 'import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], "
        f"timeout=5).read().decode())' {url}; fi"
    )
    return result.rc == 0, result.stdout if result.rc == 0 else result.stderr.strip()


def test_image_pulls_through_the_configured_registries(
    request, host, cri, registry_config_path, pull_reference
):
    if pull_reference is None:
        pytest.skip("no --pull-image=REF given: pass one to prove the node pulls through its registries")
    # Read once: what the failure message and the report say the pull went through.
    expected = route_on_node(host, registry_config_path, pull_reference)
    started = time.monotonic()
    failure = None
    spec = api.ImageStatusRequest(image=api.ImageSpec(image=pull_reference))
    present = request.config.getoption("pull_policy") == "IfNotPresent" and cri.call(
        cri.images, "ImageStatus", spec
    ).HasField("image")
    if not present:
        try:
            cri.images.PullImage(
                api.PullImageRequest(image=api.ImageSpec(image=pull_reference)), timeout=PULL_TIMEOUT
            )
        except grpc.RpcError as error:
            failure = explain_failure(pull_reference, expected, error.details() or str(error))
    if failure:  # failed outside the except block: the message, not a gRPC traceback
        pytest.fail(failure, pytrace=False)
    elapsed = time.monotonic() - started
    status = cri.call(cri.images, "ImageStatus", spec)
    assert status.HasField("image"), f"{pull_reference} pulled, but the CRI does not list it"
    line = (
        f"{host.backend.hostname}: {pull_reference} is on the node ({status.image.size} bytes; not pulled: IfNotPresent)"
        if present
        else f"{host.backend.hostname}: pulled {pull_reference}: {status.image.size} bytes in {elapsed:.1f} s ({expected.describe()})"
    )

    port = request.config.getoption("serve_port")
    if port:
        pod = Pod(cri, image=pull_reference, command=None)
        try:
            try:
                pod.start()
            except grpc.RpcError as error:
                detail = error.details() or str(error)
                failure = f"the pod running {pull_reference} did not start: {detail[-400:]}" + (
                    f"\n{_pull_failure(host, registry_config_path, _sandbox_reference(detail), error)}"
                    if "sandbox image" in detail
                    else ""
                )
            if failure:
                pytest.fail(failure, pytrace=False)
            deadline = time.monotonic() + SERVE_TIMEOUT
            served, page = _get(host, port)
            while not served and time.monotonic() < deadline:
                time.sleep(1)
                served, page = _get(host, port)
            assert served, (
                f"{pull_reference} runs in a host-network pod but http://127.0.0.1:{port}/ on the node "
                f"did not answer within {SERVE_TIMEOUT} s: {page}"
            )
            line += f"; served http://127.0.0.1:{port}/ (title {page_title(page)!r}, {len(page)} bytes)"
        finally:
            pod.remove()
    request.config.stash.setdefault(PULLS, []).append(line)


def _sandbox_reference(detail: str) -> str:
    """The sandbox image named in a RunPodSandbox error ('failed to get sandbox image "REF"')."""
    start = detail.find('sandbox image "')
    if start < 0:
        return ""
    start += len('sandbox image "')
    return detail[start : detail.find('"', start)]

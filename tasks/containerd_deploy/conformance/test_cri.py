"""Down to the CRI: what a kubelet with cgroupDriver=systemd gets from this node's containerd.

A config file that says `SystemdCgroup = true` proves nothing about the running daemon; these
checks ask the daemon itself, then walk the kubelet's path: a pod sandbox under a systemd
slice, a container in it, an exec, and the container's process in a systemd scope.
"""

import shlex
import uuid

import pytest

from containerd_deploy.data.config_toml import PATHS, value_at
from containerd_deploy.facts.node import parse_apparmor, process_start, split_sections
from containerd_deploy.plan.verdict import (
    apparmor_label_problem,
    kubelet_driver_problem,
    missing_binary_problem,
    release_version,
    runtime_binaries,
)
from containerd_deploy.remote.node_state import (
    apparmor_lines,
    daemon_process_lines,
    missing_binaries_lines,
    service_lines,
)
from containerd_deploy.remote.paths import KUBELET_CONFIG, RUNC_STATE_ROOT

from . import oci
from .cri import Pod, cri_config, runtime_handlers, sandbox_image, systemd_cgroup
from .images import import_image

K8S_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin works in
FIX_SYSTEMD = (
    "deploy with containerd_systemd_cgroup=true (SystemdCgroup = true in the runc runtime "
    "options) and restart containerd"
)


@pytest.fixture(scope="module")
def daemon_config(cri):
    conditions, info = cri.status()
    return conditions, cri_config(info)


@pytest.fixture(scope="module")
def images(host, layout, cri, daemon_config):
    """The test image, and the sandbox image when it is this suite's own (no registry needed)."""
    import_image(host, layout, K8S_NAMESPACE, oci.IMAGE_NAME)
    # 1.x reports the pause image in the CRI status; 2.x keeps it in the images plugin's config.
    pause = sandbox_image(daemon_config[1]) or configured_sandbox_image(host, layout)
    if pause == oci.PAUSE_IMAGE_NAME:
        import_image(host, layout, K8S_NAMESPACE, pause, command=oci.PAUSE_COMMAND)
    # Any other sandbox image is containerd's to pull, as it would for a kubelet.
    return pause


def configured_sandbox_image(host, layout) -> str | None:
    dump = host.run(f"{shlex.quote(layout.containerd)} --config {shlex.quote(layout.config)} config dump")
    if dump.rc != 0:
        return None
    for schema in (3, 2):
        image = value_at(dump.stdout, PATHS["sandbox_image"][schema])
        if image:
            return image
    return None


def test_cri_version(cri, expected_versions):
    version = cri.version()
    assert version.runtime_name == "containerd"
    assert release_version(version.runtime_version) == expected_versions[0], (
        f"the CRI reports containerd {version.runtime_version}, expected {expected_versions[0]}: "
        "the running daemon is not the deployed binary (restart containerd)"
    )
    assert version.runtime_api_version == "v1"


def test_runtime_is_ready(daemon_config):
    conditions, _ = daemon_config
    ready = conditions.get("RuntimeReady")
    assert ready is not None and ready.status, f"RuntimeReady is not true: {ready}"


def test_running_daemon_uses_systemd_cgroups(daemon_config):
    setting = systemd_cgroup(daemon_config[1])
    assert setting is True, (
        f"the running containerd's runc runtime has SystemdCgroup = {setting}, so containers get cgroupfs "
        f"cgroups while a kubelet with cgroupDriver=systemd expects systemd scopes: {FIX_SYSTEMD}"
    )


def test_kubelet_cgroup_driver_matches(host, daemon_config):
    kubelet = host.file(KUBELET_CONFIG)
    if not kubelet.exists:
        pytest.skip(f"no kubelet on this node ({KUBELET_CONFIG}): nothing to match")
    problem = kubelet_driver_problem(kubelet.content_string, bool(systemd_cgroup(daemon_config[1])))
    assert problem is None, problem


@pytest.fixture(scope="module")
def pod(cri, images):
    started = Pod(cri)
    try:
        yield started.start()
    finally:
        started.remove()


def test_pod_container_runs_and_execs(pod):
    marker = f"cri-{uuid.uuid4().hex[:8]}"
    result = pod.exec("/bin/echo", marker)
    assert result.exit_code == 0, result.stderr.decode(errors="replace")
    assert result.stdout.decode().strip() == marker


def test_container_process_is_in_a_systemd_scope_under_the_pod_slice(host, pod):
    pid = pod.pid()
    cgroups = host.file(f"/proc/{pid}/cgroup").content_string
    scope = f"cri-containerd-{pod.container_id}.scope"
    assert any(line.endswith(f"/{pod.slice}/{scope}") for line in cgroups.splitlines()), (
        f"the container's process {pid} is in {cgroups.strip()!r}, not in the systemd scope {scope} under "
        f"{pod.slice}: containerd is not using the systemd cgroup driver ({FIX_SYSTEMD})"
    )
    state = host.run(f"systemctl show -p ActiveState -p Slice {shlex.quote(scope)}").stdout
    assert "ActiveState=active" in state and f"Slice={pod.slice}" in state, (
        f"systemd does not show {scope} active in {pod.slice}: {state.strip()!r}"
    )


def test_container_runs_under_containerds_apparmor_profile(host, layout, daemon_config, pod):
    """What a kubelet gets when it asks for no AppArmor profile: containerd's default one, wherever
    the node's kernel has AppArmor on (and the CRI config does not turn it off). Assumes a
    runc-type default handler, as the scope check does (a VM sandbox such as kata has its own)."""
    script = "\n".join(
        [
            *service_lines(shlex.quote(layout.unit), "-p MainPID"),
            *daemon_process_lines(f"{layout.bin_dir}/containerd"),
            *apparmor_lines(),
        ]
    )
    sections = dict(split_sections(host.run(script).stdout.splitlines()))
    apparmor = parse_apparmor(sections.get("apparmor", []))
    if not apparmor.enabled:
        pytest.skip("AppArmor is not on here (its switch is not Y, or its securityfs is not mounted)")
    if apparmor.daemon_container:
        pytest.skip(
            f"containerd runs in a container (container={apparmor.daemon_container}), where it uses no AppArmor"
        )
    if daemon_config[1].get("disableApparmor"):
        pytest.skip("the CRI config turns AppArmor off (disable_apparmor = true)")
    pid = pod.pid()
    label = host.run(
        f"cat /proc/{pid}/attr/apparmor/current 2>/dev/null || cat /proc/{pid}/attr/current"
    ).stdout.strip()
    problem = apparmor_label_problem(label, apparmor, process_start(sections.get("started", [])), layout.unit)
    assert problem is None, f"the pod's container (process {pid}) {problem}"


def ran_through(host, layout, pod, handler: str, runtime: dict) -> None:
    """The pod's container runs and execs, and was run by `handler`'s own binary: for runc-type
    handlers, only the binary that created a container can read its state back (the runc shim
    keeps each namespace's state under one root)."""
    marker = f"{handler}-{uuid.uuid4().hex[:8]}"
    result = pod.exec("/bin/echo", marker)
    assert result.stdout.decode().strip() == marker, f"{handler}: exec printed {result.stdout!r}"
    if (runtime.get("runtimeType") or runtime.get("runtime_type")) != "io.containerd.runc.v2":
        return
    binary = (runtime.get("options") or {}).get("BinaryName") or layout.runc
    state = host.run(
        f"{shlex.quote(binary)} --root {RUNC_STATE_ROOT}/{K8S_NAMESPACE} state {pod.container_id}"
    )
    assert state.rc == 0 and pod.container_id in state.stdout, (
        f"{handler}: {binary} does not know container {pod.container_id}: {state.stderr.strip()}"
    )


def test_every_runtime_handler_runs_a_container(host, layout, cri, images, daemon_config):
    """Each configured handler (runc and any extra ones, e.g. crun, nvidia), named by a pod, runs
    it, and its container is run by that handler's own binary."""
    handlers = runtime_handlers(daemon_config[1])
    missing = [name for name in layout.expect_handlers if name not in handlers]
    assert not missing, (
        f"the running containerd offers the runtime handlers {sorted(handlers)}, not {missing}: "
        "add them to containerd_runtimes and redeploy"
    )
    # A handler whose shim or OCI runtime is not installed fails every pod with a raw gRPC error:
    # name it and its binary instead (and check the others).
    needed = runtime_binaries(handlers)
    absent = set(
        host.run("\n".join(missing_binaries_lines(layout.bin_dir, tuple(b for _, b in needed)))).stdout.split(
            "\n"
        )
    )
    broken = [(handler, binary) for handler, binary in needed if binary in absent]
    for handler, runtime in sorted(handlers.items()):
        if handler in {name for name, _ in broken}:
            continue
        named = Pod(cri, handler=handler)
        try:
            named.start()
            ran_through(host, layout, named, handler, runtime)
        finally:
            named.remove()
    assert not broken, "; ".join(
        missing_binary_problem(handler, binary, layout.bin_dir) for handler, binary in broken
    )


def test_a_pod_naming_no_handler_runs_through_the_default_one(host, layout, cri, images, daemon_config):
    """What a kubelet asks for a pod without a RuntimeClass: the config's default_runtime_name
    (runc, or e.g. nvidia on a GPU node), and that handler's binary runs it."""
    config = daemon_config[1]
    default = (config.get("containerd") or {}).get("defaultRuntimeName") or "runc"
    runtime = runtime_handlers(config).get(default)
    assert runtime is not None, (
        f"the default runtime handler {default!r} is not among the configured ones {sorted(runtime_handlers(config))}: "
        "pods without a RuntimeClass fail; set containerd_default_runtime to a configured handler"
    )
    pod = Pod(cri, handler="")
    try:
        pod.start()
        ran_through(host, layout, pod, default, runtime)
    finally:
        pod.remove()

"""A GPU node's containerd, on every generation, with a stand-in for NVIDIA's runtime: the
preset is refused until the toolkit's binary is there, then pods (named `nvidia`, and with no
handler once it is the default) run through it; CDI settings reach the running daemon.

No GPU is involved: `nvidia-container-runtime` here is a wrapper that records each call and
execs runc, which is all containerd sees of the real one (docs/gpu.md).
"""

import re

import pytest
import testinfra

from containerd_deploy.conformance import oci
from containerd_deploy.conformance.images import import_image
from containerd_deploy.data.config_toml import PATHS, value_at
from tests.harness import vm

from .helpers import (
    NODE_CTR,
    VERIFY_OP,
    changed_ops,
    conformance,
    deploy_ok,
    main_pid,
    node_snapshot,
    pyinfra,
    write,
)

STANDIN = "/usr/bin/nvidia-container-runtime"
CALLS = "/var/log/nvidia-container-runtime.calls"
WRAPPER = f"""#!/bin/sh
# Stand-in for NVIDIA's nvidia-container-runtime (tests only): record the call, then be runc.
echo "$*" >> {CALLS}
exec /usr/local/sbin/runc "$@"
"""
CDI_DIRS = ["/etc/cdi", "/var/run/cdi"]


pytestmark = pytest.mark.machine(
    "the GPU preset is config and a stand-in runtime: pods run through it on a machine"
)


def creates(node) -> list[str]:
    """The container IDs the stand-in was asked to create, in order."""
    calls = node.vm.ssh(f"cat {CALLS} 2>/dev/null", check=False).stdout
    return re.findall(r"\bcreate\b.*?\s([0-9a-z-]{12,})\s*$", calls, re.MULTILINE)


def test_the_gpu_preset_runs_pods_through_the_nvidia_runtime(node, first_deploy):
    cdi = not node.generation.label.endswith("containerd1.6")  # CDI came in containerd 1.7
    data = {
        "containerd_nvidia_runtime": True,
        "containerd_default_runtime": "nvidia",
        **({"containerd_enable_cdi": True, "containerd_cdi_spec_dirs": CDI_DIRS} if cdi else {}),
    }
    node.vm.ssh(f"rm -f {STANDIN} {CALLS}")
    # The verify step's container comes from the sandbox image, as a kubelet would have pulled it.
    host = testinfra.get_host(f"ssh://{node.name}", ssh_config=str(vm.ssh_config_file()))
    import_image(host, NODE_CTR, "k8s.io", oci.PAUSE_IMAGE_NAME, command=oci.PAUSE_COMMAND)

    # Without the toolkit's binary: refused before any change.
    before, pid = node_snapshot(node), main_pid(node)
    process, _ = pyinfra(node.name, data=data)
    assert process.returncode != 0, "a preset without its binary must be refused"
    assert (
        f"data key 'containerd_nvidia_runtime' adds the runtime handler 'nvidia', but {STANDIN} is not on the node"
        in process.stdout + process.stderr
    )
    assert node_snapshot(node) == before and main_pid(node) == pid, "the refusal changed the node"

    write(node, STANDIN, WRAPPER)
    node.vm.ssh(f"chmod 755 {STANDIN}")
    try:
        results = deploy_ok(node, **data)
        assert main_pid(node) != pid, "a new handler and default need a restart to be offered"
        # The verify step ran a container through the new handler's binary.
        assert VERIFY_OP in changed_ops(results, node.name)
        verified = creates(node)
        assert any(
            name.startswith("containerd-deploy-verify-") and name.endswith("-nvidia") for name in verified
        ), verified

        dump = node.vm.ssh("/usr/local/bin/containerd config dump").stdout
        schema = 3 if "io.containerd.cri.v1.runtime" in dump else 2
        assert value_at(dump, PATHS["default_runtime_name"][schema]) == "nvidia"
        nvidia = value_at(dump, PATHS["runtimes"][schema] + ("nvidia",))
        assert (
            nvidia["runtime_type"] == "io.containerd.runc.v2" and nvidia["options"]["BinaryName"] == STANDIN
        )
        if cdi:
            assert value_at(dump, PATHS["enable_cdi"][schema]) is True
            assert value_at(dump, PATHS["cdi_spec_dirs"][schema]) == CDI_DIRS

        # A pod naming `nvidia`, and one naming no handler (the default now): both through the stand-in.
        process = conformance(node, "--expect-runtime-handlers=runc,nvidia", "-k", "handler")
        assert process.returncode == 0, process.stdout[-4000:]
        assert re.search(r"\b2 passed", process.stdout), process.stdout[-2000:]
        pods = creates(node)[len(verified) :]
        assert len(pods) >= 2, (
            f"the stand-in ran {pods}: expected the named pod's and the default pod's containers"
        )

        # A rerun changes nothing and keeps the daemon.
        pid = main_pid(node)
        rerun = deploy_ok(node, **data)
        assert changed_ops(rerun, node.name) == [] and main_pid(node) == pid
    finally:
        # The handler and default stay in an existing-based config (the deploy never removes keys
        # it set): rebuild the file from defaults, then take the stand-in away.
        deploy_ok(node, containerd_config_base="default")
        node.vm.ssh(f"rm -f {STANDIN} {CALLS}")

"""The deploy's own verify step (containerd_verify) on every generation: it reports no change on
a good node, and runs a container when the run changed the node; a node whose kubelet wants another cgroup driver than
containerd's is refused before anything changes; a runtime handler whose binary is missing is
named, with its binary and the fix, by the verify step and by the conformance suite; the
conformance suite names a pod containerd leaves unconfined by AppArmor, and why (on a VM: AppArmor
is the kernel's)."""

import json

import pytest
import testinfra
from packaging.version import Version

from containerd_deploy.conformance import oci
from containerd_deploy.conformance.images import import_image
from containerd_deploy.data.config_toml import Knobs, Runtime, render
from tests.harness import vm

from .helpers import (
    CONFIG,
    NODE_CTR,
    VERIFY_OP,
    changed_ops,
    conformance,
    main_pid,
    node_snapshot,
    pyinfra,
    read,
    restore,
    write,
)

pytestmark = pytest.mark.machine(
    "the verify step runs its container with ctr (no CRI pod), and refusals change nothing"
)
KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"


def verify_lines(output: str, node: str) -> list[str]:
    return [line for line in output.splitlines() if f"[{node}]" in line and "verified:" in line]


def test_verify_runs_a_container_and_a_cgroup_driver_mismatch_is_refused(node, first_deploy):
    host = testinfra.get_host(f"ssh://{node.name}", ssh_config=str(vm.ssh_config_file()))
    # The local nodes' sandbox image, as a kubelet would have pulled it.
    import_image(host, NODE_CTR, "k8s.io", oci.PAUSE_IMAGE_NAME, command=oci.PAUSE_COMMAND)
    pid = main_pid(node)

    process, results = pyinfra(node.name, "-v")
    assert process.returncode == 0, process.stderr[-4000:]
    assert changed_ops(results, node.name) == [], "a passing verify is no change"
    [line] = verify_lines(process.stderr, node.name)
    version = json.loads((vm.node_dir(node.name) / "data.json").read_text())["containerd_version"]
    assert f"containerd {version} verified: answers as {version} with its own ctr" in line
    assert "CRI plugins loaded; SystemdCgroup = true in effect" in line
    assert line.endswith("(no container run: this run changed nothing)"), line

    # A run that changes the node (here a registry's hosts.toml: no restart) ends by running a
    # container, in a systemd scope, and removing it.
    mirror_data = {
        "containerd_registries": {"example.org": {"mirrors": [{"host": "https://mirror.example.org"}]}}
    }
    process, results = pyinfra(node.name, "-vvv", data=mirror_data)
    assert process.returncode == 0, process.stderr[-4000:]
    assert VERIFY_OP in changed_ops(results, node.name)
    assert "a container ran in /system.slice/containerd-deploy-verify-" in process.stdout + process.stderr
    assert (
        host.run("/usr/local/bin/ctr -n k8s.io containers ls -q | grep containerd-deploy-verify").rc == 1
    ), "the verify container is removed"
    process, results = pyinfra(node.name)
    assert process.returncode == 0 and main_pid(node) == pid, "the mirror's hosts.toml removed, no restart"

    before = node_snapshot(node)
    host.check_output(
        f"mkdir -p /var/lib/kubelet && printf 'kind: KubeletConfiguration\\ncgroupDriver: cgroupfs\\n' > {KUBELET_CONFIG}"
    )
    try:
        process, results = pyinfra(node.name)
        assert process.returncode != 0, "a node whose kubelet uses cgroupfs is refused"
        assert (
            f"{node.name}: the kubelet's cgroupDriver is cgroupfs (/var/lib/kubelet/config.yaml) but data key "
            "'containerd_systemd_cgroup' makes containerd's runc use systemd"
        ) in process.stderr
        assert "Fix: set both to systemd" in process.stderr
        assert results.get("results", {}).get("operations", []) == [], "refused before any operation"
        assert node_snapshot(node) == before and main_pid(node) == pid, "the refusal changes nothing"
    finally:
        host.check_output("rm -rf /var/lib/kubelet")


def test_a_runtime_handler_without_its_binary_is_named_with_the_fix(node, first_deploy):
    original = read(node, CONFIG)
    runtimes = [
        {"name": "kata", "runtime_type": "io.containerd.kata.v2"},
        {"name": "gone", "binary_name": "/usr/local/bin/no-such-runtime"},
    ]
    try:
        # From data: refused before any change.
        before, pid = node_snapshot(node), main_pid(node)
        process, _ = pyinfra(node.name, data={"containerd_runtimes": runtimes})
        assert process.returncode != 0, "a handler without its binary is refused"
        output = process.stderr
        assert (
            "data key 'containerd_runtimes': the runtime handler 'kata' needs containerd-shim-kata-v2 "
            "(looked for in /usr/local/bin:" in output
        ), output[-3000:]
        assert (
            "data key 'containerd_runtimes': the runtime handler 'gone' needs /usr/local/bin/no-such-runtime, "
            "which is not on the node: every pod that asks for it would fail. Fix: install it first"
        ) in output
        assert node_snapshot(node) == before and main_pid(node) == pid, "the refusal changed the node"

        # Put in config.toml by someone else (a GPU operator, by hand) and loaded: the deploy
        # names each before any change (regression, #26: it restarted, verify failed and rolled
        # back, run after run), and the conformance suite names each, with its binary and the fix.
        write(
            node,
            CONFIG,
            render(
                original,
                Version("2.9.0"),  # any release that reads the file's schema
                Knobs(
                    runtimes=(
                        Runtime("kata", "io.containerd.kata.v2"),
                        Runtime("gone", binary_name="/usr/local/bin/no-such-runtime"),
                    )
                ),
            ),
        )
        node.vm.ssh("systemctl restart containerd")
        before, pid = node_snapshot(node), main_pid(node)
        process, _ = pyinfra(node.name, data={"containerd_max_container_log_line_size": 32768})
        assert process.returncode != 0, "refused"
        output = process.stderr
        assert (
            f"{CONFIG} declares the runtime handler 'kata', which needs containerd-shim-kata-v2 (looked for in "
            "/usr/local/bin:" in output
        ), output[-3000:]
        assert (
            f"{CONFIG} declares the runtime handler 'gone', which needs /usr/local/bin/no-such-runtime, not on "
            "the node: containerd would start with it"
        ) in output
        assert (
            f"nothing was changed. Fix: install it first, or take the handler's table (runtimes.gone) out of {CONFIG}"
            in output
        )
        assert "handler 'runc' needs" not in output and "'crun'" not in output
        assert node_snapshot(node) == before and main_pid(node) == pid, "the refusal changed the node"

        checked = conformance(node, "-k", "runtime_handler")
        assert checked.returncode != 0
        assert "the runtime handler 'kata' needs containerd-shim-kata-v2" in checked.stdout, checked.stdout[
            -3000:
        ]
        assert "the runtime handler 'gone' needs /usr/local/bin/no-such-runtime" in checked.stdout
        assert "_InactiveRpcError" not in checked.stdout, "named, not a raw gRPC error"
    finally:
        restore(node, original)


@pytest.mark.vm("AppArmor is the node kernel's own: a machine shares this host's kernel, which has none")
@pytest.mark.generations("debian13-containerd2.1")
def test_a_pod_left_unconfined_by_apparmor_is_named_with_why_until_containerd_restarts(node, first_deploy):
    # A server where AppArmor's userspace is missing when containerd creates its first container
    # (it asks once per process, then), and where it is installed after (a new file: its ctime).
    node.vm.ssh("mv /sbin/apparmor_parser /root/apparmor_parser && systemctl restart containerd")
    try:
        checked = conformance(node, "-k", "apparmor")
        assert checked.returncode != 0, checked.stdout[-3000:]
        assert "runs under the AppArmor label 'unconfined'" in checked.stdout, checked.stdout[-3000:]
        assert "/sbin/apparmor_parser is not installed" in checked.stdout, checked.stdout[-3000:]
        # The deploy's verify step says it too: a warning, the run passes.
        process, _ = pyinfra(node.name)
        output = process.stdout + process.stderr
        assert process.returncode == 0, output[-3000:]
        assert "AppArmor: the kernel has AppArmor on but /sbin/apparmor_parser is not installed" in output, (
            output[-3000:]
        )

        node.vm.ssh("install -m 0755 /root/apparmor_parser /sbin/apparmor_parser && rm /root/apparmor_parser")
        checked = conformance(node, "-k", "apparmor")
        assert checked.returncode != 0, "installing the parser does not change what the daemon decided"
        assert (
            "/sbin/apparmor_parser (AppArmor's userspace) was installed or replaced after containerd started"
            in (checked.stdout)
        ), checked.stdout[-3000:]
        process, _ = pyinfra(node.name)
        output = process.stdout + process.stderr
        assert process.returncode == 0, output[-3000:]
        assert (
            "AppArmor: /sbin/apparmor_parser (AppArmor's userspace) was installed or replaced after containerd started"
            in (output)
        ), output[-3000:]
    finally:
        node.vm.ssh(
            "[ -e /sbin/apparmor_parser ] || install -m 0755 /root/apparmor_parser /sbin/apparmor_parser; "
            "systemctl restart containerd"
        )
    checked = conformance(node, "-k", "apparmor")
    assert checked.returncode == 0 and "1 passed" in checked.stdout, checked.stdout[-3000:]
    process, _ = pyinfra(node.name)
    assert process.returncode == 0 and "AppArmor:" not in process.stdout + process.stderr

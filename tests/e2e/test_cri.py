"""The CRI conformance checks: they fail, for the right reason, on a node whose containerd uses
cgroupfs (both config schemas); and on every generation an extra runtime handler (Debian's crun) really runs pods."""

import re

import pytest

from .helpers import conformance, crun_handler, deploy_ok

pytestmark = pytest.mark.machine("which runtime handler and cgroup driver a pod gets is the deploy's config")


def failed_tests(output: str) -> set[str]:
    return {re.sub(r"\[.*", "", name) for name in re.findall(r"^FAILED \S+::(\S+)", output, re.MULTILINE)}


# 1.6 and 1.7 share the config schema (version 2) where SystemdCgroup lives: 1.7 and 2.1
# (version 3) prove both places; the systemd case passes on all three (test_deploy).
@pytest.mark.generations("debian13-containerd1.7", "debian13-containerd2.1")
def test_conformance_fails_for_the_right_reason_on_a_cgroupfs_node(node, first_deploy):
    deploy_ok(node, containerd_systemd_cgroup=False)
    try:
        # The checks a cgroup driver concerns, and the pod and version checks beside them, which
        # must still pass (the whole suite runs on this node in test_deploy).
        process = conformance(
            node, "-k", "cgroup or scope or pod_container or cri_version or runtime_is_ready"
        )
        assert process.returncode != 0, "a conformance suite that cannot fail is worthless"
        assert re.search(r"\b3 failed, 3 passed\b", process.stdout), process.stdout[-3000:]
        assert failed_tests(process.stdout) == {
            "test_effective_config_uses_systemd_cgroups",
            "test_running_daemon_uses_systemd_cgroups",
            "test_container_process_is_in_a_systemd_scope_under_the_pod_slice",
        }, process.stdout[-4000:]
        assert "runc runtime has SystemdCgroup = False" in process.stdout
        assert "not in the systemd scope" in process.stdout
    finally:
        deploy_ok(node)


def test_an_extra_runtime_handler_runs_pods_with_its_own_binary(node, first_deploy):
    # (on a VM's kernel too, at containerd's default oom_score_adj: test_deploy's conformance of 2.1)
    with crun_handler(node):
        process = conformance(node, "--expect-runtime-handlers=runc,crun", "-k", "runtime_handler")
        assert process.returncode == 0, process.stdout[-4000:]
        assert re.search(r"\b1 passed", process.stdout), process.stdout[-2000:]

"""End to end on a real systemd VM: deploy, conformance, rerun, and refusals that change nothing.

The node is a qemu VM resumed from the harness's saved state; pyinfra and the conformance
suite reach it over real SSH, exactly as an operator's run would.
"""

import contextlib
import json
import re

import pytest

from containerd_deploy.conformance.oci import PAUSE_IMAGE_NAME
from tests.harness import vm

from .helpers import (
    LOCK_OP,
    VERIFY_OP,
    changed_ops,
    conformance,
    crun_handler,
    main_pid,
    node_snapshot,
    pyinfra,
    unchanged_ops,
)

pytestmark = pytest.mark.machine("what a run installs, changes and refuses is the deploy's logic")


def test_first_deploy_installs_configures_and_starts(node, first_deploy):
    changed = changed_ops(first_deploy, node.name)
    for part in ("Install containerd", "Install runc", "config.toml", "containerd.service", "Enable, start"):
        assert any(part in name for name in changed), f"no changed operation for {part!r} in {changed}"
    assert main_pid(node) > 0


def conformance_passes(node, at_least: int, *extra: str) -> list[str]:
    """The whole conformance suite passes on the node, `at_least` tests of it; the lines of the
    tests it skipped (with -rs: why)."""
    process = conformance(node, "-rs", *extra)
    assert process.returncode == 0, f"conformance failed:\n{process.stdout[-6000:]}"
    passed = re.search(r"(\d+) passed", process.stdout)
    assert passed and int(passed.group(1)) >= at_least, process.stdout[-2000:]
    assert "failed" not in process.stdout.splitlines()[-1]
    return [line for line in process.stdout.splitlines() if line.startswith("SKIPPED")]


@pytest.mark.vm(
    "the full CRI conformance of each generation, pods included, on a kernel of its own, at containerd's "
    "default oom_score_adj (the newest with crun's pods too)"
)
def test_conformance_suite_passes_on_the_node(node, first_deploy):
    # A VM's kernel has AppArmor on, and the image its userspace: the pod's profile is checked
    # (the oldest generation's VM boots cgroup v1: test_cgroup_v1).
    with contextlib.ExitStack() as newest:
        extra = ()
        if node.generation.label == "debian13-containerd2.1":  # an extra runtime handler's pods (test_cri)
            newest.enter_context(crun_handler(node))
            extra = ("--expect-runtime-handlers=runc,crun",)
        skipped = conformance_passes(node, 17, *extra)
    assert not [line for line in skipped if "AppArmor" in line], skipped


def test_rerun_changes_nothing_and_keeps_the_daemon(node, first_deploy):
    pid = main_pid(node)
    before = node_snapshot(node)
    process, results = pyinfra(node.name)
    assert process.returncode == 0, process.stderr[-4000:]
    assert changed_ops(results, node.name) == []
    # Only the verify step's check: no step with nothing to do adds an operation.
    assert unchanged_ops(results, node.name) == [op["name"] for op in results["results"]["operations"]]
    assert unchanged_ops(results, node.name) == [VERIFY_OP]
    assert main_pid(node) == pid, "containerd was restarted by a run that changed nothing"
    assert node_snapshot(node) == before


def test_a_rerun_asks_the_daemon_in_full_only_when_its_last_full_check_does_not_stand(node, first_deploy):
    """The first deploy's verify step checked this daemon in full, so a rerun asks the node one
    question (the node fact); with containerd_verify_interval=0 it asks the daemon again."""
    daemon_fact = "Loaded fact containerd_deploy.facts.daemon.ContainerdDaemon"
    process, results = pyinfra(node.name, "-v")
    output = process.stdout + process.stderr
    assert process.returncode == 0 and changed_ops(results, node.name) == [], output[-3000:]
    assert "Loaded fact containerd_deploy.facts.node.ContainerdNode" in output, output[-3000:]
    assert daemon_fact not in output, output[-3000:]
    process, results = pyinfra(node.name, "-v", data={"containerd_verify_interval": 0})
    output = process.stdout + process.stderr
    assert process.returncode == 0 and changed_ops(results, node.name) == [], output[-3000:]
    assert daemon_fact in output, output[-3000:]


def test_dry_diff_shows_the_config_change_and_the_restart_without_changing_anything(node, first_deploy):
    pid = main_pid(node)
    before = node_snapshot(node)
    # As an operator tries it: no -y, so pyinfra detects the changes (and shows their diff).
    process, _ = pyinfra(
        node.name, "--dry", "--diff", data={"containerd_max_container_log_line_size": 32768}, yes=False
    )
    assert process.returncode == 0, process.stderr[-4000:]
    output = re.sub(r"\x1b\[[0-9;]*m", "", process.stdout + process.stderr)  # no colours
    assert "Will modify /etc/containerd/config.toml" in output, output[-3000:]
    assert re.search(r"\+ .*max_container_log_line_size = 32768", output), output[-3000:]
    assert "Will restart containerd.service (/etc/containerd/config.toml changed)" in output
    assert node_snapshot(node) == before and main_pid(node) == pid


def plan_line(output: str, name: str) -> str:
    [line] = [line for line in output.splitlines() if f"[{name}] containerd-deploy plan: " in line]
    return line.split("containerd-deploy plan: ", 1)[1]


def test_the_dry_run_the_diff_and_the_real_run_read_one_plan(node, first_deploy):
    """Regression: `--dry -v` said "the run lock is not needed" (and so no change) while
    `--dry --diff` said "Will restart": the lock asked about operations not added yet."""
    data = {"containerd_max_container_log_line_size": 32768}
    pid = main_pid(node)
    planned = (
        "write /etc/containerd/config.toml; keep the running release, to put back if the restarted one "
        "fails; restart the running containerd (/etc/containerd/config.toml changed); drop the release kept "
        f"for a rollback; verify containerd, then run a container from {PAUSE_IMAGE_NAME} (pulled first if the "
        "node lacks it)"
    )
    dry, _ = pyinfra(node.name, "--dry", "-v", data=data, yes=False)
    assert dry.returncode == 0, dry.stderr[-4000:]
    dry_output = re.sub(r"\x1b\[[0-9;]*m", "", dry.stdout + dry.stderr)
    assert plan_line(dry_output, node.name) == planned
    assert "the run lock is not needed" not in dry_output
    diff, _ = pyinfra(node.name, "--dry", "--diff", data=data, yes=False)
    assert plan_line(re.sub(r"\x1b\[[0-9;]*m", "", diff.stdout + diff.stderr), node.name) == planned
    assert main_pid(node) == pid
    try:
        run, results = pyinfra(node.name, "-v", data=data)
        assert run.returncode == 0, run.stderr[-4000:]
        assert plan_line(re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr), node.name) == planned
        changed = changed_ops(results, node.name)
        assert changed[0] == LOCK_OP and any("Keep the running release" in name for name in changed), changed
        assert main_pid(node) != pid, "restarted, as planned"
    finally:
        back, _ = pyinfra(node.name)
        assert back.returncode == 0, back.stderr[-4000:]


def test_tampered_artifact_is_refused_and_the_node_left_as_it_was(node, first_deploy):
    pid = main_pid(node)
    before = node_snapshot(node)
    wrong = "deadbeef" * 8  # what a tampered or corrupted mirror file looks like from the node's side
    # given for the node's runc version (a plain checksum via --data would be refused: its version
    # comes from the inventory)
    version = json.loads((vm.node_dir(node.name) / "data.json").read_text())["runc_version"]
    process, _ = pyinfra(node.name, data={"runc_sha256": {version: wrong}})
    assert process.returncode != 0
    output = process.stdout + process.stderr
    assert "checksum mismatch" in output and wrong in output, output[-3000:]
    assert "runc.amd64" in output, "the error names the URL"
    assert node_snapshot(node) == before
    assert main_pid(node) == pid


@pytest.mark.parametrize(
    "data, key",
    [
        (["containerd_version=latest"], "containerd_version"),
        # A version with no pinned checksum and none given: refused, never trusted.
        (["containerd_version=1.7.99", "containerd_sha256="], "containerd_sha256"),
        (["runc_sha256=not-a-checksum"], "runc_sha256"),
        (["containerd_bin_dir=usr/local/bin"], "containerd_bin_dir"),
    ],
)
def test_bad_data_is_refused_before_anything_changes(node, first_deploy, data, key):
    before = node_snapshot(node)
    process, _ = pyinfra(node.name, *[arg for item in data for arg in ("--data", item)])
    assert process.returncode != 0
    output = process.stdout + process.stderr
    assert node.name in output and repr(key) in output and "Fix:" in output, output[-3000:]
    assert node_snapshot(node) == before

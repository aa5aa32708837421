"""Every script the deploy sends to a node passes shellcheck as POSIX sh (the node's /bin/sh may
be dash or busybox): each builder in remote/, the facts and the verify step, with representative
arguments, including paths with spaces and quotes."""

import shutil
import subprocess
from pathlib import Path

import pytest

from containerd_deploy.data import artifacts
from containerd_deploy.facts import node as facts
from containerd_deploy.remote import container_check, daemon_state, lock, node_state, rollback, scripts

from .flow import no_fetch, settings_for

SETTINGS = settings_for({"cni_plugins_version": "1.7.1", "crictl_version": "1.33.0"})
WANTED = artifacts.resolve(SETTINGS, "amd64", published=no_fetch)
ODD = "/srv/my dir/it's"
ROLLBACK = rollback.rollback_lines(f"{ODD}/state", "containerd.service", f"{ODD}/bin/ctr", 60)


def built_scripts() -> dict[str, str]:
    containerd, runc = WANTED["containerd"], WANTED["runc"]
    return {
        "fetch": scripts.fetch_artifacts_script(list(WANTED.values()), "/var/cache/containerd-deploy"),
        "remove staging leftovers": scripts.remove_staging_leftovers_script("/var/cache/containerd-deploy"),
        "remove staging leftovers, keep": scripts.remove_staging_leftovers_script(
            "/var/cache/containerd-deploy", keep=True
        ),
        "remove paths": scripts.remove_paths_script(
            [f"{ODD}/a", "/etc/containerd/.config.toml.containerd-deploy-new"]
        ),
        "remove artifact": scripts.remove_artifact_script("containerd", "/var/lib/containerd-deploy"),
        "write file": scripts.write_file_script(
            "a = 1\n", "/tmp/x.containerd-deploy-new", f"{ODD}/config.toml", "644"
        ),
        "private file": scripts.private_file_script("/etc/containerd/.hosts.toml.containerd-deploy-new"),
        "replace file": scripts.replace_file_script(
            f"{ODD}/.hosts.toml.containerd-deploy-new", f"{ODD}/hosts.toml", "600"
        ),
        "remove tree": scripts.remove_tree_script(f"{ODD}/containerd"),
        "install tarball": scripts.install_artifact_script(
            containerd, "/usr/local/bin", "/var/cache/containerd-deploy", "/var/lib/containerd-deploy"
        ),
        "install binary": scripts.install_artifact_script(
            runc, "/usr/local/sbin/runc", "/var/cache/containerd-deploy", "/var/lib/containerd-deploy"
        ),
        "service restart": scripts.service_script(
            "containerd.service", "/usr/local/bin/ctr", "restart", True, "2.2.1", 60, reload=True
        ),
        "service verify only": scripts.service_script(
            "containerd.service", "/usr/local/bin/ctr", "", False, "2.2.1", 60
        ),
        "node fact": node_state.node_state_command(
            "/usr/local/bin",
            "/etc/containerd/config.toml",
            "/etc/systemd/system/containerd.service",
            "/var/lib/containerd-deploy",
            ("/etc/containerd/certs.d/docker.io/hosts.toml",),
            "/etc/containerd/certs.d",
            trusted_dirs=("/var/lib/containerd-deploy", "/var/cache/containerd-deploy"),
        ),
        "node fact, files and daemon known": node_state.node_state_command(
            "/usr/local/bin",
            "/etc/containerd/config.toml",
            "/etc/systemd/system/containerd.service",
            "/var/lib/containerd-deploy",
            ("/etc/crictl.yaml", "/etc/containerd/certs.d/docker.io/hosts.toml"),
            trusted_dirs=("/var/lib/containerd-deploy",),
            known_pid=4242,
            known_files=(
                ("/etc/containerd/config.toml", "12:345:1700000000.123456789"),
                ("/etc/crictl.yaml", "13:34:1700000000.123456789"),
            ),
        ),
        "release manifests fact": facts.ReleaseManifests().command("/var/lib/containerd-deploy"),
        "unit state fact": facts.UnitState().command("containerd.service"),
        "daemon fact": daemon_state.daemon_state_command(
            "/usr/local/bin",
            "/etc/containerd/config.toml",
            "containerd.service",
            ("/etc/containerd/config.toml",),
            "registry.k8s.io/pause:3.10",
            ("runc", "/usr/bin/crun"),
        ),
        "verify container, systemd": container_check.container_check_script(
            "node1", "/usr/local/bin", "registry.k8s.io/pause:3.10", True, "containerd.service"
        ),
        "verify container, cgroupfs": container_check.container_check_script(
            "node'1", "/opt/c d/bin", "registry.k8s.io/pause:3.10", False, "containerd.service"
        ),
        "verify container, runtime handlers": container_check.container_check_script(
            "node1",
            "/usr/local/bin",
            "registry.k8s.io/pause:3.10",
            True,
            "containerd.service",
            (("runc", ""), ("nvidia", "/usr/bin/nvidia-container-runtime"), ("odd", ODD)),
        ),
        "node fact, runtime handlers": node_state.node_state_command(
            "/usr/local/bin",
            "/etc/containerd/config.toml",
            "/etc/systemd/system/containerd.service",
            "/var/lib/containerd-deploy",
            handler_binaries=("/usr/bin/nvidia-container-runtime", "containerd-shim-runsc-v1", ODD),
        ),
        "run lock fact": facts.RunLock().command(),
        "run lock fact, @local": facts.RunLock().command(anchor_pid=4242),
        "take run lock": lock.take_lock_script("node'1", "controller $(x) pid 1", 3),
        "take run lock, @local, any generation": lock.take_lock_script("node1", "controller c", None, 4242),
        "lock holder": lock.LOCK_HOLDER,
        "verify failure": container_check.failure_script("node1", ["it's broken", "$(not run)"]),
        "verify failure, rollback": container_check.failure_script("node1", ["it's broken"], ROLLBACK),
        "verify container, rollback": container_check.container_check_script(
            "node1",
            "/usr/local/bin",
            "registry.k8s.io/pause:3.10",
            True,
            "containerd.service",
            rollback_lines=ROLLBACK,
        ),
        "service restart, rollback": scripts.service_script(
            "containerd.service", "/usr/local/bin/ctr", "restart", False, "2.2.1", 60, rollback_lines=ROLLBACK
        ),
        # (A state directory with a quote makes shellcheck read the trap's "$new" as holding quotes.)
        "keep release": rollback.keep_release_script(
            "/srv/my dir/state",
            (f"{ODD}/bin/containerd",),
            ("/etc/containerd/config.toml", "/srv/my dir/state/runc.manifest"),
            "1.7.24",
        ),
        "drop kept release": rollback.drop_kept_script(f"{ODD}/state"),
    }


@pytest.mark.parametrize("name", sorted(built_scripts()))
def test_every_node_script_passes_shellcheck_as_posix_sh(name):
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (Debian: apt-get install shellcheck; `make deps` does)")
    # Operator text quoted for printing, and the lock holder's script given to `sh -c`: a `$`
    # in them is meant literally.
    literal_dollars = name.startswith("verify failure") or name.startswith("take run lock")
    excluded = ["--exclude=SC2016"] if literal_dollars else []
    result = subprocess.run(
        ["shellcheck", "--shell=sh", "--format=gcc", *excluded, "-"],
        input=built_scripts()[name],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"{name}:\n{result.stdout}"


def test_the_real_gpu_check_for_operators_passes_shellcheck():
    """docs/gpu-node-check.sh runs on an operator's GPU node (bash): never here, so lint it."""
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (Debian: apt-get install shellcheck; `make deps` does)")
    script = Path(__file__).resolve().parents[2] / "docs" / "gpu-node-check.sh"
    result = subprocess.run(["shellcheck", "--format=gcc", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_every_node_script_runs_stat_in_the_c_locale():
    """An identity stat prints under another locale (a comma in %.9Z) reads as another file's
    (tests/unit/test_read_files.py shows the difference on a real stat)."""
    for name, script in built_scripts().items():
        assert script.count("stat -c") == script.count("LC_ALL=C stat -c"), name

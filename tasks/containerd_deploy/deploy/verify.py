"""The deploy's last step (`containerd_verify`): is the running daemon what a kubelet needs?

Run after every other operation, from one fact read at that moment, so a run with nothing to
change still checks the node and reports no change. The checks are the conformance suite's
node-side ones: the daemon answers as the declared version with its own ctr, it runs the
binary, unit and config that are on disk now (not older ones it started with), its CRI
plugins loaded, the effective config has the declared SystemdCgroup, a kubelet on the node
(if any) uses the same cgroup driver. When the run changed the node, a container then actually
runs (from the sandbox image, when the node has it; under a systemd scope when systemd cgroups
are on): the operation's own command, since a fact only asks. The CRI walk of a pod sandbox is
the conformance suite's (`conformance/`), which needs a controller-side gRPC client.

The verdict is plan/verdict.py's, the operation operations/verify.py's, the container's script
remote/container_check.py's.
"""

from containerd_deploy.data.images import cri_name
from containerd_deploy.data.settings import Settings
from containerd_deploy.facts.daemon import DaemonState
from containerd_deploy.operations.verify import containerd_verified
from containerd_deploy.plan.files import loaded_at_start
from containerd_deploy.plan.verdict import (
    Expected,
    configured_runtimes,
    container_handlers,
    cri_apparmor_off,
    data_settings,
    runtime_binaries,
    sandbox_image,
)

VERIFY_OPERATION = "Verify containerd (containerd_verify)"  # the report finds the step by it


def verify_containerd(
    settings: Settings, config_text, run_container: bool, rollback: str = "", seen: DaemonState | None = None
) -> None:
    """One operation, on every run, so a plain function rather than a deploy step of its own (a
    step costs the controller a read of every global argument, per host).

    `config_text`: the config.toml this run leaves (text, or a callable giving it when run);
    `run_container`: the run changed the node (the plan's `changes`): a container proves it;
    `rollback`: the state directory of a release kept to put back if the check fails ("": none);
    `seen`: the daemon as the run's first fact saw it (a run that changes nothing may judge from
    it, within `containerd_verify_interval` of a full check of the same process)."""
    loaded_files = loaded_at_start(settings)

    def expected() -> Expected:
        text = config_text() if callable(config_text) else config_text
        runtimes = configured_runtimes(text, settings.containerd_version)
        return Expected(
            version=str(settings.containerd_version),
            systemd_cgroup=settings.containerd_systemd_cgroup,
            unit=settings.containerd_unit_path.rsplit("/", 1)[-1],
            # as the CRI names it (an import from the controller, a CRI pull): `pause` is docker.io/library/pause:latest
            sandbox_image=cri_name(sandbox_image(text, settings.containerd_version)),
            loaded_files=loaded_files,
            runtime_binaries=tuple(runtime_binaries(runtimes)),
            bin_dir=settings.containerd_bin_dir,
            handlers=container_handlers(runtimes),
            settings=data_settings(settings),
            apparmor_off=cri_apparmor_off(text, settings.containerd_version),
        )

    containerd_verified(
        name=VERIFY_OPERATION,
        expected=expected,
        bin_dir=settings.containerd_bin_dir,
        config_path=settings.containerd_config_path,
        run_container=run_container,
        rollback=rollback,
        timeout=settings.containerd_ready_timeout,
        registry_config_path=settings.containerd_registry_config_path,
        seen=seen,
        full_check_interval=settings.containerd_verify_interval,
    )

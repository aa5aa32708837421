"""The verify operation: check the running daemon against what the run expects, from one fact
read when the operation runs, and run a container when the run changed the node."""

from collections.abc import Callable

from pyinfra import host, logger
from pyinfra.api import StringCommand, operation

from containerd_deploy.controller.run_record import host_run
from containerd_deploy.facts.daemon import ContainerdDaemon
from containerd_deploy.plan.verdict import Expected, image_absent_note, judge
from containerd_deploy.remote.container_check import container_check_script, failure_script
from containerd_deploy.remote.rollback import rollback_lines


@operation()
def containerd_verified(
    expected: Expected | Callable[[], Expected],
    bin_dir: str,
    config_path: str,
    run_container: bool = True,
    rollback: str = "",
    timeout: int = 60,
    registry_config_path: str = "",
):
    """
    Check the running containerd against ``expected``; fail the run, naming each problem, if it
    falls short (after putting back a release ``release_kept`` kept, given ``rollback``). Then,
    if ``run_container``, run a container from the sandbox image (when the
    node has it) and fail the run if it does not run as a kubelet's would.

    Reads the node when the operation runs (after the ones before it), reports no change when
    the node passes without running a container, and does nothing in a dry run.

    + expected: an ``Expected``, or a callable returning one when the operation runs
    + bin_dir: where containerd and ctr are installed
    + config_path: containerd's config file
    + run_container: also run a container (a change: one is created and removed); the deploy
      runs one when its plan changed the node
    + rollback: the deploy's state directory, where ``release_kept`` keeps the release to put
      back when the check fails; "" never rolls back
    + timeout: seconds a put-back release may take to answer
    + registry_config_path: the node's registry hosts directory; with ``run_container``, a
      sandbox image the node lacks is pulled through it first, as a kubelet's first pod would
      (one it cannot pull runs no container, and says why); "" pulls nothing

    **Example:**

    .. code:: python

        containerd_verified(
            name="Verify containerd",
            expected=Expected(version="1.7.11", systemd_cgroup=True, sandbox_image="registry.k8s.io/pause:3.8"),
            bin_dir="/usr/local/bin",
            config_path="/etc/containerd/config.toml",
        )
    """
    if not host.state.is_executing:
        return
    if callable(expected):
        expected = expected()
    state = host.get_fact(
        ContainerdDaemon,
        bin_dir=bin_dir,
        config_path=config_path,
        unit=expected.unit,
        files=expected.loaded_files,
        image=expected.sandbox_image or "",
        binaries=tuple(dict.fromkeys(binary for _, binary in expected.runtime_binaries)),
    )
    verdict = judge(expected, state)
    put_back = rollback_lines(rollback, expected.unit, f"{bin_dir}/ctr", timeout) if rollback else None
    if verdict.problems:
        yield StringCommand(failure_script(host.name, verdict.problems, put_back))
        return
    log = logger.info if host.state.print_noop_info else logger.debug
    said = host_run(host)
    pull = run_container and registry_config_path and state.sandbox_image == "absent"
    if expected.sandbox_image and (state.sandbox_image == "present" or pull):
        if run_container:
            said.verify, said.container = f"a container ran from {expected.sandbox_image}", True
            if pull:  # pulled next: not a reason for no container
                verdict.notes.remove(image_absent_note(expected.sandbox_image))
            log(
                f"{host.print_prefix}{verdict.summary(expected.version)}; next, a container from {expected.sandbox_image}"
                + (" (pulled first, through the node's registries)" if pull else "")
            )
            yield StringCommand(
                container_check_script(
                    host.name,
                    bin_dir,
                    expected.sandbox_image,
                    expected.systemd_cgroup,
                    expected.unit,
                    expected.handlers,
                    put_back,
                    pull_hosts_dir=registry_config_path if pull else "",
                )
            )
            return
        verdict.notes.append("no container run: this run changed nothing")
    said.verify = "; ".join(verdict.notes) or f"containerd {expected.version} verified"
    host.noop(verdict.summary(expected.version))

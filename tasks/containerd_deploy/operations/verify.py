"""The verify operation: check the running daemon against what the run expects, from one fact
read when the operation runs (or, for the same daemon a full check passed lately, from what the
run's first fact saw), and run a container when the run changed the node."""

import time
from collections.abc import Callable

from pyinfra import host, logger
from pyinfra.api import StringCommand, operation

from containerd_deploy.controller import verified
from containerd_deploy.controller.run_record import host_run
from containerd_deploy.facts.daemon import ContainerdDaemon, DaemonState
from containerd_deploy.plan.verdict import (
    Expected,
    Verdict,
    daemon_identity,
    expected_digest,
    full_check_reason,
    image_absent_note,
    judge,
    start_fixed,
)
from containerd_deploy.remote.container_check import container_check_script, failure_script
from containerd_deploy.remote.rollback import rollback_lines

NO_CHANGE_NOTE = "no container run: this run changed nothing"


def _judged_from_the_record(
    expected: Expected, seen: DaemonState, now: float, interval: int
) -> Verdict | None:
    """The verdict on the daemon the run's first fact saw, with what the controller's record of a
    full check of the same process found of the rest; None: ask the daemon in full (why: -v)."""
    record = verified.read(host.name)
    why = full_check_reason(record, seen, expected, now, interval)
    if record is not None and why is None:
        verdict = judge(expected, seen, record.checked)
        if not verdict.problems:
            # Why no container ran, as the full check said it (whether the node has the sandbox
            # image is what that check saw: a no-op runs no container from it either way).
            present = expected.sandbox_image and record.image_present
            verdict.notes.append(NO_CHANGE_NOTE if present else image_absent_note(expected.sandbox_image))
            return verdict
        why = f"the run's first look found: {verdict.problems[0]}"
    log = logger.info if host.state.print_noop_info else logger.debug
    log(f"{host.print_prefix}verify: asks the daemon in full: {why}")
    return None


@operation()
def containerd_verified(
    expected: Expected | Callable[[], Expected],
    bin_dir: str,
    config_path: str,
    run_container: bool = True,
    rollback: str = "",
    timeout: int = 60,
    registry_config_path: str = "",
    seen: DaemonState | None = None,
    full_check_interval: int = 0,
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
    + seen: the daemon as the run's first fact saw it (``seen_at_start``); when no container is
      to run and the controller recorded a full check of this same process, for the same
      ``expected``, less than ``full_check_interval`` seconds ago, the rest is judged from it and
      the record, asking the node nothing (any problem found so: asked in full). None: ask
    + full_check_interval: seconds a full check of a daemon stands for (0: ask every run)

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
    now = time.time()
    quick = None
    if seen is not None and not run_container and full_check_interval > 0:
        quick = _judged_from_the_record(expected, seen, now, full_check_interval)
    if seen is not None and quick is not None:
        state, verdict = seen, quick
    else:
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
        if not verdict.problems and full_check_interval > 0:
            record = verified.VerifiedDaemon(
                identity=daemon_identity(state),
                expected=expected_digest(expected),
                at=now,
                checked=start_fixed(expected, state),
                image_present=state.sandbox_image == "present",
            )
            verified.write(host.name, record)
    put_back = rollback_lines(rollback, expected.unit, f"{bin_dir}/ctr", timeout) if rollback else None
    if verdict.problems:
        yield StringCommand(failure_script(host.name, verdict.problems, put_back))
        return
    log = logger.info if host.state.print_noop_info else logger.debug
    said = host_run(host)
    said.warnings = list(verdict.warnings)
    for warning in verdict.warnings:  # the node works: said as a warning, in the report too
        host.log_styled(f"containerd-deploy: {host.name}: {warning}", fg="yellow", log_func=logger.warning)
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
        verdict.notes.append(NO_CHANGE_NOTE)
    said.verify = "; ".join(verdict.notes) or f"containerd {expected.version} verified"
    host.noop(verdict.summary(expected.version))

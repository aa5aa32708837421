"""Operations on the service and the run: take the run lock, run containerd under systemd
(reload, enable, start or restart once, wait until it answers), call a restart hook, remove the
unit.
"""

import shlex

from pyinfra import host
from pyinfra.api import FunctionCommand, OperationError, StringCommand, operation

from containerd_deploy.controller.hooks import HookFailed, run_hook
from containerd_deploy.data.hooks import hook_argv
from containerd_deploy.data.values import redact_secrets
from containerd_deploy.facts.node import RunLock, UnitState
from containerd_deploy.operations import FROM_NODE, FromNode, failed_on_controller
from containerd_deploy.remote.lock import NO_SESSION, LockState, take_lock_script, unavailable_message
from containerd_deploy.remote.rollback import rollback_lines
from containerd_deploy.remote.scripts import service_script

q = shlex.quote


def unit_state(unit: str) -> tuple[bool, bool]:
    """(active, enabled) of a systemd unit, asked of the node (one command)."""
    return host.get_fact(UnitState, unit=unit)


@operation()
def run_lock_taken(
    owner: str,
    lock: LockState | FromNode = FROM_NODE,
    changes: bool | None = None,
    anchor_pid: int = 0,
):
    """
    Take the node's run lock for the rest of this run (until its SSH connection, or with
    ``anchor_pid`` the process of a run on the node itself, ends), when the run will change the
    node. Another run holding it is waited for (10 s), then the run stops; so does a run that
    finds another run held the node after it read ``lock``, since it decided from a stale look.

    + owner: who this run is, shown to a run that finds the node busy
    + lock: the lock's state this run read before deciding (``NodeState.lock``, a
      ``LockState``); read from the node when not given
    + changes: whether the run's later operations will change the node (the deploy's plan says);
      the lock is left alone when none will and nobody holds it. None: always take it
    + anchor_pid: a run on the node itself (pyinfra @local): hold the lock for this process

    **Example:**

    .. code:: python

        run_lock_taken(
            name="Take the node's run lock",
            owner="controller ci-1 pid 4242",
        )
    """
    state: LockState = host.get_fact(RunLock, anchor_pid=anchor_pid) if isinstance(lock, FromNode) else lock
    if state.kind == "held":
        host.noop("this run holds the node's run lock")
        return
    if state.kind == "unavailable":
        raise OperationError(unavailable_message(host.name, state.why or NO_SESSION))
    # A busy node was read while another run changed it: the lock is taken (waited for, and the
    # run stopped) even when nothing seemed to need changing.
    if state.kind != "busy" and changes is False:
        host.noop("nothing will change: the run lock is not needed")
        return
    yield take_lock_script(host.name, owner, state.generation, anchor_pid)


def restart_said(unit: str, action: str, why: str, reload: bool) -> str:
    """What --diff says of the service: `action` is "restart", "start" or "" (keeps running)."""
    said = {
        "restart": f"Will restart {unit} ({why or 'something it loads at start changed'})",
        "start": f"Will start {unit}",
    }.get(action, f"No restart: {unit} keeps running")
    return said + (" after a systemd daemon-reload" if reload else "")


@operation()
def containerd_service(
    unit: str,
    ctr: str,
    version: str,
    timeout: int,
    active: bool | FromNode = FROM_NODE,
    enabled: bool | FromNode = FROM_NODE,
    restart: bool = False,
    reload: bool = False,
    why: str = "",
    rollback: str = "",
    diff: bool = True,
):
    """
    Keep the containerd unit enabled and running; reload systemd and restart it when told;
    wait until it answers. One command, with at most one systemd reload. When it does not
    answer (as ``version``), a release ``release_kept`` kept is put back before the run fails.

    + unit: the systemd unit name
    + ctr: path of the installed ``ctr``, used to ask the daemon for its version
    + version: the containerd version the daemon must report
    + timeout: seconds to wait for the daemon to answer after (re)starting it
    + active, enabled: the unit's state from the ``ContainerdNode`` fact; asked of systemd on
      the node when not given
    + restart: whether to restart it (the deploy's plan says)
    + reload: whether systemd must reload its units
    + why: why it restarts, as ``--diff`` says it (the plan's reasons)
    + rollback: the deploy's state directory, where ``release_kept`` keeps the release to put
      back; "" never rolls back
    + diff: with pyinfra's ``--diff``, say whether it restarts (the deploy says it with its plan)

    **Example:**

    .. code:: python

        containerd_service(
            name="Run containerd",
            unit="containerd.service", ctr="/usr/local/bin/ctr", version="1.7.11",
            timeout=60, active=True, enabled=True, restart=True, reload=True,
            why="/etc/containerd/config.toml changed",
        )
    """
    if isinstance(active, FromNode) or isinstance(enabled, FromNode):
        asked = unit_state(unit)
        active = asked[0] if isinstance(active, FromNode) else active
        enabled = asked[1] if isinstance(enabled, FromNode) else enabled
    action = "restart" if restart else ("" if active else "start")
    if diff and host.state.config.DIFF and not host.state.is_executing:
        host.log(restart_said(unit, action, why, reload))
    if not action and enabled and not reload:
        host.noop(f"{unit} is enabled and running")
        return
    yield service_script(
        unit,
        ctr,
        action,
        enable=not enabled,
        version=version,
        timeout=timeout,
        reload=reload,
        rollback_lines=rollback_lines(rollback, unit, ctr, timeout) if rollback else None,
    )


def _hook(state, host, key: str, argv: list[str], timeout: int) -> bool:
    """Run on the controller: a restart hook; its failure fails the operation, naming why."""
    try:
        output = run_hook(key, argv, timeout, host.name)
    except HookFailed as error:
        return failed_on_controller(state, host, str(error))
    for line in output.splitlines()[-5:]:
        host.log(f"{key}: {line}")
    return True


@operation()
def restart_hook(
    key: str,
    command: list[str] | tuple,
    address: str,
    timeout: int,
    when: bool = True,
):
    """
    Run a command on the controller for this host, when its containerd will be restarted (e.g.
    ``kubectl drain {host}`` before, ``kubectl uncordon {host}`` after). A failing or timed-out
    command fails the operation, so the host's later operations do not run.

    + key: the data key the command came from (named in errors)
    + command: the program and its arguments; ``{host}`` and ``{address}`` in an argument are
      replaced by the host's inventory name and the address the controller connects to (each
      stays one argument: no shell runs)
    + address: the address the controller connects to for this host
    + timeout: seconds the command may run before it is killed (with what it started)
    + when: whether this run restarts the host's running containerd (the deploy's plan says)

    **Example:**

    .. code:: python

        restart_hook(
            name="Drain the node before containerd restarts",
            key="containerd_restart_hook_before",
            command=["kubectl", "drain", "{host}", "--ignore-daemonsets"],
            address="10.0.0.5", timeout=600, when=True,
        )
    """
    if not command or not when:
        host.noop("no restart: no hook to run")
        return
    argv = hook_argv(tuple(command), host.name, address, key)
    if not host.state.is_executing:
        host.log(f"Will run {redact_secrets(shlex.join(argv))} on the controller ({key})")
    yield FunctionCommand(_hook, (key, argv, timeout), {})


@operation()
def service_absent(unit: str, present: bool | FromNode = FROM_NODE):
    """
    Stop and disable a unit, and kill what its cgroup still holds (with ``KillMode=process``
    the shims and containers outlive the daemon; without their binaries they must go too).

    + unit: the systemd unit name
    + present: whether the ``ContainerdNode`` fact found the unit installed, enabled or running;
      asked of systemd on the node (running or enabled) when not given

    **Example:**

    .. code:: python

        service_absent(name="Stop containerd", unit="containerd.service", present=node.active)
    """
    if isinstance(present, FromNode):
        present = any(unit_state(unit))
    if not present:
        host.noop(f"{unit} is not installed")
        return
    yield StringCommand(
        "systemctl",
        "disable",
        "--now",
        "--",
        q(unit),
        "2>/dev/null",
        ";",
        "systemctl",
        "kill",
        "-s",
        "KILL",
        "--",
        q(unit),
        "2>/dev/null",
        ";",
        "systemctl",
        "reset-failed",
        "--",
        q(unit),
        "2>/dev/null",
        ";",
        "true",
    )

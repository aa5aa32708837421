"""Run containerd under systemd: reload, enable, start or restart once, wait until it answers
(one operation, one command)."""

import posixpath

from pyinfra import host
from pyinfra.api import deploy

from .configure import loaded_at_start
from .facts import NodeState, newer_than_daemon
from .operations import containerd_service, kept_release_dropped, release_kept, restart_hook
from .rollback import KEPT_COMPONENTS, manifest_path
from .settings import DEFAULTS, Settings


def any_changed(*ops):
    """A callable for `_if`/`restart`: did any of these operations change (or will, in a dry run)."""

    def check() -> bool:
        return any(op.did_change() if op.is_complete() else op.will_change for op in ops)

    return check


def daemon_is_stale(settings: Settings, node: NodeState) -> bool:
    """A daemon older than what is on disk is a leftover of a run that stopped (or an upgrade
    that never restarted it): its ctr answers with another version, its binary was replaced,
    or a file it loads at start is newer than it. It is restarted even when a run changes nothing."""
    return node.active and bool(
        (node.ctr_server and node.ctr_client and node.ctr_server != node.ctr_client)
        or node.exe.endswith(" (deleted)")
        or newer_than_daemon(node.started, node.mtimes, loaded_at_start(settings))
    )


def restarts_running_daemon(settings: Settings, node: NodeState, restart_after: list):
    """A callable: will (or did) this run restart a containerd that was running when it began?
    `restart_after` is the list of operations whose change restarts it; it may be filled after
    this is made (it is read when the callable is called)."""
    stale = daemon_is_stale(settings, node)
    return lambda: node.active and (stale or any_changed(*restart_after)())


@deploy("Run containerd", data_defaults=DEFAULTS)
def run_containerd(settings: Settings, node: NodeState, reload_after, restart_after, rollback: str = ""):
    """Reload systemd when a unit file changed; restart containerd (once) when anything did.
    `rollback`: the state directory of a release kept to put back if the restarted one does not
    answer ("": none)."""
    unit = posixpath.basename(settings.containerd_unit_path)
    # A unit written by a run that stopped before reloading systemd is reloaded now.
    reload_changed = any_changed(*reload_after)
    stale = daemon_is_stale(settings, node)
    changed = any_changed(*restart_after)
    containerd_service(
        name="Enable, start and check containerd",
        unit=unit,
        ctr=f"{settings.containerd_bin_dir}/ctr",
        version=str(settings.containerd_version),
        timeout=settings.containerd_ready_timeout,
        active=node.active,
        enabled=node.enabled,
        restart=lambda: stale or changed(),
        reload=lambda: node.need_daemon_reload or reload_changed(),
        rollback=rollback,
    )


HOOK_KEYS = {"before": "containerd_restart_hook_before", "after": "containerd_restart_hook_after"}


@deploy("Restart hook", data_defaults=DEFAULTS)
def hooks_around_restart(settings: Settings, restarts, when: str):
    """The operator's command for `when` ("before": first thing, so a failing one stops the
    node's change; "after": once the restarted daemon answered and was verified), run on the
    controller only if this run restarts the node's running containerd."""
    key = HOOK_KEYS[when]
    command = getattr(settings, key)
    if not command:
        return
    restart_hook(
        name=f"Run {key} on the controller" + (" (containerd will restart)" if when == "before" else ""),
        key=key,
        command=command,
        address=str(host.data.get("ssh_hostname") or host.name),
        timeout=settings.containerd_restart_hook_timeout,
        when=restarts,
    )


@deploy("Keep the running release", data_defaults=DEFAULTS)
def keep_running_release(settings: Settings, node: NodeState, restarts, installs: dict):
    """Keep what the running daemon was started from (containerd_rollback) when this run will
    restart it; returns whether it does (a callable, asked when the operations run).
    `installs`: component -> its install operation, filled once those are added: only the
    components this run replaces are kept (a link to a file changes its ctime, which the
    manifest records; a component left alone must keep its identity, and needs no putting back)."""
    manifest = node.manifests.get("containerd")
    # Not installed by this deploy (or not yet): nothing it could put back. The operation is
    # there all the same, so a run has the same operations on every node.
    keeps = (lambda: False) if manifest is None else restarts
    state_dir = settings.containerd_deploy_state_dir

    def replaced() -> list[str]:
        return [
            component
            for component in KEPT_COMPONENTS
            if component in installs and any_changed(installs[component])()
        ]

    release_kept(
        name="Keep the running release until the new one is verified (containerd_rollback)",
        state_dir=state_dir,
        release_files=lambda: [
            path
            for component in replaced()
            if component in node.manifests
            for path in node.manifests[component].files
        ],
        other_files=lambda: [
            *(manifest_path(state_dir, component) for component in replaced()),
            *loaded_at_start(settings),
        ],
        version=manifest.fields.get("version", "") if manifest else "",
        when=keeps,
    )
    return keeps


@deploy("Drop the kept release", data_defaults=DEFAULTS)
def drop_kept_release(settings: Settings, node: NodeState, kept):
    """The new release answered (and passed the verify step): the kept one goes; so does one an
    unfinished run left, once this run got this far. `kept`: whether this run kept one."""
    kept_release_dropped(
        name="Drop the kept release: the new one answered"
        + (" and passed the verify step" if settings.containerd_verify else ""),
        state_dir=settings.containerd_deploy_state_dir,
        present=lambda: bool(node.kept_release) or kept(),
    )

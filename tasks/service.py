"""Run containerd under systemd: reload, enable, start or restart once, wait until it answers
(one operation, one command)."""

import posixpath

from pyinfra.api import deploy

from .configure import loaded_at_start
from .facts import NodeState, newer_than_daemon
from .operations import containerd_service
from .settings import DEFAULTS, Settings


def any_changed(*ops):
    """A callable for `_if`/`restart`: did any of these operations change (or will, in a dry run)."""

    def check() -> bool:
        return any(op.did_change() if op.is_complete() else op.will_change for op in ops)

    return check


@deploy("Run containerd", data_defaults=DEFAULTS)
def run_containerd(settings: Settings, node: NodeState, reload_after, restart_after):
    """Reload systemd when a unit file changed; restart containerd (once) when anything did."""
    unit = posixpath.basename(settings.containerd_unit_path)
    # A unit written by a run that stopped before reloading systemd is reloaded now.
    reload_changed = any_changed(*reload_after)
    # A daemon older than what is on disk is a leftover of a run that stopped (or an upgrade
    # that never restarted it): its ctr answers with another version, its binary was replaced,
    # or a file it loads at start is newer than it. Restart it even when this run changed nothing.
    stale = node.active and bool(
        (node.ctr_server and node.ctr_client and node.ctr_server != node.ctr_client)
        or node.exe.endswith(" (deleted)")
        or newer_than_daemon(node.started, node.mtimes, loaded_at_start(settings))
    )
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
    )

"""Run containerd under systemd: reload, enable, start or restart once, wait until it answers."""

import posixpath

from pyinfra.api import deploy
from pyinfra.operations import systemd

from .facts import NodeState
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
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(*reload_after))
    # A daemon that answers with another version than the installed ctr is a leftover of an
    # upgrade that never restarted it: restart it even when this run changed nothing.
    stale = bool(node.ctr_server and node.ctr_client and node.ctr_server != node.ctr_client)
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
    )

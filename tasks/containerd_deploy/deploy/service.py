"""Run containerd under systemd as the plan says (reload, enable, start or restart once, wait
until it answers: one operation, one command), the restart hooks around it, and the release kept
for a rollback."""

import posixpath

from pyinfra import host
from pyinfra.api import deploy

from containerd_deploy.data.hooks import hook_argv
from containerd_deploy.data.settings import DEFAULTS, Settings
from containerd_deploy.facts.node import NodeState
from containerd_deploy.operations.release import kept_release_dropped, release_kept
from containerd_deploy.operations.service import containerd_service, restart_hook
from containerd_deploy.plan.files import loaded_at_start
from containerd_deploy.plan.run import Plan
from containerd_deploy.remote.manifest import manifest_path


@deploy("Run containerd", data_defaults=DEFAULTS)
def run_containerd(settings: Settings, node: NodeState, plan: Plan, rollback: str = ""):
    """Reload systemd when a unit file changed; restart containerd (once) when the plan says.
    `rollback`: the state directory of a release kept to put back if the restarted one does not
    answer ("": none)."""
    unit = posixpath.basename(settings.containerd_unit_path)
    containerd_service(
        name="Enable, start and check containerd",
        unit=unit,
        ctr=f"{settings.containerd_bin_dir}/ctr",
        version=str(settings.containerd_version),
        timeout=settings.containerd_ready_timeout,
        active=node.active,
        enabled=node.enabled,
        restart=bool(plan.restart),
        reload=plan.reload,
        why="; ".join(plan.restart),
        rollback=rollback,
        diff=False,  # said with the plan (deploy/show.py)
    )


HOOK_KEYS = {"before": "containerd_restart_hook_before", "after": "containerd_restart_hook_after"}


def hook_address(node_host) -> str:
    """What `{address}` in a hook stands for: the address the controller connects to."""
    return str(node_host.data.get("ssh_hostname") or node_host.name)


def check_hooks(settings: Settings, node_host) -> None:
    """A hook whose placeholders this host's name or address would turn into an option is
    refused (``data.hooks.hook_argv``), for every host before any is asked."""
    for key in HOOK_KEYS.values():
        hook_argv(getattr(settings, key), node_host.name, hook_address(node_host), key)


def hooks_around_restart(settings: Settings, plan: Plan, when: str) -> None:
    """The operator's command for `when` ("before": first thing, so a failing one stops the
    node's change; "after": once the restarted daemon answered and was verified), run on the
    controller only if this run restarts the node's running containerd. Otherwise no deploy step
    and no operation at all (see `deploy.node._containerd_node`)."""
    key = HOOK_KEYS[when]
    command = getattr(settings, key)
    if command and plan.restarts_running:
        _restart_hook(settings=settings, plan=plan, key=key, command=command, when=when)


@deploy("Restart hook", data_defaults=DEFAULTS)
def _restart_hook(settings: Settings, plan: Plan, key: str, command: tuple[str, ...], when: str):
    restart_hook(
        name=f"Run {key} on the controller" + (" (containerd will restart)" if when == "before" else ""),
        key=key,
        command=command,
        address=hook_address(host),
        timeout=settings.containerd_restart_hook_timeout,
        when=plan.restarts_running,
    )


@deploy("Keep the running release", data_defaults=DEFAULTS)
def keep_running_release(settings: Settings, node: NodeState, plan: Plan):
    """Keep what the running daemon was started from (containerd_rollback) when this run
    restarts it: the binaries it replaces (a link to a file changes its ctime, which the
    manifest records; a component left alone must keep its identity, and needs no putting back),
    their manifests and the files the daemon loads at start."""
    manifest = node.manifests.get("containerd")
    state_dir = settings.containerd_deploy_state_dir
    release_kept(
        name="Keep the running release until the new one is verified (containerd_rollback)",
        state_dir=state_dir,
        release_files=[
            path
            for component in plan.keep_components
            if component in node.manifests
            for path in node.manifests[component].files
        ],
        other_files=[
            *(manifest_path(state_dir, component) for component in plan.keep_components),
            *loaded_at_start(settings),
        ],
        version=manifest.fields.get("version", "") if manifest else "",
        when=plan.keep,
        attempt=plan.attempt,
    )


@deploy("Drop the kept release", data_defaults=DEFAULTS)
def drop_kept_release(settings: Settings, plan: Plan):
    """The new release answered (and passed the verify step): the kept one goes; so does one an
    unfinished run left, once this run got this far."""
    kept_release_dropped(
        name="Drop the kept release: the new one answered"
        + (" and passed the verify step" if settings.containerd_verify else ""),
        state_dir=settings.containerd_deploy_state_dir,
        present=plan.drop_kept,
    )

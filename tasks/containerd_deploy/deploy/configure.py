"""Write the files the deploy owns as the plan has them — config.toml, the systemd unit and its
proxy drop-in, the registries' hosts.toml files, crictl's config — and remove those it no longer wants."""

from collections.abc import Callable

from pyinfra import host
from pyinfra.api import deploy

from containerd_deploy.data.settings import DEFAULTS, Settings
from containerd_deploy.facts.node import ContainerdDefaultConfig, NodeState
from containerd_deploy.operations.files import file_absent, file_content
from containerd_deploy.plan.files import desired_config, no_config_defaults
from containerd_deploy.plan.run import Plan
from containerd_deploy.remote.paths import CRICTL_CONFIG


@deploy("Configure containerd", data_defaults=DEFAULTS)
def configure_containerd(settings: Settings, node: NodeState, plan: Plan):
    """Write each file of the plan's (config.toml, the unit, its proxy drop-in, each registry's
    hosts.toml, crictl's config) and remove those it drops. Returns the config.toml text this run
    leaves, or a callable giving it when the run reads it.

    With `containerd_config_base = existing` (the default) a node's config.toml is edited in
    place, so everything else in it survives; a node without one, or with the `default` policy,
    starts from the installed binary's `containerd config default`. When that binary is only
    being installed in this run, its defaults are read after it is installed.
    """
    config: str | Callable[[], str]
    if plan.config_text is not None:
        config = plan.config_text
    else:
        rendered: dict[str, str] = {}

        def rendered_config() -> str:
            if not host.state.is_executing:
                return "(from the containerd config default of the binary this run installs)\n"
            if "text" not in rendered:  # read once, for the write and for the verify step
                defaults = host.get_fact(ContainerdDefaultConfig, bin_dir=settings.containerd_bin_dir)
                if not defaults:
                    raise no_config_defaults(settings)
                rendered["text"] = desired_config(settings, defaults)
            return rendered["text"]

        config = rendered_config

    for path, file in plan.files.items():
        file_content(
            name=f"{'Install' if path == settings.containerd_unit_path else 'Write'} {path}",
            path=path,
            content=file.text if file.text is not None else config,
            current_sha256=file.current_sha256,
            current_text=node.config_text if path == settings.containerd_config_path else None,
            mode=file.mode,
            diff=False,  # the plan's diff is shown with the plan (deploy/show.py)
        )
    for path in plan.delete:
        file_absent(
            name=f"Remove {path}{_why_removed(node, path)}",
            path=path,
            present=True,
            remove_empty_parent=path in node.managed_hosts,
        )
    return config


def _why_removed(node: NodeState, path: str) -> str:
    if path in node.managed_hosts:
        return " (no longer in containerd_registries)"
    if path == CRICTL_CONFIG:
        return " (no crictl_version)"
    return ""

"""Write the files the deploy owns as the plan has them — config.toml, the systemd unit and its
proxy drop-in, the registries' hosts.toml files, crictl's config — and remove those it no longer wants."""

from collections.abc import Callable

from pyinfra import host
from pyinfra.api import deploy

from containerd_deploy.data.settings import DEFAULTS, Settings
from containerd_deploy.deploy.order import each_told_apart
from containerd_deploy.facts.node import ContainerdDefaultConfig, NodeState
from containerd_deploy.operations.files import file_absent, file_content
from containerd_deploy.plan.files import desired_config, no_config_defaults, proxy_dropin_path
from containerd_deploy.plan.run import Plan
from containerd_deploy.remote.paths import CRICTL_CONFIG


def config_left(settings: Settings, plan: Plan) -> str | Callable[[], str]:
    """The config.toml this run leaves: the plan's text, or, when it starts from the defaults of
    the containerd this run installs, a callable that reads them once that binary is installed
    (once: for the write and for the verify step).

    With `containerd_config_base = existing` (the default) a node's config.toml is edited in
    place, so everything else in it survives; a node without one, or with the `default` policy,
    starts from the installed binary's `containerd config default`.
    """
    if plan.config_text is not None:
        return plan.config_text
    rendered: dict[str, str] = {}

    def rendered_config() -> str:
        if not host.state.is_executing:
            return "(from the containerd config default of the binary this run installs)\n"
        if "text" not in rendered:
            defaults = host.get_fact(ContainerdDefaultConfig, bin_dir=settings.containerd_bin_dir)
            if not defaults:
                raise no_config_defaults(settings)
            rendered["text"] = desired_config(settings, defaults)
        return rendered["text"]

    return rendered_config


@deploy("Configure containerd", data_defaults=DEFAULTS)
def configure_containerd(settings: Settings, node: NodeState, plan: Plan, config: str | Callable[[], str]):
    """Write each file the plan writes (of config.toml, the unit, its proxy drop-in, each
    registry's hosts.toml, crictl's config: those whose content differs) and remove those it
    drops. `config`: the config.toml text (``config_left``)."""

    def written(path: str) -> str:
        return f"{'Install' if path == settings.containerd_unit_path else 'Write'} {path}"

    def removed(path: str) -> str:
        return f"Remove {path}{_why_removed(node, path)}"

    # config.toml first, the unit and its drop-in, crictl's config, then the registries' files
    rank = (
        settings.containerd_config_path,
        settings.containerd_unit_path,
        proxy_dropin_path(settings),
        CRICTL_CONFIG,
    )
    for path in each_told_apart(plan.write, written, rank):
        file = plan.files[path]
        file_content(
            name=written(path),
            path=path,
            content=file.text if file.text is not None else config,
            current_sha256=file.current_sha256,
            current_text=node.config_text if path == settings.containerd_config_path else None,
            mode=file.mode,
            diff=False,  # the plan's diff is shown with the plan (deploy/show.py)
        )
    for path in each_told_apart(plan.delete, removed, rank):
        file_absent(
            name=removed(path),
            path=path,
            present=True,
            remove_empty_parent=path in node.managed_hosts,
        )


def _why_removed(node: NodeState, path: str) -> str:
    if path in node.managed_hosts:
        return " (no longer in containerd_registries)"
    if path == CRICTL_CONFIG:
        return " (no crictl_version)"
    return ""

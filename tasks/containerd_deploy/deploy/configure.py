"""Write config.toml, the systemd unit and its proxy drop-in, and the registry hosts.toml files."""

from collections.abc import Callable

from pyinfra import host
from pyinfra.api import deploy

from containerd_deploy.data.settings import DEFAULTS, Settings
from containerd_deploy.facts.node import ContainerdDefaultConfig, NodeState
from containerd_deploy.operations.files import file_absent, file_content
from containerd_deploy.plan.files import (
    _sha256,
    desired_config,
    no_config_defaults,
    proxy_dropin_mode,
    proxy_dropin_path,
    proxy_dropin_text,
    registry_files,
    unit_text,
)
from containerd_deploy.plan.run import Plan


@deploy("Configure containerd", data_defaults=DEFAULTS)
def configure_containerd(settings: Settings, node: NodeState, plan: Plan):
    """Write config.toml as the plan has it, the unit, its proxy drop-in and each registry's
    hosts.toml (removing those no longer in data). Returns the config.toml text this run leaves,
    or a callable giving it when the run reads it.

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

    file_content(
        name=f"Write {settings.containerd_config_path}",
        path=settings.containerd_config_path,
        content=config,
        current_sha256=_sha256(node.config_text),
        current_text=node.config_text,
    )
    file_content(
        name=f"Install {settings.containerd_unit_path}",
        path=settings.containerd_unit_path,
        content=unit_text(settings.containerd_bin_dir, settings.containerd_limit_nofile),
        current_sha256=node.unit_sha256,
    )
    dropin_path = proxy_dropin_path(settings)
    dropin_text = proxy_dropin_text(settings)
    if dropin_text is None:
        file_absent(name=f"Remove {dropin_path}", path=dropin_path, present=dropin_path in node.files)
    else:
        file_content(
            name=f"Write {dropin_path}",
            path=dropin_path,
            content=dropin_text,
            current_sha256=node.files.get(dropin_path),
            mode=proxy_dropin_mode(settings),
        )

    wanted = registry_files(settings)
    for path, (text, mode) in wanted.items():
        file_content(
            name=f"Write {path}", path=path, content=text, current_sha256=node.files.get(path), mode=mode
        )
    for path in node.managed_hosts:
        if path not in wanted:
            file_absent(
                name=f"Remove {path} (no longer in containerd_registries)",
                path=path,
                present=True,
                remove_empty_parent=True,
            )
    return config

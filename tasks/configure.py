"""Write config.toml (SystemdCgroup on the runc runtime) and the systemd unit."""

import hashlib
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError

from .config_toml import ConfigError, set_systemd_cgroup
from .facts import ContainerdDefaultConfig, NodeState
from .operations import file_content
from .settings import DEFAULTS, Settings

UNIT_TEMPLATE = Path(__file__).resolve().parent.parent / "files" / "containerd.service"


def unit_text(bin_dir: str) -> str:
    """files/containerd.service with ExecStart pointing at the configured binary directory."""
    text = UNIT_TEMPLATE.read_text()
    return text.replace("ExecStart=/usr/local/bin/containerd\n", f"ExecStart={bin_dir}/containerd\n")


def desired_config(settings: Settings, base_text: str) -> str:
    """The config.toml this host should have, from its current file or the binary's defaults."""
    try:
        return set_systemd_cgroup(base_text, settings.containerd_version, settings.containerd_systemd_cgroup)
    except ConfigError as error:
        raise DeployError(f"{settings.host}: {settings.containerd_config_path} {error}") from None


def _sha256(text: str | None) -> str | None:
    return hashlib.sha256(text.encode()).hexdigest() if text is not None else None


@deploy("Configure containerd", data_defaults=DEFAULTS)
def configure_containerd(settings: Settings, node: NodeState, binaries_current: bool):
    """Returns the config and unit operations.

    An existing config.toml is edited in place (everything else in it survives); a node without
    one starts from the installed binary's `containerd config default`. When that binary is only
    being installed in this run, its defaults are read after it is installed.
    """
    if node.config_text is not None:
        # Computed now, before any operation runs: a broken file stops the deploy unchanged.
        config = desired_config(settings, node.config_text)
    elif binaries_current and node.default_config:
        config = desired_config(settings, node.default_config)
    else:
        def config():
            if not host.state.is_executing:
                return "(from the containerd config default of the binary this run installs)\n"
            defaults = host.get_fact(ContainerdDefaultConfig, bin_dir=settings.containerd_bin_dir)
            if not defaults:
                raise DeployError(f"{settings.host}: {settings.containerd_bin_dir}/containerd config default printed nothing")
            return desired_config(settings, defaults)

    config_op = file_content(
        name=f"Write {settings.containerd_config_path}",
        path=settings.containerd_config_path,
        content=config,
        current_sha256=_sha256(node.config_text),
    )
    unit_op = file_content(
        name=f"Install {settings.containerd_unit_path}",
        path=settings.containerd_unit_path,
        content=unit_text(settings.containerd_bin_dir),
        current_sha256=node.unit_sha256,
    )
    return config_op, unit_op

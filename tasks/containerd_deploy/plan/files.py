"""What this run writes: the text of every file the deploy owns on a node (config.toml from its
base, the systemd unit, its proxy drop-in, each registry's hosts.toml, crictl's config), and
which of them the daemon loads at start."""

import re

from containerd_deploy import resource
from containerd_deploy.controller.read_files import sha256_of_text
from containerd_deploy.data import registries
from containerd_deploy.data.config_toml import ConfigError, Knobs, render
from containerd_deploy.data.settings import Settings, has_credentials, runtime_handlers
from containerd_deploy.data.values import Refusal
from containerd_deploy.facts.node import NodeState
from containerd_deploy.remote.paths import CRICTL_CONFIG

UNIT_TEMPLATE = resource("containerd.service")


PROXY_DROPIN = "http-proxy.conf"


DROPIN_HEADER = "# Managed by containerd-deploy (data keys containerd_*_proxy): edits here are overwritten.\n"


def systemd_word(value: str) -> str:
    """`value` as one double-quoted word of a unit file setting, read back exactly: `%` starts a
    specifier in every setting (an unknown one makes systemd drop the whole line); quotes and
    backslashes are escaped. (Not for a command's arguments: systemd expands `$` there; the
    one command the deploy writes takes none, and its program path is never expanded, so a
    `$` in it stays as it is: doubled, it would name another file.)"""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return '"' + escaped + '"'


def exec_start(binary: str) -> str:
    """The unit's ExecStart line for `binary` (a plain path stays as upstream writes it)."""
    return "ExecStart=" + (binary if re.fullmatch(r"[A-Za-z0-9/._+-]+", binary) else systemd_word(binary))


def unit_text(bin_dir: str, limit_nofile: str | None = None) -> str:
    """files/containerd.service with ExecStart at the configured binaries (and LimitNOFILE, if set)."""
    text = UNIT_TEMPLATE.read_text()
    text = text.replace("ExecStart=/usr/local/bin/containerd\n", exec_start(f"{bin_dir}/containerd") + "\n")
    if limit_nofile:
        text = text.replace("LimitNPROC=infinity\n", f"LimitNOFILE={limit_nofile}\nLimitNPROC=infinity\n")
    return text


def proxy_dropin_mode(settings: Settings) -> str:
    """0600 when a proxy URL carries credentials: nobody else on the node reads them from the file."""
    secret = has_credentials(settings.containerd_http_proxy) or has_credentials(
        settings.containerd_https_proxy
    )
    return "600" if secret else "644"


def proxy_dropin_path(settings: Settings) -> str:
    return f"{settings.containerd_unit_path}.d/{PROXY_DROPIN}"


def proxy_dropin_text(settings: Settings) -> str | None:
    """The drop-in that gives containerd (and the pulls it makes) a proxy; None when none is set."""
    variables = [
        (name, value)
        for name, value in (
            ("HTTP_PROXY", settings.containerd_http_proxy),
            ("HTTPS_PROXY", settings.containerd_https_proxy),
            ("NO_PROXY", settings.containerd_no_proxy),
        )
        if value
    ]
    if not variables:
        return None
    # Both spellings: Go reads the upper-case ones, other tools that containerd runs the lower.
    lines = [
        f"Environment={systemd_word(f'{name}={value}')} {systemd_word(f'{name.lower()}={value}')}"
        for name, value in variables
    ]
    return DROPIN_HEADER + "[Service]\n" + "\n".join(lines) + "\n"


def knobs(settings: Settings) -> Knobs:
    return Knobs(
        systemd_cgroup=settings.containerd_systemd_cgroup,
        sandbox_image=settings.containerd_sandbox_image,
        registry_config_path=settings.containerd_registry_config_path or None,
        snapshotter=settings.containerd_snapshotter,
        max_container_log_line_size=settings.containerd_max_container_log_line_size,
        oom_score=settings.containerd_oom_score,
        restrict_oom_score_adj=settings.containerd_restrict_oom_score_adj,
        runtimes=runtime_handlers(settings),
        default_runtime=settings.containerd_default_runtime,
        enable_cdi=settings.containerd_enable_cdi,
        cdi_spec_dirs=settings.containerd_cdi_spec_dirs,
        extra=settings.containerd_config_extra,
    )


def desired_config(settings: Settings, base_text: str) -> str:
    """The config.toml this host should have, from its current file or the binary's defaults."""
    try:
        text = render(base_text, settings.containerd_version, knobs(settings))
    except ConfigError as error:
        raise Refusal(f"{settings.host}: {settings.containerd_config_path} {error}") from None
    return text


def loaded_at_start(settings: Settings) -> tuple[str, ...]:
    """The files containerd (and systemd, for it) read when it starts: a change needs a restart."""
    return (settings.containerd_config_path, settings.containerd_unit_path, proxy_dropin_path(settings))


def registry_files(settings: Settings) -> dict[str, tuple[str, str]]:
    """path -> (hosts.toml text, mode) for every registry in data."""
    if not settings.containerd_registries:
        return {}
    if not settings.containerd_registry_config_path:
        raise Refusal(
            f"{settings.host}: data key 'containerd_registries' is set but 'containerd_registry_config_path' is empty. "
            "Fix: set containerd_registry_config_path (default /etc/containerd/certs.d) so containerd reads hosts.toml files"
        )
    return {
        f"{settings.containerd_registry_config_path}/{name}/hosts.toml": (
            registries.hosts_toml(name, spec),
            "600" if registries.has_credentials(spec) else "644",
        )
        for name, spec in settings.containerd_registries.items()
    }


def managed_paths(settings: Settings) -> tuple[str, ...]:
    """Files besides config.toml and the unit whose checksums the node fact reports."""
    return (proxy_dropin_path(settings), CRICTL_CONFIG, *registry_files(settings))


def text_sha256(text: str | None) -> str | None:
    """The sha256 the node fact reports for a file holding `text` (None: no file)."""
    return sha256_of_text(text) if text is not None else None


def no_config_defaults(settings: Settings) -> Refusal:
    return Refusal(
        f"{settings.host}: {settings.containerd_bin_dir}/containerd config default printed nothing"
    )


def config_base(settings: Settings, node: NodeState, binaries_current: bool) -> str | None:
    """The text config.toml is rendered from; None when it is the defaults of a binary this run
    installs (read after the install)."""
    if settings.containerd_config_base == "existing" and node.config_text is not None:
        return node.config_text
    if binaries_current and node.default_config:
        return node.default_config
    return None


CRICTL_CONFIG_HEADER = "# Managed by containerd-deploy (crictl_version): edits here are overwritten.\n"


def crictl_config() -> str:
    """crictl pointed at containerd's socket (without it crictl probes dockershim paths first)."""
    return (
        CRICTL_CONFIG_HEADER + "runtime-endpoint: unix:///run/containerd/containerd.sock\n"
        "image-endpoint: unix:///run/containerd/containerd.sock\ntimeout: 10\n"
    )


def crictl_config_is_ours(node: NodeState) -> bool:
    """Whether the node's crictl.yaml is the one this deploy writes (an operator's own stays)."""
    return node.files.get(CRICTL_CONFIG) == text_sha256(crictl_config())

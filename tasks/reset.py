"""Take a node back: stop containerd and remove what this deploy installed, and nothing else.

Selected with `containerd_state=absent` (or `purged`, which also deletes containerd's data:
images, snapshots, container state). Everything it removes, it knows from the node fact: the
manifests of installed release files, the files the deploy writes, the hosts.toml files that
carry its marker. Operator files beside them stay. A later deploy converges the node again.
"""

import posixpath

from pyinfra.api import deploy
from pyinfra.operations import systemd

from .artifacts import COMPONENTS
from .config_toml import ConfigError, value_at
from .configure import proxy_dropin_path
from .facts import NodeState
from .install import CRICTL_CONFIG, crictl_config_is_ours
from .operations import (
    directory_absent,
    file_absent,
    kept_release_dropped,
    release_artifact_absent,
    service_absent,
)
from .service import any_changed
from .settings import DEFAULTS, Settings
from .values import DataError, control_characters, is_system_tree

DATA_DEFAULTS = {"root": "/var/lib/containerd", "state": "/run/containerd"}


def data_directories(config_text: str | None) -> dict[str, str]:
    """containerd's `root` and `state` directories (key -> path), as its config sets them (or
    their defaults where it does not, or cannot be read)."""
    found = {}
    for key, default in DATA_DEFAULTS.items():
        value = None
        if config_text:
            try:
                value = value_at(config_text, (key,))
            except ConfigError:
                value = None
        found[key] = value if isinstance(value, str) else default
    return found


def purge_refusal(path: str, deploy_paths: tuple[str, ...]) -> str | None:
    """Why `path` is not a directory `purged` may delete (None: it is containerd's own)."""
    if not path.startswith("/") or control_characters(path) or "\\" in path:
        return "is not an absolute path"
    # normpath takes out `.`, `..` and doubled slashes but keeps a leading `//`.
    normal = posixpath.normpath(path)
    if "//" in path or normal != (path.rstrip("/") or "/"):
        return "is not a plain path (it has .., . or doubled slashes)"
    if is_system_tree(normal):
        return "is a directory of the operating system, or holds one"
    for owned in deploy_paths:
        if owned == normal or owned.startswith(normal + "/"):
            return f"holds {owned}, which the deploy manages"
    return None


def check_purge(settings: Settings, node: NodeState) -> None:
    """`purged` deletes containerd's root and state directories: only dedicated ones, refused
    before any change otherwise (the node-side removal also refuses one reached through a
    symbolic link)."""
    if settings.containerd_state != "purged":
        return
    deploy_paths = (
        settings.containerd_bin_dir,
        settings.runc_path,
        settings.cni_bin_dir,
        posixpath.dirname(settings.containerd_config_path),
        settings.containerd_unit_path,
        settings.containerd_deploy_state_dir,
        settings.containerd_staging_dir,
        settings.containerd_registry_config_path or settings.containerd_deploy_state_dir,
    )
    for key, path in data_directories(node.config_text).items():
        why = purge_refusal(path, deploy_paths)
        if why:
            raise DataError(
                settings.host,
                "containerd_state",
                f"is purged, which deletes containerd's {key} directory, but {settings.containerd_config_path} "
                f"names {path!r} as {key}, which {why}",
                f"set {key} in {settings.containerd_config_path} to a directory of containerd's own (e.g. "
                f"{DATA_DEFAULTS[key]}), or use containerd_state=absent, which keeps the data",
            )


@deploy("Remove containerd", data_defaults=DEFAULTS)
def remove_containerd(settings: Settings, node: NodeState):
    unit = posixpath.basename(settings.containerd_unit_path)
    service_absent(
        name=f"Stop and disable {unit}, and stop what it left running",
        unit=unit,
        present=bool(
            node.service.get("ActiveState") not in (None, "", "inactive") or node.enabled or node.unit_sha256
        ),
    )
    for component in COMPONENTS:
        release_artifact_absent(
            name=f"Remove {component} files",
            component=component,
            state_dir=settings.containerd_deploy_state_dir,
            installed=node.manifests.get(component),
        )
    for path in node.managed_hosts:
        file_absent(name=f"Remove {path}", path=path, present=True, remove_empty_parent=True)
    if settings.containerd_registry_config_path:
        directory_absent(
            name=f"Remove {settings.containerd_registry_config_path} if empty",
            path=settings.containerd_registry_config_path,
            present=bool(node.managed_hosts),
            only_if_empty=True,
        )
    file_absent(
        name=f"Remove {settings.containerd_config_path}",
        path=settings.containerd_config_path,
        present=node.config_text is not None,
        remove_empty_parent=True,
    )
    dropin = proxy_dropin_path(settings)
    unit_op = file_absent(
        name=f"Remove {settings.containerd_unit_path}",
        path=settings.containerd_unit_path,
        present=node.unit_sha256 is not None,
    )
    dropin_op = file_absent(
        name=f"Remove {dropin}", path=dropin, present=dropin in node.files, remove_empty_parent=True
    )
    file_absent(name=f"Remove {CRICTL_CONFIG}", path=CRICTL_CONFIG, present=crictl_config_is_ours(node))
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(unit_op, dropin_op))
    kept_release_dropped(
        name="Drop the release kept to roll back to",
        state_dir=settings.containerd_deploy_state_dir,
        present=bool(node.kept_release),
    )
    directory_absent(
        name=f"Remove {settings.containerd_deploy_state_dir}",
        path=settings.containerd_deploy_state_dir,
        present=bool(node.manifests or node.kept_release),
        only_if_empty=True,
    )
    if settings.containerd_state == "purged":
        for directory in data_directories(node.config_text).values():
            directory_absent(name=f"Remove containerd's data in {directory}", path=directory, present=True)

"""Take a node back: stop containerd and remove what this deploy installed, and nothing else.

Selected with `containerd_state=absent` (or `purged`, which also deletes containerd's data:
images, snapshots, container state). Everything it removes, it knows from the node fact: the
manifests of installed release files, the files the deploy writes, the hosts.toml files that
carry its marker. Operator files beside them stay. A later deploy converges the node again.
"""

import posixpath

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import systemd

from containerd_deploy.data.artifacts import COMPONENTS
from containerd_deploy.data.settings import DEFAULTS, Settings
from containerd_deploy.data.values import DataError, is_system_tree, normal_path, path_problem
from containerd_deploy.deploy.order import each_told_apart
from containerd_deploy.facts.node import DataDirectories, DataDirectory, NodeState
from containerd_deploy.operations.files import directory_absent, file_absent
from containerd_deploy.operations.release import kept_release_dropped, release_artifact_absent
from containerd_deploy.operations.service import service_absent
from containerd_deploy.plan.files import proxy_dropin_path
from containerd_deploy.plan.run import DATA_DEFAULTS, Plan, data_directories
from containerd_deploy.remote.paths import CRICTL_CONFIG

# What containerd makes at the top of its root and state directories besides its plugins'
# `io.containerd.*` directories: temporary mounts, its sockets, runc's state, the shims' sockets
# (and the lost+found of a disk of its own).
CONTAINERD_NAMES = frozenset(
    {"tmpmounts", "containerd.sock", "containerd.sock.ttrpc", "debug.sock", "runc", "s", "fifo", "lost+found"}
)


def foreign_entries(entries: tuple) -> list[str]:
    """The names in a root/state directory that containerd does not make."""
    return [
        name for name in entries if not name.startswith("io.containerd.") and name not in CONTAINERD_NAMES
    ]


def purge_refusal(path: str, deploy_paths: tuple[str, ...], found: DataDirectory | None = None) -> str | None:
    """Why `path` is not a directory `purged` may delete (None: it is containerd's own): only
    containerd's default directory, or one that holds containerd's own layout and nothing
    else, on a path only root can change. `found`: what the node said of it (None: not asked
    yet; what the data and the config say is checked first)."""
    problem = path_problem(path, plain=True)
    if problem:
        return f"is {problem}"
    normal = normal_path(path)
    if is_system_tree(normal):
        return "is a directory of the operating system, or holds one"
    for owned in deploy_paths:
        if owned == normal or owned.startswith(normal + "/"):
            return f"holds {owned}, which the deploy manages"
    if found is None:
        return None
    if found.untrusted:
        where, why = found.untrusted[0]
        return f"is not root's alone ({where} {why})"
    foreign = foreign_entries(found.entries or ())
    if foreign and normal not in DATA_DEFAULTS.values():
        shown = ", ".join(repr(name) for name in sorted(foreign)[:5]) + (", …" if len(foreign) > 5 else "")
        return f"holds {shown}, which containerd does not make (only its own layout is deleted)"
    return None


def purged_directories(settings: Settings, node: NodeState) -> dict[str, DataDirectory]:
    """What the node says of the directories `purged` deletes (one more question, only then)."""
    if settings.containerd_state != "purged":
        return {}
    return host.get_fact(
        DataDirectories, paths=tuple(dict.fromkeys(data_directories(node.config_text).values()))
    )


def check_purge(settings: Settings, node: NodeState, found: dict[str, DataDirectory] | None = None) -> None:
    """`purged` deletes containerd's root and state directories: only containerd's own, refused
    before any change otherwise (`found`: ``purged_directories``; without it, what the data and
    the config say alone). The node-side removal also refuses one reached through a symbolic
    link."""
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
        if found is not None and path not in found:  # never deleted unseen
            why: str | None = "was not reported by the node"
        else:
            why = purge_refusal(path, deploy_paths, None if found is None else found[path])
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
def remove_containerd(settings: Settings, node: NodeState, plan: Plan):
    """Remove what `plan` (plan_removal) says, in an order that leaves nothing running from a
    removed file; what is already gone adds no operation."""
    unit = posixpath.basename(settings.containerd_unit_path)
    if plan.stop:
        service_absent(
            name=f"Stop and disable {unit}, and stop what it left running", unit=unit, present=True
        )

    def removed(component: str) -> str:
        return f"Remove {component} files"

    for component in each_told_apart(plan.remove, removed, rank=tuple(COMPONENTS)):
        release_artifact_absent(
            name=removed(component),
            component=component,
            state_dir=settings.containerd_deploy_state_dir,
            installed=node.manifests.get(component),
        )

    def gone(path: str) -> str:
        return f"Remove {path}"

    for path in each_told_apart(node.managed_hosts, gone):
        file_absent(name=gone(path), path=path, present=True, remove_empty_parent=True)
    if settings.containerd_registry_config_path and node.managed_hosts:
        directory_absent(
            name=f"Remove {settings.containerd_registry_config_path} if empty",
            path=settings.containerd_registry_config_path,
            present=True,
            only_if_empty=True,
        )
    # Each file's directory goes with it when empty, but the unit's and crictl's (shared ones).
    shared = (settings.containerd_unit_path, CRICTL_CONFIG)
    files = (
        settings.containerd_config_path,
        settings.containerd_unit_path,
        proxy_dropin_path(settings),
        CRICTL_CONFIG,
    )
    for path in each_told_apart([path for path in files if path in plan.delete], gone, rank=files):
        file_absent(name=gone(path), path=path, present=True, remove_empty_parent=path not in shared)
    if plan.reload:  # a unit file went: systemd forgets it
        systemd.daemon_reload(name="Reload systemd units")
    if plan.drop_kept:
        kept_release_dropped(
            name="Drop the release kept to roll back to", state_dir=settings.containerd_deploy_state_dir
        )
    if node.manifests or node.kept_release or node.rolled_back:
        directory_absent(
            name=f"Remove {settings.containerd_deploy_state_dir}",
            path=settings.containerd_deploy_state_dir,
            present=True,
            only_if_empty=True,
        )

    def purged(directory: str) -> str:
        return f"Remove containerd's data in {directory}"

    for directory in each_told_apart(plan.purge, purged):
        directory_absent(name=purged(directory), path=directory, present=True)

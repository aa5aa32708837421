"""Install the release files: containerd and runc, and the CNI plugins and crictl when asked for.
Each is verified before it reaches its paths."""

import hashlib
from collections.abc import Callable

from pyinfra.api import deploy

from .artifacts import COMPONENTS, Artifact, destination
from .facts import NodeState
from .operations import (
    artifact_is_installed,
    distro_packages_absent,
    file_absent,
    file_content,
    release_artifact,
    release_artifact_absent,
    release_files_fetched,
)
from .settings import DEFAULTS, Settings

CRICTL_CONFIG = "/etc/crictl.yaml"
CRICTL_CONFIG_HEADER = "# Managed by containerd-deploy (crictl_version): edits here are overwritten.\n"
NAMES = {"containerd": "containerd", "runc": "runc", "cni_plugins": "the CNI plugins", "crictl": "crictl"}


def crictl_config() -> str:
    """crictl pointed at containerd's socket (without it crictl probes dockershim paths first)."""
    return (
        CRICTL_CONFIG_HEADER + "runtime-endpoint: unix:///run/containerd/containerd.sock\n"
        "image-endpoint: unix:///run/containerd/containerd.sock\ntimeout: 10\n"
    )


def crictl_config_is_ours(node: NodeState) -> bool:
    """Whether the node's crictl.yaml is the one this deploy writes (an operator's own stays)."""
    return node.files.get(CRICTL_CONFIG) == hashlib.sha256(crictl_config().encode()).hexdigest()


@deploy("Install release files", data_defaults=DEFAULTS)
def install_release_files(
    settings: Settings,
    node: NodeState,
    artifacts: dict[str, Artifact],
    after_fetch: Callable[[], object] | None = None,
) -> dict:
    """Returns component -> operation, so later steps can restart only when a binary changed.
    `after_fetch`: adds the operations that must come once every file is fetched and verified
    and before any is installed (keeping the running release: a file that fails its checksum
    stops the run before anything, that too, is changed)."""
    needed = [
        artifact
        for component, artifact in artifacts.items()
        if not artifact_is_installed(node.manifests.get(component), artifact, destination(settings, artifact))
    ]
    release_files_fetched(
        name="Fetch and verify release files"
        + (" (through the controller)" if settings.artifact_source == "controller" else ""),
        artifacts=needed,
        staging_dir=settings.containerd_staging_dir,
        cache_dir=settings.artifact_cache_dir if settings.artifact_source == "controller" else None,
        leftovers=node.staging_leftovers,
    )
    if after_fetch is not None:
        after_fetch()
    if settings.containerd_distro_package == "remove":
        # Only now, with the release files on the node: a failed download leaves the package running.
        distro_packages_absent(
            name="Remove the distribution's containerd package (containerd_distro_package)",
            packages=node.distro_packages,
        )
    operations = {}
    for component in COMPONENTS:
        artifact = artifacts.get(component)
        if artifact is None:
            release_artifact_absent(
                name=f"Remove {NAMES[component]} (no {component}_version)",
                component=component,
                state_dir=settings.containerd_deploy_state_dir,
                installed=node.manifests.get(component),
            )
            continue
        dest = destination(settings, artifact)
        operations[component] = release_artifact(
            name=f"Install {NAMES[component]} {artifact.version} {'as' if not artifact.layout.tarball else 'into'} {dest}",
            artifact=artifact,
            dest=dest,
            staging_dir=settings.containerd_staging_dir,
            state_dir=settings.containerd_deploy_state_dir,
            installed=node.manifests.get(component),
            verified=settings.artifact_source == "node",
        )
    if "crictl" in artifacts:
        file_content(
            name=f"Write {CRICTL_CONFIG}",
            path=CRICTL_CONFIG,
            content=crictl_config(),
            current_sha256=node.files.get(CRICTL_CONFIG),
        )
    else:
        file_absent(
            name=f"Remove {CRICTL_CONFIG} (no crictl_version)",
            path=CRICTL_CONFIG,
            present=crictl_config_is_ours(node),
        )
    return operations

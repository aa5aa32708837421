"""Install the release files: containerd and runc, and the CNI plugins and crictl when asked for.
Each is verified before it reaches its paths."""

from pyinfra.api import deploy

from containerd_deploy.data.artifacts import COMPONENTS, Artifact, destination
from containerd_deploy.data.settings import DEFAULTS, Settings
from containerd_deploy.deploy.order import each_told_apart
from containerd_deploy.facts.node import NodeState
from containerd_deploy.operations.release import (
    distro_packages_absent,
    release_artifact,
    release_artifact_absent,
    release_files_fetched,
)
from containerd_deploy.plan.run import NAMES, Plan


@deploy("Fetch release files", data_defaults=DEFAULTS)
def fetch_release_files(settings: Settings, node: NodeState, artifacts: dict[str, Artifact], plan: Plan):
    """Fetch and verify every release file this run installs (the plan's `install`), before
    anything else changes: a
    file that fails its checksum stops the run with the node as it was."""
    release_files_fetched(
        name="Fetch and verify release files"
        + (" (through the controller)" if settings.artifact_source == "controller" else ""),
        artifacts=[artifacts[component] for component in plan.install],
        staging_dir=settings.containerd_staging_dir,
        cache_dir=settings.artifact_cache_dir if settings.artifact_source == "controller" else None,
        leftovers=node.staging_leftovers,
    )


@deploy("Install release files", data_defaults=DEFAULTS)
def install_release_files(settings: Settings, node: NodeState, artifacts: dict[str, Artifact], plan: Plan):
    """Install the fetched release files the plan installs (each checked again on the node) and
    remove those of components no longer wanted (crictl's config is one of the files
    configure_containerd writes); a component left as it is adds no operation."""
    if plan.distro_packages:
        # Only now, with the release files on the node: a failed download leaves the package running.
        distro_packages_absent(
            name="Remove the distribution's containerd package (containerd_distro_package)",
            packages=node.distro_packages,
        )

    def named(component: str) -> str:
        if component in plan.remove:
            return f"Remove {NAMES[component]} (no {component}_version)"
        artifact = artifacts[component]
        how = "into" if artifact.layout.tarball else "as"
        return f"Install {NAMES[component]} {artifact.version} {how} {destination(settings, artifact)}"

    for component in each_told_apart((*plan.remove, *plan.install), named, rank=tuple(COMPONENTS)):
        if component in plan.remove:
            release_artifact_absent(
                name=named(component),
                component=component,
                state_dir=settings.containerd_deploy_state_dir,
                installed=node.manifests.get(component),
            )
        else:
            release_artifact(
                name=named(component),
                artifact=artifacts[component],
                dest=destination(settings, artifacts[component]),
                staging_dir=settings.containerd_staging_dir,
                state_dir=settings.containerd_deploy_state_dir,
                installed=node.manifests.get(component),
            )

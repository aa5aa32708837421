"""Install the containerd release binaries and runc, verified before they reach their paths."""

from pyinfra.api import deploy

from .artifacts import Artifact
from .facts import NodeState
from .operations import release_artifact
from .settings import DEFAULTS, Settings


@deploy("Install containerd and runc", data_defaults=DEFAULTS)
def install_binaries(settings: Settings, node: NodeState, containerd: Artifact, runc: Artifact):
    """Returns the two operations, so later steps can restart only when one changed."""
    containerd_op = release_artifact(
        name=f"Install containerd {containerd.version} into {settings.containerd_bin_dir}",
        artifact=containerd,
        dest=settings.containerd_bin_dir,
        staging_dir=settings.containerd_staging_dir,
        state_dir=settings.containerd_deploy_state_dir,
        installed=node.manifests.get("containerd"),
    )
    runc_op = release_artifact(
        name=f"Install runc {runc.version} as {settings.runc_path}",
        artifact=runc,
        dest=settings.runc_path,
        staging_dir=settings.containerd_staging_dir,
        state_dir=settings.containerd_deploy_state_dir,
        installed=node.manifests.get("runc"),
    )
    return containerd_op, runc_op

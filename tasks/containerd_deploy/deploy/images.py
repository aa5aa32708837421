"""Bring images from the controller (containerd_images; with artifact_source=controller, the
sandbox image too): fetched into the controller's cache with the release files, before the
node is changed; imported once containerd runs, before the verify step, whose container then
runs from the sandbox image on a node with no route to a registry."""

from pyinfra.api import deploy

from containerd_deploy.data.settings import DEFAULTS, Settings
from containerd_deploy.facts.node import NodeState
from containerd_deploy.operations.images import images_fetched, images_imported
from containerd_deploy.plan.run import Plan, images_brought, images_missing

IMPORT_OPERATION = "Import images from the controller (containerd_images)"


@deploy("Fetch images", data_defaults=DEFAULTS)
def fetch_images(settings: Settings, plan: Plan, arch: str):
    """Have every image the plan imports in the controller's cache (a sandbox image a config
    made from new defaults names is fetched when it is known, at its import)."""
    images_fetched(
        name="Fetch images on the controller, checked by digest",
        images=plan.images,
        arch=arch,
        cache_dir=settings.artifact_cache_dir,
        listed=settings.containerd_images,
    )


@deploy("Bring images", data_defaults=DEFAULTS)
def bring_images(settings: Settings, node: NodeState, plan: Plan, arch: str, config_text):
    """Import the images the plan names; `config_text`: the config.toml this run leaves (text,
    or a callable giving it when run: made from the new containerd's defaults, it names the
    sandbox image only then)."""

    def images_then():
        text = config_text() if callable(config_text) else config_text
        return images_missing(images_brought(settings, text), node.images)

    images_imported(
        name=IMPORT_OPERATION,
        images=plan.images,
        arch=arch,
        cache_dir=settings.artifact_cache_dir,
        staging_dir=settings.containerd_staging_dir,
        bin_dir=settings.containerd_bin_dir,
        listed=settings.containerd_images,
        later=images_then if plan.images_sandbox_later else None,
    )

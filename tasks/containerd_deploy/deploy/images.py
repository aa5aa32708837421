"""Bring images from the controller (containerd_images; with artifact_source=controller, the
sandbox image too): fetched into the controller's cache before the node is changed (and before
the restart hooks run); imported once containerd runs, before the verify step, whose container
then runs from the sandbox image on a node with no route to a registry."""

from pyinfra.api import deploy

from containerd_deploy.controller.cache import FetchError
from containerd_deploy.controller.images import archive_names
from containerd_deploy.data.images import ARCHIVES_KEY, ImageArchive, sandbox_names
from containerd_deploy.data.settings import DEFAULTS, Settings
from containerd_deploy.data.values import Refusal
from containerd_deploy.operations.images import images_fetched, images_imported
from containerd_deploy.plan.run import Plan, run_config_text
from containerd_deploy.plan.verdict import cri_snapshotter, sandbox_image

IMPORT_OPERATION = "Import images from the controller (containerd_images, containerd_image_archives)"


@deploy("Fetch images", data_defaults=DEFAULTS)
def fetch_images(settings: Settings, plan: Plan, arch: str):
    """Have every image the plan imports in the controller's cache, before the node is changed."""
    images_fetched(
        name="Fetch images on the controller",
        images=plan.images,
        arch=arch,
        cache_dir=settings.artifact_cache_dir,
        listed=settings.containerd_images,
        archives=tuple(archive for archive, _ in plan.archives),
    )


@deploy("Bring images", data_defaults=DEFAULTS)
def bring_images(settings: Settings, plan: Plan, arch: str):
    """Import the images the plan names, once containerd runs: the sandbox image pinned, as the
    CRI's own pull of it is (a kubelet's image garbage collection leaves it), each unpacked for
    the snapshotter the CRI uses."""
    config_text = run_config_text(settings, plan.config_text)
    sandbox = sandbox_image(config_text, settings.containerd_version)
    snapshotter = cri_snapshotter(config_text, settings.containerd_version)
    images_imported(
        name=IMPORT_OPERATION,
        images=plan.images,
        arch=arch,
        cache_dir=settings.artifact_cache_dir,
        staging_dir=settings.containerd_staging_dir,
        bin_dir=settings.containerd_bin_dir,
        listed=settings.containerd_images,
        pinned=sandbox_names(sandbox),
        snapshotter=snapshotter or "",
        archives=plan.archives,
    )


_NAMES: dict[ImageArchive, tuple[str, ...]] = {}  # read once a run, for every host


def archive_images(settings: Settings) -> tuple[tuple[ImageArchive, tuple[str, ...]], ...]:
    """Each archive of containerd_image_archives with the names of its images, read on the
    controller before the plan (a refusal, naming the archive and the fix, when it cannot be
    read or names no image)."""
    try:
        for archive in settings.containerd_image_archives:
            if archive not in _NAMES:
                _NAMES[archive] = archive_names(archive)
    except FetchError as error:
        raise Refusal(f"{settings.host}: data key {ARCHIVES_KEY!r}: {error}") from None
    return tuple((archive, _NAMES[archive]) for archive in settings.containerd_image_archives)

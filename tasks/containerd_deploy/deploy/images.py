"""Bring images from the controller (containerd_images; with artifact_source=controller, the
sandbox image too): fetched into the controller's cache before the node is changed (and before
the restart hooks run); imported once containerd runs, before the verify step, whose container
then runs from the sandbox image on a node with no route to a registry."""

from pyinfra.api import deploy

from containerd_deploy.controller.cache import FetchError
from containerd_deploy.controller.images import ArchiveImages, archive_images
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
        registries=settings.containerd_registries,
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
        registries=settings.containerd_registries,
    )


_READ: dict[ImageArchive, ArchiveImages] = {}  # read once by this process (a pyinfra run), for every host


def archive_images_for(settings: Settings, arch: str) -> tuple[tuple[ImageArchive, tuple[str, ...]], ...]:
    """Each archive of containerd_image_archives with the names of its images, read on the
    controller before the plan; a refusal, naming the archive and the fix, when it cannot be read,
    names no image a pod can ask for, or holds none for the node's platform."""
    found = []
    for archive in settings.containerd_image_archives:
        try:
            if archive not in _READ:
                _READ[archive] = archive_images(archive)
        except FetchError as error:
            raise Refusal(f"{settings.host}: data key {ARCHIVES_KEY!r}: {error}") from None
        held = _READ[archive]
        if f"linux/{arch}" not in held.platforms:
            raise Refusal(
                f"{settings.host}: data key {ARCHIVES_KEY!r}: the image archive {archive} holds images for "
                f"{', '.join(sorted(held.platforms)) or 'no platform it names'}, not the node's linux/{arch}; "
                f"nothing was uploaded. Fix: give this host an archive made for linux/{arch} (e.g. `skopeo copy "
                f"--override-arch {arch} …`), in its group's data"
            )
        found.append((archive, held.names))
    return tuple(found)

"""The operations that bring images from the controller: fetch each once into the controller's
cache (checked by digest) before the node is changed, then upload it to the node, check it
there and import it into the k8s.io namespace once containerd runs."""

from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, operation

from containerd_deploy.controller.cache import FetchError
from containerd_deploy.controller.images import CachedImage, checked_archive, ensure_image_cached
from containerd_deploy.controller.run_record import run_of
from containerd_deploy.data.images import ImageArchive, ImageRef
from containerd_deploy.data.registries import basic_credentials
from containerd_deploy.operations import failed_on_controller
from containerd_deploy.operations.files import private_uploads, upload_directory, uploads_done
from containerd_deploy.remote.scripts import (
    import_images_script,
    remove_staging_leftovers_script,
    uploaded_image_path,
)

SANDBOX_FIX = (
    "; it is the sandbox image of the node's config, which the controller brings with "
    "artifact_source=controller: set containerd_images_sandbox=false to leave it to the node's registries"
)


def _checked(cache_dir: str, item: "ImageRef | ImageArchive", arch: str, registries: dict) -> CachedImage:
    if isinstance(item, ImageArchive):
        return checked_archive(item)
    return ensure_image_cached(
        cache_dir, item, arch, credentials=basic_credentials(item.registry, registries)
    )


def _fetch_into_cache(
    state, host, cache_dir: str, images: list, arch: str, listed: tuple, cached: list, registries: dict
) -> bool:
    """Run on the controller: the cache's checked tarball of every image (an archive: the file,
    checked by its sha256), each checked once a run, in `cached` (an image not `listed` is the
    sandbox image: its error says how to leave it to the node); fetched with the node's Basic
    credentials for the image's registry (`registries`), where it has them."""
    checked = run_of(state).cached_images
    for image in images:
        try:
            key = (
                cache_dir,
                image,
                None if isinstance(image, ImageArchive) else arch,
            )  # an archive: any arch
            checked[key] = checked.get(key) or _checked(cache_dir, image, arch, registries)
            cached.append(checked[key])
        except FetchError as error:
            brought = image in listed or isinstance(image, ImageArchive)
            return failed_on_controller(
                state, host, f"{host.name}: {error}" + ("" if brought else SANDBOX_FIX)
            )
    return True


@operation()
def images_fetched(
    images: "tuple[ImageRef, ...]",
    arch: str,
    cache_dir: str,
    listed: "tuple[ImageRef, ...]" = (),
    archives: "tuple[ImageArchive, ...]" = (),
    registries: "dict | None" = None,
):
    """
    Fetch images into the controller's cache, once per controller and arch, each checked
    against the digest its reference pins; a failure stops the run before the node is changed.

    + images: the ``ImageRef`` objects to have in the cache (empty: nothing to do)
    + arch: the node's arch (amd64, arm64): from an image index, its manifest is the one fetched
    + cache_dir: the controller's cache (``artifact_cache_dir``)
    + listed: the images the data lists (``containerd_images``); any other is the sandbox image
    + archives: the ``ImageArchive`` objects to bring (``containerd_image_archives``): each
      checked by its sha256
    + registries: the node's ``containerd_registries``: where its config sends an image's
      registry (or a mirror of it) an ``Authorization: Basic`` header, the controller logs in
      with those credentials (else with its own login)

    **Example:**

    .. code:: python

        images_fetched(
            name="Fetch images on the controller",
            images=(parse_reference("docker.io/library/nginx:1.27@sha256:…"),),
            arch="amd64",
            cache_dir="~/.cache/containerd-deploy/artifacts",
        )
    """
    if not images and not archives:
        host.noop("no image to fetch: the node has every one")
        return
    yield FunctionCommand(
        _fetch_into_cache, (cache_dir, [*images, *archives], arch, tuple(listed), [], registries or {}), {}
    )


@operation()
def images_imported(
    images: "tuple[ImageRef, ...]",
    arch: str,
    cache_dir: str,
    staging_dir: str,
    bin_dir: str,
    listed: "tuple[ImageRef, ...]" = (),
    pinned: "tuple[str, ...]" = (),
    snapshotter: str = "",
    archives: "tuple[tuple[ImageArchive, tuple[str, ...]], ...]" = (),
    registries: "dict | None" = None,
):
    """
    Bring images to the node from the controller's cache (fetched there first if missing):
    each is uploaded over SSH into the node's staging directory, checked there against its
    sha256 (every one before any is imported) and imported into containerd's ``k8s.io``
    namespace under its name (by digest when it is pinned, else by tag).

    + images: the ``ImageRef`` objects the node lacks (empty: nothing to do)
    + arch: the node's arch (amd64, arm64)
    + cache_dir: the controller's cache (``artifact_cache_dir``)
    + staging_dir: the node's staging directory (``containerd_staging_dir``)
    + bin_dir: where ctr is installed
    + listed: the images the data lists (``containerd_images``); any other is the sandbox image
    + pinned: names of an image to label pinned, as the CRI pins the sandbox image it pulls
      (a kubelet's image garbage collection leaves it)
    + snapshotter: the snapshotter the CRI uses, which each image is unpacked for ("": ctr's
      default)
    + archives: the ``ImageArchive`` objects to bring, each with the names of its images
      (checked on the node after the import)
    + registries: the node's ``containerd_registries``: where its config sends an image's
      registry (or a mirror of it) an ``Authorization: Basic`` header, the controller logs in
      with those credentials (else with its own login)

    **Example:**

    .. code:: python

        images_imported(
            name="Import images from the controller",
            images=(parse_reference("docker.io/library/nginx:1.27@sha256:…"),),
            arch="amd64",
            cache_dir="~/.cache/containerd-deploy/artifacts",
            staging_dir="/var/cache/containerd-deploy",
            bin_dir="/usr/local/bin",
        )
    """
    if not images and not archives:
        host.noop("no image to import: the node has every one")
        return
    cached: list[CachedImage] = []
    brought = [*images, *(archive for archive, _ in archives)]
    names = [*(image.names for image in images), *(held for _, held in archives)]
    yield FunctionCommand(
        _fetch_into_cache, (cache_dir, brought, arch, tuple(listed), cached, registries or {}), {}
    )
    if len(cached) != len(brought):
        return  # not run (pyinfra only looking for a change), or it failed and said why
    yield remove_staging_leftovers_script(staging_dir, keep=True)
    paths = [uploaded_image_path(staging_dir, index) for index in range(len(brought))]
    via = upload_directory()
    yield from private_uploads(
        [(str(found.path), path) for found, path in zip(cached, paths, strict=True)], via
    )
    yield from uploads_done(via)
    yield StringCommand(
        import_images_script(
            staging_dir,
            bin_dir,
            [(path, found.sha256, held) for path, found, held in zip(paths, cached, names, strict=True)],
            pinned=tuple(pinned),
            snapshotter=snapshotter,
        )
    )

"""The images the controller brings to nodes (containerd_images): fetched once per image and node
arch with Debian's `skopeo` into the artifact cache, checked, and kept as an OCI layout tarball
that `ctr images import` takes, named as a CRI pull names the image.

skopeo talks to the registry (with the controller's own containers configuration: `skopeo
login`, registries.conf mirrors, certs.d) and checks what it fetched against the digest the
reference pins; every blob of the layout is checked against its name here again before the
tarball is made. The node checks the tarball's sha256 after the upload, before the import.
"""

import io
import json
import os
import posixpath
import re
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from containerd_deploy.controller.cache import (
    FetchError,
    host_file_name,
    lock_for,
    private_directory,
    sha256_of,
    untrusted_cache,
)
from containerd_deploy.data.images import ARCHIVES_FIX, ARCHIVES_KEY, ImageArchive, ImageRef, parse_reference
from containerd_deploy.data.values import redact_secrets

IMAGES_DIR = "images"  # under artifact_cache_dir
CACHE_FORMAT = (
    2  # what a cached tarball holds (2: a CRI pull's names, the platform checked); another: fetched again
)
FETCH_TIMEOUT = 1800  # seconds skopeo may take for one image
NAME_ANNOTATION = "io.containerd.image.name"  # the name `ctr images import` gives an entry
SKOPEO_FIX = (
    "the controller fetches images with skopeo (Debian/Ubuntu: apt-get install skopeo), through its own "
    "containers configuration: log in with `skopeo login REGISTRY` (or $REGISTRY_AUTH_FILE), name a mirror "
    "in /etc/containers/registries.conf (or the file $CONTAINERS_REGISTRIES_CONF names), put a registry's CA in "
    "/etc/containers/certs.d/REGISTRY/ca.crt"
)


@dataclass(frozen=True)
class CachedImage:
    """An image's tarball in the cache, for one arch."""

    path: Path
    sha256: str  # of the tarball
    manifest: str  # the digest of the manifest it holds (the node's platform's)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)  # (a regular file, 0644, owned by uid 0, mtime 0: the same every time)
    info.size = size
    return info


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


def _platform(layout: Path, manifest_digest: str) -> str:
    """The os/architecture the image's config declares (its manifest, then its config blob)."""
    blobs = layout / "blobs" / "sha256"
    try:
        manifest = json.loads((blobs / manifest_digest.removeprefix("sha256:")).read_bytes())
        config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_bytes())
        return f"{config['os']}/{config['architecture']}"
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FetchError(
            f"skopeo left no image manifest and config to read ({error!r}); nothing was cached"
        ) from None


def layout_tarball(layout: Path, image: ImageRef, arch: str, out) -> str:
    """Write into `out` the tarball of the one-image OCI layout `layout` (as skopeo made it),
    with an index entry per name of `image`; every blob is checked against its digest first, and
    the image must be one for linux/`arch` (a single-platform manifest is copied whatever its
    platform). Returns the digest of the manifest it holds."""
    index = json.loads((layout / "index.json").read_bytes())
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        raise FetchError(f"skopeo left {len(manifests)} manifests for {image}, not one; nothing was cached")
    blobs = sorted((layout / "blobs" / "sha256").iterdir())
    for blob in blobs:
        if sha256_of(blob) != blob.name:
            raise FetchError(f"a blob of {image} does not match its digest ({blob.name}); nothing was cached")
    platform = _platform(layout, manifests[0]["digest"])
    if platform != f"linux/{arch}":
        raise FetchError(
            f"{image} is an image for {platform}, not for the node's linux/{arch}; nothing was cached. Fix: "
            f"list a digest of the image's index (all platforms), or of its linux/{arch} manifest, for {arch} nodes"
        )
    entries = [{**manifests[0], "annotations": {NAME_ANNOTATION: name}} for name in image.names]
    with tarfile.open(fileobj=out, mode="w") as tar:
        _add(tar, "oci-layout", (layout / "oci-layout").read_bytes())
        for blob in blobs:
            with open(blob, "rb") as handle:
                tar.addfile(_tarinfo(f"blobs/sha256/{blob.name}", blob.stat().st_size), handle)
        document = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        }
        _add(tar, "index.json", json.dumps(document).encode())
    return manifests[0]["digest"]


def skopeo_command(image: ImageRef, arch: str, layout: Path, authfile: Path | None = None) -> list[str]:
    """skopeo's copy of `image`'s manifest for linux/`arch` (from an index, that one only) into
    the OCI layout directory `layout`; by digest when the reference pins one (skopeo then
    checks the manifest it gets against it). `authfile`: the credentials it logs in with, in
    place of the controller's own."""
    # podman's variable for another registries.conf (skopeo itself reads only its option)
    conf = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    return [
        "skopeo",
        *(["--registries-conf", conf] if conf else []),
        "copy",
        "--quiet",
        *(["--src-authfile", str(authfile)] if authfile else []),
        "--override-os",
        "linux",
        "--override-arch",
        arch,
        f"docker://{image.source}",
        f"oci:{layout}",
    ]


def _said(stderr: str) -> str:
    """What skopeo's error says, without its log line's fields (`time=… level=fatal msg="…"`)."""
    found = re.search(r'msg="((?:[^"\\]|\\.)*)"', stderr)
    return found.group(1).replace('\\"', '"') if found else stderr.strip()


def cached_image_path(cache_dir: str, image: ImageRef, arch: str) -> Path:
    return Path(cache_dir) / IMAGES_DIR / host_file_name(f"{image} {arch}", ".tar")


def _recorded(path: Path) -> CachedImage | None:
    """The cached tarball, when its record says what it is and its sha256 still matches."""
    try:
        record = json.loads(path.with_suffix(".json").read_text())
        if record["format"] == CACHE_FORMAT and path.is_file() and sha256_of(path) == record["sha256"]:
            return CachedImage(path, record["sha256"], record["manifest"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def write_authfile(path: Path, credentials: Mapping[str, str]) -> None:
    """A containers auth file (containers-auth.json(5)) of `credentials`, host -> base64
    user:password, this user's alone."""
    document = {"auths": {host: {"auth": auth} for host, auth in credentials.items()}}
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        json.dump(document, out)


def ensure_image_cached(
    cache_dir: str,
    image: ImageRef,
    arch: str,
    timeout: float = FETCH_TIMEOUT,
    credentials: Mapping[str, str] | None = None,
) -> CachedImage:
    """The checked cached tarball of `image` for `arch`, fetching it first if the cache lacks it;
    `credentials` (host -> base64 user:password, the node's for the image's registry): what
    skopeo logs in with instead of the controller's own login."""
    path = cached_image_path(cache_dir, image, arch)
    with lock_for(
        str(path)
    ):  # hosts deployed at once wait for one fetch  # pragma: no mutate (needs two at once)
        private_directory(path.parent)
        problem = untrusted_cache(path.parent)
        if problem:
            raise FetchError(
                f"the image cache {path.parent} is not this user's alone ({problem}): another local user could "
                "swap an image before it is uploaded to the nodes; nothing was fetched. Fix: set "
                "artifact_cache_dir to a directory only you can write (e.g. ~/.cache/containerd-deploy/artifacts)"
            )
        cached = _recorded(path)
        if cached:
            return cached
        with (
            tempfile.TemporaryDirectory(dir=path.parent) as layout,
            tempfile.TemporaryDirectory(dir=path.parent) as login,
        ):
            authfile = None
            if credentials:
                authfile = Path(login) / "auth.json"
                write_authfile(authfile, credentials)
            try:
                result = subprocess.run(
                    skopeo_command(image, arch, Path(layout), authfile),
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
            except FileNotFoundError:
                raise FetchError(
                    f"could not fetch {image}: skopeo is not installed. Fix: {SKOPEO_FIX}"
                ) from None
            except subprocess.TimeoutExpired:
                raise FetchError(f"could not fetch {image} for {arch} within {timeout:.0f} s") from None
            if result.returncode:
                said = redact_secrets(_said(result.stderr))[-600:]
                raise FetchError(
                    f"could not fetch {image} for {arch} to the controller's cache: {said}; nothing was cached. "
                    f"Fix: {SKOPEO_FIX}"
                )
            # Beside its final name, this user's alone (mkstemp: 0600, a name no one else has).
            handle, partial = tempfile.mkstemp(
                dir=path.parent
            )  # pragma: no mutate (one filesystem: an atomic rename)
            try:
                with open(handle, "wb") as out:
                    manifest = layout_tarball(Path(layout), image, arch, out)
            except BaseException:
                os.unlink(partial)
                raise
            sha256 = sha256_of(Path(partial))
            path.with_suffix(".json").write_text(
                json.dumps({"format": CACHE_FORMAT, "sha256": sha256, "manifest": manifest})
            )
            os.replace(partial, path)
        return CachedImage(path, sha256, manifest)


REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"  # an OCI layout's name of an entry
ARCHIVE_DOCUMENT_LIMIT = 20 << 20  # bytes of an archive's index or manifest (containerd's limit)


def _archive_json(tar: tarfile.TarFile, members: dict, name: str):
    """A JSON member of an archive (None: absent); ValueError when it is over containerd's limit."""
    member = members.get(posixpath.normpath(name))
    if member is None:
        return None
    if member.size > ARCHIVE_DOCUMENT_LIMIT:
        raise ValueError(f"its {member.name} is over {ARCHIVE_DOCUMENT_LIMIT >> 20} MiB")
    return json.load(tar.extractfile(member))  # type: ignore[arg-type]  # (a regular file: members holds no other)


def _blob(tar: tarfile.TarFile, members: dict, descriptor) -> object:
    digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
    if not isinstance(digest, str) or not _HEX_DIGEST.fullmatch(digest):
        return None
    return _archive_json(tar, members, f"blobs/sha256/{digest.removeprefix('sha256:')}")


_HEX_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
INDEX_DEPTH = 4  # levels of nested indexes read for platforms (a cycle ends there)


def _oci_platforms(tar: tarfile.TarFile, members: dict, descriptors, depth: int = 0) -> set[str]:
    """The os/arch of each image an OCI index's `descriptors` lead to: the platform an index
    entry names, else its manifest's config's."""
    found: set[str] = set()
    for descriptor in descriptors if isinstance(descriptors, list) and depth < INDEX_DEPTH else []:
        platform = descriptor.get("platform") if isinstance(descriptor, dict) else None
        if isinstance(platform, dict) and platform.get("os") and platform.get("architecture"):
            found.add(f"{platform['os']}/{platform['architecture']}")
            continue
        blob = _blob(tar, members, descriptor)
        if isinstance(blob, dict) and isinstance(blob.get("manifests"), list):  # an index
            found |= _oci_platforms(tar, members, blob["manifests"], depth + 1)
        elif isinstance(blob, dict):
            config = _blob(tar, members, blob.get("config"))
            if isinstance(config, dict):
                found.add(f"{config.get('os')}/{config.get('architecture')}")
    return found


def _archive_documents(path: str) -> tuple[bool, object, set[str]]:
    """Whether the archive at `path` is an OCI layout (it has `oci-layout`, as containerd tells
    them apart), its `index.json` (OCI) or `manifest.json` (docker), None if absent, and the
    os/arch of the images it holds; member names are read as containerd reads them
    (`./index.json` is `index.json`)."""
    with tarfile.open(path, mode="r:") as tar:
        members = {posixpath.normpath(member.name): member for member in tar.getmembers() if member.isfile()}
        oci = "oci-layout" in members
        document = _archive_json(tar, members, "index.json" if oci else "manifest.json")
        if oci:
            platforms = _oci_platforms(
                tar, members, document.get("manifests") if isinstance(document, dict) else None
            )
        else:
            platforms = set()
            for image in document if isinstance(document, list) else []:
                name = image.get("Config") if isinstance(image, dict) else None
                config = _archive_json(tar, members, name) if isinstance(name, str) else None
                if isinstance(config, dict):
                    platforms.add(f"{config.get('os')}/{config.get('architecture')}")
        return oci, document, platforms


def _oci_names(document) -> list[str]:
    """Each entry's name as `ctr images import` keeps it (as written): ValueError unless it is a
    whole reference in the form containerd normalizes (`docker.io/library/nginx:1.27`, not
    `nginx:1.27`), which is the name a pod asks for."""
    entries = document.get("manifests") if isinstance(document, dict) else None
    names = []
    for entry in entries if isinstance(entries, list) else []:
        annotations = entry.get("annotations") if isinstance(entry, dict) else None
        annotations = annotations if isinstance(annotations, dict) else {}
        text = str(annotations.get(NAME_ANNOTATION) or annotations.get(REF_NAME_ANNOTATION))
        try:
            reference = parse_reference(text)
        except ValueError:
            reference = None
        if reference is None or not ("/" in text or ":" in text):  # a tag alone, as OCI layouts name entries
            raise ValueError(
                f"has an image named {str(text)[:120]!r}, not by a whole reference (registry/path:tag): "
                "`ctr images import` would name it import-<date>:<tag>, a name no pod asks for"
            )
        if str(reference) != text:
            raise ValueError(
                f"names an image {text!r}, which `ctr images import` keeps as written, while a pod asks for "
                f"{reference}: name it so"
            )
        names.append(text)
    return names


def _docker_names(document) -> list[str]:
    """Each RepoTag, normalized as containerd's import of a docker archive names it."""
    names = []
    for image in document if isinstance(document, list) else []:
        tags = image.get("RepoTags") if isinstance(image, dict) else None
        if not tags or not isinstance(tags, list):
            raise ValueError("has an image without RepoTags: `ctr images import` would give it no name")
        for tag in tags:
            try:
                names.append(str(parse_reference(tag)))
            except ValueError as error:
                raise ValueError(f"has the RepoTag {str(tag)[:120]!r}, which {error}") from None
    return names


@dataclass(frozen=True)
class ArchiveImages:
    """What an archive holds: the names `ctr images import` gives its images, and their os/arch."""

    names: tuple[str, ...]
    platforms: frozenset[str]


def archive_images(archive: ImageArchive) -> ArchiveImages:
    """The names `ctr images import` gives the images of `archive`: an OCI archive's (it has
    `oci-layout`) index entries, each named by `io.containerd.image.name` or
    `org.opencontainers.image.ref.name` as a whole reference, kept as written; a docker
    archive's `RepoTags`, normalized. FetchError when it cannot be read, or an image of it has
    no name a pod can ask for."""
    fix = f"Fix: check the path in {ARCHIVES_KEY}, or make the archive with the names its images should have ({ARCHIVES_FIX})"
    try:
        oci, document, platforms = _archive_documents(archive.path)
    except (OSError, tarfile.TarError, ValueError, UnicodeDecodeError) as error:
        said = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise FetchError(
            f"could not read the image archive {archive.path}: {said}; nothing was uploaded. {fix}"
        ) from None
    try:
        names = _oci_names(document) if oci else _docker_names(document)
    except ValueError as error:
        raise FetchError(f"the image archive {archive.path} {error}; nothing was uploaded. {fix}") from None
    if not names:
        raise FetchError(
            f"the image archive {archive.path} names no image (no {'index.json entry' if oci else 'manifest.json'}); "
            f"nothing was uploaded. {fix}"
        )
    return ArchiveImages(tuple(dict.fromkeys(names)), frozenset(platforms))


def checked_archive(archive: ImageArchive) -> CachedImage:
    """`archive` as it is uploaded: FetchError unless its sha256 is the one the data gives."""
    try:
        found = sha256_of(Path(archive.path))
    except OSError as error:
        raise FetchError(
            f"could not read the image archive {archive.path}: {error.strerror}; nothing was uploaded. "
            f"Fix: check the path in {ARCHIVES_KEY}"
        ) from None
    if found != archive.sha256:
        raise FetchError(
            f"the image archive {archive.path} has the sha256 {found}, not the {archive.sha256} {ARCHIVES_KEY} "
            "gives; nothing was uploaded. Fix: if the file is the one you meant, set its sha256 to what "
            f"`sha256sum {archive.path}` prints"
        )
    return CachedImage(Path(archive.path), found, "")  # pragma: no mutate (an archive's manifest is not read)

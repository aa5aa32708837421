"""Image references: the images the controller brings to nodes (`containerd_images`), read as
containerd and a kubelet read them; and image archives the operator has on the controller
(`containerd_image_archives`), each named by its path and sha256.

A reference is `[registry/]path[:tag][@sha256:<digest>]`; without a registry it is Docker Hub's
(`nginx` is `docker.io/library/nginx`), as the CRI normalizes it. An image the data lists must be
pinned by digest: what reaches the node is then what the operator named, whichever registry or
cache it came through.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from containerd_deploy.data.values import DataError, normal_path, path_problem

KEY = "containerd_images"
ARCHIVES_KEY = "containerd_image_archives"
DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = ("index.docker.io",)  # docker/reference's legacy name of Docker Hub
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?")
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
NAME_LIMIT = 255  # the distribution spec's longest repository name
FIX = (
    f'list references pinned by digest, e.g. {KEY}=["registry.k8s.io/pause:3.10@sha256:<64 hex digits>"] '
    "(skopeo inspect docker://REF prints the digest)"
)


ARCHIVES_FIX = (
    'list each archive as {"path": "/abs/path/on/the/controller.tar", "sha256": "<64 hex digits>"} '
    "(an OCI or docker archive, e.g. from `skopeo copy … oci-archive:FILE:NAME` or `docker save`; "
    "sha256sum FILE prints its sha256)"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageArchive:
    """An image archive on the controller, and the sha256 it must have."""

    path: str
    sha256: str

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class ImageRef:
    """A normalized reference: `repository` with its registry (`docker.io/library/nginx`)."""

    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return (
            self.repository
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The names it is imported under, as a CRI pull of it names it: a reference with a
        digest by its digest alone (the CRI drops the tag beside one), else by its tag (so an
        image a node pulled under that tag from a registry is never moved to other content)."""
        return (f"{self.repository}@{self.digest}" if self.digest else f"{self.repository}:{self.tag}",)

    @property
    def registry(self) -> str:
        """The registry it names (`docker.io`, `registry.k8s.io:5000`)."""
        return self.repository.split("/", 1)[0]

    @property
    def source(self) -> str:
        """What a registry is asked for: the digest when there is one (a registry resolves the
        tag to whatever it holds now), else the tag."""
        return f"{self.repository}@{self.digest}" if self.digest else f"{self.repository}:{self.tag}"


def parse_reference(text) -> ImageRef:
    """The normalized reference `text` names (ValueError: why it names none)."""
    if not isinstance(text, str) or not text:
        raise ValueError("is not a text")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"has the digest {digest[:80]!r}, not sha256: and 64 lowercase hex digits")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise ValueError(f"has the tag {tag[:80]!r}, not a tag (letters, digits, _ . -, at most 128)")
    first, _, path = rest.partition("/")
    if path and (first == "localhost" or "." in first or ":" in first or first != first.lower()):
        domain = first
        if not _DOMAIN.fullmatch(domain):
            raise ValueError(f"names the registry {domain[:80]!r}, not a host[:port]")
    else:
        domain, path = DOCKER_HUB, rest
    if not _PATH.fullmatch(path):
        raise ValueError(
            f"has the repository path {path[:80]!r}: lowercase letters and digits, parts split by / . _ __ or -"
        )
    if domain in DOCKER_HUB_ALIASES:  # as containerd and Docker read them
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    repository = f"{domain}/{path}"
    if len(repository) > NAME_LIMIT:
        raise ValueError(f"has a name of {len(repository)} characters, over {NAME_LIMIT}")
    return ImageRef(repository, tag if tag or digest else "latest", digest)


def parse(host: str, value) -> tuple[ImageRef, ...]:
    """The images data lists, each pinned by digest (DataError otherwise), in order, once each."""
    if value in (None, "", []):
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        shown = (
            "a mapping" if isinstance(value, Mapping) else repr(value)[:120]
        )  # a mapping's values: never shown
        raise DataError(host, KEY, f"is {shown}, not a list of image references", FIX)
    found: list[ImageRef] = []
    for item in items:
        try:
            reference = parse_reference(item)
        except ValueError as error:
            raise DataError(host, KEY, f"has {str(item)[:120]!r}, which {error}", FIX) from None
        if reference.digest is None:
            raise DataError(
                host,
                KEY,
                f"has {item!r}, which is not pinned by digest: a tag can name other content tomorrow, "
                "and the nodes would then differ by when each was deployed",
                FIX,
            )
        found.append(reference)
    return tuple(dict.fromkeys(found))


def with_sandbox_image(listed: Iterable[ImageRef], sandbox: str | None) -> tuple[ImageRef, ...]:
    """The images the controller brings: those listed, and the sandbox image the config names,
    unless a listed one already gives the node that name (a sandbox image that names no image
    is left to the verify step to report)."""
    images = tuple(listed)
    try:
        reference = parse_reference(sandbox)
    except ValueError:  # (None among them)
        reference = None
    if reference is None or any(set(reference.names) <= set(image.names) for image in images):
        return images
    return (*images, reference)


def sandbox_names(sandbox: str | None) -> tuple[str, ...]:
    """The names the sandbox image `sandbox` is imported under (none: it names no image)."""
    try:
        return parse_reference(sandbox).names
    except ValueError:  # (None among them)
        return ()


def cri_name(reference: str | None) -> str | None:
    """The name the CRI gives the image `reference` names (`reference` itself when it names none)."""
    names = sandbox_names(reference)
    return names[0] if names else reference


def parse_archives(host: str, value) -> tuple[ImageArchive, ...]:
    """The archives data lists, each an absolute path with its sha256 (DataError otherwise), in
    order, once each."""
    if value in (None, "", []):
        return ()
    if not isinstance(value, (list, tuple)):
        shown = "a mapping" if isinstance(value, Mapping) else repr(value)[:120]
        raise DataError(host, ARCHIVES_KEY, f"is {shown}, not a list of archives", ARCHIVES_FIX)
    found: list[ImageArchive] = []
    for item in value:
        if not isinstance(item, Mapping) or set(item) != {"path", "sha256"}:
            shown = (
                "{" + ", ".join(sorted(map(str, item))) + "}"
                if isinstance(item, Mapping)
                else repr(item)[:120]
            )
            raise DataError(host, ARCHIVES_KEY, f"has {shown}, not a path and a sha256", ARCHIVES_FIX)
        path, sha256 = item["path"], item["sha256"]
        problem = path_problem(path)
        if problem:
            raise DataError(host, ARCHIVES_KEY, f"has the path {str(path)[:120]!r}, {problem}", ARCHIVES_FIX)
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise DataError(
                host,
                ARCHIVES_KEY,
                f"has the sha256 {str(sha256)[:80]!r} for {path}, not 64 lowercase hex digits",
                ARCHIVES_FIX,
            )
        found.append(ImageArchive(normal_path(path), sha256))
    return tuple(dict.fromkeys(found))

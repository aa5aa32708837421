"""A tiny container image built locally, with no registry: busybox-static in an OCI layout tarball.

The tarball is what `ctr image import` takes. It is deterministic (fixed mtimes, sorted
entries), so its digest only changes when the busybox binary does.
"""

import gzip
import hashlib
import io
import json
import platform
import tarfile
from pathlib import Path

from containerd_deploy.data.settings import ARCHES  # `uname -m` -> the OCI and containerd release arch name

BUSYBOX = Path("/bin/busybox")
IMAGE_NAME = "localhost/containerd-deploy/busybox:conformance"
# A pod sandbox ("pause") image made the same way: busybox sleeping until it is stopped.
PAUSE_IMAGE_NAME = "localhost/containerd-deploy/pause:conformance"
PAUSE_COMMAND = ["/bin/sleep", "2147483647"]
APPLETS = ("sh", "echo", "cat", "sleep", "ls", "id", "true")


def node_arch(machine: str) -> str:
    try:
        return ARCHES[machine.strip()]
    except KeyError:
        raise ValueError(
            f"the node is {machine.strip()!r}; the conformance suite knows x86_64 and aarch64"
        ) from None


def busybox_for(arch: str, given: dict) -> Path:
    """The static busybox to build a node's test image from: one given for its arch
    (--busybox ARCH=PATH), else this machine's own when the node has this machine's arch."""
    if arch in given:
        return given[arch]
    here = ARCHES.get(platform.machine())
    if arch == here:
        return BUSYBOX
    raise ValueError(
        f"the node is {arch} and this machine is {here or platform.machine()}: its /bin/busybox cannot run "
        f"there. Pass --busybox {arch}=PATH, a static busybox for {arch} (Debian: apt-get download "
        f"busybox-static:{arch}, then dpkg-deb -x the .deb and take bin/busybox)"
    )


def _tarinfo(name: str, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def _layer(busybox: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tarinfo("bin", type=tarfile.DIRTYPE, mode=0o755))
        tar.addfile(_tarinfo("bin/busybox", size=len(busybox), mode=0o755), io.BytesIO(busybox))
        for applet in APPLETS:
            tar.addfile(_tarinfo(f"bin/{applet}", type=tarfile.SYMTYPE, linkname="busybox", mode=0o777))
    return raw.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    tar.addfile(_tarinfo(f"blobs/sha256/{digest[7:]}", size=len(data), mode=0o644), io.BytesIO(data))
    return {"digest": digest, "size": len(data)}


def _json(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def build(
    busybox_path: Path = BUSYBOX,
    name: str = IMAGE_NAME,
    arch: str = "amd64",
    command: list[str] | None = None,
) -> bytes:
    """The OCI layout tarball (bytes) of a one-layer busybox image named `name`."""
    if not busybox_path.exists():
        raise FileNotFoundError(
            f"{busybox_path} not found: the conformance suite builds its test image from a static "
            "busybox on this machine (Debian/Ubuntu: apt-get install busybox-static)"
        )
    return layout_tarball(
        _layer(busybox_path.read_bytes()), name, arch, {"Env": ["PATH=/bin"], "Cmd": command or ["/bin/sh"]}
    )


def layout_tarball(layer: bytes, name: str, arch: str, image_config: dict) -> bytes:
    """The OCI layout tarball (bytes) of a one-layer image: `layer` is an uncompressed tar,
    `image_config` the image's runtime config (Env, Cmd, ExposedPorts, ...)."""
    layer_gz = gzip.compress(layer, mtime=0)
    config = {
        "architecture": arch,
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        layout = _json({"imageLayoutVersion": "1.0.0"})
        tar.addfile(_tarinfo("oci-layout", size=len(layout), mode=0o644), io.BytesIO(layout))
        config_desc = _blob(tar, _json(config))
        layer_desc = _blob(tar, layer_gz)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}],
        }
        manifest_desc = _blob(tar, _json(manifest))
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **manifest_desc,
                    "platform": {"architecture": arch, "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        }
        data = _json(index)
        tar.addfile(_tarinfo("index.json", size=len(data), mode=0o644), io.BytesIO(data))
    return out.getvalue()

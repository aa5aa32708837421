"""Put the locally built test images on a node, through the shell alone (any testinfra backend)."""

import base64
import shlex

from . import oci

UPLOAD_CHUNK = 64 * 1024  # base64 characters per command: well under the kernel's argument limit


def _upload(host, data: bytes, path: str) -> None:
    encoded = base64.b64encode(data).decode()
    quoted = shlex.quote(path)
    host.check_output(f": > {quoted}.b64")
    for start in range(0, len(encoded), UPLOAD_CHUNK):
        host.check_output(f"printf %s {encoded[start : start + UPLOAD_CHUNK]} >> {quoted}.b64")
    host.check_output(f"base64 -d {quoted}.b64 > {quoted} && rm -f {quoted}.b64")


def import_image(host, layout, namespace: str, name: str, command: list[str] | None = None) -> None:
    """Import the busybox image `name` into a containerd namespace, unless it is there already;
    built for the node's arch, from the busybox `layout` names for it."""
    ctr = shlex.quote(layout.ctr)
    if host.run(f"{ctr} -n {namespace} image ls -q | grep -qxF -- {shlex.quote(name)}").rc == 0:
        return
    arch = oci.node_arch(host.check_output("uname -m"))
    busybox = oci.busybox_for(arch, layout.busybox)
    # Its files in a directory of its own that only its maker can enter (mktemp -d: 0700, a
    # name no one can guess first): a name beside a mktemp file in /tmp is one another local
    # user could plant a link at before root writes it.
    directory = host.check_output("mktemp -d /tmp/containerd-deploy-image.XXXXXX")
    try:
        _upload(host, oci.build(busybox, name=name, arch=arch, command=command), f"{directory}/image.tar")
        host.check_output(f"{ctr} -n {namespace} image import {shlex.quote(directory + '/image.tar')}")
    finally:
        host.run(f"rm -rf -- {shlex.quote(directory)}")

"""arm64 nodes: the test image a foreign-arch node gets, and the harness pieces that build and
boot an emulated arm64 node (pure parts; the node itself is proven in tests/e2e/test_fleet.py)."""

from pathlib import Path

import pytest

from containerd_deploy.conformance import oci
from tests.harness.image import FOREIGN_LEFT_OUT, PACKAGES, module_load_order, packages
from tests.harness.platforms import platform

MODULES_DEP = """kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/block/virtio_blk.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
"""


def test_the_initrd_loads_each_module_after_what_it_needs_and_once():
    order = module_load_order(MODULES_DEP, ("crc32c_generic", "virtio_pci", "virtio_blk", "ext4", "jbd2"))
    assert order == [
        "kernel/crypto/crc32c_generic.ko",
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/lib/crc16.ko",
        "kernel/fs/mbcache.ko",
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/fs/ext4/ext4.ko",
    ]
    with pytest.raises(RuntimeError, match="the kernel has no module virtio_scsi"):
        module_load_order(MODULES_DEP, ("virtio_scsi",))


def test_a_foreign_arch_image_gets_its_kernel_from_this_machine_and_no_python():
    assert packages(platform("amd64")) == PACKAGES
    arm64 = packages(platform("arm64"))
    assert "linux-image-amd64" not in arm64 and not set(FOREIGN_LEFT_OUT) & set(arm64)
    assert {"systemd", "openssh-server", "sudo", "crun"} <= set(arm64)
    assert platform("arm64").foreign and not platform("amd64").foreign
    with pytest.raises(ValueError, match="no test node platform 'riscv64'"):
        platform("riscv64")


def test_the_test_image_is_built_for_the_nodes_arch(monkeypatch):
    assert oci.node_arch("aarch64\n") == "arm64" and oci.node_arch("x86_64") == "amd64"
    with pytest.raises(ValueError, match="the node is 'riscv64'"):
        oci.node_arch("riscv64")
    monkeypatch.setattr(oci.platform, "machine", lambda: "x86_64")
    given = {"arm64": Path("/srv/busybox.arm64")}
    assert oci.busybox_for("arm64", given) == Path("/srv/busybox.arm64")
    assert oci.busybox_for("amd64", given) == oci.BUSYBOX, "this machine's arch: its own busybox"
    with pytest.raises(ValueError) as raised:
        oci.busybox_for("arm64", {})
    assert str(raised.value) == (
        "the node is arm64 and this machine is amd64: its /bin/busybox cannot run there. Pass --busybox "
        "arm64=PATH, a static busybox for arm64 (Debian: apt-get download busybox-static:arm64, then dpkg-deb -x "
        "the .deb and take bin/busybox)"
    )
    # On an arm64 controller it is the other way round.
    monkeypatch.setattr(oci.platform, "machine", lambda: "aarch64")
    assert oci.busybox_for("arm64", {}) == oci.BUSYBOX
    with pytest.raises(ValueError, match="the node is amd64 and this machine is arm64"):
        oci.busybox_for("amd64", {})


def test_the_image_records_the_arch_it_was_built_for(tmp_path):
    import io
    import json
    import tarfile

    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF arm64")
    tarball = oci.build(busybox, name="x/y:z", arch="arm64")
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        index = json.load(tar.extractfile("index.json"))
        assert index["manifests"][0]["platform"] == {"architecture": "arm64", "os": "linux"}


def test_busybox_options_name_an_arch_and_a_path():
    from containerd_deploy.conformance.conftest import busybox_paths

    assert busybox_paths(["arm64=/srv/bb", "amd64=/bin/busybox"]) == {
        "arm64": Path("/srv/bb"),
        "amd64": Path("/bin/busybox"),
    }
    for bad in ("arm64", "armhf=/x", "arm64="):
        with pytest.raises(pytest.UsageError, match="give ARCH=PATH with ARCH amd64 or arm64"):
            busybox_paths([bad])

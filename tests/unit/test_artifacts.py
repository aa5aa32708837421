import re

import pytest

from tasks.artifacts import pinned_checksums, resolve
from tasks.settings import DataError, resolve as settings_for

# Upstream values, from the releases' own .sha256sum files.
KNOWN = {
    ("containerd", "1.7.11", "amd64"): "d66161d54546fad502fd50a13fcb79efff033fcd895adc9c44762680dcde4e69",
    ("containerd", "1.7.11", "arm64"): "5eae27cce38a14be5390d4035127aa11416bc5ae592a9ff25b11870872ce1159",
    ("runc", "1.1.11", "amd64"): "77ae134de014613c44d25e6310a57a219a7a91155cd47d069a0f22a2cad5caea",
    ("runc", "1.1.11", "arm64"): "9f1ee53f06b78cc4a115ca6ae4eec10567999539ce828a22c5351edba043ed12",
}


def test_every_pinned_checksum_is_64_lowercase_hex():
    table = pinned_checksums()
    values = [digest for component in table.values() for arches in component.values() for digest in arches.values()]
    assert values and all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in values)


@pytest.mark.parametrize("key, digest", KNOWN.items())
def test_pinned_table_holds_the_upstream_values(key, digest):
    component, version, arch = key
    assert pinned_checksums()[component][version][arch] == digest


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_default_urls_are_upstreams_release_urls(arch):
    containerd, runc = resolve(settings_for("n", {}), arch)
    assert containerd.url == (f"https://github.com/containerd/containerd/releases/download/v1.7.11/"
                              f"containerd-1.7.11-linux-{arch}.tar.gz")
    assert runc.url == f"https://github.com/opencontainers/runc/releases/download/v1.1.11/runc.{arch}"
    assert containerd.sha256 == KNOWN[("containerd", "1.7.11", arch)]
    assert runc.sha256 == KNOWN[("runc", "1.1.11", arch)]


def test_a_mirror_keeps_upstreams_layout():
    containerd, runc = resolve(settings_for("n", {"artifact_mirror": "http://mirror:8080/"}), "amd64")
    assert containerd.url == "http://mirror:8080/containerd/containerd/releases/download/v1.7.11/containerd-1.7.11-linux-amd64.tar.gz"
    assert runc.filename == "runc.amd64"


def test_an_unpinned_version_without_a_checksum_is_refused():
    with pytest.raises(DataError) as error:
        resolve(settings_for("node7", {"containerd_version": "1.7.99"}), "amd64")
    assert "node7: data key 'containerd_sha256'" in str(error.value)
    assert "1.7.99" in str(error.value)


def test_a_given_checksum_wins_and_may_be_per_arch():
    settings = settings_for("n", {"containerd_version": "1.7.99", "containerd_sha256": {"arm64": "c" * 64},
                                  "runc_sha256": "d" * 64})
    containerd, runc = resolve(settings, "arm64")
    assert (containerd.sha256, runc.sha256) == ("c" * 64, "d" * 64)
    with pytest.raises(DataError, match="containerd_sha256"):
        resolve(settings, "amd64")

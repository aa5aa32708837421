import re

import pytest

from containerd_deploy.data.artifacts import pinned_checksums, resolve
from containerd_deploy.data.settings import resolve as settings_for
from containerd_deploy.data.values import DataError

# Upstream values, from the releases' own .sha256sum files.
KNOWN = {
    # The reference values (containerd 1.7.11 and runc 1.1.11, the install guide's).
    ("containerd", "1.7.11", "amd64"): "d66161d54546fad502fd50a13fcb79efff033fcd895adc9c44762680dcde4e69",
    ("containerd", "1.7.11", "arm64"): "5eae27cce38a14be5390d4035127aa11416bc5ae592a9ff25b11870872ce1159",
    ("runc", "1.1.11", "amd64"): "77ae134de014613c44d25e6310a57a219a7a91155cd47d069a0f22a2cad5caea",
    ("runc", "1.1.11", "arm64"): "9f1ee53f06b78cc4a115ca6ae4eec10567999539ce828a22c5351edba043ed12",
}


def test_every_pinned_checksum_is_64_lowercase_hex():
    table = pinned_checksums()
    values = [
        digest for component in table.values() for arches in component.values() for digest in arches.values()
    ]
    assert values and all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in values)


@pytest.mark.parametrize("key, digest", KNOWN.items())
def test_pinned_table_holds_the_upstream_values(key, digest):
    component, version, arch = key
    assert pinned_checksums()[component][version][arch] == digest


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_the_guides_versions_resolve_to_upstreams_release_urls(arch):
    artifacts = resolve(settings_for("n", {"containerd_version": "1.7.11", "runc_version": "1.1.11"}), arch)
    assert list(artifacts) == ["containerd", "runc"], "CNI plugins and crictl are off by default"
    containerd, runc = artifacts["containerd"], artifacts["runc"]
    assert containerd.url == (
        f"https://github.com/containerd/containerd/releases/download/v1.7.11/"
        f"containerd-1.7.11-linux-{arch}.tar.gz"
    )
    assert runc.url == f"https://github.com/opencontainers/runc/releases/download/v1.1.11/runc.{arch}"
    assert containerd.sha256 == KNOWN[("containerd", "1.7.11", arch)]
    assert runc.sha256 == KNOWN[("runc", "1.1.11", arch)]


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_the_default_versions_are_pinned_for_both_arches(arch):
    artifacts = resolve(settings_for("n", {}), arch)
    for name, artifact in artifacts.items():
        assert artifact.sha256 == pinned_checksums()[name][artifact.version][arch]


def test_a_mirror_keeps_upstreams_layout():
    artifacts = resolve(
        settings_for(
            "n",
            {
                "artifact_mirror": "http://mirror:8080/",
                "containerd_version": "1.7.11",
                "cni_plugins_version": "1.8.0",
                "crictl_version": "1.35.0",
            },
        ),
        "arm64",
    )
    assert artifacts["containerd"].url == (
        "http://mirror:8080/containerd/containerd/releases/download/v1.7.11/"
        "containerd-1.7.11-linux-arm64.tar.gz"
    )
    assert artifacts["runc"].filename == "runc.arm64"
    assert artifacts["cni_plugins"].url == (
        "http://mirror:8080/containernetworking/plugins/releases/download/v1.8.0/"
        "cni-plugins-linux-arm64-v1.8.0.tgz"
    )
    assert artifacts["crictl"].url == (
        "http://mirror:8080/kubernetes-sigs/cri-tools/releases/download/v1.35.0/"
        "crictl-v1.35.0-linux-arm64.tar.gz"
    )
    assert (
        artifacts["cni_plugins"].sha256 == "57ce466fc3b79db1f19b8f4c63e07a1112306efa53c94fe810a2150dd9e07ddb"
    )


def test_every_pinned_version_has_both_arches_and_parses():
    from packaging.version import Version

    for component, versions in pinned_checksums().items():
        for version, arches in versions.items():
            assert set(arches) == {"amd64", "arm64"}, (component, version)
            assert str(Version(version)) == version


@pytest.mark.parametrize("line", ["1.6", "1.7", "2.0", "2.1", "2.2"])
def test_every_release_line_in_use_has_a_pinned_containerd(line):
    assert any(version.startswith(line + ".") for version in pinned_checksums()["containerd"])


def test_an_unpinned_version_is_refused_before_the_host_is_asked():
    from containerd_deploy.data.artifacts import check_all_arches

    with pytest.raises(DataError) as error:
        check_all_arches(settings_for("node7", {"crictl_version": "1.29.0"}))
    assert str(error.value).startswith("node7: data key 'crictl_sha256' gives no checksum for crictl 1.29.0")
    assert "(pinned: 1.35.0, 1.34.0, 1.33.0)" in str(error.value)
    check_all_arches(settings_for("node7", {"crictl_version": "1.29.0", "crictl_sha256": "a" * 64}))


def test_an_unpinned_version_without_a_checksum_is_refused():
    with pytest.raises(DataError) as error:
        resolve(settings_for("node7", {"containerd_version": "1.7.99"}), "amd64")
    assert "node7: data key 'containerd_sha256'" in str(error.value)
    assert "1.7.99" in str(error.value)


def test_a_given_checksum_wins_and_may_be_per_arch():
    settings = settings_for(
        "n",
        {"containerd_version": "1.7.99", "containerd_sha256": {"arm64": "c" * 64}, "runc_sha256": "d" * 64},
    )
    artifacts = resolve(settings, "arm64")
    assert (artifacts["containerd"].sha256, artifacts["runc"].sha256) == ("c" * 64, "d" * 64)
    with pytest.raises(DataError, match="containerd_sha256"):
        resolve(settings, "amd64")


def test_settings_know_every_component():
    from containerd_deploy.data.artifacts import COMPONENTS
    from containerd_deploy.data.settings import COMPONENT_NAMES

    assert tuple(COMPONENTS) == COMPONENT_NAMES


def test_a_published_checksum_is_used_only_for_components_named_by_the_operator():
    asked = []

    def published(url):
        asked.append(url)
        return "e" * 64

    unpinned = {"containerd_version": "1.7.99", "runc_version": "1.3.99"}
    with pytest.raises(DataError, match="containerd_sha256"):
        resolve(settings_for("n", unpinned), "amd64", published=published)
    assert asked == [], "never asked without the opt-in"
    artifacts = resolve(
        settings_for("n", {**unpinned, "artifact_trust_mirror_checksums": ["containerd", "runc"]}),
        "amd64",
        published=published,
    )
    assert artifacts["containerd"].sha256 == "e" * 64 and len(asked) == 2
    assert asked[0].endswith("/v1.7.99/containerd-1.7.99-linux-amd64.tar.gz")
    # A pinned version never asks, even when named.
    resolve(
        settings_for("n", {"artifact_trust_mirror_checksums": ["containerd"]}), "amd64", published=published
    )
    assert len(asked) == 2


def test_an_unreadable_published_checksum_is_refused_naming_the_opt_in():
    def published(url):
        raise OSError("connection refused")

    settings = settings_for(
        "node3", {"containerd_version": "1.7.99", "artifact_trust_mirror_checksums": "containerd"}
    )
    with pytest.raises(DataError) as error:
        resolve(settings, "amd64", published=published)
    assert str(error.value).startswith(
        "node3: data key 'artifact_trust_mirror_checksums' names containerd, but its "
        "published checksum could not be read (connection refused)"
    )
    with pytest.raises(DataError, match="not a list of component names"):
        settings_for("n", {"artifact_trust_mirror_checksums": ["kubelet"]})


def test_a_checksum_given_for_one_version_is_never_used_for_another():
    """The inventory pins a checksum for 1.6.20; asked for 1.7.99, the run says there is no
    checksum for 1.7.99 (not a checksum mismatch, which reads as tampering)."""
    from containerd_deploy.data.artifacts import check_all_arches

    pinned_for_old = {"containerd_sha256": {"1.6.20": "c" * 64}}
    old = resolve(settings_for("n", {"containerd_version": "1.6.20", **pinned_for_old}), "amd64")
    assert old["containerd"].sha256 == "c" * 64
    with pytest.raises(DataError) as error:
        check_all_arches(settings_for("n", {"containerd_version": "1.7.99", **pinned_for_old}))
    assert str(error.value).startswith(
        "n: data key 'containerd_sha256' gives no checksum for containerd 1.7.99 (amd64), and "
        "files/checksums.toml pins none for it"
    )
    assert 'Fix: set containerd_sha256={"1.7.99": "<sha256>"}' in str(error.value)

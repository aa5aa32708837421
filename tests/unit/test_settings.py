import pytest
from packaging.version import Version

from containerd_deploy.data.settings import DEFAULTS, arch_of, resolve
from containerd_deploy.data.values import DataError


def test_defaults_resolve():
    settings = resolve("node1", {})
    assert settings.containerd_version == Version(DEFAULTS["containerd_version"])
    assert settings.runc_path == "/usr/local/sbin/runc"
    assert settings.containerd_systemd_cgroup is True


def test_data_overrides_defaults():
    settings = resolve("node1", {"containerd_version": "v2.1.9", "containerd_bin_dir": "/opt/bin/"})
    assert settings.containerd_version == Version("2.1.9")
    assert settings.containerd_bin_dir == "/opt/bin"


@pytest.mark.parametrize("value", ["latest", "1.7", 2.0, "1.7.x", "", None, "1.7.11-rc.1"])
def test_versions_that_are_not_releases_are_refused(value):
    with pytest.raises(DataError) as error:
        resolve("node1", {"containerd_version": value})
    message = str(error.value)
    assert message.startswith("node1: data key 'containerd_version'") and "Fix:" in message


@pytest.mark.parametrize(
    "key, value",
    [("containerd_version", "1.5.18"), ("containerd_version", "3.0.0"), ("runc_version", "1.0.3")],
)
def test_unsupported_release_lines_are_refused(key, value):
    with pytest.raises(DataError, match=f"'{key}' is .* outside the supported"):
        resolve("node1", {key: value})


@pytest.mark.parametrize("value", ["abc", "A" * 64, "0" * 63, 12345, {"s390x": "a" * 64}, {"amd64": "bad"}])
def test_malformed_checksums_are_refused(value):
    with pytest.raises(DataError, match="'runc_sha256'"):
        resolve("node1", {"runc_sha256": value})


def test_checksums_per_arch_are_accepted():
    settings = resolve("node1", {"runc_sha256": {"amd64": "a" * 64, "arm64": "b" * 64}})
    assert settings.runc_sha256 == {"amd64": "a" * 64, "arm64": "b" * 64}


@pytest.mark.parametrize(
    "key, value",
    [
        ("containerd_bin_dir", "usr/local/bin"),
        ("runc_path", "/usr/../etc/runc"),
        ("containerd_config_path", 7),
    ],
)
def test_relative_or_odd_paths_are_refused(key, value):
    with pytest.raises(DataError, match=f"'{key}' is .* not an absolute path"):
        resolve("node1", {key: value})


def test_url_templates_with_unknown_fields_are_refused():
    with pytest.raises(DataError, match="containerd_download_url"):
        resolve("node1", {"containerd_download_url": "{mirror}/{release}/x.tar.gz"})


def test_mirror_must_be_a_url():
    with pytest.raises(DataError, match="artifact_mirror"):
        resolve("node1", {"artifact_mirror": "mirror.internal"})


@pytest.mark.parametrize("value, expected", [(True, True), ("false", False), ("True", True)])
def test_booleans(value, expected):
    assert resolve("n", {"containerd_systemd_cgroup": value}).containerd_systemd_cgroup is expected


def test_non_booleans_are_refused():
    with pytest.raises(DataError, match="containerd_systemd_cgroup"):
        resolve("n", {"containerd_systemd_cgroup": "yes please"})


@pytest.mark.parametrize("value", [0, -5, "soon", True])
def test_ready_timeout_must_be_positive(value):
    with pytest.raises(DataError, match="containerd_ready_timeout"):
        resolve("n", {"containerd_ready_timeout": value})


@pytest.mark.parametrize("machine, arch", [("x86_64", "amd64"), ("aarch64", "arm64")])
def test_arch_mapping(machine, arch):
    assert arch_of("n", machine) == arch


def test_other_arches_are_refused_by_name():
    with pytest.raises(DataError, match="n: .*'riscv64'.*amd64 and arm64"):
        arch_of("n", "riscv64")


@pytest.mark.parametrize(
    "key, value",
    [
        ("containerd_config_base", "fresh"),
        ("containerd_sandbox_image", 'pause"; rm -rf /'),
        ("containerd_oom_score", -2000),
        ("containerd_max_container_log_line_size", "big"),
        ("containerd_limit_nofile", "lots"),
        ("containerd_runtimes", {"name": "crun"}),
        ("containerd_runtimes", [{"binary_name": "/usr/bin/crun"}]),
        ("containerd_runtimes", [{"name": "runc"}]),
        ("containerd_runtimes", [{"name": "crun", "binary": "/usr/bin/crun"}]),
        ("containerd_config_extra", ["debug"]),
        ("containerd_http_proxy", "http://p\nX-Injected: 1"),
        ("containerd_registry_config_path", "certs.d"),
    ],
)
def test_bad_knob_values_are_refused_by_key(key, value):
    with pytest.raises(DataError, match=f"n: data key '{key}'"):
        resolve("n", {key: value})


def test_knob_values():
    settings = resolve(
        "n",
        {
            "containerd_config_base": "default",
            "containerd_limit_nofile": 1048576,
            "containerd_runtimes": [{"name": "crun", "binary_name": "/usr/bin/crun"}],
            "containerd_registry_config_path": "",
        },
    )
    assert settings.containerd_config_base == "default"
    assert settings.containerd_limit_nofile == "1048576"
    assert settings.containerd_runtimes[0].binary_name == "/usr/bin/crun"
    assert settings.containerd_registry_config_path == ""

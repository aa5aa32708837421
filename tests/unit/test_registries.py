import pytest
import tomlkit

from tasks.registries import MARKER, has_credentials, hosts_toml, parse
from tasks.values import DataError


def test_hosts_toml_lists_mirrors_then_the_server():
    spec = parse(
        "n",
        {
            "docker.io": {
                "mirrors": [
                    {
                        "host": "https://mirror.internal",
                        "capabilities": ["pull"],
                        "ca": "/etc/ssl/mirror.pem",
                        "headers": {"Authorization": "Basic abc"},
                    },
                    {"host": "http://10.1.2.3:5000", "skip_verify": True},
                ]
            }
        },
    )["docker.io"]
    text = hosts_toml("docker.io", spec)
    assert text.startswith(MARKER + "\n")
    document = tomlkit.parse(text).unwrap()
    assert document["server"] == "https://registry-1.docker.io"
    assert list(document["host"]) == ["https://mirror.internal", "http://10.1.2.3:5000"]
    assert document["host"]["https://mirror.internal"] == {
        "capabilities": ["pull"],
        "ca": "/etc/ssl/mirror.pem",
        "header": {"Authorization": "Basic abc"},
    }
    assert document["host"]["http://10.1.2.3:5000"] == {
        "capabilities": ["pull", "resolve"],
        "skip_verify": True,
    }
    assert has_credentials(spec)


def test_server_defaults_to_the_registry_itself_and_can_be_set():
    specs = parse(
        "n",
        {
            "registry.k8s.io": {"mirrors": [{"host": "https://m"}]},
            "ghcr.io": {"server": "https://ghcr.example", "mirrors": [{"host": "https://m"}]},
        },
    )
    assert (
        tomlkit.parse(hosts_toml("registry.k8s.io", specs["registry.k8s.io"]))["server"]
        == "https://registry.k8s.io"
    )
    assert tomlkit.parse(hosts_toml("ghcr.io", specs["ghcr.io"]))["server"] == "https://ghcr.example"
    assert not has_credentials(specs["ghcr.io"])


@pytest.mark.parametrize(
    "value",
    [
        ["docker.io"],
        {"docker.io": {"mirrors": []}},
        {"docker.io": {"mirrors": [{"host": "mirror.internal"}]}},
        {"docker.io": {"mirrors": [{"host": "https://m", "capabilities": ["write"]}]}},
        {"docker.io": {"mirrors": [{"host": "https://m", "password": "x"}]}},
        {"docker.io": {"endpoint": ["https://m"]}},
        {"bad/name": {"mirrors": [{"host": "https://m"}]}},
    ],
)
def test_bad_registry_data_is_refused_by_key(value):
    with pytest.raises(DataError, match="n: data key 'containerd_registries'"):
        parse("n", value)

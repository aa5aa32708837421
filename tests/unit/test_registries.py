import pytest
import tomlkit

from containerd_deploy.data.registries import MARKER, basic_credentials, has_credentials, hosts_toml, parse
from containerd_deploy.data.values import DataError


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


GOLDEN = __import__("pathlib").Path(__file__).parent / "golden" / "registries.txt"


def mirror(**fields):
    return {"docker.io": {"mirrors": [{"host": "https://mirror.internal", **fields}]}}


# Each value a mirror, header or server can be given, good and bad.
VALUES = [
    {"docker.io": {"mirrors": ["https://mirror.internal"]}},
    {"docker.io": {"mirrors": [{"host": "ftp://mirror.internal"}]}},
    {"docker.io": {"mirrors": [{"host": "https://"}]}},
    {"docker.io": {"mirrors": [{"host": "https://mirror .internal"}]}},
    {"docker.io": {"mirrors": [{"host": "https://user:s3cret@mirror.internal"}]}},
    {"docker.io": {"mirrors": [{"host": 5}]}},
    {"docker.io": {"mirrors": [{"host": "https://mirror.internal\n"}]}},
    {"docker.io": {"mirrors": [{"host": "https://[::1"}]}},
    mirror(hots="x"),
    mirror(capabilities=[]),
    mirror(capabilities="pull"),
    mirror(capabilities=5),
    mirror(capabilities=["pull", "fly"]),
    mirror(skip_verify="yes"),
    mirror(override_path=1),
    mirror(ca=5),
    mirror(ca=["", "/etc/ssl/a.pem"]),
    mirror(ca=["/etc/ssl/a.pem\n"]),
    mirror(ca="/etc/ssl/a.pem\n"),
    mirror(headers="Authorization: Basic s3cret"),
    mirror(headers={"Bad Name": "v"}),
    mirror(headers={"N" * 70 + " ": "v"}),
    mirror(headers={5: "v"}),
    mirror(headers={"X-A": []}),
    mirror(headers={"X-A": ["a", "s3cret\n"]}),
    mirror(headers={"X-A": "s3cret\r"}),
    mirror(headers={"X-A": 5}),
    {"docker.io": {"mirrors": [{"host": "https://mirror.internal"}], "server": "ftp://registry"}},
    {"docker.io": {"mirrors": [], "server": "https://registry"}},
    {"docker.io": {"mirror": [], "servers": "https://registry"}},
    {"docker.io": "https://mirror.internal"},
    {"../etc": {"mirrors": [{"host": "https://mirror.internal"}]}},
    ["docker.io"],
    # Accepted: each rendered as the hosts.toml the node gets.
    mirror(
        capabilities=["pull"],
        skip_verify=True,
        ca=["/etc/ssl/a.pem", "/etc/ssl/b.pem"],
        override_path=True,
        headers={"Authorization": "Basic s3cret", "X-Two": ["a", "b"]},
    ),
    mirror(ca="/etc/ssl/a.pem", skip_verify=False),
    {"_default": {"mirrors": [{"host": "http://mirror.internal:5000"}]}},
    {"registry.internal:5000": {"mirrors": [{"host": "https://mirror.internal"}]}},
    {
        "quay.io": {
            "server": "https://quay.internal",
            "mirrors": [{"host": "https://m1"}, {"host": "https://m2"}],
        }
    },
]


def answer(value) -> str:
    try:
        registries = parse("node1", value)
    except DataError as error:
        return f"refused: {error}"
    return "".join(f"--- {name}/hosts.toml\n{hosts_toml(name, spec)}" for name, spec in registries.items())


def test_each_registries_value_gives_what_the_golden_file_says():
    """The refusal (naming the host, the key, the registry and mirror, never a header's value
    or a password) or the hosts.toml files, for each value; golden/registries.txt, rewritten
    with `UPDATE_GOLDEN=1` after a deliberate change (review its diff)."""
    import os

    text = "".join(f"== {value!r}\n{answer(value)}\n" for value in VALUES)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "an answer changed: review it, then UPDATE_GOLDEN=1"
    for value in VALUES:
        if answer(value).startswith("refused"):
            assert "s3cret" not in answer(value)


def test_the_controller_logs_in_to_each_host_the_nodes_config_sends_basic_credentials():
    registries = parse(
        "n",
        {
            "docker.io": {
                "mirrors": [
                    {"host": "https://mirror.internal:5443", "headers": {"authorization": "Basic bWlycm9y"}},
                    {
                        "host": "https://registry-1.docker.io/",
                        "headers": {"Authorization": ["Basic aHVi", "x"]},
                    },
                    {"host": "https://token.internal", "headers": {"Authorization": "Bearer abc"}},
                    {"host": "https://plain.internal", "headers": {"X-Basic": "Basic c29tZQ=="}},
                ]
            },
            "_default": {
                "mirrors": [{"host": "https://any.internal", "headers": {"Authorization": "Basic YW55"}}]
            },
            "quay.io": {"mirrors": [{"host": "https://quay.internal"}]},
        },
    )
    # The registry's own server under the registry's name, as a containers auth file keys it;
    # a bearer token and other headers have no place there.
    assert basic_credentials("docker.io", registries) == {
        "mirror.internal:5443": "bWlycm9y",
        "docker.io": "aHVi",
    }
    assert basic_credentials("registry.k8s.io", registries) == {"any.internal": "YW55"}  # _default's
    assert basic_credentials("quay.io", registries) == {}  # its own entry, with no credentials
    assert basic_credentials("ghcr.io", {}) == {}

"""Each data parser at its edges, with the exact message an operator reads: what the broad
data tests (hypothesis, the golden table) pass through without pinning down."""

import pytest

from containerd_deploy.data import settings
from containerd_deploy.data.config_toml import Runtime
from containerd_deploy.data.settings import resolve
from containerd_deploy.data.values import DataError

PATH_FIX = "Fix: set containerd_bin_dir to an absolute path such as /usr/local/bin"
RUNTIMES_FIX = (
    "Fix: set containerd_runtimes to a list of mappings with name, and optionally runtime_type, binary_name "
    'and options, e.g. [{"name": "crun", "binary_name": "/usr/bin/crun"}]'
)
NOFILE_FIX = "Fix: set containerd_limit_nofile to a number, SOFT:HARD with SOFT <= HARD, or infinity (systemd's LimitNOFILE)"
HTTP_FIX = (
    "https:// or http:// URL without spaces or credentials (file:// URLs need artifact_allow_file_urls=true)"
)


def parsed(key: str, value, **other):
    return getattr(resolve("node1", {key: value, **other}), key)


def refusal(key: str, value, **other) -> str:
    with pytest.raises(DataError) as raised:
        resolve("node1", {key: value, **other})
    return str(raised.value)


def test_absolute_paths_at_their_edges():
    assert refusal("containerd_bin_dir", "/opt/x ") == (
        f"node1: data key 'containerd_bin_dir' is '/opt/x ', not an absolute path. {PATH_FIX}"
    )
    assert parsed("containerd_bin_dir", "/Xen//bin/") == "/Xen/bin"
    assert refusal("containerd_bin_dir", "//") == (
        f"node1: data key 'containerd_bin_dir' is '/', not a path of its own. {PATH_FIX}"
    )
    # The kernel's limits: 255 bytes a name, 4095 in all.
    name = "n" * 255
    assert parsed("containerd_bin_dir", "/" + name) == "/" + name
    assert refusal("containerd_bin_dir", "/" + name + "n") == (
        f"node1: data key 'containerd_bin_dir' is {('/' + name)[:80]!r}…, longer than a path may be "
        f"(255 bytes a name, 4095 in all). {PATH_FIX}"
    )
    three = "/".join(["n" * 200] * 3)  # 600 bytes in names of 200: fine
    assert parsed("containerd_bin_dir", "/" + three) == "/" + three
    longest = ("/" + "/".join(["n" * 254] * 17))[:4095]
    assert len(longest) == 4095 and parsed("containerd_bin_dir", longest) == longest
    assert "longer than a path may be" in refusal("containerd_bin_dir", longest + "n")


def test_a_dedicated_directory_is_never_a_system_tree():
    assert refusal("containerd_staging_dir", "/usr") == (
        "node1: data key 'containerd_staging_dir' is '/usr', a directory of the operating system (or one "
        "holding one), which the deploy would make root-only and empty. Fix: set containerd_staging_dir to a "
        "directory of its own, such as /var/cache/containerd-deploy"
    )


@pytest.mark.parametrize("value, number", [(1, 1), ("5", 5), (60, 60)])
def test_positive_numbers_of_seconds(value, number):
    assert parsed("containerd_ready_timeout", value) == number


@pytest.mark.parametrize("value", [0, "0", "+5", " 5", "5.0", True, None, "five"])
def test_anything_else_is_not_a_number_of_seconds(value):
    assert refusal("containerd_ready_timeout", value) == (
        f"node1: data key 'containerd_ready_timeout' is {value!r}, not a positive number of seconds. "
        "Fix: set containerd_ready_timeout to e.g. 60"
    )


def test_bounded_numbers_include_both_ends():
    assert parsed("containerd_oom_score", 1000) == 1000 and parsed("containerd_oom_score", -1000) == -1000
    assert refusal("containerd_oom_score", 1001) == (
        "node1: data key 'containerd_oom_score' is 1001. Fix: set containerd_oom_score to a whole number "
        "from -1000 to 1000, or leave it unset"
    )


@pytest.mark.parametrize("value", ["1", "infinity", "1024:infinity", "4096:4096"])
def test_limit_nofile_values_systemd_takes(value):
    assert parsed("containerd_limit_nofile", value) == value


def test_limit_nofile_values_systemd_would_refuse():
    for value in ("0", "infinity:1024", "2:1"):
        assert refusal("containerd_limit_nofile", value) == (
            f"node1: data key 'containerd_limit_nofile' is {value!r}, a soft limit above its hard limit "
            f"(or zero). {NOFILE_FIX}"
        )
    assert refusal("containerd_limit_nofile", True) == (
        f"node1: data key 'containerd_limit_nofile' is True. {NOFILE_FIX}"
    )


def test_proxies():
    assert parsed("containerd_http_proxy", "socks5://proxy.internal:1080") == "socks5://proxy.internal:1080"
    for value in ("ftp://proxy.internal", "http://", "proxy.internal:3128"):
        assert refusal("containerd_http_proxy", value) == (
            f"node1: data key 'containerd_http_proxy' is {value!r}, not a proxy URL. "
            "Fix: set containerd_http_proxy to e.g. http://proxy:3128"
        )
    # The password never shows, whatever else is wrong.
    assert refusal("containerd_http_proxy", "http://user:secret@proxy internal:3128") == (
        "node1: data key 'containerd_http_proxy' is 'http://user:***@proxy internal:3128', not a single-line "
        "value without spaces. Fix: set containerd_http_proxy to e.g. http://proxy:3128"
    )


def test_extra_runtimes_keep_their_type_and_options():
    entry = {"name": "Kata.v2_x-1", "runtime_type": "io.containerd.kata.v2", "options": {"A": 1}}
    assert parsed("containerd_runtimes", [entry]) == (
        Runtime("Kata.v2_x-1", "io.containerd.kata.v2", None, {"A": 1}),
    )
    assert parsed("containerd_runtimes", [{"name": "crun", "binary_name": "/usr/bin/crun"}]) == (
        Runtime("crun", "io.containerd.runc.v2", "/usr/bin/crun", {}),
    )


@pytest.mark.parametrize(
    "value, problem",
    [
        (
            [{"name": "runc"}],
            "redefines 'runc', which the deploy owns. Fix: give the extra runtime another name",
        ),
        ([{"name": "gpu", "options": "fast"}], f"has non-mapping options in 'gpu'. {RUNTIMES_FIX}"),
        (
            [{"name": "gpu", "binary": "/usr/bin/x"}],
            f"has unknown fields ['binary'] in 'gpu'. {RUNTIMES_FIX}",
        ),
        (
            [{"name": "gpu runtime"}],
            f"has the entry {{'name': 'gpu runtime'}}, which needs a name of letters, digits, . _ -. {RUNTIMES_FIX}",
        ),
        ({"name": "gpu"}, f"is {{'name': 'gpu'}}, not a list. {RUNTIMES_FIX}"),
    ],
)
def test_extra_runtimes_refused(value, problem):
    assert refusal("containerd_runtimes", value) == f"node1: data key 'containerd_runtimes' {problem}"


def test_file_urls_only_when_allowed():
    assert (
        parsed("artifact_mirror", "file:///srv/mirror", artifact_allow_file_urls=True) == "file:///srv/mirror"
    )
    assert parsed("artifact_mirror", "http://mirror.internal", artifact_allow_file_urls=True) == (
        "http://mirror.internal"
    )
    assert refusal("artifact_mirror", "file:///srv/mirror") == (
        f"node1: data key 'artifact_mirror' is 'file:///srv/mirror', not an https/http URL. Fix: set "
        f"artifact_mirror to an {HTTP_FIX}"
    )
    assert refusal("artifact_mirror", "ftp://mirror.internal", artifact_allow_file_urls=True) == (
        "node1: data key 'artifact_mirror' is 'ftp://mirror.internal', not an https/http/file URL. Fix: set "
        "artifact_mirror to an https:// or http:// or file:// URL without spaces or credentials"
    )
    template = "{mirror}/runc.{arch}"
    allowed = {"artifact_mirror": "file:///srv/m", "artifact_allow_file_urls": True}
    assert parsed("runc_download_url", template, **allowed) == template


def test_a_url_template_checks_the_mirror_it_is_filled_with():
    raw = {"artifact_mirror": "ftp://mirror.internal", "artifact_allow_file_urls": False}
    with pytest.raises(DataError) as raised:
        settings._url_template_key("node1", "runc_download_url", "{mirror}/runc", raw)
    assert str(raised.value) == (
        "node1: data key 'artifact_mirror' is 'ftp://mirror.internal', not an https/http URL. Fix: set "
        f"artifact_mirror to an {HTTP_FIX}"
    )
    allowed = {"artifact_mirror": "file:///srv/m", "artifact_allow_file_urls": True}
    assert (
        settings._url_template_key("node1", "runc_download_url", "{mirror}/runc", allowed) == "{mirror}/runc"
    )


def inventory_host(name: str = "worker-7", host=None, group=None, everyone=None, override=None):
    """A pyinfra host with data in each of pyinfra's layers: --data (override), the host's own,
    a group's, and the inventory's data for all hosts."""
    from pyinfra.api import Inventory

    inventory = Inventory(
        ([(name, host or {})], everyone or {}), override_data=override or {}, workers=([name], group or {})
    )
    return inventory.get_host(name)


def test_a_hosts_settings_carry_its_name():
    with pytest.raises(DataError, match="^worker-7: data key 'containerd_ready_timeout' is 'nope'"):
        settings.for_host(inventory_host(host={"containerd_ready_timeout": "nope"}))
    assert settings.for_host(inventory_host()).host == "worker-7"


def test_each_data_layer_is_named_where_its_values_come_from():
    found = settings.data_sources(
        inventory_host(
            host={"runc_version": "1.1.15"},
            group={"containerd_version": "1.7.24", "runc_version": "1.1.12"},
            everyone={"crictl_version": "1.29.0"},
            override={"containerd_version": "2.1.9"},
        )
    )
    assert (found["containerd_version"], found["runc_version"], found["crictl_version"]) == (
        "--data",
        "the host's inventory data",
        "the inventory's data for all hosts",
    )
    assert settings.data_sources(inventory_host(group={"containerd_verify": False}))["containerd_verify"] == (
        "the data of group workers"
    )


@pytest.mark.parametrize(
    "typo, closest",
    [
        ("containerd_verison", "containerd_version"),
        ("runc_sha", "runc_sha256"),
        ("cni_plugin_version", "cni_plugins_version"),
        ("crictl_verion", "crictl_version"),
        ("artifact_mirorr", "artifact_mirror"),
    ],
)
def test_an_undeclared_key_with_the_deploys_prefix_is_refused_with_the_closest_key(typo, closest):
    with pytest.raises(DataError) as error:
        settings.for_host(inventory_host(override={typo: "1.7.24"}))
    assert str(error.value) == (
        f"worker-7: data key '{typo}' is not a data key of this deploy (set in --data). Fix: did you mean {closest}?; "
        "a name of your own, such as a group_data variable, starts with _"
    )


def test_every_undeclared_key_is_named_and_others_are_left_to_their_owners():
    with pytest.raises(DataError) as error:
        settings.resolve("node1", {"containerd_zzz_qqq_www": 1, "runc_x": 2, "containerd_verify": True})
    assert str(error.value) == (
        "node1: data key 'containerd_zzz_qqq_www' is not a data key of this deploy; nor are runc_x. "
        "Fix: remove it (docs/data.md lists every key); a name of your own, such as a group_data variable, starts with _"
    )
    # pyinfra's own keys, and keys of other deploys, are not this deploy's to judge
    settings.resolve(
        "node1", {"ssh_user": "admin", "_sudo": True, "kubelet_version": "1.31", "containerd": 1}
    )


CHECKSUM = "a" * 64


def test_a_checksum_by_version_is_used_for_its_version_only():
    by_version = {"1.7.24": CHECKSUM, "2.1.9": {"amd64": "b" * 64, "arm64": "c" * 64}}
    assert settings.resolve(
        "n", {"containerd_version": "1.7.24", "containerd_sha256": by_version}
    ).containerd_sha256 == (CHECKSUM)
    assert settings.resolve(
        "n", {"containerd_version": "v2.1.9", "containerd_sha256": by_version}
    ).containerd_sha256 == {
        "amd64": "b" * 64,
        "arm64": "c" * 64,
    }
    assert (
        settings.resolve(
            "n", {"containerd_version": "1.7.99", "containerd_sha256": by_version}
        ).containerd_sha256
        is None
    )
    assert settings.resolve("n", {"cni_plugins_sha256": {"1.4.0": CHECKSUM}}).cni_plugins_sha256 is None
    with pytest.raises(DataError, match="'runc_sha256' is 'zz', not a sha256"):
        settings.resolve("n", {"runc_sha256": {"1.1.15": CHECKSUM, "1.1.12": "zz"}})
    with pytest.raises(DataError, match="'runc_sha256' has an entry for '1.1.15', not amd64 or arm64"):
        settings.resolve("n", {"runc_sha256": {"1.1.15": CHECKSUM, "amd64": CHECKSUM}})


def test_a_version_from_another_layer_never_takes_a_plain_checksum():
    # the inventory pins a checksum for its version; --data asks for another version
    host = inventory_host(
        host={"containerd_version": "1.6.20", "containerd_sha256": CHECKSUM},
        override={"containerd_version": "1.7.99"},
    )
    with pytest.raises(DataError) as error:
        settings.for_host(host)
    assert str(error.value) == (
        "worker-7: data key 'containerd_sha256' is set in the host's inventory data, but containerd_version "
        "(1.7.99) comes from --data: a checksum is only used for the version it was given for. Fix: give it by "
        'version, containerd_sha256={"1.7.99": "<sha256>"}, or set containerd_version and containerd_sha256 in the '
        "same place"
    )
    # the default version is another place too
    with pytest.raises(DataError, match="comes from the deploy's defaults"):
        settings.for_host(inventory_host(group={"runc_sha256": {"amd64": CHECKSUM}}))


def test_a_checksum_from_one_group_is_never_used_for_another_groups_version():
    """pyinfra merges a host's groups into one layer: each key's group is told apart."""
    from pyinfra.api import Inventory

    inventory = Inventory(
        (["node1"], {}),
        prod=(["node1"], {"containerd_version": "1.7.24", "containerd_sha256": CHECKSUM}),
        canary=(["node1"], {"containerd_version": "2.1.9"}),
    )
    with pytest.raises(DataError) as error:
        settings.for_host(inventory.get_host("node1"))
    assert (
        "'containerd_sha256' is set in the data of group prod, but containerd_version (2.1.9) comes from "
        in str(error.value)
        and "the data of group canary" in str(error.value)
    )


@pytest.mark.parametrize(
    "layers",
    [
        {"override": {"containerd_version": "1.7.99", "containerd_sha256": CHECKSUM}},
        {
            "group": {"containerd_version": "1.7.99", "containerd_sha256": CHECKSUM},
            "override": {"runc_version": "1.1.15"},
        },
        {"host": {"containerd_sha256": {"1.7.99": CHECKSUM}}, "override": {"containerd_version": "1.7.99"}},
        {"host": {"crictl_sha256": CHECKSUM}},  # no crictl_version: nothing it could apply to
    ],
)
def test_a_checksum_beside_its_version_or_given_by_version_is_used(layers):
    settings.for_host(inventory_host(**layers))


@pytest.mark.parametrize("number", [0, 1234567890123, 1e300])
def test_a_checksum_the_command_line_made_a_number_says_to_quote_it(number):
    with pytest.raises(DataError) as error:
        settings.resolve("n", {"runc_sha256": number})
    assert f"is the number {number!r}, not a sha256 (--data reads digits as a number)" in str(error.value)
    assert str(error.value).endswith("""Fix: quote it as JSON text: --data 'runc_sha256="<64 hex digits>"'""")


def test_release_versions_from_the_lowest_supported():
    assert str(parsed("containerd_version", "1.6.0")) == "1.6.0"
    assert str(parsed("containerd_version", "2.1.9")) == "2.1.9"
    assert refusal("containerd_version", "latest") == (
        "node1: data key 'containerd_version' is 'latest', not a release version. Fix: set containerd_version "
        "to a release number such as 1.6.0 (X.Y.Z, no 'latest')"
    )
    assert refusal("containerd_version", "1.5.9") == (
        "node1: data key 'containerd_version' is 1.5.9, outside the supported 1.6.x to <3 releases. Fix: set "
        "containerd_version to a release number such as 1.6.0 (X.Y.Z, no 'latest')"
    )


@pytest.mark.parametrize(
    "url, problem",
    [
        ("http://[::1", "is '<a URL that cannot be parsed>', not a URL"),
        ("http:///releases", "is 'http:///releases', which names no host"),
        ("http://-mirror.internal", "is 'http://-mirror.internal', which names no host"),
        ("http://mirror internal", "is 'http://mirror internal', not an https/http URL"),
    ],
)
def test_urls_that_name_no_usable_host(url, problem):
    assert (
        refusal("artifact_mirror", url)
        == f"node1: data key 'artifact_mirror' {problem}. Fix: set artifact_mirror to an {HTTP_FIX}"
    )


def test_a_mirror_loses_only_its_trailing_slashes():
    assert parsed("artifact_mirror", "http://mirror.internal/X//") == "http://mirror.internal/X"


def test_a_proxy_that_is_not_even_a_url():
    assert refusal("containerd_https_proxy", "http://[::1") == (
        "node1: data key 'containerd_https_proxy' is '<a URL that cannot be parsed>', not a proxy URL. "
        "Fix: set containerd_https_proxy to e.g. http://proxy:3128"
    )


def test_a_per_arch_checksum_is_checked_per_arch():
    assert refusal("containerd_sha256", {"amd64": "a" * 64, "arm64": "zz"}).startswith(
        "node1: data key 'containerd_sha256' is 'zz', not a sha256. Fix: set containerd_sha256 to the "
        "64-character lowercase hex sha256"
    )
    assert refusal("containerd_sha256", {"riscv64": "a" * 64}).startswith(
        "node1: data key 'containerd_sha256' has an entry for 'riscv64', not amd64 or arm64."
    )


@pytest.mark.parametrize(
    "url, schemes, credentials, problem",
    [
        ("https://mirror.internal/x", ("https",), False, None),
        ("file:///srv/mirror", ("https", "file"), False, None),
        ("file:///srv/mirror", ("https",), False, "not an https URL"),
        ("http://[::1", ("http",), False, "not a URL"),
        (5, ("http",), False, "not a URL"),
        ("https://mirror .internal", ("https",), False, "not an https URL"),
        ("https://mirror.internal/\t", ("https",), False, "not an https URL"),
        ("https:///x", ("https",), False, "names no host"),
        ("https://-mirror/x", ("https",), False, "names no host"),
        ("https://u:p@mirror/x", ("https",), False, "holds credentials"),
        ("http://u:p@proxy:3128", ("http", "socks5"), True, None),
    ],
)
def test_one_url_check_for_every_key_that_takes_a_url(url, schemes, credentials, problem):
    from containerd_deploy.data.values import url_problem

    assert url_problem(url, schemes, credentials) == problem


@pytest.mark.parametrize(
    ("name", "runtime_type"),
    [
        ("kata", "io.containerd.kata.v2"),
        ("kata-qemu", "io.containerd.kata.v2"),
        ("gvisor", "io.containerd.runsc.v1"),
        ("runsc", "io.containerd.runsc.v1"),
    ],
)
def test_a_handler_named_for_a_sandbox_must_say_which_shim_gives_it(name, runtime_type):
    """Regression (#26): `{"name": "kata"}` was taken as a runc handler, so pods asking for the
    RuntimeClass `kata` ran unsandboxed."""
    with pytest.raises(DataError) as refused:
        resolve("node1", {"containerd_runtimes": [{"name": name}]})
    assert str(refused.value) == (
        f"node1: data key 'containerd_runtimes' has {name!r} without a runtime_type, which would make it a runc "
        "handler: pods asking for it would run without the sandbox its name promises. Fix: give it the "
        f'sandbox\'s shim, e.g. {{"name": "{name}", "runtime_type": "{runtime_type}"}}'
    )
    given = resolve("node1", {"containerd_runtimes": [{"name": name, "runtime_type": runtime_type}]})
    assert [runtime.runtime_type for runtime in given.containerd_runtimes] == [runtime_type]
    # A name that only looks alike is a plain handler.
    assert resolve("node1", {"containerd_runtimes": [{"name": "katana"}]}).containerd_runtimes

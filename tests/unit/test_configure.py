from containerd_deploy.plan.files import unit_text


def test_unit_is_the_guides_with_execstart_at_the_bin_dir():
    default = unit_text("/usr/local/bin")
    assert "ExecStart=/usr/local/bin/containerd\n" in default
    for line in (
        "Type=notify",
        "Delegate=yes",
        "KillMode=process",
        "Restart=always",
        "OOMScoreAdjust=-999",
        "ExecStartPre=-/sbin/modprobe overlay",
        "WantedBy=multi-user.target",
    ):
        assert line in default.splitlines()
    moved = unit_text("/opt/containerd/bin")
    assert "ExecStart=/opt/containerd/bin/containerd\n" in moved and "/usr/local/bin" not in moved


from containerd_deploy.data.settings import resolve  # noqa: E402
from containerd_deploy.plan.files import proxy_dropin_text, registry_files  # noqa: E402


def test_limit_nofile_goes_into_the_service_section():
    text = unit_text("/usr/local/bin", "1048576")
    service = text.split("[Service]")[1].split("[Install]")[0]
    assert "LimitNOFILE=1048576\n" in service
    assert "LimitNOFILE" not in unit_text("/usr/local/bin")


def test_proxy_dropin():
    assert proxy_dropin_text(resolve("n", {})) is None
    text = proxy_dropin_text(
        resolve("n", {"containerd_https_proxy": "http://p:3128", "containerd_no_proxy": "localhost,.svc"})
    )
    assert text.splitlines()[1:] == [
        "[Service]",
        'Environment="HTTPS_PROXY=http://p:3128" "https_proxy=http://p:3128"',
        'Environment="NO_PROXY=localhost,.svc" "no_proxy=localhost,.svc"',
    ]


def test_registry_files_are_private_only_with_credentials():
    settings = resolve(
        "n",
        {
            "containerd_registries": {
                "docker.io": {"mirrors": [{"host": "https://m", "headers": {"Authorization": "Bearer t"}}]},
                "quay.io": {"mirrors": [{"host": "https://q"}]},
            }
        },
    )
    files = registry_files(settings)
    assert {path: mode for path, (_, mode) in files.items()} == {
        "/etc/containerd/certs.d/docker.io/hosts.toml": "600",
        "/etc/containerd/certs.d/quay.io/hosts.toml": "644",
    }


def test_registries_need_a_config_path():
    import pytest
    from pyinfra.api.exceptions import DeployError

    settings = resolve(
        "n",
        {
            "containerd_registry_config_path": "",
            "containerd_registries": {"q.io": {"mirrors": [{"host": "https://q"}]}},
        },
    )
    with pytest.raises(DeployError) as refused:
        registry_files(settings)
    assert str(refused.value) == (
        "n: data key 'containerd_registries' is set but 'containerd_registry_config_path' is empty. "
        "Fix: set containerd_registry_config_path (default /etc/containerd/certs.d) so containerd reads "
        "hosts.toml files"
    )


def test_config_base_policy():
    from containerd_deploy.facts.node import NodeState
    from containerd_deploy.plan.files import config_base

    existing = NodeState(config_text="version = 2\n# mine\n", default_config="version = 2\n")
    fresh = NodeState(config_text=None, default_config="version = 2\n")
    assert config_base(resolve("n", {}), existing, binaries_current=True) == "version = 2\n# mine\n"
    assert config_base(resolve("n", {"containerd_config_base": "default"}), existing, True) == "version = 2\n"
    assert config_base(resolve("n", {}), fresh, binaries_current=True) == "version = 2\n"
    # Defaults of a binary that is about to be replaced are not used: they are read after the install.
    assert config_base(resolve("n", {}), fresh, binaries_current=False) is None
    assert config_base(resolve("n", {"containerd_config_base": "default"}), existing, False) is None


def test_extra_toml_cannot_set_what_the_deploy_owns():
    """Regression (#26): containerd_config_extra could override `version`, `root`/`state`, the
    registry config_path or put the CRI plugin in disabled_plugins (and a None in it crashed
    tomlkit); runc's SystemdCgroup alone was checked, after rendering. Each is refused by name."""
    import pytest

    from containerd_deploy.data.config_toml import PATHS, RUNC_OPTIONS_PATH
    from containerd_deploy.data.values import DataError

    def nested(path, value):
        extra: dict = {}
        node = extra
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        return extra

    cases = [
        (nested(("version",), 3), "sets version, which the deploy owns (the schema"),
        (nested(("root",), "/srv/x"), "sets root, which the deploy owns (containerd's data directory"),
        (nested(("state",), "/run/x"), "sets state, which the deploy owns"),
        *(
            (
                nested((*path, "SystemdCgroup"), False),
                "which the deploy owns (runc's cgroup driver: set containerd_systemd_cgroup)",
            )
            for path in RUNC_OPTIONS_PATH.values()
        ),
        *(
            (
                nested((*path, "config_path"), "/x"),
                "which the deploy owns (set containerd_registry_config_path)",
            )
            for path in PATHS["registry"].values()
        ),
        ({"disabled_plugins": ["io.containerd.grpc.v1.cri"]}, "disables the CRI plugin in disabled_plugins"),
        ({"disabled_plugins": "cri"}, "disables the CRI plugin in disabled_plugins"),
        ({"disabled_plugins": "tracing"}, "sets disabled_plugins to 'tracing', not a list of plugin IDs"),
        ({"DISABLED_PLUGINS": ["CRI"]}, "disables the CRI plugin"),
        ({"Root": "/srv/x"}, "sets Root, which the deploy owns"),
        ({"imports": ["/etc/containerd/conf.d/*.toml"]}, "sets imports, which the deploy owns (other files"),
        (
            nested((*RUNC_OPTIONS_PATH[2][:-1], "options"), "x"),
            "replaces the table plugins.io.containerd.grpc.v1.cri.containerd.runtimes.runc.options with 'x'",
        ),
        (
            nested((*PATHS["registry"][2], "mirrors", "docker.io", "endpoint"), ["https://m"]),
            "registry mirrors beside containerd_registries' hosts.toml files (use those)",
        ),
        (nested(("plugins", "x", "y"), None), "has no value (None) at plugins.x.y, which TOML cannot write"),
        ({"timeouts": {"a": [1, None]}}, "has no value (None) at timeouts.a"),
    ]
    for extra, problem in cases:
        with pytest.raises(DataError) as refused:
            resolve("node1", {"containerd_config_extra": extra})
        message = str(refused.value)
        assert message.startswith("node1: data key 'containerd_config_extra' ") and problem in message, (
            message
        )
        assert message.endswith("Fix: take it out of containerd_config_extra")
    # Without hosts.toml files (containerd_registry_config_path = ""), mirrors in the config are the operator's way.
    mirrors = nested((*PATHS["registry"][2], "mirrors", "docker.io", "endpoint"), ["https://m"])
    assert resolve("node1", {"containerd_registry_config_path": "", "containerd_config_extra": mirrors})
    # What the deploy does not own merges as before.
    assert resolve(
        "node1", {"containerd_config_extra": {"disabled_plugins": ["io.containerd.internal.v1.tracing"]}}
    )
    with pytest.raises(DataError, match="has no value \\(None\\) for a field of 'crun'"):
        resolve("node1", {"containerd_runtimes": [{"name": "crun", "options": {"BinaryName": None}}]})


def test_cri_is_taken_out_of_disabled_plugins():
    from packaging.version import Version

    from containerd_deploy.data.config_toml import Knobs, render, value_at

    docker_package = '# containerd.io ships this\ndisabled_plugins = ["cri"]\n'
    text = render("version = 2\n" + docker_package, Version("1.7.24"), Knobs())
    assert value_at(text, ("disabled_plugins",)) == [] and "# containerd.io ships this" in text
    others = 'version = 3\ndisabled_plugins = ["io.containerd.cri.v1.runtime", "io.containerd.snapshotter.v1.btrfs"]\n'
    text = render(others, Version("2.1.9"), Knobs())
    assert value_at(text, ("disabled_plugins",)) == ["io.containerd.snapshotter.v1.btrfs"]


def test_a_proxy_with_credentials_makes_the_drop_in_private():
    """Regression: the drop-in travelled base64 in a command line (readable in ps) and was 0644."""
    from containerd_deploy.data.settings import resolve
    from containerd_deploy.plan.files import proxy_dropin_mode

    assert proxy_dropin_mode(resolve("n", {"containerd_https_proxy": "http://user:pw@proxy:3128"})) == "600"
    assert proxy_dropin_mode(resolve("n", {"containerd_http_proxy": "http://proxy:3128"})) == "644"


def test_every_config_key_reaches_the_knobs_config_toml_is_rendered_with():
    from containerd_deploy.data.config_toml import Knobs
    from containerd_deploy.plan.files import knobs

    settings = resolve(
        "n",
        {
            "containerd_systemd_cgroup": False,
            "containerd_sandbox_image": "registry.internal/pause:3.10",
            "containerd_registry_config_path": "/etc/ctd/certs.d",
            "containerd_snapshotter": "native",
            "containerd_max_container_log_line_size": 32768,
            "containerd_oom_score": -500,
            "containerd_restrict_oom_score_adj": "true",
            "containerd_runtimes": [{"name": "crun", "binary_name": "/usr/bin/crun"}],
            "containerd_config_extra": {"debug": {"level": "info"}},
        },
    )
    assert knobs(settings) == Knobs(
        systemd_cgroup=False,
        sandbox_image="registry.internal/pause:3.10",
        registry_config_path="/etc/ctd/certs.d",
        snapshotter="native",
        max_container_log_line_size=32768,
        oom_score=-500,
        restrict_oom_score_adj=True,
        runtimes=settings.containerd_runtimes,
        extra={"debug": {"level": "info"}},
    )
    assert len(settings.containerd_runtimes) == 1
    # An empty registry config path leaves config_path as the base has it.
    assert knobs(resolve("n", {"containerd_registry_config_path": ""})).registry_config_path is None


def test_a_config_the_schema_code_cannot_edit_is_refused_naming_the_host_and_file():
    import pytest
    from pyinfra.api.exceptions import DeployError

    from containerd_deploy.plan.files import desired_config

    with pytest.raises(DeployError) as refused:
        desired_config(resolve("node1", {"containerd_version": "1.7.24"}), "version = 3\n")
    assert str(refused.value).startswith("node1: /etc/containerd/config.toml "), str(refused.value)

"""config.toml and the knobs on real nodes of every generation: what the deploy owns changes,
everything else survives, and a broken file stops the deploy with nothing changed."""

import difflib
from pathlib import Path

import pytest

from containerd_deploy.data.config_toml import PATHS, RUNC_OPTIONS_PATH, parse, runc_systemd_cgroup, value_at
from containerd_deploy.data.registries import MARKER

from .helpers import CONFIG, changed_ops, deploy_ok, main_pid, node_snapshot, pyinfra, read, restore, write

pytestmark = pytest.mark.machine("config.toml edits and the daemon reading them are the deploy's logic")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "config"


def effective_config(node) -> str:
    return node.vm.ssh("/usr/local/bin/containerd config dump").stdout


def schema(text: str) -> int:
    return int(parse(text)["version"])


def test_an_operators_file_keeps_everything_but_what_the_deploy_owns(node, first_deploy):
    original = read(node, CONFIG)
    operator = (
        FIXTURES / ("operator-1.7.toml" if schema(original) == 2 else "operator-2.1.toml")
    ).read_text()
    write(node, CONFIG, operator)
    # The GPU runtime's binary, as the GPU operator installs it (the verify step checks it is there).
    node.vm.ssh("ln -sf /usr/bin/crun /usr/bin/nvidia-container-runtime")
    try:
        # Unset, the sandbox image (and a machine's restrict_oom_score_adj) is the operator's: only
        # SystemdCgroup is the deploy's to change.
        results = deploy_ok(node, containerd_sandbox_image="", containerd_restrict_oom_score_adj="")
        assert any(CONFIG in name for name in changed_ops(results, node.name))
        after = read(node, CONFIG)
        changes = [
            line for line in difflib.ndiff(operator.splitlines(), after.splitlines()) if line[:1] in "+-"
        ]
        assert changes == [
            "-           SystemdCgroup = false   # the deploy owns this one",
            "+           SystemdCgroup = true   # the deploy owns this one",
        ]
        dump = effective_config(node)
        assert runc_systemd_cgroup(dump) is True
        nvidia = PATHS["runtimes"][schema(dump)] + ("nvidia", "options", "BinaryName")
        assert value_at(dump, nvidia) == "/usr/bin/nvidia-container-runtime", "the GPU runtime survived"

        # The other policy: start from the installed binary's defaults, dropping operator edits.
        deploy_ok(node, containerd_config_base="default")
        fresh = read(node, CONFIG)
        assert "nvidia" not in fresh and "# runc stays the default runtime" not in fresh
        assert runc_systemd_cgroup(fresh) is True
    finally:
        restore(node, original)
        node.vm.ssh("rm -f /usr/bin/nvidia-container-runtime")


def test_a_malformed_config_stops_the_deploy_with_nothing_changed(node, first_deploy):
    original = read(node, CONFIG)
    broken = original.replace("[plugins]", "[plugins", 1)
    write(node, CONFIG, broken)
    try:
        pid, before = main_pid(node), node_snapshot(node)
        process, _ = pyinfra(node.name)
        assert process.returncode != 0
        output = process.stdout + process.stderr
        assert f"{node.name}: {CONFIG} is not valid TOML" in output, output[-3000:]
        assert node_snapshot(node) == before and read(node, CONFIG) == broken
        assert main_pid(node) == pid, "containerd was restarted"
    finally:
        restore(node, original)


KNOBS = {
    # A proxy on the node's own loopback: configured and checked, never contacted.
    "containerd_http_proxy": "http://127.0.0.1:3128",
    "containerd_no_proxy": "localhost,127.0.0.1,.svc",
    "containerd_registries": {
        "docker.io": {
            "mirrors": [
                {"host": "https://mirror.internal", "headers": {"Authorization": "Basic dXNlcjpzZWNyZXQ="}}
            ]
        },
        "quay.io": {"mirrors": [{"host": "http://127.0.0.1:5000", "skip_verify": True}]},
    },
    "containerd_sandbox_image": "localhost/containerd-deploy/pause:test",
    "containerd_max_container_log_line_size": 32768,
    "containerd_oom_score": -999,
    "containerd_limit_nofile": "1048576",
    "containerd_runtimes": [{"name": "crun", "binary_name": "/usr/bin/crun"}],
    "containerd_config_extra": {"debug": {"level": "info"}},
}


def test_knobs_reach_the_running_daemon_and_go_away_with_their_data(node, first_deploy):
    original = read(node, CONFIG)
    pid = main_pid(node)
    try:
        deploy_ok(node, **KNOBS)
        assert main_pid(node) != pid, "config, unit and drop-in changed: containerd must be restarted"
        service = node.vm.ssh("systemctl show containerd -p Environment -p LimitNOFILE").stdout
        assert (
            "HTTP_PROXY=http://127.0.0.1:3128" in service and "NO_PROXY=localhost,127.0.0.1,.svc" in service
        )
        assert "LimitNOFILE=1048576" in service
        modes = node.vm.ssh("stat -c '%n %a %U:%G' /etc/containerd/certs.d/*/hosts.toml").stdout.split("\n")
        assert "/etc/containerd/certs.d/docker.io/hosts.toml 600 root:root" in modes, (
            "credentials are private"
        )
        assert "/etc/containerd/certs.d/quay.io/hosts.toml 644 root:root" in modes
        hosts = read(node, "/etc/containerd/certs.d/docker.io/hosts.toml")
        assert hosts.startswith(MARKER) and '[host."https://mirror.internal"]' in hosts
        dump = effective_config(node)
        version = schema(dump)
        assert value_at(dump, PATHS["sandbox_image"][version]) == KNOBS["containerd_sandbox_image"]
        assert value_at(dump, PATHS["registry"][version] + ("config_path",)) == "/etc/containerd/certs.d"
        assert value_at(dump, PATHS["max_container_log_line_size"][version]) == 32768
        assert value_at(dump, ("oom_score",)) == -999
        assert value_at(dump, ("debug", "level")) == "info"
        crun = PATHS["runtimes"][version] + ("crun",)
        assert value_at(dump, crun + ("runtime_type",)) == "io.containerd.runc.v2"
        assert value_at(dump, crun + ("options", "BinaryName")) == "/usr/bin/crun"
        assert value_at(dump, RUNC_OPTIONS_PATH[version] + ("SystemdCgroup",)) is True

        # The same data again: nothing to do, no restart.
        pid = main_pid(node)
        process, results = pyinfra(node.name, data=KNOBS)
        assert process.returncode == 0 and changed_ops(results, node.name) == []
        assert main_pid(node) == pid

        # Data gone: what only existed for it goes too.
        deploy_ok(node)
        leftovers = node.vm.ssh(
            "ls -A /etc/containerd/certs.d /etc/systemd/system/containerd.service.d"
        ).stdout
        assert (
            "docker.io" not in leftovers and "quay.io" not in leftovers and "http-proxy.conf" not in leftovers
        )
        assert "HTTP_PROXY" not in node.vm.ssh("systemctl show containerd -p Environment").stdout
    finally:
        restore(node, original)

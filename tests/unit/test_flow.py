"""`containerd_node` on fake node states: which operations change, and whether containerd is
started, restarted or left alone, on a fresh node, a converged one and each kind of drift; and
the refusals that stop the flow before any operation (a kubelet on another cgroup driver);
the run lock, taken first by a run that will change the node (or finds another run on it)."""

import dataclasses
import hashlib
import os
import socket

import pytest
from pyinfra.api.exceptions import DeployError

from containerd_deploy.remote.lock import parse_lock_state
from containerd_deploy.remote.manifest import Manifest

from .flow import changed_names, converged, drifted, fresh, prepare, service_op, settings_for

RESTART = 'systemctl restart "$unit"'
START = 'systemctl start "$unit"'
RELOAD = "systemctl daemon-reload"
LOCK = "Take the node's run lock"
KEEP = (
    "Keep the running release | Keep the running release until the new one is verified (containerd_rollback)"
)
DROP = "Drop the kept release | Drop the kept release: the new one answered"
KUBELET = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: {}\n"


@pytest.fixture
def settings():
    return settings_for()


def test_a_converged_node_changes_nothing_and_keeps_its_daemon(monkeypatch, settings):
    import containerd_deploy.deploy.node as flow

    # No step with nothing to do adds an operation, nor is entered (each deploy step costs the
    # controller a call stack walk and a read of every global argument, per host).
    entered = []
    for step in (
        "fetch_images",
        "fetch_release_files",
        "keep_running_release",
        "install_release_files",
        "configure_containerd",
        "run_containerd",
        "bring_images",
        "drop_kept_release",
        "remove_containerd",
        "verify_containerd",
    ):
        monkeypatch.setattr(flow, step, lambda *args, step=step, **kwargs: entered.append(step))
    assert prepare(monkeypatch, converged(settings)) == []
    assert entered == []  # (the flow's data turns the verify step off)
    assert prepare(monkeypatch, converged(settings), {"containerd_verify": True}) == []
    assert entered == ["verify_containerd"]  # a check: on every run (it judges cheaply, see verify.py)


def test_a_fresh_node_gets_everything_and_a_started_daemon(monkeypatch, settings):
    changed = changed_names(prepare(monkeypatch, fresh()))
    for expected in (
        "Fetch and verify release files",
        f"Install containerd {settings.containerd_version} into",
        "Install runc",
        "Write /etc/containerd/config.toml",
        "Install /etc/systemd/system/containerd.service",
        "Enable, start and check containerd",
    ):
        assert any(expected in name for name in changed), (expected, changed)
    text = service_op(prepare(monkeypatch, fresh())).text()
    assert "systemctl enable" in text and RELOAD in text and RESTART in text


def test_config_drift_rewrites_the_config_and_restarts_once(monkeypatch, settings):
    node = converged(settings)
    node = drifted(
        node, config_text=node.config_text.replace("SystemdCgroup = true", "SystemdCgroup = false")
    )
    prepared = prepare(monkeypatch, node)
    assert changed_names(prepared) == [
        LOCK,
        KEEP,
        "Configure containerd | Write /etc/containerd/config.toml",
        "Run containerd | Enable, start and check containerd",
        DROP,
    ]
    text = service_op(prepared).text()
    assert text.count(RESTART) == 1 and RELOAD not in text and "systemctl enable" not in text


def test_a_changed_knob_restarts(monkeypatch, settings):
    prepared = prepare(monkeypatch, converged(settings), {"containerd_max_container_log_line_size": 32768})
    assert RESTART in service_op(prepared).text()


def test_binary_drift_reinstalls_and_restarts(monkeypatch, settings):
    node = converged(settings)
    manifest = node.manifests["containerd"]
    tampered = Manifest(manifest.fields, manifest.files, {path: "other" for path in manifest.files})
    prepared = prepare(monkeypatch, drifted(node, manifests={**node.manifests, "containerd": tampered}))
    changed = changed_names(prepared)
    assert any(f"Install containerd {settings.containerd_version}" in name for name in changed)
    assert not any("Install runc" in name for name in changed)
    assert RESTART in service_op(prepared).text()


def test_a_changed_unit_is_reloaded_and_restarts(monkeypatch, settings):
    prepared = prepare(monkeypatch, drifted(converged(settings), unit_sha256="0" * 64))
    assert "Configure containerd | Install /etc/systemd/system/containerd.service" in changed_names(prepared)
    text = service_op(prepared).text()
    assert RELOAD in text and text.count(RESTART) == 1


def test_a_registry_change_needs_no_restart(monkeypatch, settings):
    data = {"containerd_registries": {"docker.io": {"mirrors": [{"host": "https://mirror.internal"}]}}}
    prepared = prepare(monkeypatch, converged(settings), data)
    assert changed_names(prepared) == [
        LOCK,
        "Configure containerd | Write /etc/containerd/certs.d/docker.io/hosts.toml",
    ]


def test_a_daemon_older_than_its_binary_is_restarted_with_nothing_else_changed(monkeypatch, settings):
    for stale in (
        {"ctr_server": "1.6.0"},
        {"exe": "/usr/local/bin/containerd (deleted)"},
        {"mtimes": {settings.containerd_config_path: 4e9}},
    ):
        prepared = prepare(monkeypatch, drifted(converged(settings), **stale))
        assert changed_names(prepared) == [
            LOCK,
            KEEP,
            "Run containerd | Enable, start and check containerd",
            DROP,
        ], stale
        assert RESTART in service_op(prepared).text(), stale


def test_a_stopped_converged_node_is_started_not_restarted(monkeypatch, settings):
    node = converged(settings)
    prepared = prepare(
        monkeypatch, drifted(node, service={**node.service, "ActiveState": "inactive", "MainPID": "0"})
    )
    text = service_op(prepared).text()
    assert START in text and RESTART not in text


def test_a_pending_daemon_reload_is_done_without_a_restart(monkeypatch, settings):
    node = converged(settings)
    prepared = prepare(monkeypatch, drifted(node, service={**node.service, "NeedDaemonReload": "yes"}))
    text = service_op(prepared).text()
    assert RELOAD in text and RESTART not in text


def test_a_proxy_drop_in_left_from_earlier_data_is_removed_and_restarts(monkeypatch, settings):
    dropin = "/etc/systemd/system/containerd.service.d/http-proxy.conf"
    node = drifted(converged(settings), files={dropin: hashlib.sha256(b"old").hexdigest()})
    prepared = prepare(monkeypatch, node)
    assert f"Configure containerd | Remove {dropin}" in changed_names(prepared)
    text = service_op(prepared).text()
    assert RELOAD in text and RESTART in text


@pytest.mark.parametrize("driver, refused", [("cgroupfs", True), ("systemd", False)])
def test_a_kubelet_on_another_cgroup_driver_stops_the_flow_before_any_operation(
    monkeypatch, settings, driver, refused
):
    node = drifted(converged(settings), kubelet_config=KUBELET.format(driver))
    if not refused:
        assert changed_names(prepare(monkeypatch, node)) == []
        return
    with pytest.raises(
        DeployError, match="the kubelet's cgroupDriver is cgroupfs .*'containerd_systemd_cgroup'"
    ):
        prepare(monkeypatch, node)


@pytest.mark.parametrize("state", ["present", "absent"])
@pytest.mark.parametrize(
    "untrusted, names, fix",
    [
        (
            ("/var/lib/containerd-deploy", "is owned by uid 1000, not root"),
            "data key 'containerd_deploy_state_dir'",
            "chown root:root /var/lib/containerd-deploy; chmod go-w /var/lib/containerd-deploy) once you know "
            "nothing in it came from another user, or set containerd_deploy_state_dir to another directory",
        ),
        (
            ("/var/cache", "is writable by group or others"),
            "data key 'containerd_staging_dir'",
            "set containerd_staging_dir to a directory that only root can write, all the way up (not under /var/cache)",
        ),
        (
            ("/usr/local", "is writable by group or others"),
            "data keys 'containerd_bin_dir' and 'runc_path'",
            "set containerd_bin_dir / runc_path to a directory that only root can write, all the way up (not under /usr/local)",
        ),
        (
            ("/etc/containerd", "is a symbolic link"),
            "data keys 'containerd_config_path' and 'containerd_registry_config_path'",
            "to the real path, without the link",
        ),
        (
            ("/run/containerd-deploy", "is not a directory"),
            "a place the deploy keeps files in",
            "move the file away",
        ),
    ],
)
def test_a_directory_another_user_could_change_stops_the_flow_before_any_operation(
    monkeypatch, settings, state, untrusted, names, fix
):
    """Regression (#26): only the staging directory itself was locked down; a state directory
    another user made, a parent anyone can write, or a link on the way were trusted."""
    node = drifted(converged(settings), untrusted_directories=[untrusted])
    with pytest.raises(DeployError) as refused:
        prepare(monkeypatch, node, {"containerd_state": state})
    message = str(refused.value)
    assert message.startswith(f"{settings.host}: {untrusted[0]} {untrusted[1]}, on the path of {names}:"), (
        message
    )
    assert "nothing was changed" in message and fix in message, message


KATA = {"containerd_runtimes": [{"name": "kata", "runtime_type": "io.containerd.kata.v2"}]}


@pytest.mark.parametrize("missing", [True, False])
def test_a_handler_the_nodes_config_declares_without_its_binary_stops_the_flow_before_any_change(
    monkeypatch, settings, missing
):
    """Regression (#26): a node whose config.toml already had a handler with no binary
    (kubespray's defaults with kata, on a node without Kata) was restarted by every run and rolled
    back by its verify step, run after run. The config's own handlers are checked like the data's."""
    node = drifted(
        converged(settings_for(KATA)),  # its config.toml has kata's table; the data no longer names it
        mtimes={},  # a change to make: the restart the storm came from
        ctr_server="1.7.0",
    )
    asked: list = []
    if missing:
        with pytest.raises(DeployError) as refused:
            prepare(monkeypatch, node, missing=("containerd-shim-kata-v2",), asked_binaries=asked)
        message = str(refused.value)
        assert message.startswith(
            "node1: /etc/containerd/config.toml declares the runtime handler 'kata', which needs containerd-shim-kata-v2"
        )
        assert (
            "nothing was changed" in message
            and "(runtimes.kata) out of /etc/containerd/config.toml" in message
        )
    else:
        prepared = prepare(monkeypatch, node, asked_binaries=asked)
        assert RESTART in service_op(prepared).text()
    assert asked == [("/usr/local/bin", ("containerd-shim-kata-v2",))]


def test_a_config_with_no_handler_of_its_own_asks_the_node_nothing_more(monkeypatch, settings):
    asked: list = []
    # A handler of the node's own, on a run that neither restarts nor verifies: left as it is.
    kata = converged(settings_for(KATA))
    assert (
        changed_names(prepare(monkeypatch, kata, missing=("containerd-shim-kata-v2",), asked_binaries=asked))
        == []
    )
    assert asked == []
    assert changed_names(prepare(monkeypatch, converged(settings), asked_binaries=asked)) == []
    # The data's own handlers were asked in the node fact already.
    prepare(monkeypatch, converged(settings_for(KATA)), KATA, asked_binaries=asked)
    assert asked == []


@pytest.mark.parametrize("same", [True, False])
def test_a_run_that_would_restart_into_what_the_last_rollback_undid_is_refused(monkeypatch, settings, same):
    """Regression (#26): a change that failed its verify step was rolled back, and the next run
    with the same data made it again: a restart and a rollback on every run, never converging."""
    from containerd_deploy.data import artifacts
    from containerd_deploy.plan.run import plan_run

    from .flow import no_fetch

    node = drifted(
        converged(settings),
        config_text=converged(settings).config_text.replace("SystemdCgroup = true", "SystemdCgroup = false"),
    )
    attempt = plan_run(settings, node, artifacts.resolve(settings, "amd64", published=no_fetch)).attempt
    node = drifted(node, rolled_back=f"{attempt if same else 'f' * 64} 2026-12-06T18:00:00Z")
    if not same:
        assert RESTART in service_op(prepare(monkeypatch, node)).text()
        return
    with pytest.raises(DeployError) as refused:
        prepare(monkeypatch, node)
    message = str(refused.value)
    assert message.startswith("node1: the last run made this same change (write /etc/containerd/config.toml;")
    assert "rolled it back at 2026-12-06T18:00:00Z" in message and "nothing was changed" in message
    assert "remove /var/lib/containerd-deploy/rolled-back to try the same change again" in message
    with pytest.raises(DeployError, match=r"rolled it back at an unknown time: "):
        prepare(monkeypatch, drifted(node, rolled_back=attempt))
    # Without a restart to make (the node as the rollback left it, data changed back) it is no
    # refusal; the run gets through, and the record goes with it.
    changed = changed_names(prepare(monkeypatch, drifted(converged(settings), rolled_back=f"{attempt} x")))
    assert changed == [LOCK, DROP], changed
    # With rollback turned off, nothing is rolled back, and nothing is refused for one.
    assert RESTART in service_op(prepare(monkeypatch, node, {"containerd_rollback": False})).text()


def test_the_attempt_names_what_a_restart_goes_into_and_nothing_else(settings):
    from containerd_deploy.data import artifacts
    from containerd_deploy.plan.run import plan_run

    from .flow import no_fetch

    wanted = artifacts.resolve(settings, "amd64", published=no_fetch)
    node = converged(settings)
    first = plan_run(settings, node, wanted).attempt
    # The node's state does not change it (the same data tried on a drifted node is the same attempt)...
    assert plan_run(settings, drifted(node, ctr_server="1.6.0", mtimes={}), wanted).attempt == first
    # ...what the run leaves does: a setting, a release file.
    other = settings_for({"containerd_max_container_log_line_size": 32768})
    assert plan_run(other, node, artifacts.resolve(other, "amd64", published=no_fetch)).attempt != first
    changed = {**wanted, "runc": dataclasses.replace(wanted["runc"], sha256="0" * 64)}
    assert plan_run(settings, node, changed).attempt != first


def lock_op(prepared):
    (found,) = [op for op in prepared if op.name == LOCK]
    return found


def test_a_run_that_changes_the_node_takes_the_lock_first_expecting_the_generation_it_saw(
    monkeypatch, settings
):
    prepared = prepare(monkeypatch, drifted(fresh(), lock=parse_lock_state("free 41")))
    assert changed_names(prepared)[0] == LOCK
    text = lock_op(prepared).text()
    assert 'if [ "$generation" != 41 ]; then' in text and "flock -w 10 9" in text
    assert f"controller {socket.gethostname()} pid {os.getpid()}" in text


def test_a_run_that_changes_nothing_leaves_the_lock_alone(monkeypatch, settings):
    for lock in ("free 3", "held"):
        prepared = prepare(monkeypatch, drifted(converged(settings), lock=parse_lock_state(lock)))
        assert [op.name for op in prepared if op.name == LOCK] == [], lock
    # A run that already holds it does not take it again, whatever it changes.
    assert LOCK not in changed_names(prepare(monkeypatch, drifted(fresh(), lock=parse_lock_state("held"))))


def test_another_run_holding_the_node_stops_the_flow(monkeypatch, settings):
    """The node fact waited for the lock; another run held it all that time."""
    node = drifted(converged(settings), lock=parse_lock_state("busy 7 controller ci pid 4242 since 12:00"))
    with pytest.raises(
        DeployError,
        match=r"another containerd-deploy run holds this node \(controller ci pid 4242 since 12:00\)",
    ):
        prepare(monkeypatch, node)


def test_removal_takes_the_lock_too(monkeypatch, settings):
    prepared = prepare(monkeypatch, converged(settings), {"containerd_state": "absent"})
    changed = changed_names(prepared)
    assert changed[0] == LOCK and len(changed) > 1, changed


def test_diff_shows_the_config_change_and_says_restart(monkeypatch, caplog, settings):
    node = converged(settings)
    node = drifted(
        node, config_text=node.config_text.replace("SystemdCgroup = true", "SystemdCgroup = false")
    )
    with caplog.at_level("INFO"):
        prepare(monkeypatch, node, diff=True)
    log = caplog.text
    assert "Will modify /etc/containerd/config.toml" in log
    assert "- " in log and "SystemdCgroup = false" in log and "SystemdCgroup = true" in log
    assert "Will restart containerd.service" in log


def test_diff_of_the_unit_reads_it_from_the_node_and_says_reload_and_restart(monkeypatch, caplog, settings):
    node = drifted(converged(settings), unit_sha256="0" * 64)
    with caplog.at_level("INFO"):
        prepare(
            monkeypatch,
            node,
            diff=True,
            files={settings.containerd_unit_path: "[Service]\nExecStart=/old/containerd\n"},
        )
    assert "Will modify /etc/systemd/system/containerd.service" in caplog.text
    assert "ExecStart=/old/containerd" in caplog.text and "ExecStart=/usr/local/bin/containerd" in caplog.text
    assert (
        "Will restart containerd.service (/etc/systemd/system/containerd.service changed) after a systemd daemon-reload"
        in caplog.text
    )


def test_diff_never_shows_credentials_and_says_no_restart_for_registries(monkeypatch, caplog, settings):
    secret = "Basic c3VwZXItc2VjcmV0"
    data = {
        "containerd_registries": {
            "docker.io": {"mirrors": [{"host": "https://m.internal", "headers": {"Authorization": secret}}]}
        },
        "containerd_config_extra": {"plugins": {"example": {"password": "hunter2", "token": "t0ken"}}},
    }
    with caplog.at_level("INFO"):
        prepare(monkeypatch, converged(settings), data, diff=True)
    log = caplog.text
    assert (
        "Will create /etc/containerd/certs.d/docker.io/hosts.toml (contents not shown: it holds credentials)"
        in log
    )
    assert secret not in log and "c3VwZXItc2VjcmV0" not in log
    assert "hunter2" not in log and "t0ken" not in log and 'password = "***"' in log
    assert "Will restart containerd.service" in log  # config_extra changed config.toml


def test_diff_says_no_restart_when_only_a_registry_changes(monkeypatch, caplog, settings):
    data = {"containerd_registries": {"docker.io": {"mirrors": [{"host": "https://m.internal"}]}}}
    with caplog.at_level("INFO"):
        prepare(monkeypatch, converged(settings), data, diff=True)
    assert "No restart: containerd.service keeps running" in caplog.text
    assert "Will create /etc/containerd/certs.d/docker.io/hosts.toml" in caplog.text
    assert 'host."https://m.internal"' in caplog.text


def test_the_node_is_asked_about_the_paths_the_data_names(monkeypatch):
    """One fact, asked once, with every path taken from the host's data (a drifted path would
    read one place and write another)."""

    data = {
        "containerd_bin_dir": "/opt/containerd/bin",
        "containerd_config_path": "/etc/ctd/config.toml",
        "containerd_unit_path": "/etc/systemd/system/ctd.service",
        "containerd_deploy_state_dir": "/var/lib/ctd-deploy",
        "containerd_staging_dir": "/var/tmp/ctd-staging",
        "runc_path": "/opt/runc/runc",
        "cni_bin_dir": "/opt/cni/bin",
        "containerd_registry_config_path": "/etc/ctd/certs.d",
        "containerd_config_base": "default",
        "containerd_registries": {"docker.io": {"mirrors": [{"host": "https://mirror.internal"}]}},
    }
    settings = settings_for(data)
    asked: dict = {}
    prepare(monkeypatch, converged(settings), data, asked=asked)
    assert asked == {
        "bin_dir": "/opt/containerd/bin",
        "config_path": "/etc/ctd/config.toml",
        "images": False,
        "unit_path": "/etc/systemd/system/ctd.service",
        "state_dir": "/var/lib/ctd-deploy",
        "files": (
            "/etc/systemd/system/ctd.service.d/http-proxy.conf",
            "/etc/crictl.yaml",
            "/etc/ctd/certs.d/docker.io/hosts.toml",
        ),
        "certs_dir": "/etc/ctd/certs.d",
        "marker": asked["marker"],
        "always_defaults": True,
        "loaded": (
            "/etc/ctd/config.toml",
            "/etc/systemd/system/ctd.service",
            "/etc/systemd/system/ctd.service.d/http-proxy.conf",
        ),
        "staging_dir": "/var/tmp/ctd-staging",
        "install_dirs": ("/opt/runc", "/opt/cni/bin"),
        "anchor_pid": 0,  # over SSH the lock is tied to the connection, not to this process
        "handler_binaries": (),  # no extra runtime handlers in the data
        "trusted_dirs": (
            "/var/lib/ctd-deploy",
            "/var/tmp/ctd-staging",
            "/opt/containerd/bin",
            "/opt/runc",
            "/opt/cni/bin",
            "/etc/ctd",
            "/etc/systemd/system/ctd.service.d",
            "/etc/ctd/certs.d",
            "/etc/ctd/certs.d/docker.io",
            "/etc",
            "/run/containerd-deploy",
        ),
        "known_pid": 0,  # no full check of its daemon recorded on this controller
        "known_files": (),  # nothing read of its files before on this controller
        "known_boot": "",
    }
    from containerd_deploy.data.registries import MARKER

    assert asked["marker"] == MARKER
    prepare(monkeypatch, converged(settings_for()), asked=asked)
    assert asked["always_defaults"] is False, "the default base is the existing config"


def test_a_run_on_the_node_itself_ties_the_lock_to_its_own_process(monkeypatch):
    import os

    import containerd_deploy.deploy.node

    settings = settings_for()
    monkeypatch.setattr(containerd_deploy.deploy.node, "runs_on_the_node", lambda: True)
    asked: dict = {}
    prepare(monkeypatch, converged(settings), asked=asked)
    assert asked["anchor_pid"] == os.getpid()


def test_the_lock_is_held_for_the_connection_or_with_local_for_this_process(monkeypatch):
    import containerd_deploy.deploy.node

    over_ssh = lock_op(prepare(monkeypatch, fresh())).text()
    assert "/proc/$session/comm" in over_ssh and f"session={os.getpid()}" not in over_ssh
    monkeypatch.setattr(containerd_deploy.deploy.node, "runs_on_the_node", lambda: True)
    local = lock_op(prepare(monkeypatch, fresh())).text()
    assert f"session={os.getpid()}" in local and "/proc/$session/comm" not in local


def test_removal_drops_a_kept_release_so_the_state_directory_goes_too(monkeypatch, settings):
    """Regression (#25): with a release kept to roll back to, `absent` left
    <state_dir>/previous-release, and so the state directory, behind."""
    from containerd_deploy.remote.rollback import drop_kept_script

    state_dir = settings.containerd_deploy_state_dir
    prepared = prepare(
        monkeypatch, drifted(converged(settings), kept_release="1.7.24"), {"containerd_state": "absent"}
    )
    texts = [op.full_text() for op in prepared if op.changes]
    dropped = texts.index(drop_kept_script(state_dir).strip())
    removed = next(i for i, text in enumerate(texts) if "rmdir" in text and state_dir in text)
    assert dropped < removed, "the kept release goes before the state directory is removed"
    # Only a kept release left (an earlier removal stopped after the manifests went).
    for left in ({"kept_release": "1.7.24"}, {"rolled_back": f"{'a' * 64} 2026-12-06T18:00:00Z"}):
        prepared = prepare(monkeypatch, drifted(fresh(), **left), {"containerd_state": "absent"})
        texts = [op.full_text() for op in prepared if op.changes]
        assert drop_kept_script(state_dir).strip() in texts, left
        assert any("rmdir" in text and state_dir in text for text in texts), left


def test_the_directories_root_keeps_files_in_are_named_by_the_data_key_that_sets_each():
    from containerd_deploy.deploy.node import trusted_directories

    settings = settings_for(
        {"containerd_registries": {"docker.io": {"mirrors": [{"host": "https://mirror.internal"}]}}}
    )
    assert trusted_directories(settings) == {
        "/var/lib/containerd-deploy": "containerd_deploy_state_dir",
        "/var/cache/containerd-deploy": "containerd_staging_dir",
        "/usr/local/bin": "containerd_bin_dir",
        "/usr/local/sbin": "runc_path",
        "/opt/cni/bin": "cni_bin_dir",
        "/etc/containerd": "containerd_config_path",
        "/etc/systemd/system/containerd.service.d": "containerd_unit_path",
        "/etc/containerd/certs.d": "containerd_registry_config_path",
        "/etc/containerd/certs.d/docker.io": "containerd_registries",
        "/etc": "",
        "/run/containerd-deploy": "",
    }


@pytest.mark.parametrize(
    "untrusted, fix",
    [
        (("/run/containerd-deploy", "is not a directory"), "Fix: move the file away\n"),
        (
            ("/run/containerd-deploy", "is writable by group or others"),
            "Fix: make it root's alone (chown root:root /run/containerd-deploy; chmod go-w /run/containerd-deploy) once you know nothing in it came from another user\n",
        ),
        (("/run", "is writable by group or others"), "Fix: make /run writable by root alone\n"),
        (("/run", "is a symbolic link"), "Fix: replace the link with a directory\n"),
        (
            ("/var/lib/containerd-deploy", "is not a directory"),
            "Fix: move the file away, or set containerd_deploy_state_dir to another path\n",
        ),
    ],
)
def test_what_a_place_the_data_does_not_name_is_told_to_do(settings, untrusted, fix):
    from containerd_deploy.deploy.node import untrusted_problem

    problem = untrusted_problem(settings, drifted(converged(settings), untrusted_directories=[untrusted]))
    assert (problem + "\n").endswith(fix), problem


@pytest.mark.parametrize("dry_run", [True, False], ids=["without -y", "with -y"])
def test_diff_is_shown_once_with_or_without_y(monkeypatch, caplog, settings, dry_run):
    """With -y pyinfra asks no operation what it would change: the deploy shows the plan's diff
    and restart itself, once, whether pyinfra asks the operations or not."""
    node = drifted(converged(settings), unit_sha256="0" * 64)
    with caplog.at_level("INFO"):
        prepare(
            monkeypatch,
            node,
            {"containerd_max_container_log_line_size": 32768},
            diff=True,
            dry_run=dry_run,
            files={settings.containerd_unit_path: "[Service]\nExecStart=/old/containerd\n"},
        )
    log = caplog.text
    assert log.count("Will modify /etc/containerd/config.toml") == 1
    assert log.count("Will modify /etc/systemd/system/containerd.service") == 1
    assert log.count("Will restart containerd.service (") == 1
    assert log.count("containerd-deploy plan: ") == 1


def test_diff_names_removals_never_reads_a_credentials_file_and_says_no_restart_for_a_removal(
    monkeypatch, caplog, settings
):
    """What --diff shows at prepare time (deploy/show.py) beyond a file's diff."""
    hosts = "/etc/containerd/certs.d/docker.io/hosts.toml"
    secret = {
        "docker.io": {"mirrors": [{"host": "https://m.internal", "headers": {"Authorization": "Basic czM="}}]}
    }
    node = drifted(converged(settings), managed_hosts=[hosts], files={hosts: "0" * 64})
    with caplog.at_level("INFO"):
        # a 600 file that exists is never read to show it: no FileContents answer is given
        prepare(monkeypatch, node, {"containerd_registries": secret}, diff=True, files={})
    assert f"Will modify {hosts} (contents not shown: it holds credentials)" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        prepare(monkeypatch, node, diff=True)
    assert f"Will remove {hosts}" in caplog.text
    assert "No restart: containerd.service keeps running" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        prepare(monkeypatch, converged(settings), {"containerd_state": "absent"}, diff=True)
    assert "Will remove /etc/containerd/config.toml" in caplog.text
    assert "restart" not in caplog.text.lower().replace("containerd-deploy plan", "")
    caplog.clear()
    with caplog.at_level("INFO"):
        prepare(monkeypatch, fresh(), diff=True)
    assert (
        "Will write /etc/containerd/config.toml from the defaults of the containerd this run installs"
        in caplog.text
    )
    assert "Will start containerd.service after a systemd daemon-reload" in caplog.text


def test_the_node_fact_is_told_the_daemon_last_checked_in_full_only_when_verify_may_judge_from_it(settings):
    from containerd_deploy.controller import verified
    from containerd_deploy.deploy.node import last_checked_pid

    assert last_checked_pid(settings) == 0, "no record: its ctr is asked"
    record = verified.VerifiedDaemon((582, 1000.5, "/usr/local/bin/containerd"), "digest", 1.0, (), True)
    assert verified.write(settings.host, record)
    assert last_checked_pid(settings) == 582
    for changes in ({"containerd_verify": False}, {"containerd_verify_interval": 0}):
        assert last_checked_pid(dataclasses.replace(settings, **changes)) == 0, changes
    for pid in (0, -1, True, "582", None):
        verified.write(settings.host, dataclasses.replace(record, identity=(pid, 1000.5, "x")))
        assert last_checked_pid(settings) == 0, pid


def test_the_verify_step_gets_what_the_run_decided(monkeypatch):
    """The config this run leaves, the release kept to put back, the daemon as the run's first
    look saw it, and whether to run a container (the run changes the node)."""
    import containerd_deploy.deploy.node as flow
    from containerd_deploy.facts.daemon import seen_at_start

    calls = []
    monkeypatch.setattr(flow, "verify_containerd", lambda *args, **kwargs: calls.append((args, kwargs)))
    data = {"containerd_verify": True, "containerd_max_container_log_line_size": 32768}
    settings = settings_for(data)
    node = converged(settings_for())
    prepare(monkeypatch, node, data)
    ((given_settings, config_text), kwargs), *more = calls
    assert more == []
    assert given_settings.host == "node1" and given_settings.containerd_verify
    assert "max_container_log_line_size = 32768" in config_text
    assert kwargs == {
        "run_container": True,
        "rollback": settings.containerd_deploy_state_dir,
        "seen": seen_at_start(node, looked_for=flow.asked_binaries(settings)),
    }

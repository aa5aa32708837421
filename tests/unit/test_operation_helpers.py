"""The small decisions inside operations and the deploy, each on its own: whether a run is
escalated (and how uploads go then), what --diff logs, when a proxy drop-in is secret, how unit
file words are quoted, and whether an earlier operation changed something."""

import logging
import os
import re
import stat
import subprocess

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.context import ctx_host, ctx_state

from containerd_deploy.operations import ESCALATIONS, _escalated
from containerd_deploy.operations.files import (
    private_uploads,
    redacted_lines,
    show_diff,
    upload_directory,
    uploads_done,
)
from containerd_deploy.plan.files import proxy_dropin_mode, registry_files, systemd_word, unit_text
from containerd_deploy.remote.paths import UPLOAD_DIR_PREFIX

from .flow import settings_for
from .rootless import ROOT


def in_a_run(diff: bool = False, executing: bool = False, arguments: dict | None = None):
    """pyinfra's context for one host, as while an operation is prepared (or executed)."""
    inventory = Inventory((["node1"], {}))
    state = State(inventory, Config(DIFF=diff))
    one = inventory.get_host("node1")
    state.activate_host(one)
    state.is_executing = executing
    one.current_op_global_arguments = arguments or {}
    return ctx_state.use(state), ctx_host.use(one)


@pytest.mark.parametrize(
    "arguments, escalated",
    [
        ({}, False),
        ({"_sudo": True}, True),
        ({"_doas": True}, True),
        ({"_su_user": "root"}, True),
        ({"_sudo": False, "_doas": False, "_su_user": ""}, False),
    ],
)
def test_a_run_is_escalated_by_sudo_doas_or_su(arguments, escalated):
    state_context, host_context = in_a_run(arguments=arguments)
    with state_context, host_context:
        assert _escalated() is escalated


def test_uploads_as_root_go_straight_to_their_paths():
    state_context, host_context = in_a_run()
    with state_context, host_context:
        (upload,) = list(private_uploads([("local.txt", "/etc/secret")], "/tmp/unused"))
    assert isinstance(upload, FileUploadCommand)
    assert (upload.src, upload.dest, upload.remote_temp_filename) == ("local.txt", "/etc/secret", None)


def test_uploads_through_sudo_go_via_a_private_directory_the_login_user_makes(tmp_path):
    """Regression (#26): the node fact listed /tmp/containerd-deploy-upload.* one name a line,
    and root removed each listed name: a name holding a newline made root delete a path of the
    planter's choosing. Now the login user makes its directory (0700) and removes its own that
    runs cut short left, with no listing read back; root never acts in /tmp."""
    state_context, host_context = in_a_run(arguments={"_sudo": True})
    with state_context, host_context:
        mkdir, first, second = private_uploads([("a", "/etc/a"), ("b", "/etc/b")], "/tmp/up")
        (done,) = uploads_done("/tmp/up")
    # As the login user, not root: sudo/doas/su all off for these commands.
    for command in (mkdir, done):
        assert isinstance(command, StringCommand)
        assert (
            command.connector_arguments
            == ESCALATIONS
            == {"_sudo": False, "_doas": False, "_dzdo": False, "_su_user": ""}
        )
    assert [(c.dest, c.remote_temp_filename) for c in (first, second)] == [
        ("/etc/a", "/tmp/up/0"),
        ("/etc/b", "/tmp/up/1"),
    ]
    shared = tmp_path / "tmp"
    shared.mkdir()
    stale = shared / "containerd-deploy-upload.old\n.ssh"
    stale.mkdir()
    (stale / "0").write_text("secret")
    (tmp_path / ".ssh").mkdir()
    others = shared / "containerd-deploy-upload.someone-elses"
    others.mkdir()
    if ROOT:
        os.chown(others, 65534, 65534)
    run = [
        mkdir.get_raw_value().replace("/tmp", str(shared)),
        done.get_raw_value().replace("/tmp", str(shared)),
    ]
    assert subprocess.run(["sh", "-c", run[0]], cwd=tmp_path).returncode == 0
    assert stat.S_IMODE((shared / "up").stat().st_mode) == 0o700
    assert not stale.exists() and (tmp_path / ".ssh").is_dir()
    assert others.exists() == ROOT  # another user's name is never touched (without root, all are ours)
    assert subprocess.run(["sh", "-c", run[1]], cwd=tmp_path).returncode == 0
    assert not (shared / "up").exists()


def test_upload_directories_are_unguessable():
    names = {upload_directory() for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert re.fullmatch(re.escape(UPLOAD_DIR_PREFIX) + "[0-9a-f]{24}", name), name


def test_redacted_lines_hide_credential_values_and_keep_the_rest():
    text = 'username = "me"\npassword = "hunter2"\n  auth = "dXNlcjpwYXNz"\nplain = 1'
    assert redacted_lines(text) == [
        'username = "me"\n',
        'password = "***"\n',
        '  auth = "***"\n',
        "plain = 1\n",
    ]


@pytest.mark.parametrize("diff, executing", [(False, False), (True, True), (False, True)])
def test_diff_logs_nothing_unless_asked_and_while_changes_are_detected(caplog, diff, executing):
    state_context, host_context = in_a_run(diff=diff, executing=executing)
    with caplog.at_level(logging.INFO), state_context, host_context:
        show_diff("/etc/containerd/config.toml", "a = 1\n", "a = 2\n", secret=False)
    assert caplog.messages == []


def test_diff_logs_the_change_line_by_line_indented_then_a_blank_line(caplog):
    state_context, host_context = in_a_run(diff=True)
    with caplog.at_level(logging.INFO), state_context, host_context:
        show_diff("/etc/c.toml", 'a = 1\npassword = "old"\n', 'a = 2\npassword = "new"\n', secret=False)
        show_diff("/etc/new.toml", None, "b = 1\n", secret=False)
    messages = [re.sub(r"\x1b\[[0-9;]*m", "", message) for message in caplog.messages]
    assert messages[0].endswith("Will modify /etc/c.toml")
    body = messages[1 : messages.index("")]
    assert body and all(line.startswith("  ") for line in body), body
    assert any("- a = 1" in line for line in body) and any("+ a = 2" in line for line in body), body
    assert not any("old" in line or "new" in line for line in body), "credential values never shown"
    created = messages.index("") + 1
    assert messages[created].endswith("Will create /etc/new.toml")
    assert [line.strip() for line in messages[created + 1 :] if line] == ["@@ -0,0 +1 @@", "+ b = 1"], (
        messages
    )


def test_diff_of_a_secret_file_names_it_only(caplog):
    state_context, host_context = in_a_run(diff=True)
    with caplog.at_level(logging.INFO), state_context, host_context:
        show_diff("/etc/containerd/certs.d/r/hosts.toml", None, 'token = "s3cret"\n', secret=True)
    assert len(caplog.messages) == 1
    assert caplog.messages[0].endswith(
        "Will create /etc/containerd/certs.d/r/hosts.toml (contents not shown: it holds credentials)"
    )


@pytest.mark.parametrize(
    "data, mode",
    [
        ({}, "644"),
        ({"containerd_http_proxy": "http://proxy:3128"}, "644"),
        ({"containerd_http_proxy": "http://user:pw@proxy:3128"}, "600"),
        ({"containerd_https_proxy": "http://user:pw@proxy:3128"}, "600"),
        (
            {"containerd_http_proxy": "http://proxy:3128", "containerd_https_proxy": "http://u:p@proxy:3128"},
            "600",
        ),
    ],
)
def test_a_proxy_drop_in_with_credentials_in_either_url_is_root_only(data, mode):
    assert proxy_dropin_mode(settings_for(data)) == mode


def test_systemd_words_escape_specifiers_and_quotes():
    assert systemd_word('a "b" \\ 50% $HOME') == '"a \\"b\\" \\\\ 50%% $HOME"'


def test_the_unit_quotes_exec_start_only_when_the_path_needs_it():
    assert "ExecStart=/Opt/Containerd-1.7/bin_x+y/containerd\n" in unit_text("/Opt/Containerd-1.7/bin_x+y")
    # systemd never expands the program path: a `$` doubled there names another file (#26).
    assert 'ExecStart="/opt/my bin/$x/containerd"\n' in unit_text("/opt/my bin/$x")


def test_registry_files_name_each_registrys_own_server():
    settings = settings_for(
        {
            "containerd_registries": {
                "docker.io": {"mirrors": [{"host": "https://mirror.internal"}]},
                "quay.io": {"mirrors": [{"host": "https://mirror.internal"}]},
            }
        }
    )
    files = registry_files(settings)
    assert sorted(files) == [
        "/etc/containerd/certs.d/docker.io/hosts.toml",
        "/etc/containerd/certs.d/quay.io/hosts.toml",
    ]
    assert (
        'server = "https://registry-1.docker.io"\n'
        in files["/etc/containerd/certs.d/docker.io/hosts.toml"][0]
    )
    assert 'server = "https://quay.io"\n' in files["/etc/containerd/certs.d/quay.io/hosts.toml"][0]


class Op:
    def __init__(self, complete: bool, did: bool = False, will: bool = False):
        self.complete, self.did, self.will_change = complete, did, will

    def is_complete(self) -> bool:
        return self.complete

    def did_change(self) -> bool:
        return self.did


def test_the_controller_cache_step_caches_every_file_or_stops_the_host_saying_why(tmp_path, caplog):
    import hashlib

    from pyinfra import context

    from containerd_deploy.data.artifacts import Artifact
    from containerd_deploy.operations.release import _fetch_into_cache

    good_file, other_file = tmp_path / "runc.amd64", tmp_path / "crictl.tar.gz"
    good_file.write_bytes(b"runc")
    other_file.write_bytes(b"crictl")

    def artifact(component: str, path, digest: str) -> Artifact:
        return Artifact(component, "1.0.0", "amd64", f"file://{path}", digest)

    good = artifact("runc", good_file, hashlib.sha256(b"runc").hexdigest())
    other = artifact("crictl", other_file, hashlib.sha256(b"crictl").hexdigest())
    cache = tmp_path / "cache"
    state_context, host_context = in_a_run()
    with state_context, host_context:
        one = context.host
        assert _fetch_into_cache(one.state, one, str(cache), [good, other]) is True
        assert sorted(p.name for p in cache.iterdir()) == sorted(
            f"{a.sha256}-{a.filename}" for a in (good, other)
        )
        tampered = artifact("runc", good_file, "0" * 64)
        with caplog.at_level(logging.ERROR):
            assert _fetch_into_cache(one.state, one, str(cache), [tampered, other]) is False
    (message,) = caplog.messages
    assert f"containerd-deploy: node1: checksum mismatch for {tampered.url}" in message, message

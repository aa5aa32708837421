"""The operations, as pyinfra tests its own: the node state they are given in, the commands they
yield out; commands with data paths are run against recording fakes, so the test sees exactly
the argv each program got (a path with `;` or a space must stay one argument)."""

import hashlib
import stat
import subprocess
from io import StringIO
from pathlib import Path

import pytest
from pyinfra import logger
from pyinfra.api import FileUploadCommand
from pyinfra.facts.files import Directory, File, Sha256File

from containerd_deploy.data.artifacts import Artifact
from containerd_deploy.facts.node import DistroPackage, ReleaseManifests, UnitState
from containerd_deploy.operations.files import directory_absent, file_absent, file_content, leftovers_absent
from containerd_deploy.operations.release import (
    distro_packages_absent,
    kept_release_dropped,
    release_artifact,
    release_artifact_absent,
    release_files_fetched,
    release_kept,
)
from containerd_deploy.operations.service import containerd_service, restart_hook, service_absent
from containerd_deploy.remote.manifest import Manifest

from .operations import Facts, commands, run_commands, shell_text, uploads
from .rootless import owner

HOSTILE = "/srv/a b;touch pwned/`id`$(id)'\"-x %H"


def test_file_absent_passes_any_path_as_one_argument(tmp_path):
    yielded = commands(file_absent, path=HOSTILE, present=True, remove_empty_parent=True)
    calls = run_commands(tmp_path, [shell_text(c) for c in yielded], ("rm", "rmdir", "touch", "id"))
    assert calls == [
        ["rm", "-f", "--", HOSTILE],
        ["rmdir", "--ignore-fail-on-non-empty", "--", HOSTILE.rsplit("/", 1)[0]],
    ]


def test_file_absent_is_a_noop_for_an_absent_file():
    assert commands(file_absent, path="/etc/crictl.yaml", present=False) == []


def test_directory_absent_passes_any_path_as_one_argument(tmp_path):
    yielded = commands(directory_absent, path=HOSTILE, present=True, only_if_empty=True)
    assert run_commands(tmp_path, [shell_text(c) for c in yielded], ("rmdir", "touch", "id")) == [
        ["rmdir", "--ignore-fail-on-non-empty", "--", HOSTILE]
    ]


def test_service_absent_passes_the_unit_as_one_argument(tmp_path):
    yielded = commands(service_absent, unit="my containerd;x.service", present=True)
    calls = run_commands(tmp_path, [shell_text(c) for c in yielded], ("systemctl", "x.service"))
    assert [call[-1] for call in calls] == ["my containerd;x.service"] * 3


def test_leftovers_are_removed_each_as_one_argument(tmp_path):
    paths = [HOSTILE + "/.hosts.toml.containerd-deploy-new", "/usr/local/bin/.containerd-deploy-new.123"]
    yielded = commands(leftovers_absent, paths=paths)
    assert run_commands(tmp_path, [shell_text(c) for c in yielded], ("rm", "touch", "id")) == [
        ["rm", "-rf", "--", path] for path in paths
    ]
    assert commands(leftovers_absent, paths=[]) == []


def test_a_file_with_the_wanted_content_is_left_alone():
    text = "version = 2\n"
    assert (
        commands(
            file_content,
            path="/etc/containerd/config.toml",
            content=text,
            current_sha256=hashlib.sha256(text.encode()).hexdigest(),
        )
        == []
    )


def test_a_public_file_is_written_in_one_command(tmp_path):
    path = tmp_path / "etc" / "config.toml"
    (command,) = commands(file_content, path=str(path), content="version = 2\n", current_sha256=None)
    assert subprocess.run(["sh", "-c", shell_text(command)], capture_output=True).returncode == 0
    assert path.read_text() == "version = 2\n" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert owner(path) == (0, 0) and [p.name for p in path.parent.iterdir()] == ["config.toml"]


def test_a_private_file_logged_in_as_root_is_uploaded_into_a_root_only_file(tmp_path):
    yielded = commands(
        file_content,
        path="/etc/containerd/certs.d/docker.io/hosts.toml",
        content="secret",
        current_sha256=None,
        mode="600",
    )
    assert "install -m 600 -o 0 -g 0 /dev/null" in yielded[0]
    (upload,) = uploads(yielded)
    assert upload.dest == "/etc/containerd/certs.d/docker.io/.hosts.toml.containerd-deploy-new"
    assert upload.remote_temp_filename is None
    assert all(
        "secret" not in shell_text(command) for command in yielded if not isinstance(command, type(upload))
    )
    # Run as pyinfra would after the upload: the private copy goes into place, 0600, root's.
    directory = tmp_path / "certs.d" / "docker.io"
    directory.mkdir(parents=True)
    placed = commands(
        file_content, path=str(directory / "hosts.toml"), content="s", current_sha256=None, mode="600"
    )
    (upload,) = uploads(placed)
    Path(upload.dest).write_text("secret")
    assert subprocess.run(["sh", "-c", shell_text(placed[-1])], capture_output=True).returncode == 0
    hosts = directory / "hosts.toml"
    assert hosts.read_text() == "secret" and stat.S_IMODE(hosts.stat().st_mode) == 0o600
    assert owner(hosts) == (0, 0) and [p.name for p in directory.iterdir()] == ["hosts.toml"]


def test_a_private_file_through_sudo_goes_via_a_directory_of_the_login_users_own():
    """Regression: through sudo, SFTP writes as the login user: the upload went straight into
    root's directory (PermissionError) and left the hidden copy behind."""
    yielded = commands(
        file_content,
        {"_sudo": True},
        path="/etc/containerd/certs.d/docker.io/hosts.toml",
        content="secret",
        current_sha256=None,
        mode="600",
    )
    # As the login user: make the directory first, remove it last; root never acts in /tmp.
    made = [c for c in yielded if getattr(c, "connector_arguments", {}).get("_sudo") is False]
    assert len(made) == 2 and made[-1] is yielded[-1]
    via = shell_text(made[0]).split()[-1]
    assert via.startswith("/tmp/containerd-deploy-upload.") and shell_text(made[-1]) == f"rm -rf -- {via}"
    assert all(
        "/tmp" not in shell_text(c) for c in yielded if c not in made and not isinstance(c, FileUploadCommand)
    )
    (upload,) = uploads(yielded)
    assert upload.remote_temp_filename.startswith(via + "/"), (
        "the login user's copy stays in its 0700 directory"
    )
    assert upload.dest.endswith("/.hosts.toml.containerd-deploy-new"), (
        "root copies it into the root-only file"
    )
    # Every run its own unguessable directory: no other user can prepare it.
    again = commands(
        file_content, {"_sudo": True}, path="/x/hosts.toml", content="s", current_sha256=None, mode="600"
    )
    assert via not in " ".join(shell_text(c) for c in again)


def test_release_files_from_the_controller_through_sudo_reach_the_root_only_staging_directory(tmp_path):
    artifact = Artifact("runc", "1.1.11", "amd64", "https://mirror/runc.amd64", "a" * 64)
    yielded = commands(
        release_files_fetched,
        {"_sudo": True},
        artifacts=[artifact],
        staging_dir="/var/cache/containerd-deploy",
        cache_dir=str(tmp_path),
    )
    texts = [shell_text(c) for c in yielded]
    assert any('chmod 700 -- "$staging"' in text for text in texts), (
        "staging is locked down before the upload"
    )
    (upload,) = uploads(yielded)
    assert upload.dest == "/var/cache/containerd-deploy/.fetched-runc"
    via = upload.remote_temp_filename.rsplit("/", 1)[0]
    assert via.startswith("/tmp/containerd-deploy-upload.") and texts[-1] == f"rm -rf -- {via}"
    root = commands(
        release_files_fetched,
        artifacts=[artifact],
        staging_dir="/var/cache/containerd-deploy",
        cache_dir=str(tmp_path),
    )
    assert uploads(root)[0].remote_temp_filename is None and not any(
        "rm -rf --" in shell_text(c) for c in root
    )


def test_node_side_fetch_is_one_command_and_nothing_to_fetch_is_a_noop():
    artifact = Artifact("runc", "1.1.11", "amd64", "https://mirror/runc.amd64", "a" * 64)
    (script,) = commands(
        release_files_fetched, artifacts=[artifact], staging_dir="/var/cache/containerd-deploy"
    )
    assert "get https://mirror/runc.amd64" in script
    assert commands(release_files_fetched, artifacts=[], staging_dir="/var/cache/containerd-deploy") == []


SERVICE = dict(unit="containerd.service", ctr="/usr/local/bin/ctr", version="1.7.24", timeout=60)


@pytest.mark.parametrize(
    "state, action",
    [
        (dict(active=True, enabled=True), None),
        (dict(active=True, enabled=True, restart=True), "restart"),
        (dict(active=True, enabled=True, restart=False), None),
        (dict(active=False, enabled=True), "start"),
        (
            dict(active=False, enabled=True, restart=True),
            "restart",
        ),  # a stopped daemon with new files: one restart
        (dict(active=False, enabled=False), "start"),
        (dict(active=True, enabled=True, reload=True), ""),
    ],
)
def test_containerd_is_restarted_only_when_told(state, action):
    yielded = commands(containerd_service, **SERVICE, **state)
    if action is None:
        assert yielded == []
        return
    (script,) = yielded
    assert script.count('systemctl restart "$unit"') == (action == "restart")
    assert script.count('systemctl start "$unit"') == (action == "start")
    assert script.count("systemctl daemon-reload") == (
        1 if state.get("reload") or not state["enabled"] else 0
    )


def test_private_upload_sources_are_never_in_a_command_line():
    yielded = commands(
        file_content,
        {"_sudo": True},
        path="/etc/systemd/system/containerd.service.d/http-proxy.conf",
        content='Environment="HTTPS_PROXY=http://u:hunter2@proxy:3128"',
        current_sha256=None,
        mode="600",
    )
    assert isinstance(uploads(yielded)[0].src, StringIO)
    assert not any("hunter2" in shell_text(c) for c in yielded if not hasattr(c, "src"))


def test_with_diff_the_file_is_read_to_show_it_only_while_changes_are_detected(monkeypatch):
    """The diff's extra read of the node's file happens once, before the run: never again as the
    operation executes (that would be a round trip per file for nothing)."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.context import ctx_host, ctx_state

    from containerd_deploy.operations.files import file_content

    inventory = Inventory((["node1"], {}))
    state = State(inventory, Config(DIFF=True))
    host = inventory.get_host("node1")
    reads = []
    monkeypatch.setattr(host, "get_fact", lambda fact, **kwargs: reads.append(kwargs["path"]) or ["old"])
    with ctx_state.use(state), ctx_host.use(host):
        for executing in (False, True):
            state.is_executing = executing
            yielded = list(file_content._inner(path="/etc/x.conf", content="new\n", current_sha256="0" * 64))
            assert yielded, "a changed file is written either way"
    assert reads == ["/etc/x.conf"]


# Called on their own (an operator's deploy gives no node state): each operation asks the node
# for the state it needs, with one fact, and decides from the answer exactly as when given it.

RUNC = Artifact("runc", "1.1.11", "amd64", "https://mirror.internal/runc.amd64", "a" * 64)


def intact_manifest(artifact: Artifact, path: str) -> Manifest:
    identity = "1700000000:1:755:0:0"
    return Manifest(
        fields={"component": artifact.component, "version": artifact.version, "sha256": artifact.sha256},
        files={path: identity},
        actual={path: identity},
    )


@pytest.mark.parametrize(
    "manifests, installs",
    [
        ({}, True),
        ({"runc": intact_manifest(RUNC, "/usr/local/sbin/runc")}, False),
        ({"runc": intact_manifest(RUNC, "/opt/elsewhere/runc")}, True),
    ],
)
def test_a_release_artifact_on_its_own_reads_the_manifests_from_its_state_dir(manifests, installs):
    facts = Facts({ReleaseManifests: lambda state_dir: manifests})
    yielded = commands(
        release_artifact,
        facts=facts,
        artifact=RUNC,
        dest="/usr/local/sbin/runc",
        staging_dir="/var/cache/containerd-deploy",
        state_dir="/var/lib/containerd-deploy",
    )
    assert facts.asked == [("ReleaseManifests", {"state_dir": "/var/lib/containerd-deploy"})]
    assert bool(yielded) is installs
    # Given the manifest, it asks nothing.
    given = commands(
        release_artifact,
        artifact=RUNC,
        dest="/usr/local/sbin/runc",
        staging_dir="/var/cache/containerd-deploy",
        state_dir="/var/lib/containerd-deploy",
        installed=manifests.get("runc"),
    )
    assert bool(given) is installs


def test_a_release_artifact_absent_on_its_own_removes_only_what_a_manifest_records():
    for manifests, removes in (({}, False), ({"crictl": Manifest()}, True)):
        facts = Facts({ReleaseManifests: lambda state_dir, found=manifests: found})
        yielded = commands(release_artifact_absent, facts=facts, component="crictl", state_dir="/var/lib/cd")
        assert facts.asked == [("ReleaseManifests", {"state_dir": "/var/lib/cd"})]
        assert bool(yielded) is removes


@pytest.mark.parametrize("on_node, writes", [(None, True), ("b" * 64, True), ("wanted", False)])
def test_file_content_on_its_own_reads_the_files_sha256(on_node, writes):
    wanted = "version = 2\n"
    digest = hashlib.sha256(wanted.encode()).hexdigest() if on_node == "wanted" else on_node
    facts = Facts({Sha256File: lambda path: digest})
    yielded = commands(file_content, facts=facts, path="/etc/containerd/config.toml", content=wanted)
    assert facts.asked == [("Sha256File", {"path": "/etc/containerd/config.toml"})]
    assert bool(yielded) is writes


@pytest.mark.parametrize(
    "op, fact, answer, removes",
    [
        (file_absent, File, {"mode": 644}, True),
        (file_absent, File, None, False),
        (file_absent, File, False, False),  # something else than a file: not this operation's
        (directory_absent, Directory, {"mode": 755}, True),
        (directory_absent, Directory, None, False),
    ],
)
def test_absent_operations_on_their_own_ask_whether_the_path_is_there(op, fact, answer, removes):
    facts = Facts({fact: lambda path: answer})
    yielded = commands(op, facts=facts, path="/etc/containerd/x")
    assert facts.asked == [(fact.__name__, {"path": "/etc/containerd/x"})]
    assert bool(yielded) is removes


@pytest.mark.parametrize(
    "running, enabled, action",
    [
        (True, True, None),
        (False, True, "start"),
        (False, False, "start"),
        (True, False, ""),
        (None, None, "start"),  # a unit systemd does not know (the fact's default)
    ],
)
def test_containerd_service_on_its_own_asks_systemd_for_the_units_state(running, enabled, action):
    facts = Facts({UnitState: lambda unit: (bool(running), bool(enabled))})
    arguments = {key: value for key, value in SERVICE.items() if key not in ("active", "enabled")}
    yielded = commands(containerd_service, facts=facts, **arguments)
    assert facts.asked == [("UnitState", {"unit": "containerd.service"})]
    if action is None:
        assert yielded == []
        return
    (script,) = yielded
    assert script.count('systemctl start "$unit"') == (action == "start")
    assert script.count("systemctl enable") == (not enabled)


@pytest.mark.parametrize(
    "running, enabled, stops", [(False, False, False), (True, False, True), (False, True, True)]
)
def test_service_absent_on_its_own_stops_a_unit_that_runs_or_is_enabled(running, enabled, stops):
    facts = Facts({UnitState: lambda unit: (running, enabled)})
    yielded = commands(service_absent, facts=facts, unit="containerd.service")
    assert bool(yielded) is stops


def test_a_release_artifact_not_fetched_earlier_downloads_and_verifies_it_itself():
    arguments = dict(
        artifact=RUNC,
        dest="/usr/local/sbin/runc",
        staging_dir="/var/cache/containerd-deploy",
        state_dir="/var/lib/containerd-deploy",
        installed=None,
    )
    (fetched,) = commands(release_artifact, **arguments)
    (alone,) = commands(release_artifact, **arguments, fetched=False)
    assert "uploaded=/var/cache/containerd-deploy/.fetched-runc\n" in fetched
    assert "uploaded=''\n" in alone, "it downloads the URL itself"
    assert 'fetch "$url"' in alone and 'fetch "$url"' not in fetched


def test_state_arguments_left_to_the_node_say_so():
    from containerd_deploy.operations import FROM_NODE

    assert repr(FROM_NODE) == "FROM_NODE"


def test_an_artifact_is_installed_only_under_the_wanted_directory_however_it_is_written():
    from containerd_deploy.plan.run import artifact_is_installed

    manifest = intact_manifest(RUNC, "/usr/local/sbin/runc")
    assert artifact_is_installed(manifest, RUNC, "/usr/local/sbin/runc")
    assert artifact_is_installed(manifest, RUNC, "/usr/local/sbin")
    assert artifact_is_installed(manifest, RUNC, "/usr/local/sbin/")
    assert not artifact_is_installed(manifest, RUNC, "/usr/local/sb")
    assert not artifact_is_installed(manifest, RUNC, "/opt")
    assert not artifact_is_installed(None, RUNC, "/usr/local/sbin")
    assert artifact_is_installed(intact_manifest(RUNC, "/opt/X/runc"), RUNC, "/opt/X")


def lock_op(lock=None, changes=None, anchor_pid=0):
    from containerd_deploy.facts.node import RunLock
    from containerd_deploy.operations.service import run_lock_taken
    from containerd_deploy.remote.lock import parse_lock_state

    facts = Facts({RunLock: lambda anchor_pid: parse_lock_state("free 5")})
    given = {} if lock is None else {"lock": parse_lock_state(lock)}
    yielded = commands(
        run_lock_taken,
        facts=facts,
        owner="controller c1 pid 7",
        changes=changes,
        anchor_pid=anchor_pid,
        **given,
    )
    return yielded, facts.asked


def test_the_lock_operation_takes_the_lock_expecting_the_generation_it_read():
    from containerd_deploy.remote.lock import take_lock_script

    [command], asked = lock_op(anchor_pid=4242)
    assert asked == [("RunLock", {"anchor_pid": 4242})], "on its own it reads the lock itself"
    assert shell_text(command) == take_lock_script("node1", "controller c1 pid 7", 5, 4242)
    [command], asked = lock_op(lock="free 0", changes=True)
    assert asked == [] and 'if [ "$generation" != 0 ]; then' in shell_text(command)


def test_the_lock_operation_leaves_the_lock_when_nothing_will_change_unless_another_run_holds_it():
    assert lock_op(lock="free 3", changes=False) == ([], [])
    [command], _ = lock_op(lock="free 3", changes=True)
    assert 'if [ "$generation" != 3 ]; then' in shell_text(command), "a run that changes the node takes it"
    assert len(lock_op(lock="free 3")[0]) == 1, "given no plan: always taken"
    assert lock_op(lock="held", changes=True) == ([], []), "this run has it already"
    [command], _ = lock_op(lock="busy 3 controller c2 pid 9 since now", changes=False)
    assert 'if [ "$generation" != 3 ]; then' in shell_text(command)


def test_the_lock_operation_refuses_when_the_lock_cannot_be_taken():
    from pyinfra.api import OperationError

    for lock, why in (
        ("unavailable flock is not installed", "flock is not installed"),
        ("", "not run through sshd"),
    ):
        with pytest.raises(OperationError, match=f"^node1: could not take the node's run lock .*{why}"):
            lock_op(lock=lock)


@pytest.mark.parametrize(
    "text, state",
    [
        ("free 3", ("free", 3, "", "")),
        ("free 0", ("free", 0, "", "")),
        ("busy 4 controller c1 pid 7 since now", ("busy", 4, "controller c1 pid 7 since now", "")),
        ("free", ("free", None, "", "")),
        ("held", ("held", None, "", "")),
        ("unavailable flock is not installed", ("unavailable", None, "", "flock is not installed")),
        ("", ("unavailable", None, "", "")),
        ("garbage 5", ("unavailable", None, "", "")),
        ("busy controller c1", ("busy", None, "controller c1", "")),
    ],
)
def test_the_lock_state_a_run_read(text, state):
    from containerd_deploy.remote.lock import LockState, parse_lock_state

    assert parse_lock_state(text) == LockState(*state)


def test_crictl_is_pointed_at_containerds_socket_and_an_operators_own_config_is_theirs():
    import hashlib

    from containerd_deploy.facts.node import NodeState
    from containerd_deploy.plan import files

    header, *lines = files.crictl_config().splitlines()
    assert header == files.CRICTL_CONFIG_HEADER.rstrip("\n")
    assert dict(line.split(": ", 1) for line in lines) == {
        "runtime-endpoint": "unix:///run/containerd/containerd.sock",
        "image-endpoint": "unix:///run/containerd/containerd.sock",
        "timeout": "10",
    }
    ours = hashlib.sha256(files.crictl_config().encode()).hexdigest()
    assert files.crictl_config_is_ours(NodeState(files={"/etc/crictl.yaml": ours}))
    assert not files.crictl_config_is_ours(NodeState(files={"/etc/crictl.yaml": "0" * 64}))
    assert not files.crictl_config_is_ours(NodeState(files={"/etc/other.yaml": ours}))


class LoggingHost:
    """A pyinfra host as controller-side commands use it: its name, and what it logs."""

    name = "node1"

    def __init__(self):
        self.logged: list[tuple] = []

    def log(self, message, log_func=logger.info):  # pyinfra's defaults
        self.logged.append((message, log_func))

    def log_styled(self, message, log_func=logger.info, **style):
        self.logged.append((message, log_func, style))


def test_a_restart_hook_run_logs_its_last_lines_or_fails_saying_why(tmp_path):
    import sys

    from pyinfra import logger

    from containerd_deploy.controller.run_record import run_of
    from containerd_deploy.operations.service import _hook

    host = LoggingHost()
    talk = "import sys; print('\\n'.join(f'line {n}' for n in range(1, 8))); sys.exit(int(sys.argv[1]))"
    assert _hook(None, host, "containerd_restart_hook_before", [sys.executable, "-c", talk, "0"], 10) is True
    assert host.logged == [(f"containerd_restart_hook_before: line {n}", logger.info) for n in range(3, 8)]

    class Run:  # a pyinfra State, as the report's record is kept by
        pass

    host, state = LoggingHost(), Run()
    assert _hook(state, host, "containerd_restart_hook_after", [sys.executable, "-c", talk, "3"], 10) is False
    [(message, log_func, style)] = host.logged
    assert run_of(state).hosts["node1"].failure == message.removeprefix("containerd-deploy: ")
    assert message.startswith("containerd-deploy: node1: data key 'containerd_restart_hook_after': ")
    assert message.endswith(
        "failed (exit status 3); it said: line 1 | line 2 | line 3 | line 4 | line 5 | line 6 | line 7"
    )
    assert (log_func, style) == (logger.error, {"fg": "red"})


def test_a_download_the_controller_cannot_make_fails_naming_the_host(monkeypatch):
    from pyinfra import logger

    from containerd_deploy.controller.cache import FetchError
    from containerd_deploy.controller.run_record import run_of
    from containerd_deploy.operations import release

    class Run:  # a pyinfra State, as the report's record is kept by
        pass

    def refuse(cache_dir, artifact):
        raise FetchError(f"could not download {artifact.url}")

    monkeypatch.setattr(release, "ensure_cached", refuse)
    host, state = LoggingHost(), Run()
    assert release._fetch_into_cache(state, host, "/cache", [RUNC]) is False
    assert host.logged == [
        (f"containerd-deploy: node1: could not download {RUNC.url}", logger.error, {"fg": "red"})
    ]
    # The run's report says it too (pyinfra keeps no output of a command run on the controller).
    assert run_of(state).hosts["node1"].failure == f"node1: could not download {RUNC.url}"
    monkeypatch.setattr(release, "ensure_cached", lambda cache_dir, artifact: None)
    state = Run()
    assert release._fetch_into_cache(state, host, "/cache", [RUNC, RUNC]) is True
    assert "node1" not in run_of(state).hosts


def test_the_running_release_is_kept_only_when_the_plan_restarts_it(tmp_path):
    """Kept by one command that keeps every file named (run here in a sandbox); nothing when
    the run does not restart the daemon."""
    assert (
        commands(release_kept, state_dir="/s", release_files=[], other_files=[], version="1.7.24", when=False)
        == []
    )
    (tmp_path / "containerd").write_text("old daemon")
    (tmp_path / "config.toml").write_text("version = 2\n")
    state = tmp_path / "state"
    (command,) = commands(
        release_kept,
        state_dir=str(state),
        release_files=[str(tmp_path / "containerd")],
        other_files=[str(tmp_path / "config.toml"), str(tmp_path / "no-dropin.conf")],
        version="1.7.24",
    )
    result = subprocess.run(["sh", "-c", shell_text(command)], capture_output=True, text=True)
    assert result.returncode == 0 and "kept containerd 1.7.24" in result.stdout
    kept = state / "previous-release"
    assert (kept / "version").read_text() == "1.7.24\n"
    assert sorted((kept / "files").iterdir()) == [kept / "files" / "1", kept / "files" / "2"]
    assert (kept / "files" / "1").read_text() == "old daemon"
    assert (kept / "files" / "2").read_text() == "version = 2\n"


def test_a_kept_release_is_dropped_only_when_one_is_there(tmp_path):
    assert commands(kept_release_dropped, state_dir="/s", present=False) == []
    kept = tmp_path / "previous-release"
    (kept / "files").mkdir(parents=True)
    (command,) = commands(kept_release_dropped, state_dir=str(tmp_path))
    assert subprocess.run(["sh", "-c", shell_text(command)]).returncode == 0
    assert list(tmp_path.iterdir()) == []


def test_distribution_packages_are_removed_by_their_own_manager_each_name_once(tmp_path):
    assert commands(distro_packages_absent, packages=[]) == []
    packages = [
        DistroPackage("dpkg", "containerd", "1.6.20", "/usr/bin/containerd"),
        DistroPackage("dpkg", "containerd", "1.6.20", "/usr/sbin/containerd"),
        DistroPackage("rpm", "containerd.io", "1.7.0-3", "/usr/bin/containerd"),
    ]
    yielded = [shell_text(command) for command in commands(distro_packages_absent, packages=packages)]
    assert run_commands(tmp_path, yielded, ("env", "rpm")) == [
        ["env", "DEBIAN_FRONTEND=noninteractive", "dpkg", "--remove", "--", "containerd"],
        ["rpm", "--erase", "--", "containerd.io"],
    ]


def test_a_restart_hook_runs_on_the_controller_only_when_the_plan_restarts():
    from pyinfra.api import FunctionCommand

    hook = {"key": "containerd_restart_hook_before", "address": "10.0.0.5", "timeout": 60}
    assert commands(restart_hook, command=["kubectl", "drain", "{host}"], when=False, **hook) == []
    assert commands(restart_hook, command=[], **hook) == []
    (command,) = commands(restart_hook, command=["kubectl", "drain", "{host}", "--address={address}"], **hook)
    assert isinstance(command, FunctionCommand)
    assert command.args == (
        "containerd_restart_hook_before",
        ["kubectl", "drain", "node1", "--address=10.0.0.5"],
        60,
    )


def test_what_diff_says_of_the_service():
    from containerd_deploy.operations.service import restart_said

    unit = "containerd.service"
    assert restart_said(unit, "restart", "x changed", False) == "Will restart containerd.service (x changed)"
    assert restart_said(unit, "restart", "", True) == (
        "Will restart containerd.service (something it loads at start changed) after a systemd daemon-reload"
    )
    assert restart_said(unit, "start", "", False) == "Will start containerd.service"
    assert restart_said(unit, "", "", False) == "No restart: containerd.service keeps running"


def test_a_restart_hook_gets_its_timeout(monkeypatch):
    from containerd_deploy.operations import service

    asked = []
    monkeypatch.setattr(service, "run_hook", lambda *args: asked.append(args) or "")
    assert service._hook(None, LoggingHost(), "containerd_restart_hook_before", ["true"], 42) is True
    assert asked == [("containerd_restart_hook_before", ["true"], 42, "node1")]

"""What guards a restart (issue #16): the release kept before it and put back when the new one
falls short (remote/rollback.py, the service and verify commands), and the operator's hooks run
on the controller around it (controller/hooks.py): the scripts run for real against a directory
tree with stand-in systemctl/ctr; the hooks as real processes; the deploy's flow on fake node
states says when each runs."""

import dataclasses
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyinfra.api import FunctionCommand

from containerd_deploy.controller import hooks
from containerd_deploy.data.hooks import hook_argv, parse_hook
from containerd_deploy.data.values import DataError
from containerd_deploy.remote import container_check, manifest, rollback, scripts
from containerd_deploy.remote.paths import NEW_SUFFIX

from .flow import changed_names, converged, drifted, fresh, prepare, service_op, settings_for

UNIT = "containerd.service"
# What sh says of a command or file it could not use, or a script it could not read.
SHELL_COMPLAINTS = re.compile(r"not found|No such file|[Ss]yntax error|Permission denied|[Bb]ad substitution")


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class Node:
    """A directory tree standing in for a node: the release in bin/, a manifest and a config;
    `systemctl restart` "starts" whatever bin/containerd holds (copies it to `running`); the
    stand-in ctr answers as the running release ("release X"), or not at all ("broken")."""

    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.state = root / "state"
        self.stand_ins = root / "stand-ins"
        for directory in (self.bin, self.state, self.stand_ins, root / "etc"):
            directory.mkdir(parents=True)
        self.config = root / "etc" / "config.toml"
        self.dropin = root / "etc" / "http-proxy.conf"
        self.running = root / "running"
        self.calls = root / "systemctl.log"
        executable(
            self.stand_ins / "systemctl",
            f"""#!/bin/sh
echo "$*" >> {self.calls}
case "$1" in restart) cp {self.bin}/containerd {self.running};; show) echo 4242;; esac
""",
        )
        executable(self.stand_ins / "journalctl", "#!/bin/sh\necho 'journal: level=fatal msg=broken'\n")
        self.ctr = executable(
            self.stand_ins / "ctr",
            f"""#!/bin/sh
read -r word version < {self.running} || exit 1
[ "$word" = release ] || {{ echo "connection refused" >&2; exit 1; }}
printf 'Client:\\n  Version:  %s\\nServer:\\n  Version:  %s\\n' "$version" "$version"
""",
        )

    def install(self, files: dict[str, str], config: str) -> None:
        """As an install does: new files renamed over the old, the manifest rewritten, files the
        new release lacks removed."""
        for old in self.bin.glob("containerd*"):
            if old.name not in files:
                old.unlink()
        lines = ["component containerd", "version x"]
        for name, text in files.items():
            temp = self.bin / f".{name}.new"
            temp.write_text(text)
            temp.rename(self.bin / name)
            lines.append(f"file {self.bin / name} 1:2:3")
        (self.state / "containerd.manifest").write_text("\n".join(lines) + "\n")
        self.config.write_text(config)

    def release(self) -> dict[str, str]:
        return {path.name: path.read_text() for path in sorted(self.bin.glob("containerd*"))}

    def keep(self, version: str, attempt: str = "") -> subprocess.CompletedProcess:
        release = tuple(str(self.bin / name) for name in self.release())
        others = (
            str(self.state / "containerd.manifest"),
            str(self.state / "runc.manifest"),
            str(self.config),
            str(self.dropin),
        )
        return self.run(rollback.keep_release_script(str(self.state), release, others, version, attempt))

    def rollback_lines(self) -> list[str]:
        return rollback.rollback_lines(str(self.state), UNIT, str(self.ctr), 3)

    def run(self, script: str) -> subprocess.CompletedProcess:
        environment = dict(os.environ, PATH=f"{self.stand_ins}:{os.environ['PATH']}")
        result = subprocess.run(
            ["sh", "-c", script], capture_output=True, text=True, env=environment, timeout=60
        )
        # Whatever a script says on its way, the shell itself never has to complain.
        assert not SHELL_COMPLAINTS.search(result.stderr), result.stderr
        return result

    def restart_into(self, version: str) -> subprocess.CompletedProcess:
        return self.run(
            scripts.service_script(
                UNIT, str(self.ctr), "restart", False, version, 2, rollback_lines=self.rollback_lines()
            )
        )

    def systemctl_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


@pytest.fixture
def node(tmp_path) -> Node:
    node = Node(tmp_path / "node")
    node.install({"containerd": "release 1.7.24\n", "containerd-shim-runc-v1": "old shim\n"}, "version = 2\n")
    node.run(f"systemctl restart {UNIT}")
    node.calls.unlink()
    return node


def test_the_deploys_restart_is_not_refused_by_the_start_limit_others_used_up(node):
    """Regression (found on a machine, where runs and restarts follow each other within seconds):
    systemd refuses a start once the unit has started 5 times in 10 s ('start-limit-hit'),
    counting restarts that others made; the deploy's one deliberate restart then failed and
    rolled back a good release."""
    limited = node.root / "start-limit-hit"
    limited.write_text("")
    executable(
        node.stand_ins / "systemctl",
        f"""#!/bin/sh
echo "$*" >> {node.calls}
case "$1" in
  reset-failed) rm -f {limited};;
  restart) [ ! -e {limited} ] || {{ echo "Job for $2 failed: start request repeated too quickly" >&2; exit 1; }}
           cp {node.bin}/containerd {node.running};;
  show) echo 4242;;
esac
""",
    )
    node.install({"containerd": "release 2.1.9\n"}, "version = 3\n")
    result = node.restart_into("2.1.9")
    assert result.returncode == 0, result.stderr
    assert node.systemctl_calls() == [
        f"reset-failed {UNIT}",
        f"restart {UNIT}",
        f"show -p MainPID --value {UNIT}",
    ]


def test_a_release_that_does_not_answer_is_rolled_back_and_the_run_fails(node):
    before = node.release()
    manifest = (node.state / "containerd.manifest").read_text()
    kept = node.keep("1.7.24")
    assert kept.returncode == 0, kept.stderr
    node.install({"containerd": "broken\n", "containerd-stress": "new only\n"}, "version = 3\n")
    node.dropin.write_text("[Service]\n")  # a file the kept release did not have

    result = node.restart_into("2.1.9")

    assert result.returncode == 1
    assert "did not answer on its socket within 2s" in result.stderr
    assert "journal: level=fatal msg=broken" in result.stderr
    assert "rolled back: containerd 1.7.24 answers again" in result.stderr
    assert node.release() == before  # the new-only file gone, the old shim back
    # The manifest is the kept one, with the identities the files put back have now (they are
    # copies: new inodes), so the next run does not take them for files changed outside it.
    restored = (node.state / "containerd.manifest").read_text().splitlines()
    assert restored[:2] == manifest.splitlines()[:2]
    assert [line.rsplit(" ", 1)[0] for line in restored[2:]] == [
        line.rsplit(" ", 1)[0] for line in manifest.splitlines()[2:]
    ]
    for line in restored[2:]:
        path, identity = line[len("file ") :].rsplit(" ", 1)
        info = os.stat(path)
        assert identity.split(":")[:2] == [str(info.st_ino), str(info.st_size)], line
    assert node.config.read_text() == "version = 2\n"
    assert not node.dropin.exists() and not (node.state / "runc.manifest").exists()
    assert not (node.state / rollback.KEPT_DIR_NAME).exists()
    # One restart into the new release, one back (after a reload: the unit may have changed).
    assert node.systemctl_calls() == [
        f"reset-failed {UNIT}",
        f"restart {UNIT}",
        "daemon-reload",
        f"reset-failed {UNIT}",
        f"restart {UNIT}",
        f"show -p MainPID --value {UNIT}",
    ]


def identity(path: Path) -> str:
    """A file's identity as a manifest records it (inode, size, ctime to the nanosecond)."""
    info = os.stat(path)
    return f"{info.st_ino}:{info.st_size}:{info.st_ctime_ns // 10**9}.{info.st_ctime_ns % 10**9:09d}"


def install_runc(node: Node, text: str) -> Path:
    """As an install of runc does: the new binary renamed over the old, its manifest rewritten."""
    runc = node.root / "sbin" / "runc"
    runc.parent.mkdir(exist_ok=True)
    new = runc.parent / ".runc.new"
    new.write_text(text)
    new.rename(runc)
    (node.state / "runc.manifest").write_text(
        f"component runc\nversion {text.strip()}\nfile {runc} {identity(runc)}\n"
    )
    return runc


def test_runc_is_kept_with_the_release_and_put_back_by_a_rollback(node):
    """Both daemon components go back together: the runc a release ran with is kept by its
    manifest, put back by a rollback, and its manifest records the copy put back, so the next
    run reads runc as intact (not changed outside the deploy), and nothing is left beside it."""
    runc = install_runc(node, "runc 1.1.12\n")
    node.config.chmod(0o640)  # an operator's mode: put back as it was
    release = (*(str(node.bin / name) for name in node.release()), str(runc))
    others = (str(node.state / "containerd.manifest"), str(node.state / "runc.manifest"), str(node.config))
    assert node.run(rollback.keep_release_script(str(node.state), release, others, "1.7.24")).returncode == 0
    install_runc(node, "runc 1.2.5\n")
    node.install({"containerd": "broken\n"}, "version = 3\n")

    result = node.restart_into("2.1.9")

    assert result.returncode == 1 and "rolled back: containerd 1.7.24 answers again" in result.stderr
    assert runc.read_text() == "runc 1.1.12\n"
    assert node.config.read_text() == "version = 2\n" and stat.S_IMODE(node.config.stat().st_mode) == 0o640
    recorded = manifest.Manifest()
    manifest.read_manifest((node.state / "runc.manifest").read_text().splitlines(), recorded)
    assert recorded.fields["version"] == "runc 1.1.12" and recorded.files == {str(runc): identity(runc)}
    assert [p.name for p in node.root.rglob(f"*{NEW_SUFFIX}")] == []


def test_a_release_answering_as_another_version_is_rolled_back(node):
    node.keep("1.7.24")
    node.install({"containerd": "release 2.0.0\n"}, "version = 3\n")
    result = node.restart_into("2.1.9")
    assert result.returncode == 1
    assert "containerd answers as 2.0.0, expected 2.1.9" in result.stderr
    assert node.release()["containerd"] == "release 1.7.24\n"


def test_a_release_that_answers_keeps_the_old_one_until_it_is_dropped(node):
    node.keep("1.7.24")
    node.install({"containerd": "release 2.1.9\n"}, "version = 3\n")
    result = node.restart_into("2.1.9")
    assert result.returncode == 0, result.stderr
    assert node.systemctl_calls()[:2] == [f"reset-failed {UNIT}", f"restart {UNIT}"]
    assert node.systemctl_calls().count(f"restart {UNIT}") == 1
    assert (node.state / rollback.KEPT_DIR_NAME / "version").read_text() == "1.7.24\n"
    node.run(rollback.drop_kept_script(str(node.state)))
    assert not (node.state / rollback.KEPT_DIR_NAME).exists()


@pytest.mark.parametrize("fails", ["to answer", "its verify step"])
def test_a_rollback_records_what_it_undid_for_the_next_runs_fact_and_a_verified_run_drops_it(node, fails):
    """Regression (#26): what a rollback undid was forgotten, so the next run with the same data
    restarted into it again and rolled back again, run after run."""
    from containerd_deploy.facts.node import parse_node_state
    from containerd_deploy.remote.node_state import node_state_command

    def fact():
        # The whole node fact (the stand-in systemctl's MainPID has no /proc entry here).
        script = node_state_command(str(node.bin), str(node.config), "/u", str(node.state))
        output = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60).stdout
        return parse_node_state(output.splitlines())

    node.keep("1.7.24", attempt="a" * 64)
    if fails == "to answer":
        node.install({"containerd": "broken\n"}, "version = 3\n")
        assert node.restart_into("2.1.9").returncode == 1
    else:
        node.install({"containerd": "release 2.1.9\n"}, "version = 3\n")
        assert node.restart_into("2.1.9").returncode == 0
        failure = container_check.failure_script("node1", ["no container ran"], node.rollback_lines())
        assert node.run(failure).returncode == 1
    attempt, when = fact().rolled_back.split(" ")
    assert attempt == "a" * 64 and when.endswith("Z")
    # A later run with other data gets through: the record goes with its kept release.
    node.keep("1.7.24", attempt="b" * 64)
    node.install({"containerd": "release 2.1.9\n"}, "version = 3\n")
    assert node.restart_into("2.1.9").returncode == 0
    node.run(rollback.drop_kept_script(str(node.state)))
    assert fact().rolled_back == ""


def test_without_a_kept_release_a_failure_restarts_nothing_more(node):
    node.install({"containerd": "broken\n"}, "version = 3\n")
    result = node.restart_into("2.1.9")
    assert result.returncode == 1 and "rolled back" not in result.stderr
    assert node.systemctl_calls().count(f"restart {UNIT}") == 1
    assert node.release() == {"containerd": "broken\n"}


def test_a_release_an_unfinished_run_kept_stays_the_one_put_back(node):
    node.keep("1.7.24")
    node.install({"containerd": "release 2.0.0\n"}, "version = 3\n")  # that run stopped here
    again = node.keep("2.0.0")
    assert again.returncode == 0 and "kept by an earlier run (1.7.24) stays kept" in again.stdout
    node.install({"containerd": "broken\n"}, "version = 4\n")
    assert node.restart_into("2.1.9").returncode == 1
    assert node.release()["containerd"] == "release 1.7.24\n"


def test_a_failed_verify_step_puts_the_kept_release_back(node):
    node.keep("1.7.24")
    node.install({"containerd": "release 2.1.9\n"}, "version = 3\n")
    assert node.restart_into("2.1.9").returncode == 0
    result = node.run(
        container_check.failure_script("node1", ["the CRI plugin is not loaded"], node.rollback_lines())
    )
    assert result.returncode == 1
    assert "node1 is not a conformant containerd node" in result.stderr and "rolled back" in result.stderr
    assert node.release()["containerd"] == "release 1.7.24\n" and node.config.read_text() == "version = 2\n"


def test_a_rollback_that_does_not_answer_either_says_so_and_keeps_the_release(node):
    node.keep("1.7.24")
    (node.state / rollback.KEPT_DIR_NAME / "version").write_text("1.6.0\n")  # never answers as that
    node.install({"containerd": "broken\n"}, "version = 3\n")
    result = node.restart_into("2.1.9")
    assert result.returncode == 1
    assert "the rollback to containerd 1.6.0 did not answer within 3s either" in result.stderr
    assert (node.state / rollback.KEPT_DIR_NAME).exists()


def test_keeping_links_rather_than_copies_on_one_filesystem(node):
    node.keep("1.7.24")
    kept = node.state / rollback.KEPT_DIR_NAME / "files"
    inodes = {path.stat().st_ino for path in kept.iterdir()}
    assert (node.bin / "containerd").stat().st_ino in inodes


# --- hooks, as real processes on the controller ---


@pytest.fixture
def kubectl(tmp_path) -> tuple[Path, Path]:
    calls = tmp_path / "kubectl.calls"
    program = executable(
        tmp_path / "kubectl",
        f"""#!/bin/sh
for arg; do printf '%s\\n' "$arg"; done >> {calls}
echo "---" >> {calls}
[ "${{KUBECTL_FAIL:-}}" = "" ] || {{ echo "error: cannot evict pod kube-system/coredns: password=hunter2"; exit 3; }}
echo "node/$2 drained"
""",
    )
    return program, calls


def test_a_hook_gets_the_host_as_one_argument_whatever_it_holds(kubectl):
    program, calls = kubectl
    argv = parse_hook("n1", "containerd_restart_hook_before", f"{program} drain {{host}} --ignore-daemonsets")
    name = "node-1; touch /tmp/pwned $(id)"
    output = hooks.run_hook(
        "containerd_restart_hook_before",
        hook_argv(argv, name, "10.0.0.5", "containerd_restart_hook_before"),
        10,
        name,
    )
    assert calls.read_text() == f"drain\n{name}\n--ignore-daemonsets\n---\n"
    assert f"node/{name} drained" in output


def test_a_failing_hook_names_host_key_command_status_and_hides_secrets(kubectl, monkeypatch):
    program, _ = kubectl
    monkeypatch.setenv("KUBECTL_FAIL", "1")
    with pytest.raises(hooks.HookFailed) as raised:
        hooks.run_hook("containerd_restart_hook_before", [str(program), "drain", "node1"], 10, "node1")
    message = str(raised.value)
    assert message.startswith("node1: data key 'containerd_restart_hook_before': ")
    assert f"{program} drain node1 failed (exit status 3)" in message
    assert "cannot evict pod" in message and "hunter2" not in message
    assert hooks._tail("token: abc\nuser password=hunter2 ok") == "; it said: token: *** | user password=***"
    # Regression (seen on the VMs): on one line, so the rollout's report of the host (its last
    # line) holds what the hook said.
    assert "\n" not in message


def test_a_hook_runs_with_the_controllers_environment_the_host_named_and_no_input(tmp_path, monkeypatch):
    """What a hook sees and what is kept of what it says: the controller's environment plus
    CONTAINERD_DEPLOY_HOST, /dev/null as input (a hook that reads never waits), its stderr
    with its stdout, bytes that are not UTF-8 replaced."""
    monkeypatch.setenv("KUBECONFIG", "/etc/kube/admin.conf")
    hook = executable(
        tmp_path / "hook",
        "#!/bin/sh\n"
        'echo "host=$CONTAINERD_DEPLOY_HOST kubeconfig=$KUBECONFIG stdin=$(readlink /proc/self/fd/0)"\n'
        "echo 'warning: on stderr' >&2\n"
        "printf 'bytes: \\377\\n'\n",
    )
    # The controller's own input is something a hook could read and wait on: a pipe.
    read_end, write_end = os.pipe()
    os.write(write_end, b"the operator's input\n")
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        output = hooks.run_hook("containerd_restart_hook_after", [str(hook)], 10, "node-1")
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    assert output.splitlines() == [
        "host=node-1 kubeconfig=/etc/kube/admin.conf stdin=/dev/null",
        "warning: on stderr",
        "bytes: \ufffd",
    ]


def test_what_a_failed_hook_said_is_its_last_lines_on_one_line_or_nothing(tmp_path):
    quiet = executable(tmp_path / "quiet", "#!/bin/sh\nexit 4\n")
    with pytest.raises(hooks.HookFailed) as raised:
        hooks.run_hook("containerd_restart_hook_before", [str(quiet)], 10, "n1")
    assert (
        str(raised.value) == f"n1: data key 'containerd_restart_hook_before': {quiet} failed (exit status 4)"
    )
    talkative = executable(
        tmp_path / "talkative",
        "#!/bin/sh\ni=0\nwhile [ $i -lt 25 ]; do i=$((i + 1)); echo line $i; echo; done\nexit 1\n",
    )
    with pytest.raises(hooks.HookFailed) as raised:
        hooks.run_hook("containerd_restart_hook_before", [str(talkative)], 10, "n1")
    shown = " | ".join(f"line {i}" for i in range(26 - hooks.OUTPUT_SHOWN, 26))  # blank lines left out
    assert str(raised.value).endswith(f"failed (exit status 1); it said: {shown}")
    slow = executable(tmp_path / "slow", "#!/bin/sh\necho started draining\nsleep 30\n")
    with pytest.raises(hooks.HookFailed) as raised:
        hooks.run_hook("containerd_restart_hook_before", [str(slow)], 1, "n1")
    assert str(raised.value).endswith("killed it; it said: started draining")


def test_a_hook_killed_by_a_signal_is_a_failure_that_says_so(tmp_path):
    """A drain killed (by the OOM killer, by someone's Ctrl-C) did not drain the node: a
    negative return code is a failure, never a success."""
    killed = executable(tmp_path / "kubectl", "#!/bin/sh\necho draining\nkill -KILL $$\n")
    with pytest.raises(hooks.HookFailed) as raised:
        hooks.run_hook("containerd_restart_hook_before", [str(killed), "drain", "n1"], 10, "n1")
    assert str(raised.value) == (
        f"n1: data key 'containerd_restart_hook_before': {killed} drain n1 was killed by SIGKILL; it said: draining"
    )
    assert hooks._signal_name(15) == "SIGTERM" and hooks._signal_name(99) == "signal 99"


def test_a_hook_past_its_timeout_is_killed_with_what_it_started(tmp_path):
    pid_file = tmp_path / "child.pid"
    slow = executable(tmp_path / "slow", f"#!/bin/sh\nsleep 300 &\necho $! > {pid_file}\nwait\n")
    started = time.monotonic()
    with pytest.raises(
        hooks.HookFailed, match=r"did not finish within 1s \(containerd_restart_hook_timeout\)"
    ):
        hooks.run_hook("containerd_restart_hook_after", [str(slow)], 1, "node1")
    assert time.monotonic() - started < 30
    child = int(pid_file.read_text())
    for _ in range(50):
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the hook's child outlived the timeout")


def test_a_hook_that_is_not_there_is_a_clear_failure():
    with pytest.raises(
        hooks.HookFailed, match="could not run /nonexistent/kubectl uncordon n1: No such file"
    ):
        hooks.run_hook("containerd_restart_hook_after", ["/nonexistent/kubectl", "uncordon", "n1"], 5, "n1")


@pytest.mark.parametrize(
    "value, problem",
    [
        ("kubectl drain {node}", "unknown placeholder {node}"),
        ("kubectl drain {host!r}", "unknown placeholder {host}"),
        ("kubectl drain {host:>9}", "unknown placeholder {host}"),
        ("kubectl drain {", "is not a template"),
        ("kubectl 'drain", "does not split into arguments"),
        ("kubectl drain\n{host}", "control character"),
        (
            "kubectl drain\x7f{host}",
            "is 'kubectl drain\\x7f{host}', with a control character (one command, on one line)",
        ),
        (["kubectl", "a\x7fb"], "has an argument with a control character ('a\\x7fb')"),
        (["kubectl", "drain", "\x1f"], "has an argument with a control character ('\\x1f')"),
        (["kubectl", 3], "not a command line or a list of arguments"),
        (True, "not a command line or a list of arguments"),
        ("''", "names no program"),
    ],
)
def test_a_bad_hook_is_refused_naming_the_key_and_the_fix(value, problem):
    with pytest.raises(DataError) as raised:
        parse_hook("n1", "containerd_restart_hook_before", value)
    assert problem in str(raised.value)
    assert str(raised.value).startswith("n1: data key 'containerd_restart_hook_before' ")
    assert "Fix: set containerd_restart_hook_before to a command such as" in str(raised.value)


def test_braces_are_written_doubled_and_lists_are_taken_as_they_are():
    argv = parse_hook("n1", "k", ["kubectl", "annotate", "{host}", "x={{y}}", "note=a b"])
    assert hook_argv(argv, "n 1", "a", "k") == ["kubectl", "annotate", "n 1", "x={y}", "note=a b"]
    assert hook_argv(parse_hook("n1", "k", "ssh {address} true"), "n1", "10.0.0.5", "k") == [
        "ssh",
        "10.0.0.5",
        "true",
    ]


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1), min_size=1
    ),
    name=st.text(min_size=1),
)
def test_any_command_either_parses_or_is_refused_and_a_host_name_is_never_split(words, name):
    value = " ".join(words)
    try:
        argv = parse_hook("n1", "containerd_restart_hook_before", value)
    except DataError as error:
        assert "containerd_restart_hook_before" in str(error)
        return
    try:
        filled = hook_argv((*argv, "{host}"), name, "a", "containerd_restart_hook_before")
    except DataError as error:
        assert name.startswith("-") and "read as an option" in str(error)
        return
    assert len(filled) == len(argv) + 1 and filled[-1] == name


# --- when the deploy keeps, drops, and runs the hooks ---

HOOKS = {
    "containerd_restart_hook_before": [sys.executable, "-c", "pass", "drain", "{host}"],
    "containerd_restart_hook_after": [sys.executable, "-c", "pass", "uncordon", "{address}"],
}
BEFORE = "Restart hook | Run containerd_restart_hook_before on the controller (containerd will restart)"
AFTER = "Restart hook | Run containerd_restart_hook_after on the controller"
KEEP = (
    "Keep the running release | Keep the running release until the new one is verified (containerd_rollback)"
)
DROP = "Drop the kept release | Drop the kept release: the new one answered"


def config_drift(settings_):
    node = converged(settings_)
    return drifted(
        node, config_text=node.config_text.replace("SystemdCgroup = true", "SystemdCgroup = false")
    )


def test_a_restart_of_a_running_daemon_is_drained_kept_then_dropped_and_uncordoned(monkeypatch):
    settings_ = settings_for(HOOKS)
    prepared = prepare(monkeypatch, config_drift(settings_), HOOKS)
    changed = changed_names(prepared)
    assert changed == [
        "Take the node's run lock",
        BEFORE,
        KEEP,
        "Configure containerd | Write /etc/containerd/config.toml",
        "Run containerd | Enable, start and check containerd",
        DROP,
        AFTER,
    ]
    by_name = {op.name: op for op in prepared}
    (before,) = by_name[BEFORE].commands
    assert isinstance(before, FunctionCommand) and before.args[1] == [
        sys.executable,
        "-c",
        "pass",
        "drain",
        "node1",
    ]
    (after,) = by_name[AFTER].commands
    assert after.args[1][-1] == "node1"  # no ssh_hostname: the inventory name is the address
    keep = by_name[KEEP].full_text()
    for path in ("/etc/containerd/config.toml", "/etc/systemd/system/containerd.service"):
        assert path in keep, path
    # Regression (seen on the VMs): a release the run does not replace is not kept — a hard
    # link changes a file's ctime, which its manifest records, and the next run reinstalled it.
    for path in ("/usr/local/bin/containerd", "/usr/local/sbin/runc", "containerd.manifest", "runc.manifest"):
        assert path not in keep, path
    assert f"version={settings_.containerd_version}" in keep
    assert (
        "rollback() {\n  keep=/var/lib/containerd-deploy/previous-release" in service_op(prepared).full_text()
    )


@pytest.mark.parametrize(
    "case",
    ["converged", "registry change only", "fresh node", "stopped daemon"],
)
def test_no_restart_of_a_running_daemon_runs_no_hook_and_keeps_nothing(monkeypatch, case):
    settings_ = settings_for(HOOKS)
    node, data = converged(settings_), dict(HOOKS)
    if case == "registry change only":
        data["containerd_registries"] = {"docker.io": {"mirrors": [{"host": "https://mirror.internal"}]}}
    elif case == "fresh node":
        node = fresh()
    elif case == "stopped daemon":
        node = drifted(
            config_drift(settings_), service={**node.service, "ActiveState": "inactive", "MainPID": "0"}
        )
    changed = changed_names(prepare(monkeypatch, node, data))
    assert not {BEFORE, AFTER, KEEP, DROP} & set(changed), changed


def test_a_stale_daemon_restart_runs_the_hooks_too(monkeypatch):
    settings_ = settings_for(HOOKS)
    changed = changed_names(prepare(monkeypatch, drifted(converged(settings_), ctr_server="1.6.0"), HOOKS))
    assert changed[1:3] == [BEFORE, KEEP] and changed[-2:] == [DROP, AFTER]


def test_rollback_turned_off_keeps_nothing_and_never_rolls_back(monkeypatch):
    data = {"containerd_rollback": False}
    prepared = prepare(monkeypatch, config_drift(settings_for(data)), data)
    assert not {KEEP, DROP} & set(changed_names(prepared))
    assert "previous-release" not in service_op(prepared).full_text()


def test_a_release_an_unfinished_run_kept_is_dropped_once_a_run_gets_through(monkeypatch):
    settings_ = settings_for()
    # Under the run lock, as every change: the unfinished run's verify step never passed.
    assert changed_names(prepare(monkeypatch, drifted(converged(settings_), kept_release="1.7.24"))) == [
        "Take the node's run lock",
        DROP,
    ]
    assert changed_names(prepare(monkeypatch, converged(settings_))) == []


def test_a_node_without_this_deploys_release_has_nothing_to_keep(monkeypatch):
    settings_ = settings_for()
    node = config_drift(settings_)
    node = drifted(node, manifests={})
    assert KEEP not in changed_names(prepare(monkeypatch, node))


def test_an_upgrade_keeps_the_release_it_replaces_and_only_that(monkeypatch):
    settings_ = settings_for()
    node = converged(settings_)
    manifest = node.manifests["containerd"]
    tampered = dataclasses.replace(manifest, actual={path: "other" for path in manifest.files})
    prepared = prepare(monkeypatch, drifted(node, manifests={**node.manifests, "containerd": tampered}))
    keep = {op.name: op for op in prepared}[KEEP].full_text()
    assert "/usr/local/bin/containerd" in keep and "/var/lib/containerd-deploy/containerd.manifest" in keep
    assert "/usr/local/sbin/runc" not in keep and "runc.manifest" not in keep
    assert "linked=1" in keep  # the binary is linked, the manifest and config copied


def test_the_release_is_kept_only_after_every_file_is_fetched_and_verified(monkeypatch):
    """Regression (seen on the VMs): a tampered release file must leave the node as it was; the
    keep step ran before the fetch and left a kept release behind the refused run."""
    settings_ = settings_for()
    node = converged(settings_)
    manifest = node.manifests["containerd"]
    tampered = dataclasses.replace(manifest, actual={path: "other" for path in manifest.files})
    names = [
        op.name
        for op in prepare(monkeypatch, drifted(node, manifests={**node.manifests, "containerd": tampered}))
    ]
    fetch = names.index("Fetch release files | Fetch and verify release files")
    assert (
        fetch < names.index(KEEP) < min(i for i, name in enumerate(names) if "| Install containerd" in name)
    )


def test_dropping_the_kept_release_removes_a_half_written_one_too(node):
    """A run stopped while keeping leaves `<kept>.new`; the next verified run drops both. The
    state directory may be given with a trailing slash."""
    assert node.keep("1.7.24").returncode == 0
    half = node.state / (rollback.KEPT_DIR_NAME + NEW_SUFFIX)
    half.mkdir()
    node.run(rollback.drop_kept_script(f"{node.state}/"))
    assert not (node.state / rollback.KEPT_DIR_NAME).exists() and not half.exists()
    assert rollback.kept_dir("/var/lib/d/") == f"/var/lib/d/{rollback.KEPT_DIR_NAME}"
    assert manifest.manifest_path("/var/lib/d/", "runc") == "/var/lib/d/runc.manifest"


def test_a_file_a_rollback_could_not_put_back_is_said_and_its_copy_found_by_the_next_run(node):
    """The copy a rollback writes beside a path is named as the node fact looks for it: when
    the rename fails (here: a stand-in mv refusing runc's path) the rollback says so, and the
    next run finds the copy and removes it."""
    from containerd_deploy.facts.node import parse_node_state
    from containerd_deploy.remote.node_state import node_state_command

    runc = install_runc(node, "runc 1.1.12\n")
    release = (*(str(node.bin / name) for name in node.release()), str(runc))
    others = (str(node.state / "containerd.manifest"), str(node.state / "runc.manifest"))
    assert node.run(rollback.keep_release_script(str(node.state), release, others, "1.7.24")).returncode == 0
    install_runc(node, "runc 1.2.5\n")
    node.install({"containerd": "broken\n"}, "version = 3\n")
    executable(
        node.stand_ins / "mv",
        f'#!/bin/sh\nfor last; do :; done\n[ "$last" != {runc} ] || exit 1\nexec /bin/mv "$@"\n',
    )

    result = node.restart_into("2.1.9")

    assert f"could not put back {runc}" in result.stderr
    assert runc.read_text() == "runc 1.2.5\n"
    fact = node_state_command(
        str(node.bin),
        str(node.config),
        str(node.root / "unit"),
        str(node.state),
        install_dirs=(str(runc.parent),),
    )
    found = parse_node_state(
        subprocess.run(["sh", "-c", fact], capture_output=True, text=True).stdout.splitlines()
    )
    assert found.hidden_leftovers == [str(runc.parent / f".runc{NEW_SUFFIX}")]


def test_a_host_name_a_hook_would_read_as_an_option_is_refused():
    """Regression (#26): `{host}` filled a whole argument, so a host named
    `--selector=kubernetes.io/os=linux` turned `kubectl drain {host}` into "drain every Linux node"."""
    argv = parse_hook("n1", "containerd_restart_hook_before", "kubectl drain {host} --node-name={host}")
    with pytest.raises(DataError) as refused:
        hook_argv(argv, "--selector=kubernetes.io/os=linux", "10.0.0.5", "containerd_restart_hook_before")
    assert str(refused.value) == (
        "--selector=kubernetes.io/os=linux: data key 'containerd_restart_hook_before' would pass "
        "'--selector=kubernetes.io/os=linux' (from '{host}'), which the program would read as an option, not a "
        "name. Fix: give the host an inventory name and address that do not start with '-'"
    )
    with pytest.raises(DataError):
        hook_argv(parse_hook("n1", "k", "ssh {address} true"), "n1", "-oProxyCommand=x", "k")
    # An option of the hook's own, with a name in it, stays as written.
    assert hook_argv(("kubectl", "--context={host}"), "-n1", "a", "k") == ["kubectl", "--context=-n1"]


def test_a_hooks_credentials_never_show_in_its_dry_run_its_output_its_failure_or_the_rollouts_report(
    tmp_path, caplog
):
    """Regression (#26): a hook's arguments (`-H 'Authorization: Bearer …'`) appeared in the dry
    run, in its failure and in the rollout's report, and a successful hook's output was logged
    unredacted."""
    from containerd_deploy.operations.service import restart_hook
    from containerd_deploy.rollout import failed_hosts

    from .operations import commands

    token = "tok-3f9a8b7c6d5e"
    talker = executable(
        tmp_path / "hook", f'#!/bin/sh\necho "sent Authorization: Bearer {token}"\nexit "$1"\n'
    )
    argv = [str(talker), "0", "-H", f"Authorization: Bearer {token}"]
    with caplog.at_level("INFO"):
        commands(restart_hook, key="containerd_restart_hook_before", command=argv, address="a", timeout=10)
    assert "Will run" in caplog.text and token not in caplog.text
    output = hooks.run_hook("containerd_restart_hook_before", argv, 10, "node1")
    assert "sent Authorization: ***" in output and token not in output
    with pytest.raises(hooks.HookFailed) as failed:
        hooks.run_hook("containerd_restart_hook_before", [str(talker), "3", *argv[2:]], 10, "node1")
    assert "failed (exit status 3)" in str(failed.value) and token not in str(failed.value)
    # What pyinfra printed of the host (e.g. a hook of an operator's own deploy), as the rollout reports it.
    said = failed_hosts(["node1"], 1, "", f"[node1] curl -H 'Authorization: Bearer {token}' exited 3\n")
    assert said == {"node1": "curl -H 'Authorization: ***' exited 3"}

"""Files the node fact does not read again: what the controller keeps of them
(controller/read_files.py), the fact's `known` test on the node (run in a sandbox), and the
deploy filling in what it did not read (deploy/node.py gather)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.context import ctx_host, ctx_state

import containerd_deploy.deploy.node as flow
from containerd_deploy.controller import cache, read_files
from containerd_deploy.controller.read_files import ReadFile, sha256_of_text
from containerd_deploy.data.settings import resolve
from containerd_deploy.facts.node import ContainerdNode

CONFIG = "version = 3\n\n# the operator's comment\n[plugins]\n"
ENTRY = ReadFile("12:34:1700000000.000000001", sha256_of_text(CONFIG), CONFIG)


def test_what_was_read_reads_back_as_written_one_private_file_per_host():
    files = {"/etc/containerd/config.toml": ENTRY, "/etc/crictl.yaml": ReadFile("1:2:3.4", "a" * 64)}
    assert read_files.write("node1", files) is True
    assert read_files.read("node1") == files
    assert read_files.read("node2") == {}
    [record] = Path(read_files.RECORD_DIR).iterdir()
    assert record.stat().st_mode & 0o777 == 0o600
    assert Path(read_files.RECORD_DIR).stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "entry",
    [
        {"identity": ENTRY.identity, "sha256": ENTRY.sha256, "text": CONFIG + "changed = 1\n"},
        {"identity": ENTRY.identity, "sha256": "not a digest", "text": None},
        {"identity": "", "sha256": ENTRY.sha256, "text": CONFIG},
        {"identity": ENTRY.identity, "text": CONFIG},
    ],
    ids=["text not its digest", "no digest", "no identity", "a field missing"],
)
def test_an_entry_the_controller_cannot_vouch_for_is_not_used(entry):
    read_files.write("node1", {"/etc/crictl.yaml": ReadFile("1:2:3.4", "b" * 64)})
    [path] = Path(read_files.RECORD_DIR).iterdir()
    raw = json.loads(path.read_text())
    raw["/etc/containerd/config.toml"] = entry
    path.write_text(json.dumps(raw))
    files = read_files.read("node1")
    assert "/etc/containerd/config.toml" not in files
    if "sha256" in entry:  # (an entry it cannot read at all makes the record no record)
        assert "/etc/crictl.yaml" in files


@pytest.mark.parametrize("text", ["", "[]", "{", '{"/x": 3}', "null"])
def test_a_record_that_is_no_record_reads_as_nothing(text):
    read_files.write("node1", {"/x": ENTRY})
    [path] = Path(read_files.RECORD_DIR).iterdir()
    path.write_text(text)
    assert read_files.read("node1") == {}


def test_a_record_in_a_directory_another_user_could_write_is_not_used(monkeypatch):
    read_files.write("node1", {"/x": ENTRY})
    monkeypatch.setattr(cache, "untrusted_cache", lambda directory: "writable by others")
    assert read_files.read("node1") == {}
    assert read_files.write("node1", {"/x": ENTRY}) is False


# The node fact in a sandbox: the deploy's paths under a temporary directory, systemctl faked,
# and base64 and sha256sum logging each call before they run.


@pytest.fixture
def node(tmp_path):
    fake, log = tmp_path / "fake", tmp_path / "calls"
    fake.mkdir()
    (fake / "systemctl").write_text("#!/bin/sh\necho ActiveState=inactive; echo MainPID=0\n")
    for program in ("base64", "sha256sum"):
        real = subprocess.run(["sh", "-c", f"command -v {program}"], capture_output=True, text=True).stdout
        (fake / program).write_text(f'#!/bin/sh\necho "{program} $*" >> {log}\nexec {real.strip()} "$@"\n')
    for script in fake.iterdir():
        script.chmod(0o755)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "config.toml").write_text(CONFIG)
    (tmp_path / "etc" / "containerd.service").write_text("[Service]\n")
    (tmp_path / "etc" / "crictl.yaml").write_text("runtime-endpoint: x\n")
    settings = resolve(
        "node1",
        {
            "containerd_config_path": str(tmp_path / "etc" / "config.toml"),
            "containerd_unit_path": str(tmp_path / "etc" / "containerd.service"),
            "containerd_deploy_state_dir": str(tmp_path / "state"),
            "containerd_verify": False,
        },
    )
    return settings, {"PATH": f"{fake}:/usr/bin:/bin"}, log


def gather(monkeypatch, settings, env, crictl: Path, log: Path):
    """The deploy's look at the node (deploy/node.py gather) with the fact's script run in the
    sandbox; the known files each ask gave, and the programs that read files."""
    inventory = Inventory(([("node1", {})], {}))
    state = State(inventory, Config())
    host = inventory.get_host("node1")
    asked = []

    def get_fact(fact, **kwargs):
        assert fact is ContainerdNode
        asked.append(dict(kwargs["known_files"]))
        result = subprocess.run(
            ["sh", "-c", fact().command(**kwargs)], capture_output=True, text=True, env=env
        )
        return fact().process(result.stdout.splitlines())

    monkeypatch.setattr(host, "get_fact", get_fact)
    monkeypatch.setattr(flow, "managed_paths", lambda settings: (str(crictl),))
    log.unlink(missing_ok=True)
    with ctx_state.use(state), ctx_host.use(host):
        found = flow.gather(settings)
    return found, asked, (log.read_text().splitlines() if log.exists() else [])


def test_files_as_the_controller_read_them_last_are_not_read_again(monkeypatch, node, tmp_path):
    settings, env, log = node
    crictl = tmp_path / "etc" / "crictl.yaml"
    first, asked, calls = gather(monkeypatch, settings, env, crictl, log)
    assert asked == [{}]
    assert first.config_text == CONFIG and first.unit_sha256 and first.files[str(crictl)]
    assert len(calls) == 3, calls  # config's base64, the unit's and crictl's sha256sum

    again, asked, calls = gather(monkeypatch, settings, env, crictl, log)
    assert calls == [], "nothing read again"
    assert list(asked[0]) == [settings.containerd_config_path, settings.containerd_unit_path, str(crictl)]
    assert len(asked) == 1
    assert (again.config_text, again.unit_sha256, again.files) == (
        first.config_text,
        first.unit_sha256,
        first.files,
    )
    assert sorted(again.unread) == sorted(asked[0])


@pytest.mark.parametrize("change", ["write", "chmod", "replace"])
def test_a_file_changed_since_is_read_again_and_only_it(monkeypatch, node, tmp_path, change):
    settings, env, log = node
    crictl = tmp_path / "etc" / "crictl.yaml"
    gather(monkeypatch, settings, env, crictl, log)
    config = Path(settings.containerd_config_path)
    if change == "write":  # the same size: only the identity's ctime tells
        config.write_text(CONFIG.replace("operator", "OPERATOR"))
    elif change == "chmod":
        config.chmod(0o600)
    else:
        config.with_name("new").write_text(CONFIG + "x = 1\n")
        os.replace(config.with_name("new"), config)
    found, asked, calls = gather(monkeypatch, settings, env, crictl, log)
    assert [call.split()[0] for call in calls] == ["base64"], calls
    assert found.config_text == config.read_text()
    assert settings.containerd_config_path not in found.unread
    # And what it read is what the next run knows.
    _, asked, calls = gather(monkeypatch, settings, env, crictl, log)
    assert calls == []


def test_a_file_gone_is_gone_not_remembered(monkeypatch, node, tmp_path):
    settings, env, log = node
    crictl = tmp_path / "etc" / "crictl.yaml"
    gather(monkeypatch, settings, env, crictl, log)
    crictl.unlink()
    found, _, _ = gather(monkeypatch, settings, env, crictl, log)
    assert str(crictl) not in found.files
    assert str(crictl) not in read_files.read("node1")


def test_a_link_where_a_file_was_is_read_through_every_time(monkeypatch, node, tmp_path):
    """A link's own identity does not change when what it points to does: never remembered."""
    settings, env, log = node
    crictl = tmp_path / "etc" / "crictl.yaml"
    target = tmp_path / "elsewhere.yaml"
    target.write_text("runtime-endpoint: y\n")
    crictl.unlink()
    crictl.symlink_to(target)
    gather(monkeypatch, settings, env, crictl, log)
    assert str(crictl) not in read_files.read("node1")
    target.write_text("runtime-endpoint: z\n")
    found, _, calls = gather(monkeypatch, settings, env, crictl, log)
    assert found.files[str(crictl)] == sha256_of_text("runtime-endpoint: z\n")
    assert any(str(crictl) in call for call in calls)


def test_what_the_controller_lost_meanwhile_has_the_node_asked_in_full(monkeypatch, node, tmp_path):
    """The record read before the fact, its text gone after: the fact asked again, nothing known."""
    settings, env, log = node
    crictl = tmp_path / "etc" / "crictl.yaml"
    gather(monkeypatch, settings, env, crictl, log)
    kept = read_files.read("node1")
    monkeypatch.setattr(
        flow.read_files,
        "read",
        lambda host_name: {
            **kept,
            settings.containerd_config_path: ReadFile(
                kept[settings.containerd_config_path].identity, ENTRY.sha256
            ),
        },
    )
    found, asked, calls = gather(monkeypatch, settings, env, crictl, log)
    assert [list(known) for known in asked][1] == [] and len(asked) == 2
    assert found.config_text == CONFIG
    assert len(calls) == 3


def test_a_rerun_with_nothing_changed_writes_nothing(monkeypatch, node, tmp_path):
    settings, env, log = node
    crictl = tmp_path / "etc" / "crictl.yaml"
    gather(monkeypatch, settings, env, crictl, log)
    written = []
    monkeypatch.setattr(flow.read_files, "write", lambda *args: written.append(args) or True)
    gather(monkeypatch, settings, env, crictl, log)
    assert written == []
    Path(settings.containerd_unit_path).write_text("[Service]\nExecStart=x\n")
    gather(monkeypatch, settings, env, crictl, log)
    assert len(written) == 1


@pytest.mark.parametrize(
    "remembered",
    [{}, {"/etc/containerd/config.toml": ReadFile("99:34:1700000000.000000001", ENTRY.sha256, CONFIG)}],
    ids=["nothing remembered", "another identity"],
)
def test_a_file_not_read_is_filled_in_only_from_what_was_read_at_that_identity(remembered):
    from containerd_deploy.facts.node import NodeState

    settings = resolve("node1", {})
    node = NodeState(
        unread=["/etc/containerd/config.toml"], identities={"/etc/containerd/config.toml": ENTRY.identity}
    )
    assert flow.with_remembered_files(settings, node, remembered) is False
    assert flow.with_remembered_files(settings, node, {"/etc/containerd/config.toml": ENTRY}) is True
    assert node.config_text == CONFIG


@pytest.mark.parametrize("name", ["con fig.toml", "it's $(touch x) *.toml", "a\\b [c].toml"])
def test_a_file_is_known_by_its_whole_name_whatever_it_holds(tmp_path, name):
    from containerd_deploy.facts.node import parse_node_state
    from containerd_deploy.remote.node_state import node_state_command

    config = tmp_path / name
    config.write_text(CONFIG)
    (tmp_path / "other.toml").write_text(CONFIG)

    def fact(known: tuple):
        command = node_state_command(
            "/nowhere", str(config), str(tmp_path / "unit"), "/nowhere", known_files=known
        )
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd=tmp_path)
        return parse_node_state(result.stdout.splitlines())

    first = fact(())
    assert first.config_text == CONFIG and first.unread == []
    again = fact(((str(config), first.identities[str(config)]),))
    assert (again.config_text, again.unread) == (None, [str(config)])
    assert not (tmp_path / "x").exists()

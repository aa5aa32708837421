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
from containerd_deploy.controller.read_files import HostFiles, ReadFile, sha256_of_text
from containerd_deploy.data.settings import resolve
from containerd_deploy.facts.node import ContainerdNode, NodeState, parse_node_state
from containerd_deploy.remote.node_state import node_state_command

CONFIG = "version = 3\n\n# the operator's comment\n[plugins]\n"
ENTRY = ReadFile("12:34:1700000000.000000001", sha256_of_text(CONFIG), CONFIG, confirmed=True)
BOOT = Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def record_path() -> Path:
    [path] = Path(read_files.RECORD_DIR).iterdir()
    return path


def test_what_was_read_reads_back_as_written_one_private_file_per_host():
    record = HostFiles(
        "boot-1", {"/etc/containerd/config.toml": ENTRY, "/etc/crictl.yaml": ReadFile("1:2:3.4", "a" * 64)}
    )
    assert read_files.write("node1", record) is True
    assert read_files.read("node1") == record
    assert read_files.read("node2") == HostFiles()
    assert record_path().stat().st_mode & 0o777 == 0o600
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
    read_files.write("node1", HostFiles("boot-1", {"/etc/crictl.yaml": ReadFile("1:2:3.4", "b" * 64)}))
    raw = json.loads(record_path().read_text())
    raw["files"]["/etc/containerd/config.toml"] = entry
    record_path().write_text(json.dumps(raw))
    files = read_files.read("node1").files
    assert "/etc/containerd/config.toml" not in files
    if "sha256" in entry:  # (an entry it cannot read at all makes the record no record)
        assert "/etc/crictl.yaml" in files


@pytest.mark.parametrize("text", ["", "[]", "{", '{"files": {"/x": 3}}', '{"files": []}', "null"])
def test_a_record_that_is_no_record_reads_as_nothing(text):
    read_files.write("node1", HostFiles("boot-1", {"/x": ENTRY}))
    record_path().write_text(text)
    assert read_files.read("node1") == HostFiles()


def test_a_record_in_a_directory_another_user_could_write_is_not_used(monkeypatch):
    read_files.write("node1", HostFiles("boot-1", {"/x": ENTRY}))
    monkeypatch.setattr(cache, "untrusted_cache", lambda directory: "writable by others")
    assert read_files.read("node1") == HostFiles()
    assert read_files.write("node1", HostFiles("boot-1", {"/x": ENTRY})) is False


def test_a_record_directory_another_user_made_while_it_was_read_is_not_used(monkeypatch):
    """Not there when first looked at (nothing in it to swap), made meanwhile: looked at again."""
    read_files.write("node1", HostFiles("boot-1", {"/x": ENTRY}))
    answers = iter([None, "it is owned by uid 1000"])
    monkeypatch.setattr(cache, "untrusted_cache", lambda directory: next(answers))
    assert read_files.read("node1") == HostFiles()


@pytest.mark.parametrize("change", ["group-writable", "a link", "another user's"])
def test_a_record_file_that_is_not_this_users_own_is_not_used(monkeypatch, tmp_path, change):
    read_files.write("node1", HostFiles("boot-1", {"/x": ENTRY}))
    path = record_path()
    if change == "group-writable":
        path.chmod(0o620)
    elif change == "a link":
        target = tmp_path / "elsewhere.json"
        target.write_bytes(path.read_bytes())
        path.unlink()
        path.symlink_to(target)
    else:
        monkeypatch.setattr(cache.os, "geteuid", lambda: os.getuid() + 1)
    assert read_files.read("node1") == HostFiles()


@pytest.mark.parametrize(
    "text",
    [
        '[plugins."io.containerd.grpc.v1.cri".registry.configs."r".auth]\npassword = "s3cret"\n',
        'x = "https://u:pw@r/"\n',
    ],
)
def test_a_text_holding_a_credential_is_never_kept_on_the_controller(text):
    entry = ReadFile("1:2:3.4", sha256_of_text(text), text, confirmed=True)
    assert read_files.keepable(entry) is False
    read_files.write("node1", HostFiles("boot-1", {"/etc/containerd/config.toml": entry, "/x": ENTRY}))
    assert "s3cret" not in record_path().read_text() and "pw@" not in record_path().read_text()
    assert list(read_files.read("node1").files) == ["/x"]


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


def test_files_two_runs_read_alike_are_not_read_a_third_time(monkeypatch, node, tmp_path):
    settings, env, log = node
    crictl = tmp_path / "etc" / "crictl.yaml"
    first, asked, calls = gather(monkeypatch, settings, env, crictl, log)
    assert asked == [{}]
    assert first.config_text == CONFIG and first.unit_sha256 and first.files[str(crictl)]
    assert first.boot == BOOT
    assert len(calls) == 3, calls  # config's base64, the unit's and crictl's sha256sum

    # Read once: a write in that clock tick could have left the identity as it was.
    second, asked, calls = gather(monkeypatch, settings, env, crictl, log)
    assert asked == [{}] and len(calls) == 3

    third, asked, calls = gather(monkeypatch, settings, env, crictl, log)
    assert calls == [], "nothing read a third time"
    assert list(asked[0]) == [settings.containerd_config_path, settings.containerd_unit_path, str(crictl)]
    assert len(asked) == 1
    assert (third.config_text, third.unit_sha256, third.files) == (
        first.config_text,
        first.unit_sha256,
        first.files,
    )
    assert sorted(third.unread) == sorted(asked[0])


def converge_reads(monkeypatch, node, tmp_path):
    settings, env, log = node
    crictl = tmp_path / "etc" / "crictl.yaml"
    for _ in range(2):
        gather(monkeypatch, settings, env, crictl, log)
    return settings, env, log, crictl


@pytest.mark.parametrize("change", ["write", "chmod", "replace"])
def test_a_file_changed_since_is_read_again_and_only_it(monkeypatch, node, tmp_path, change):
    settings, env, log, crictl = converge_reads(monkeypatch, node, tmp_path)
    config = Path(settings.containerd_config_path)
    if change == "write":  # the same size: only the identity's ctime tells
        config.write_text(CONFIG.replace("operator", "OPERATOR"))
    elif change == "chmod":
        config.chmod(0o600)
    else:
        config.with_name("new").write_text(CONFIG + "x = 1\n")
        os.replace(config.with_name("new"), config)
    for _ in range(2):  # read, then read again to confirm
        found, asked, calls = gather(monkeypatch, settings, env, crictl, log)
        assert [call.split()[0] for call in calls] == ["base64"], calls
        assert found.config_text == config.read_text()
        assert settings.containerd_config_path not in found.unread
    _, asked, calls = gather(monkeypatch, settings, env, crictl, log)
    assert calls == []


def test_contents_that_differ_at_the_same_identity_are_not_confirmed():
    """Two reads at one identity that disagree (a write in the first read's clock tick): the
    file is read again until two runs agree."""
    settings = resolve("node1", {})
    config = settings.containerd_config_path
    other = CONFIG + "x = 1\n"

    def remembered_after(text: str, before: HostFiles) -> HostFiles:
        node = NodeState(config_text=text, identities={config: ENTRY.identity}, boot="boot-1")
        flow.remember_files(settings, node, before)
        return read_files.read("node1")

    first = remembered_after(CONFIG, HostFiles())
    assert first.files[config].confirmed is False
    second = remembered_after(other, first)
    assert (second.files[config].text, second.files[config].confirmed) == (other, False)
    third = remembered_after(other, second)
    assert (third.files[config].text, third.files[config].confirmed) == (other, True)
    # What another boot read confirms nothing.
    assert remembered_after(other, HostFiles("boot-0", third.files)).files[config].confirmed is False


def test_each_file_there_is_remembered_whichever_is_not():
    settings = resolve("node1", {})
    node = NodeState(
        unit_sha256="c" * 64, identities={settings.containerd_unit_path: "7:8:9.1"}, boot="boot-1"
    )
    flow.remember_files(settings, node, HostFiles())
    assert list(read_files.read("node1").files) == [settings.containerd_unit_path]  # (no config.toml)


def test_a_node_whose_boot_is_not_known_remembers_nothing():
    settings = resolve("node1", {})
    node = NodeState(
        config_text=CONFIG, identities={settings.containerd_config_path: ENTRY.identity}, boot=""
    )
    flow.remember_files(settings, node, HostFiles())
    assert read_files.read("node1") == HostFiles()


def test_what_was_read_in_another_boot_is_read_again(monkeypatch, node, tmp_path):
    """A reimaged node can show a file under the inode, size and times another had."""
    settings, env, log, crictl = converge_reads(monkeypatch, node, tmp_path)
    kept = read_files.read("node1")
    read_files.write("node1", HostFiles("another-boot", kept.files))
    found, asked, calls = gather(monkeypatch, settings, env, crictl, log)
    # Told what was read in that boot, the node, in another, reads everything.
    assert len(asked) == 1 and len(asked[0]) == 3 and len(calls) == 3 and found.unread == []
    # (The fact alone, told of another boot.)
    config = settings.containerd_config_path
    command = node_state_command(
        "/nowhere",
        config,
        "/nowhere/unit",
        "/nowhere",
        known_files=((config, found.identities[config]),),
        known_boot="another-boot",
    )
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
    assert parse_node_state(result.stdout.splitlines()).config_text == CONFIG


def test_a_file_gone_is_gone_not_remembered(monkeypatch, node, tmp_path):
    settings, env, log, crictl = converge_reads(monkeypatch, node, tmp_path)
    crictl.unlink()
    found, _, _ = gather(monkeypatch, settings, env, crictl, log)
    assert str(crictl) not in found.files
    assert str(crictl) not in read_files.read("node1").files


def test_a_link_where_a_file_was_is_read_through_every_time(monkeypatch, node, tmp_path):
    """A link's own identity does not change when what it points to does: never remembered."""
    settings, env, log = node
    crictl = tmp_path / "etc" / "crictl.yaml"
    target = tmp_path / "elsewhere.yaml"
    target.write_text("runtime-endpoint: y\n")
    crictl.unlink()
    crictl.symlink_to(target)
    for _ in range(2):
        gather(monkeypatch, settings, env, crictl, log)
    assert str(crictl) not in read_files.read("node1").files
    target.write_text("runtime-endpoint: z\n")
    found, _, calls = gather(monkeypatch, settings, env, crictl, log)
    assert found.files[str(crictl)] == sha256_of_text("runtime-endpoint: z\n")
    assert any(str(crictl) in call for call in calls)


def test_a_config_holding_a_credential_is_read_every_run(monkeypatch, node, tmp_path):
    settings, env, log = node
    crictl = tmp_path / "etc" / "crictl.yaml"
    Path(settings.containerd_config_path).write_text(CONFIG + 'token = "s3cret"\n')
    for _ in range(3):
        found, _, calls = gather(monkeypatch, settings, env, crictl, log)
    assert [call.split()[0] for call in calls] == ["base64"]
    assert "s3cret" in found.config_text
    assert "s3cret" not in record_path().read_text()


def test_what_the_controller_lost_meanwhile_has_the_node_asked_in_full(monkeypatch, node, tmp_path):
    """The record read before the fact, its text gone after: the fact asked again, nothing known."""
    settings, env, log, crictl = converge_reads(monkeypatch, node, tmp_path)
    kept = read_files.read("node1")
    config = settings.containerd_config_path
    lost = {**kept.files, config: ReadFile(kept.files[config].identity, ENTRY.sha256, confirmed=True)}
    monkeypatch.setattr(flow.read_files, "read", lambda host_name: HostFiles(kept.boot, lost))
    found, asked, calls = gather(monkeypatch, settings, env, crictl, log)
    assert [list(known) for known in asked][1] == [] and len(asked) == 2
    assert found.config_text == CONFIG
    assert len(calls) == 3


def test_a_rerun_with_nothing_changed_writes_nothing(monkeypatch, node, tmp_path):
    settings, env, log, crictl = converge_reads(monkeypatch, node, tmp_path)
    written = []
    monkeypatch.setattr(flow.read_files, "write", lambda *args: written.append(args) or True)
    gather(monkeypatch, settings, env, crictl, log)
    assert written == []
    Path(settings.containerd_unit_path).write_text("[Service]\nExecStart=x\n")
    gather(monkeypatch, settings, env, crictl, log)
    assert len(written) == 1


@pytest.mark.parametrize(
    "remembered",
    [
        HostFiles("boot-1"),
        HostFiles(
            "boot-1",
            {"/etc/containerd/config.toml": ReadFile("99:34:1700000000.000000001", ENTRY.sha256, CONFIG)},
        ),
        HostFiles("boot-0", {"/etc/containerd/config.toml": ENTRY}),
        HostFiles("boot-1", {"/etc/containerd/config.toml": ReadFile(ENTRY.identity, ENTRY.sha256)}),
    ],
    ids=["nothing remembered", "another identity", "another boot", "no text"],
)
def test_a_file_not_read_is_filled_in_only_from_what_was_read_at_that_identity(remembered):
    settings = resolve("node1", {})
    node = NodeState(
        unread=["/etc/containerd/config.toml"],
        identities={"/etc/containerd/config.toml": ENTRY.identity},
        boot="boot-1",
    )
    assert flow.fill_in_unread(settings, node, remembered) is False
    assert (
        flow.fill_in_unread(settings, node, HostFiles("boot-1", {"/etc/containerd/config.toml": ENTRY}))
        is True
    )
    assert node.config_text == CONFIG


@pytest.mark.parametrize("name", ["con fig.toml", "it's $(touch x) *.toml", "a\\b [c].toml"])
def test_a_file_is_known_by_its_whole_name_whatever_it_holds(tmp_path, name):
    config = tmp_path / name
    config.write_text(CONFIG)
    (tmp_path / "other.toml").write_text(CONFIG)

    def fact(known: tuple):
        command = node_state_command(
            "/nowhere", str(config), str(tmp_path / "unit"), "/nowhere", known_files=known, known_boot=BOOT
        )
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd=tmp_path)
        return parse_node_state(result.stdout.splitlines())

    first = fact(())
    assert first.config_text == CONFIG and first.unread == []
    again = fact(((str(config), first.identities[str(config)]),))
    assert (again.config_text, again.unread) == (None, [str(config)])
    assert not (tmp_path / "x").exists()


def test_identities_read_the_same_in_any_locale(tmp_path):
    """stat prints %.9Z's decimal point in the locale's own way (de_DE: a comma): scripts run it in
    the C locale, or an identity recorded by a run in one locale reads as changed in another."""
    locales = tmp_path / "locales"
    locales.mkdir()
    made = subprocess.run(
        ["localedef", "-i", "de_DE", "-f", "UTF-8", str(locales / "de_DE.UTF-8")], capture_output=True
    )
    assert made.returncode in (0, 1), made.stderr  # (1: made, with warnings)
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    command = node_state_command("/nowhere", str(config), "/nowhere/unit", "/nowhere")
    german = {"PATH": os.environ["PATH"], "LOCPATH": str(locales), "LC_ALL": "de_DE.UTF-8"}
    assert (
        ","
        in subprocess.run(
            ["stat", "-c", "%.9Z", str(config)], capture_output=True, text=True, env=german
        ).stdout
    )
    identities = [
        parse_node_state(
            subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env).stdout.splitlines()
        ).identities
        for env in (german, {"PATH": os.environ["PATH"]})
    ]
    assert identities[0] == identities[1] and "," not in identities[0][str(config)]


def test_a_manifest_recorded_under_a_comma_locale_is_intact_in_the_c_locale():
    from containerd_deploy.remote.manifest import Manifest, read_manifest

    manifest = Manifest()
    read_manifest(["component runc", "file /usr/local/sbin/runc 12:34:1700000000,000000001"], manifest)
    manifest.actual["/usr/local/sbin/runc"] = "12:34:1700000000.000000001"
    assert manifest.intact()

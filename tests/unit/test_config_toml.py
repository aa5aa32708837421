import difflib
from pathlib import Path

import pytest
import tomlkit
from packaging.version import Version

from tasks.config_toml import RUNC_OPTIONS_PATH, ConfigError, runc_systemd_cgroup, set_systemd_cgroup

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "config"

# (fixture, version of the containerd that made or reads it, schema)
DEFAULTS = [
    ("default-1.6.20.toml", "1.6.20", 2),
    ("default-1.7.24.toml", "1.7.24", 2),
    ("default-2.1.9.toml", "2.1.9", 3),
    ("default-2.1.4-without-systemdcgroup.toml", "2.1.4", 3),
]


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-"]


def value_at(text: str, path) -> object:
    node = tomlkit.parse(text)
    for key in path:
        node = node[key]
    return node


@pytest.mark.parametrize("fixture, version, schema", DEFAULTS)
@pytest.mark.parametrize("enabled", [True, False])
def test_defaults_get_systemd_cgroup_at_their_schemas_path(fixture, version, schema, enabled):
    before = (FIXTURES / fixture).read_text()
    after = set_systemd_cgroup(before, Version(version), enabled)
    assert value_at(after, RUNC_OPTIONS_PATH[schema])["SystemdCgroup"] is enabled
    assert runc_systemd_cgroup(after) is enabled
    # Exactly one line differs (flipped or inserted), or none when it already had that value.
    changes = changed_lines(before, after)
    assert all("SystemdCgroup" in line for line in changes) and len(changes) <= 2


def test_the_key_is_inserted_where_2_1_4_left_it_out():
    before = (FIXTURES / "default-2.1.4-without-systemdcgroup.toml").read_text()
    assert "SystemdCgroup" not in before
    after = set_systemd_cgroup(before, Version("2.1.4"))
    assert changed_lines(before, after) == ["+             SystemdCgroup = true"]


def test_2x_single_quoted_table_names_survive():
    before = (FIXTURES / "default-2.1.9.toml").read_text()
    after = set_systemd_cgroup(before, Version("2.1.9"))
    assert "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]" in after


def test_an_operators_file_keeps_everything_but_the_one_value():
    before = (FIXTURES / "operator-1.7.toml").read_text()
    after = set_systemd_cgroup(before, Version("1.7.24"))
    assert changed_lines(before, after) == [
        "-           SystemdCgroup = false   # the deploy owns this one",
        "+           SystemdCgroup = true   # the deploy owns this one",
    ]


def test_an_already_correct_file_comes_back_byte_for_byte():
    once = set_systemd_cgroup((FIXTURES / "operator-1.7.toml").read_text(), Version("1.7.24"))
    assert set_systemd_cgroup(once, Version("1.7.24")) == once


def test_missing_tables_are_created():
    after = set_systemd_cgroup('version = 3\n[debug]\n  level = "info"\n', Version("2.1.9"))
    assert value_at(after, RUNC_OPTIONS_PATH[3])["SystemdCgroup"] is True
    assert after.startswith('version = 3\n[debug]\n  level = "info"\n')


def test_a_v2_file_is_accepted_by_containerd_2():
    # containerd 2.x converts version 2 files in memory, so the v2 path is the right one to edit.
    after = set_systemd_cgroup((FIXTURES / "default-1.7.24.toml").read_text(), Version("2.1.9"))
    assert value_at(after, RUNC_OPTIONS_PATH[2])["SystemdCgroup"] is True


@pytest.mark.parametrize("text, message", [
    ("[plugins\nbroken", "is not valid TOML"),
    ('root = "/var/lib/containerd"\n', "no `version` key"),
    ("version = 9\n", "does not know"),
])
def test_documents_that_cannot_be_edited_safely(text, message):
    with pytest.raises(ConfigError, match=message):
        set_systemd_cgroup(text, Version("1.7.24"))


def test_a_v3_file_is_refused_for_containerd_1x():
    with pytest.raises(ConfigError, match="containerd 1.7.24 cannot read.*needs containerd >= 2.0"):
        set_systemd_cgroup((FIXTURES / "default-2.1.9.toml").read_text(), Version("1.7.24"))


def test_reading_an_unset_value():
    assert runc_systemd_cgroup((FIXTURES / "default-2.1.4-without-systemdcgroup.toml").read_text()) is None
    assert runc_systemd_cgroup((FIXTURES / "default-1.6.20.toml").read_text()) is False

import difflib
import re
import uuid
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from packaging.version import Version

from containerd_deploy.data import config_toml
from containerd_deploy.data.config_toml import (
    PATHS,
    RUNC_OPTIONS_PATH,
    ConfigError,
    Knobs,
    Runtime,
    read_schema,
    render,
    runc_systemd_cgroup,
    value_at,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "config"


def set_systemd_cgroup(text: str, containerd_version: Version, enabled: bool = True) -> str:
    """`text` rendered with only the runc runtime's SystemdCgroup set (every other knob left)."""
    return render(text, containerd_version, Knobs(systemd_cgroup=enabled))


# (fixture, version of the containerd that made or reads it, schema)
DEFAULTS = [
    ("default-1.6.20.toml", "1.6.20", 2),
    ("default-1.7.24.toml", "1.7.24", 2),
    ("default-2.1.9.toml", "2.1.9", 3),
    ("default-2.1.4-without-systemdcgroup.toml", "2.1.4", 3),
]


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-"]


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


@pytest.mark.parametrize(
    "schema, oldest, newest_refused", [(2, "1.3", "1.2.99"), (3, "2.0.0", "1.7.99"), (4, "2.3.0", "2.2.99")]
)
def test_each_schema_is_read_from_the_first_containerd_that_knows_it(schema, oldest, newest_refused):
    text = f"version = {schema}\n"
    assert read_schema(text, Version(oldest)) == schema
    with pytest.raises(ConfigError, match=f"containerd {newest_refused} cannot read"):
        read_schema(text, Version(newest_refused))


def test_a_v2_file_is_accepted_by_containerd_2():
    # containerd 2.x converts version 2 files in memory, so the v2 path is the right one to edit.
    after = set_systemd_cgroup((FIXTURES / "default-1.7.24.toml").read_text(), Version("2.1.9"))
    assert value_at(after, RUNC_OPTIONS_PATH[2])["SystemdCgroup"] is True


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "[plugins\nbroken",
            r"is not valid TOML \(.+\); fix or remove the file, the deploy left it as it is",
        ),
        (
            'root = "/var/lib/containerd"\n',
            re.escape(
                "has no `version` key, so containerd reads it as the long-removed version 1 schema; "
                "migrate it with `containerd config migrate` (or move it away to start from defaults)"
            ),
        ),
        ("version = 9\n", re.escape("declares version = 9, which this deploy does not know (2, 3 or 4)")),
    ],
)
def test_documents_that_cannot_be_edited_safely(text, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        set_systemd_cgroup(text, Version("1.7.24"))


def test_a_v3_file_is_refused_for_containerd_1x():
    with pytest.raises(ConfigError) as refused:
        set_systemd_cgroup((FIXTURES / "default-2.1.9.toml").read_text(), Version("1.7.24"))
    assert str(refused.value) == (
        "declares version = 3, which containerd 1.7.24 cannot read (it needs containerd >= 2.0); "
        "set containerd_config_base=default to rebuild it from this containerd's `containerd config default` "
        "(a rollback from 2.x does this once)"
    )


def test_reading_an_unset_value():
    assert runc_systemd_cgroup((FIXTURES / "default-2.1.4-without-systemdcgroup.toml").read_text()) is None
    assert runc_systemd_cgroup((FIXTURES / "default-1.6.20.toml").read_text()) is False


# Every knob, in every schema: the value lands at that schema's path and nothing else moves.

SCHEMA_FIXTURES = [(f, v, s) for f, v, s in DEFAULTS] + [
    ("operator-1.7.toml", "1.7.24", 2),
    ("operator-2.1.toml", "2.1.9", 3),
]
KNOB_VALUES = {
    "sandbox_image": ("sandbox_image", "localhost/pause:test"),
    "snapshotter": ("snapshotter", "native"),
    "max_container_log_line_size": ("max_container_log_line_size", 65536),
    "restrict_oom_score_adj": ("restrict_oom_score_adj", True),
}


@pytest.mark.parametrize("fixture, version, schema", SCHEMA_FIXTURES)
@pytest.mark.parametrize("knob", sorted(KNOB_VALUES))
def test_each_knob_lands_at_its_schemas_path(fixture, version, schema, knob):
    path_name, value = KNOB_VALUES[knob]
    before = (FIXTURES / fixture).read_text()
    after = render(before, Version(version), Knobs(**{knob: value}))
    assert value_at(after, PATHS[path_name][schema]) == value
    key = PATHS[path_name][schema][-1]
    unrelated = [
        line
        for line in changed_lines(before, after)
        if "SystemdCgroup" not in line and line[2:].strip() and not line[2:].lstrip().startswith(f"{key} =")
    ]
    assert unrelated == []


@pytest.mark.parametrize("fixture, version, schema", SCHEMA_FIXTURES)
def test_registry_config_path(fixture, version, schema):
    after = render(
        (FIXTURES / fixture).read_text(),
        Version(version),
        Knobs(registry_config_path="/etc/containerd/certs.d"),
    )
    assert value_at(after, PATHS["registry"][schema] + ("config_path",)) == "/etc/containerd/certs.d"


def test_registry_config_path_refuses_old_style_mirrors():
    text = (
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
        '  endpoint = ["https://mirror.internal"]\n'
    )
    with pytest.raises(ConfigError) as refused:
        render(text, Version("1.7.24"), Knobs(registry_config_path="/etc/containerd/certs.d"))
    assert str(refused.value) == (
        "has registry mirrors in [plugins.io.containerd.grpc.v1.cri.registry.mirrors]; containerd's CRI plugin does "
        "not load when they and config_path are both set. Move them to hosts.toml files (data key "
        "containerd_registries) and delete that table, or set containerd_registry_config_path to ''"
    )
    # Without config_path the operator's mirrors are left alone.
    assert "mirror.internal" in render(text, Version("1.7.24"), Knobs())
    # A document without the registry's tables gets them (nothing there to refuse).
    bare = render("version = 2\n", Version("1.7.24"), Knobs(registry_config_path="/etc/containerd/certs.d"))
    assert value_at(bare, PATHS["registry"][2] + ("config_path",)) == "/etc/containerd/certs.d"


@pytest.mark.parametrize("fixture, version, schema", SCHEMA_FIXTURES)
def test_extra_runtimes_in_each_schema(fixture, version, schema):
    runtimes = (
        Runtime("crun", binary_name="/usr/bin/crun"),
        Runtime("kata", runtime_type="io.containerd.kata.v2", options={"ConfigPath": "/etc/kata.toml"}),
    )
    after = render((FIXTURES / fixture).read_text(), Version(version), Knobs(runtimes=runtimes))
    base = PATHS["runtimes"][schema]
    assert value_at(after, base + ("crun", "runtime_type")) == "io.containerd.runc.v2"
    assert value_at(after, base + ("crun", "options", "BinaryName")) == "/usr/bin/crun"
    assert value_at(after, base + ("crun", "options", "SystemdCgroup")) is True, "same cgroup driver as runc"
    assert value_at(after, base + ("kata", "runtime_type")) == "io.containerd.kata.v2"
    assert value_at(after, base + ("kata", "options", "ConfigPath")) == "/etc/kata.toml"
    assert value_at(after, base + ("kata", "options", "SystemdCgroup")) is None
    assert value_at(after, RUNC_OPTIONS_PATH[schema] + ("SystemdCgroup",)) is True


def test_oom_score_is_top_level():
    after = render((FIXTURES / "default-2.1.9.toml").read_text(), Version("2.1.9"), Knobs(oom_score=-999))
    assert value_at(after, ("oom_score",)) == -999
    assert changed_lines((FIXTURES / "default-2.1.9.toml").read_text(), after)[0] == "- oom_score = 0"


def test_extra_toml_is_deep_merged_last():
    before = (FIXTURES / "operator-1.7.toml").read_text()
    extra = {
        "plugins": {
            "io.containerd.grpc.v1.cri": {"enable_cdi": True, "containerd": {"default_runtime_name": "crun"}}
        },
        "debug": {"level": "debug"},
    }
    after = render(before, Version("1.7.24"), Knobs(extra=extra))
    assert value_at(after, ("plugins", "io.containerd.grpc.v1.cri", "enable_cdi")) is True
    assert (
        value_at(after, ("plugins", "io.containerd.grpc.v1.cri", "containerd", "default_runtime_name"))
        == "crun"
    )
    assert value_at(after, ("debug", "level")) == "debug"
    # Merged, not replaced: the operator's GPU runtime and sandbox image are still there.
    assert (
        value_at(after, PATHS["runtimes"][2] + ("nvidia", "options", "BinaryName"))
        == "/usr/bin/nvidia-container-runtime"
    )
    assert value_at(after, PATHS["sandbox_image"][2]) == "registry.k8s.io/pause:3.9"


def test_extra_toml_can_override_what_a_knob_set():
    after = render(
        (FIXTURES / "default-1.7.24.toml").read_text(),
        Version("1.7.24"),
        Knobs(
            sandbox_image="a/pause:1",
            extra={"plugins": {"io.containerd.grpc.v1.cri": {"sandbox_image": "b/pause:2"}}},
        ),
    )
    assert value_at(after, PATHS["sandbox_image"][2]) == "b/pause:2"


def test_a_table_where_a_value_is_expected_is_refused():
    with pytest.raises(ConfigError, match="not a table"):
        render('version = 2\nplugins = "oops"\n', Version("1.7.24"), Knobs())


@pytest.mark.parametrize("fixture, version, schema", SCHEMA_FIXTURES)
def test_rendering_is_idempotent_with_every_knob(fixture, version, schema):
    knobs = Knobs(
        sandbox_image="x/pause:1",
        registry_config_path="/etc/containerd/certs.d",
        snapshotter="overlayfs",
        max_container_log_line_size=1024,
        oom_score=-999,
        runtimes=(Runtime("crun", binary_name="/usr/bin/crun"),),
        extra={"debug": {"level": "info"}},
    )
    once = render((FIXTURES / fixture).read_text(), Version(version), knobs)
    assert render(once, Version(version), knobs) == once


def test_a_config_read_many_times_is_parsed_once(monkeypatch):
    """The fan-out profile: tomlkit's parser was most of a no-op run's controller CPU, the same
    texts parsed seven times per host. Readers now share one parse per text (never mutated), by
    the standard library's faster reader: tomlkit only for what is edited."""
    import tomllib

    import tomlkit

    from containerd_deploy.data import config_toml
    from containerd_deploy.plan.verdict import configured_runtimes, sandbox_image

    calls = []
    real = tomllib.loads
    monkeypatch.setattr(tomllib, "loads", lambda text: calls.append(text) or real(text))
    monkeypatch.setattr(tomlkit, "parse", lambda text: pytest.fail("a reader parsed with tomlkit"))
    # A text no earlier test in this process parsed (the cache outlives a test; mutmut runs the
    # tests of many mutants in processes forked from one that ran them before).
    text = (
        f'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\nsandbox_image = "pause:x"\n# {uuid.uuid4()}\n'
    )
    for _ in range(3):
        assert sandbox_image(text, Version("1.7.24")) == "pause:x"
        assert configured_runtimes(text, Version("1.7.24")) == {}
        assert config_toml.runc_systemd_cgroup(text) is None
    assert calls == [text]
    # What a reader gets is its own copy: changing it changes nothing for the next reader.
    runtimes_text = (
        text + '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\nruntime_type = "x"\n'
    )
    configured_runtimes(runtimes_text, Version("1.7.24"))["runc"]["runtime_type"] = "changed"
    assert configured_runtimes(runtimes_text, Version("1.7.24"))["runc"]["runtime_type"] == "x"


# A rerun does not parse with tomlkit when the document is already as wanted: the check that
# decides it must agree with what tomlkit's edit would do, or a drifted value would stay.
_KNOB_CHOICES = {
    "systemd_cgroup": st.booleans(),
    "sandbox_image": st.sampled_from([None, "localhost/pause:test", "registry.k8s.io/pause:3.10"]),
    "registry_config_path": st.sampled_from([None, "/etc/containerd/certs.d", "/srv/certs.d"]),
    "snapshotter": st.sampled_from([None, "overlayfs", "native"]),
    "max_container_log_line_size": st.sampled_from([None, 16384, 65536]),
    "oom_score": st.sampled_from([None, 0, -999]),
    "restrict_oom_score_adj": st.sampled_from([None, True, False]),
    "runtimes": st.sampled_from(
        [(), (Runtime("crun", binary_name="/usr/bin/crun"),), (Runtime("kata", "io.containerd.kata.v2"),)]
    ),
    "default_runtime": st.sampled_from([None, "runc", "crun"]),
    "extra": st.sampled_from(
        [
            {},
            {"debug": {"level": "info"}},
            {"debug": {"level": "debug"}, "oom_score": 5},
            {"timeouts": {}},
            {"plugins": {"io.containerd.grpc.v1.cri": {"containerd": {"snapshotter": "native"}}}},
        ]
    ),
}
_knobs = st.fixed_dictionaries({}, optional=_KNOB_CHOICES).map(lambda chosen: Knobs(**chosen))
# Values a file's own edits drift to: another value, the same value of another type.
_DRIFTS = [
    ("^$", ""),  # none
    (r"SystemdCgroup = true", "SystemdCgroup = false"),
    (r"SystemdCgroup = (true|false)", "SystemdCgroup = 1"),
    (r"SystemdCgroup = (true|false)", 'SystemdCgroup = "true"'),
    (r"(?m)^oom_score = (-?\d+)", r"oom_score = \1.0"),
    (r"(?m)^oom_score = (-?\d+)", r"oom_score = '\1'"),
    (r'sandbox_image = "[^"]*"', 'sandbox_image = "registry.k8s.io/pause:3.10"'),
    (r'(?m)^(\s*)snapshotter = "overlayfs"', r'\1snapshotter = "native"'),
    (r"(?m)^(\s*)level = \"info\"", r'\1level = "debug"'),
]


@given(
    fixture=st.sampled_from(SCHEMA_FIXTURES),
    earlier=_knobs,
    later=_knobs,
    rerun=st.booleans(),
    disable_cri=st.booleans(),
    drift=st.sampled_from(_DRIFTS),
)
@example(  # found by it: containerd_config_extra overrides a knob's value with the file's own
    fixture=SCHEMA_FIXTURES[0],
    earlier=Knobs(extra={"oom_score": 5}),
    later=Knobs(oom_score=0, extra={"oom_score": 5}),
    rerun=False,
    disable_cri=False,
    drift=_DRIFTS[0],
)
@settings(max_examples=60, deadline=None)
def test_a_document_is_left_unparsed_exactly_when_editing_would_change_nothing(
    fixture, earlier, later, rerun, disable_cri, drift
):
    name, version, schema = fixture
    now = earlier if rerun else later
    text = render((FIXTURES / name).read_text(), Version(version), earlier)  # as an earlier run left it
    text = re.sub(drift[0], drift[1], text, count=1)  # then edited by hand, or by another tool
    if disable_cri:  # as Docker's containerd.io package ships it
        text = re.sub(r"(?m)^disabled_plugins = \[\]\n", "", text)
        text = text.replace("version = ", 'disabled_plugins = ["cri"]\nversion = ', 1)
    edits = config_toml._edits(schema, now)
    as_wanted = config_toml._as_wanted(config_toml._plain(text), edits)
    assert as_wanted == (config_toml._edited(text, edits) == text)
    if earlier == now and not disable_cri and drift == _DRIFTS[0]:
        assert as_wanted
    if as_wanted:
        assert render(text, Version(version), now) is text


def test_a_document_already_as_wanted_is_not_parsed_with_tomlkit(monkeypatch):
    import tomlkit

    knobs = Knobs(
        sandbox_image="localhost/pause:test", runtimes=(Runtime("crun", binary_name="/usr/bin/crun"),)
    )
    once = render((FIXTURES / "operator-2.1.toml").read_text(), Version("2.1.9"), knobs)
    monkeypatch.setattr(tomlkit, "parse", lambda text: pytest.fail("parsed a document already as wanted"))
    assert render(once, Version("2.1.9"), knobs) == once
    drifted = once.replace("SystemdCgroup = true", "SystemdCgroup = false")
    assert drifted != once
    with pytest.raises(pytest.fail.Exception, match="parsed a document already as wanted"):
        render(drifted, Version("2.1.9"), knobs)

"""Hostile and odd data values (property-based): each is refused before any host is asked
anything, by a DataError naming the host, the key and the fix, or it reaches the node exactly
as given: one argument to each program, the same bytes in each file, and never a secret in a
message.

Values are built from the pieces that break shell commands, unit files and paths: spaces,
quotes, `$()`, backticks, newlines, NUL, a leading `-`, `..`, `%`, backslashes, digits of
other scripts, and very long strings.
"""

import hashlib
import os
import posixpath
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from containerd_deploy.data.artifacts import Artifact
from containerd_deploy.data.registries import hosts_toml
from containerd_deploy.data.settings import DEFAULTS, resolve
from containerd_deploy.data.values import DataError, is_system_tree
from containerd_deploy.deploy.reset import purge_refusal
from containerd_deploy.facts.node import parse_node_state
from containerd_deploy.operations.files import file_absent
from containerd_deploy.plan.files import proxy_dropin_text, unit_text
from containerd_deploy.plan.run import artifact_is_installed
from containerd_deploy.remote.node_state import node_state_command
from containerd_deploy.remote.paths import hidden_copy
from containerd_deploy.remote.scripts import (
    fetch_artifacts_script,
    install_artifact_script,
    remove_artifact_script,
)

from .operations import commands, run_commands, shell_text
from .test_scripts import tarball

PIECES = [
    " ",
    "  ",
    "'",
    '"',
    "$(touch pwned)",
    "`touch pwned`",
    "$HOME",
    "\n",
    "\r",
    "\0",
    "\t",
    "-",
    "--x",
    "..",
    ".",
    "/",
    "//",
    "%",
    "%H",
    "%40",
    "\\",
    "\\n",
    ";",
    "&",
    "|",
    "*",
    "?",
    "~",
    ":",
    "@",
    "#",
    "=",
    "١٢",
    "٣",
    "é",
    "ß",
    "a",
    "bin",
    "x" * 300,
    "0",
    "9",
    "{",
    "}",
    "{mirror}",
    "[",
    "]",
]
hostile = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=4)), max_size=7).map("".join)
long_text = st.text(min_size=2000, max_size=6000)

PATH_KEYS = [
    "containerd_bin_dir",
    "runc_path",
    "cni_bin_dir",
    "containerd_config_path",
    "containerd_unit_path",
    "containerd_deploy_state_dir",
    "containerd_staging_dir",
    "containerd_registry_config_path",
]
# `make mutation` runs the unit tests once per mutant: fewer examples there (each surviving
# mutant runs every property), the full number in `make test`.
MUTATION = os.environ.get("CONTAINERD_DEPLOY_MUTATION") == "1"
EXAMPLES = settings(
    max_examples=30 if MUTATION else 300,
    derandomize=MUTATION,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
RUN_EXAMPLES = settings(
    max_examples=10 if MUTATION else 40,
    derandomize=MUTATION,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def refused_properly(error: DataError, key: str) -> None:
    message = str(error)
    assert message.startswith(f"node1: data key {key!r} ") and "Fix:" in message, message


def accept(key: str, value):
    """The resolved settings, or None when the value was refused properly."""
    try:
        return resolve("node1", {key: value})
    except DataError as error:
        refused_properly(error, key)
        return None


def no_control(text: str) -> bool:
    return not any(
        ord(char) < 32 or 127 <= ord(char) < 160 or (char.isspace() and char != " ") for char in text
    )


@EXAMPLES
@given(key=st.sampled_from(PATH_KEYS), tail=st.one_of(hostile, long_text))
def test_paths_are_refused_or_plain_absolute_paths(key, tail):
    settings_ = accept(key, "/" + tail)
    if settings_ is None:
        return
    path = getattr(settings_, key)
    assert path.startswith("/") and path != "/" and no_control(path) and "\\" not in path
    assert ".." not in path.split("/") and posixpath.normpath(path) == path
    assert posixpath.normpath("/" + tail) in (path, "/" + path)  # the same path as given
    if key in ("containerd_deploy_state_dir", "containerd_staging_dir"):
        assert not is_system_tree(path), "a directory the deploy locks down and empties"


@EXAMPLES
@given(tail=hostile)
def test_a_path_reaches_rm_as_one_argument(tmp_path_factory, tail):
    settings_ = accept("containerd_config_path", "/" + tail)
    if settings_ is None:
        return
    path = settings_.containerd_config_path
    yielded = commands(file_absent, path=path, present=True)
    calls = run_commands(tmp_path_factory.mktemp("argv"), [shell_text(c) for c in yielded], ("rm", "touch"))
    assert calls == [["rm", "-f", "--", path]]


def release_at(path: Path, files: dict[str, bytes]) -> Artifact:
    """A containerd 1.7.11 release tarball holding `files`, at `path` (a file:// URL)."""
    return Artifact("containerd", "1.7.11", "amd64", f"file://{path}", tarball(path, files))


@RUN_EXAMPLES
@given(name=hostile)
def test_install_manifest_rerun_and_removal_hold_for_any_accepted_directory(tmp_path_factory, name):
    """Regression: manifests were parsed by whitespace-separated fields, so a bin dir with a
    space made every run reinstall (and restart) and a reset leave the files behind."""
    root = tmp_path_factory.mktemp("node")
    settings_ = accept("containerd_bin_dir", f"{root}/{name}")
    if settings_ is None:
        return
    bin_dir = settings_.containerd_bin_dir
    artifact = release_at(root / "mirror.tar.gz", {"containerd": b"daemon", "ctr": b"client"})
    state_dir, staging = str(root / "state"), str(root / "staging")
    result = subprocess.run(
        ["sh", "-c", install_artifact_script(artifact, bin_dir, staging, state_dir)],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    assert Path(bin_dir, "containerd").read_bytes() == b"daemon"
    facts = subprocess.run(
        ["sh", "-c", node_state_command(bin_dir, str(root / "config.toml"), str(root / "unit"), state_dir)],
        capture_output=True,
        text=True,
        cwd=root,
    )
    manifest = parse_node_state(facts.stdout.splitlines()).manifests["containerd"]
    assert artifact_is_installed(manifest, artifact, bin_dir), "a rerun would reinstall and restart"
    assert (
        subprocess.run(["sh", "-c", remove_artifact_script("containerd", state_dir)], cwd=root).returncode
        == 0
    )
    assert not Path(bin_dir, "containerd").exists() and not Path(bin_dir, "ctr").exists()
    assert not (root / "pwned").exists()


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` (links not followed) -> its bytes (None: a directory or link)."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = (
            path.read_bytes() if path.is_file() and not path.is_symlink() else None
        )
    return found


# A file name settings accept in a path, as hostile as they allow (never "." or "..": "n" first).
path_name = st.lists(
    st.one_of(
        st.sampled_from(
            [
                piece
                for piece in PIECES
                if piece.isprintable() and "/" not in piece and "\\" not in piece and len(piece) < 50
            ]
        ),
        st.text(
            st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="/\\"),
            max_size=4,
        ),
    ),
    max_size=5,
).map(lambda pieces: "n" + "".join(pieces))


@RUN_EXAMPLES
@given(names=st.lists(path_name, min_size=5, max_size=5))
def test_every_node_script_touches_only_its_own_paths_whatever_they_hold(tmp_path_factory, names):
    """#26: every node-side script that takes a path the operator chose, rendered with paths
    holding any character settings accept and run in a sandbox, in a run's order (fetch,
    install, write, keep, the node fact, leftovers, then a reset's removals): each makes,
    changes and removes its own paths and nothing else (a neighbour and a decoy stay as they
    were, nothing ran)."""
    from containerd_deploy.remote import rollback
    from containerd_deploy.remote.scripts import (
        remove_paths_script,
        remove_staging_leftovers_script,
        remove_tree_script,
        write_file_script,
    )

    root = tmp_path_factory.mktemp("node")
    keys = [
        "containerd_bin_dir",
        "runc_path",
        "containerd_deploy_state_dir",
        "containerd_staging_dir",
        "containerd_config_path",
    ]
    paths = {}
    for key, name in zip(keys, names, strict=True):
        resolved = accept(key, f"{root}/{key}/{name}")
        assume(resolved is not None)
        paths[key] = getattr(resolved, key)
    bin_dir, runc_path = paths["containerd_bin_dir"], paths["runc_path"]
    state, staging, config = (
        paths["containerd_deploy_state_dir"],
        paths["containerd_staging_dir"],
        paths["containerd_config_path"],
    )
    (root / "neighbour").mkdir()
    (root / "neighbour" / "keep").write_bytes(b"not the deploy's")
    decoy = root / "containerd_data"
    decoy.mkdir()
    (decoy / "keep").write_bytes(b"not the deploy's either")
    runc_file = root / "neighbour" / "runc.amd64"
    runc = Artifact("runc", "1.1.11", "amd64", f"file://{runc_file}", hashlib.sha256(b"runc").hexdigest())
    runc_file.write_bytes(b"runc")
    release = release_at(root / "neighbour" / "containerd.tar.gz", {"containerd": b"d", "ctr": b"c"})
    untouched = {
        key: value for key, value in _tree(root).items() if key.startswith(("neighbour", "containerd_data"))
    }

    def run(script: str) -> None:
        result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, cwd=root / "neighbour")
        assert result.returncode == 0, result.stderr

    run(fetch_artifacts_script([release, runc], staging))
    run(install_artifact_script(release, bin_dir, staging, state, uploaded=f"{staging}/.fetched-containerd"))
    run(install_artifact_script(runc, runc_path, staging, state, uploaded=f"{staging}/.fetched-runc"))
    run(write_file_script("version = 2\n", hidden_copy(config), config, "644"))
    assert Path(runc_path).read_bytes() == b"runc" and Path(bin_dir, "ctr").read_bytes() == b"c"
    assert Path(config).read_text() == "version = 2\n"
    facts = subprocess.run(
        [
            "sh",
            "-c",
            node_state_command(
                bin_dir,
                config,
                f"{root}/unit",
                state,
                staging_dir=staging,
                install_dirs=(posixpath.dirname(runc_path),),
                trusted_dirs=(bin_dir, state, staging, posixpath.dirname(config)),
            ),
        ],
        capture_output=True,
        text=True,
        cwd=root / "neighbour",
    )
    node = parse_node_state(facts.stdout.splitlines())
    assert artifact_is_installed(node.manifests["runc"], runc, runc_path)
    assert node.hidden_leftovers == [] and node.staging_leftovers == [] and node.untrusted_directories == []
    # (A release is kept after the node is read: its links change the files' identities.)
    run(
        rollback.keep_release_script(
            state, (runc_path, f"{bin_dir}/containerd"), (config,), "1.7.11", "a" * 64
        )
    )
    assert Path(state, "previous-release", "version").read_text() == "1.7.11\n"
    run(remove_staging_leftovers_script(staging))
    run(rollback.drop_kept_script(state))
    run(remove_artifact_script("runc", state))
    run(remove_artifact_script("containerd", state))
    run(remove_paths_script([config]))
    run(remove_tree_script(state))
    assert not Path(runc_path).exists() and not Path(bin_dir, "ctr").exists() and not Path(config).exists()
    assert not Path(state).exists() and not Path(staging).exists()
    after = _tree(root)
    assert {
        key: value for key, value in after.items() if key.startswith(("neighbour", "containerd_data"))
    } == untouched
    assert not [key for key in after if "pwned" in key.rsplit("/", 1)[-1] and "pwned" not in "".join(names)]


@EXAMPLES
@given(name=st.one_of(hostile, st.sampled_from([".", "..", "...", "a/..", "_default", "docker.io:5000"])))
def test_registry_names_are_refused_or_stay_one_directory_under_certs_d(name):
    """Regression: `.` and `..` passed and put hosts.toml (with credentials) outside certs.d."""
    settings_ = accept("containerd_registries", {name: {"mirrors": [{"host": "https://mirror.internal"}]}})
    if settings_ is None:
        return
    (registry,) = settings_.containerd_registries
    path = posixpath.normpath(f"/etc/containerd/certs.d/{registry}/hosts.toml")
    assert posixpath.dirname(posixpath.dirname(path)) == "/etc/containerd/certs.d"
    assert registry not in (".", "..") and "/" not in registry


SECRET = "hunter2-S3CR3T"


@EXAMPLES
@given(shape=st.sampled_from(["name", "host", "header", "headers", "field", "server", "spec"]), junk=hostile)
def test_refusals_of_registry_data_never_show_a_header_value(shape, junk):
    """Regression: DataError printed whole registry specs, Authorization headers included."""
    header = {"Authorization": f"Basic {SECRET}"}
    mirror = {"host": "https://mirror.internal", "headers": header}
    value = {
        "name": {junk + "/": {"mirrors": [mirror]}},
        "host": {"docker.io": {"mirrors": [{**mirror, "host": junk}]}},
        "header": {"docker.io": {"mirrors": [{**mirror, "headers": {junk or "\n": SECRET + junk}}]}},
        "headers": {"docker.io": {"mirrors": [{**mirror, "headers": [SECRET, junk]}]}},
        "field": {"docker.io": {"mirrors": [{**mirror, junk or "x": 1}]}},
        "server": {"docker.io": {"server": junk, "mirrors": [mirror]}},
        "spec": {"docker.io": {"mirrors": [mirror], "endpoint": SECRET}},
    }[shape]
    try:
        resolve("node1", {"containerd_registries": value})
    except DataError as error:
        refused_properly(error, "containerd_registries")
        assert SECRET not in str(error) and SECRET not in repr(error)


@EXAMPLES
@given(key=st.sampled_from(["containerd_http_proxy", "containerd_https_proxy"]), junk=hostile)
def test_refusals_of_proxies_never_show_the_password(key, junk):
    try:
        resolve("node1", {key: f"http://user:{SECRET}@proxy{junk}:3128"})
    except DataError as error:
        refused_properly(error, key)
        assert SECRET not in str(error)


def without_specifiers(word: str) -> str:
    """A word as systemd reads it after specifiers: `%%` is `%`; any other `%x` is expanded
    (or, unknown, makes systemd drop the line), which the deploy must never write."""
    out, chars = [], iter(word)
    for char in chars:
        if char == "%":
            following = next(chars, "")
            assert following == "%", f"systemd would expand %{following} in {word!r}"
        out.append(char)
    return "".join(out)


def systemd_values(dropin: str) -> list[str]:
    """The Environment= assignments as systemd reads them: double-quoted words with C escapes,
    then specifiers."""
    values = []
    for line in dropin.splitlines():
        if line.startswith("Environment="):
            values += [without_specifiers(word) for word in shlex.split(line[len("Environment=") :])]
    return values


@EXAMPLES
@given(
    key=st.sampled_from(["containerd_http_proxy", "containerd_https_proxy", "containerd_no_proxy"]),
    password=hostile,
    tail=hostile,
)
def test_proxy_values_reach_the_drop_in_exactly(key, password, tail):
    """Regression: `%` in a percent-encoded password made systemd drop the variable, `%H` was
    expanded."""
    value = f"http://user:{password}@proxy.internal:3128{tail}" if key != "containerd_no_proxy" else tail
    settings_ = accept(key, value)
    if settings_ is None or getattr(settings_, key) is None:
        return
    name = key.removeprefix("containerd_").upper()
    assert systemd_values(proxy_dropin_text(settings_)) == [f"{name}={value}", f"{name.lower()}={value}"]


@EXAMPLES
@given(
    value=st.one_of(
        hostile, st.integers(), st.sampled_from(["1024:512", "١٠٢٤", "0", "infinity:1", "1:infinity"])
    )
)
def test_limit_nofile_is_refused_or_a_valid_systemd_limit(value):
    """Regression: non-ASCII digits and soft > hard passed."""
    settings_ = accept("containerd_limit_nofile", value)
    if settings_ is None or settings_.containerd_limit_nofile is None:
        return
    soft, _, hard = settings_.containerd_limit_nofile.partition(":")
    numbers = [float("inf") if part == "infinity" else int(part) for part in (soft, hard or soft)]
    assert all(part == "infinity" or (part.isascii() and part.isdigit()) for part in (soft, hard or soft))
    assert 0 < numbers[0] <= numbers[1]
    assert f"LimitNOFILE={settings_.containerd_limit_nofile}\n" in unit_text(
        "/usr/local/bin", settings_.containerd_limit_nofile
    )


@EXAMPLES
@given(
    key=st.sampled_from(["containerd_version", "runc_version", "cni_plugins_version", "crictl_version"]),
    value=st.one_of(hostile, st.sampled_from(["١.٧.١١", "1.٧.11", "v1.7.11", "1.7.11\n"])),
)
def test_versions_are_refused_or_ascii_releases(key, value):
    settings_ = accept(key, value)
    version = settings_ and getattr(settings_, key)
    if version:
        assert str(version).isascii() and all(part.isdigit() for part in str(version).split("."))


@EXAMPLES
@given(
    key=st.sampled_from(["artifact_mirror", "containerd_download_url", "runc_download_url"]),
    value=st.one_of(
        hostile,
        hostile.map(lambda tail: "https://mirror.internal/" + tail),
        hostile.map(lambda head: head + "https://m/x"),
        st.sampled_from(
            [
                "-o/etc/passwd",
                "https://user:pw@m",
                "file:///srv",
                "ftp://m",
                "{mirror}/{version.__class__}",
                "https://-x/",
                "https://m/a b",
            ]
        ),
    ),
)
def test_urls_are_refused_or_reach_curl_after_its_options(tmp_path_factory, key, value):
    """Regression: URLs were not validated and curl/wget got them without `--`: a value starting
    with `-` became an option."""
    settings_ = accept(key, value)
    if settings_ is None:
        return
    url = getattr(settings_, "containerd_download_url" if key == "artifact_mirror" else key).format(
        mirror=settings_.artifact_mirror, version="1.7.11", arch="amd64"
    )
    assert url.split("://", 1)[0] in ("http", "https") and "@" not in url.split("/")[2]
    artifact = Artifact("containerd", "1.7.11", "amd64", url, "a" * 64)
    work = tmp_path_factory.mktemp("fetch")
    calls = run_commands(work, [fetch_artifacts_script([artifact], str(work / "staging"))], ("curl",))
    assert calls and calls[0][-2:] == ["--", url]


@EXAMPLES
@given(
    root=st.one_of(
        hostile.map(lambda tail: "/" + tail),
        st.sampled_from(
            [
                "/",
                "/usr",
                "/run",
                "/var/lib",
                "/var/lib/../..",
                "/etc/containerd",
                "/usr/local/bin",
                "/var/lib/containerd",
                "/data/containerd/",
                "//var",
            ]
        ),
    )
)
def test_purged_deletes_only_a_dedicated_directory(root):
    """Regression: `purged` deleted whatever root the config named: /usr, /run, a path with `..`."""
    deploy_paths = ("/usr/local/bin", "/usr/local/sbin/runc", "/etc/containerd", "/var/lib/containerd-deploy")
    if purge_refusal(root, deploy_paths) is not None:
        return
    normal = posixpath.normpath(root)
    assert not is_system_tree(normal) and ".." not in root.split("/")
    assert not any(path == normal or path.startswith(normal + "/") for path in deploy_paths)


@EXAMPLES
@given(value=hostile)
def test_free_text_keys_reach_config_toml_exactly(value):
    import tomlkit

    from containerd_deploy.data.config_toml import PATHS, value_at
    from containerd_deploy.plan.files import desired_config

    settings_ = accept("containerd_sandbox_image", value)
    if settings_ is None or settings_.containerd_sandbox_image is None:
        return
    base = (Path(__file__).resolve().parents[1] / "fixtures" / "config" / "default-1.7.24.toml").read_text()
    settings_ = resolve("node1", {"containerd_sandbox_image": value, "containerd_version": "1.7.24"})
    text = desired_config(settings_, base)
    assert value_at(text, PATHS["sandbox_image"][2]) == value
    tomlkit.parse(text)


@EXAMPLES
@given(path=hostile, handler=hostile, directory=hostile, version=st.sampled_from(["1.7.24", "2.1.9"]))
def test_gpu_keys_reach_config_toml_exactly_or_are_refused(path, handler, directory, version):
    """The nvidia preset's binary, a default handler and CDI directories: refused with the key
    named, or written as given (in the schema of the version), checked on the node quoted."""
    import tomlkit

    from containerd_deploy.data.config_toml import PATHS, value_at
    from containerd_deploy.data.settings import runtime_handlers
    from containerd_deploy.plan.files import desired_config
    from containerd_deploy.plan.verdict import handler_binaries_to_check

    data = {
        "containerd_version": version,
        "containerd_nvidia_runtime": True,
        "containerd_nvidia_runtime_path": path,
        "containerd_runtimes": [{"name": "crun", "binary_name": "/usr/bin/crun"}],
        "containerd_default_runtime": handler,
        "containerd_cdi_spec_dirs": [directory, "/etc/cdi"],
    }
    try:
        settings_ = resolve("node1", data)
    except DataError as error:
        assert error.key in (
            "containerd_nvidia_runtime_path",
            "containerd_default_runtime",
            "containerd_cdi_spec_dirs",
        ), error
        refused_properly(error, error.key)
        return
    schema = 2 if version.startswith("1.") else 3
    base = f"version = {schema}\n"
    text = desired_config(settings_, base)
    tomlkit.parse(text)
    runtimes = value_at(text, PATHS["runtimes"][schema])
    assert runtimes["nvidia"]["options"]["BinaryName"] == settings_.containerd_nvidia_runtime_path
    assert settings_.containerd_nvidia_runtime_path == "/" + posixpath.normpath(path).lstrip("/")
    assert value_at(text, PATHS["default_runtime_name"][schema]) == settings_.containerd_default_runtime
    assert settings_.containerd_default_runtime in (None, "runc", "crun", "nvidia")
    assert value_at(text, PATHS["cdi_spec_dirs"][schema]) == list(settings_.containerd_cdi_spec_dirs)
    # The preflight asks for the binary by its exact path, one quoted word in the node fact.
    binaries = tuple(binary for _, binary in handler_binaries_to_check(runtime_handlers(settings_)))
    assert binaries == ("/usr/bin/crun", settings_.containerd_nvidia_runtime_path)
    command = node_state_command("/usr/local/bin", "/c", "/u", "/s", handler_binaries=binaries)
    assert shlex.quote(settings_.containerd_nvidia_runtime_path) in command


def test_every_data_key_is_covered_by_a_property_or_a_choice():
    """A new data key needs its hostile-value property here (or is a choice/bool/number)."""
    covered = set(PATH_KEYS) | {
        "containerd_registries",
        "containerd_http_proxy",
        "containerd_https_proxy",
        "containerd_no_proxy",
        "containerd_limit_nofile",
        "containerd_version",
        "runc_version",
        "cni_plugins_version",
        "crictl_version",
        "artifact_mirror",
        "containerd_download_url",
        "runc_download_url",
        "containerd_sandbox_image",
        "containerd_nvidia_runtime_path",
        "containerd_default_runtime",
        "containerd_cdi_spec_dirs",
        "containerd_restart_hook_before",  # test_restart_guard.py
        "containerd_restart_hook_after",
        "containerd_images",  # test_images.py
        "containerd_image_archives",  # test_image_archives.py
    }
    # Choices, booleans, numbers, checksums and structures with tests of their own.
    others = {
        "containerd_state",
        "containerd_distro_package",
        "containerd_sha256",
        "runc_sha256",
        "cni_plugins_sha256",
        "crictl_sha256",
        "cni_plugins_download_url",
        "crictl_download_url",
        "artifact_source",
        "artifact_allow_file_urls",
        "artifact_cache_dir",
        "artifact_trust_mirror_checksums",
        "containerd_config_base",
        "containerd_systemd_cgroup",
        "containerd_snapshotter",
        "containerd_max_container_log_line_size",
        "containerd_oom_score",
        "containerd_restrict_oom_score_adj",
        "containerd_runtimes",
        "containerd_config_extra",
        "containerd_ready_timeout",
        "containerd_verify",
        "containerd_verify_interval",
        "containerd_nvidia_runtime",
        "containerd_enable_cdi",
        "containerd_rollback",
        "containerd_restart_hook_timeout",
        "containerd_report",  # a file on the controller: test_report.py
        "containerd_images_sandbox",
    }
    assert covered | others == set(DEFAULTS)


def test_hosts_toml_of_an_accepted_registry_parses_back():
    import tomlkit

    settings_ = resolve(
        "node1",
        {
            "containerd_registries": {
                "docker.io": {
                    "mirrors": [
                        {"host": "https://mirror.internal", "headers": {"Authorization": 'Basic "q\\%'}}
                    ]
                }
            }
        },
    )
    text = hosts_toml("docker.io", settings_.containerd_registries["docker.io"])
    assert tomlkit.parse(text)["host"]["https://mirror.internal"]["header"]["Authorization"] == 'Basic "q\\%'


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
@pytest.mark.parametrize(
    "bin_name, proxy, no_proxy, limit",
    [
        ("my bin%x$y", 'http://u:p%40s"s\\@proxy:3128', "a,%H,.svc", "1024:2048"),
        ("bin", "http://proxy:3128/%Z", "%%", "infinity"),
    ],
)
def test_systemd_reads_the_unit_and_drop_in_without_a_complaint(tmp_path, bin_name, proxy, no_proxy, limit):
    """What systemd itself says of the files the deploy writes from hostile values: a `%` it
    cannot resolve makes it drop the whole assignment, logged only; a program path it cannot
    find (regression, #26: a `$` in containerd_bin_dir was doubled) does not start."""
    settings_ = resolve(
        "node1",
        {
            "containerd_bin_dir": str(tmp_path / bin_name),
            "containerd_http_proxy": proxy,
            "containerd_no_proxy": no_proxy,
            "containerd_limit_nofile": limit,
        },
    )
    (tmp_path / bin_name).mkdir()
    shutil.copy("/bin/true", tmp_path / bin_name / "containerd")
    units = tmp_path / "units"
    (units / "containerd.service.d").mkdir(parents=True)
    (units / "containerd.service").write_text(
        unit_text(settings_.containerd_bin_dir, settings_.containerd_limit_nofile)
    )
    (units / "containerd.service.d" / "http-proxy.conf").write_text(proxy_dropin_text(settings_))
    result = subprocess.run(
        ["systemd-analyze", "verify", "containerd.service"],
        capture_output=True,
        text=True,
        cwd=units,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"},
    )
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if str(tmp_path) in line]
    assert complaints == []
    assert systemd_values(proxy_dropin_text(settings_))[0] == f"HTTP_PROXY={proxy}"


values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), hostile, long_text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(hostile, st.integers()), inner, max_size=4)
    ),
    max_leaves=12,
)


@EXAMPLES
@given(key=st.sampled_from(sorted(DEFAULTS)), value=values)
def test_any_value_of_any_key_is_accepted_or_refused_by_name(key, value):
    """Every data key, any shape of value: a DataError naming the host, the key and the fix, or
    settings; never another exception (a traceback instead of a refusal)."""
    accept(key, value)


# "S3" first: no credential is a word of the text around it (a user name, a host), however drawn.
CREDENTIAL_VALUE = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789+=_-", min_size=6, max_size=30
).map(lambda value: "S3" + value)
# Each way a credential reaches text the deploy shows: a refusal quoting a value, a diff of a
# TOML file, what a hook printed.
CREDENTIAL_FORMS = [
    "{'Authorization': 'Basic %s'}",
    '{"headers": {"X-Auth-Token": "%s"}}',
    'password = "%s"',
    '  "Authorization" = "Bearer %s"',
    "Authorization: Bearer %s",
    "error: token=%s rejected",
    "client_secret: %s",
    "accessToken: %s",
    "https://user:%s@proxy.internal:3128",
    "auth = '%s'",
    # A hook's command line as the dry run, its failure and the rollout's report show it.
    "curl -fsS -H 'Authorization: Bearer %s' https://api.internal/drain",
    "['curl', '-H', 'Authorization: Basic %s']",
    "curl -H 'Authorization: Splunk %s' https://hec.internal",
    "curl -H 'PRIVATE-TOKEN: %s' https://git.internal",
    'curl -H "X-Vault-Token: %s" https://vault.internal',
    "kubectl --token %s drain node1",
    "curl -u deploy:%s https://api.internal",
]


@EXAMPLES
@given(
    secret=CREDENTIAL_VALUE,
    form=st.sampled_from(CREDENTIAL_FORMS),
    before=st.sampled_from(["", "node1: ", "  - "]),
)
def test_a_credential_is_hidden_in_whatever_form_it_is_shown(secret, form, before):
    """Regression (#25): three redaction rules disagreed; a hook's `Authorization: Bearer …` was
    shown whole."""
    from containerd_deploy.data.values import redact_secrets

    shown = redact_secrets(before + form % secret)
    assert secret not in shown and "***" in shown and shown.startswith(before)


@pytest.mark.parametrize(
    "text",
    [
        "error: unauthorized: authentication required",
        'username = "me"',
        "plain = 1",
        "The bearer of this message: the token is not valid",
        "node1: data key 'containerd_registries' has a header 'Authorization' for https://m (value not shown)",
    ],
)
def test_text_without_a_credential_is_shown_as_it_is(text):
    from containerd_deploy.data.values import redact_secrets

    assert redact_secrets(text) == text

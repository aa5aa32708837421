"""Images from the controller (containerd_images): references read as containerd reads them, the
plan's images, the controller's cache (skopeo replaced by a stand-in that writes a real OCI
layout), the node-side import script run in a sandbox with a stand-in ctr, and the operations."""

import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from packaging.version import Version
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand

from containerd_deploy.conformance import oci
from containerd_deploy.controller import images as cache
from containerd_deploy.controller.cache import FetchError
from containerd_deploy.data.images import parse, parse_reference, sandbox_names, with_sandbox_image
from containerd_deploy.data.settings import resolve
from containerd_deploy.data.values import DataError
from containerd_deploy.operations.images import images_fetched, images_imported
from containerd_deploy.plan.run import images_brought, images_missing, lists_images
from containerd_deploy.remote.scripts import import_images_script, uploaded_image_path

from .operations import commands
from .test_hostile_values import EXAMPLES, accept, hostile

DIGEST = "sha256:" + "a" * 64
PINNED = f"docker.io/library/nginx:1.27@{DIGEST}"


@pytest.mark.parametrize(
    "text, repository, tag, digest",
    [
        ("nginx", "docker.io/library/nginx", "latest", None),
        ("nginx:1.27", "docker.io/library/nginx", "1.27", None),
        (f"nginx@{DIGEST}", "docker.io/library/nginx", None, DIGEST),
        (f"nginx:1.27@{DIGEST}", "docker.io/library/nginx", "1.27", DIGEST),
        ("bitnami/redis:7", "docker.io/bitnami/redis", "7", None),
        ("docker.io/nginx", "docker.io/library/nginx", "latest", None),
        ("index.docker.io/nginx:1", "docker.io/library/nginx", "1", None),
        ("index.docker.io/team/app", "docker.io/team/app", "latest", None),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause", "3.10", None),
        (
            "localhost/containerd-deploy/pause:conformance",
            "localhost/containerd-deploy/pause",
            "conformance",
            None,
        ),
        ("127.0.0.1:5000/a/b:v1", "127.0.0.1:5000/a/b", "v1", None),
        ("Registry/x", "Registry/x", "latest", None),  # an uppercase first part is a registry
        ("my-registry:443/team/app", "my-registry:443/team/app", "latest", None),
    ],
)
def test_a_reference_is_normalized_as_containerd_and_a_kubelet_name_it(text, repository, tag, digest):
    reference = parse_reference(text)
    assert (reference.repository, reference.tag, reference.digest) == (repository, tag, digest)
    assert parse_reference(str(reference)) == reference


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "is not a text"),
        ("nginx@sha256:abc", "has the digest 'sha256:abc', not sha256: and 64 lowercase hex digits"),
        (f"nginx@sha512:{'a' * 64}", "not sha256:"),
        ("nginx:-x", "has the tag '-x', not a tag"),
        ("Nginx", "has the repository path 'Nginx'"),
        ("reg_istry.io/x", "names the registry 'reg_istry.io', not a host[:port]"),
        ("a//b", "has the repository path"),
        (f"{'a' * 250}.io/{'b' * 10}", "characters, over 255"),
    ],
)
def test_a_reference_that_names_no_image_says_why(text, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_reference(text)


def test_names_are_those_a_cri_pull_gives_and_the_registry_is_asked_by_digest():
    reference = parse_reference(PINNED)
    # The CRI drops a tag beside a digest: a node's `nginx:1.27` (pulled elsewhere) is never moved.
    assert reference.names == (f"docker.io/library/nginx@{DIGEST}",)
    assert reference.source == f"docker.io/library/nginx@{DIGEST}"
    assert parse_reference(f"nginx@{DIGEST}").names == (f"docker.io/library/nginx@{DIGEST}",)
    tagged = parse_reference("registry.k8s.io/pause:3.10")
    assert tagged.names == ("registry.k8s.io/pause:3.10",) and tagged.source == "registry.k8s.io/pause:3.10"


def test_the_data_lists_references_pinned_by_digest_once_each():
    assert parse("node1", None) == () and parse("node1", []) == ()
    assert parse("node1", PINNED) == (parse_reference(PINNED),)
    assert parse("node1", [PINNED, PINNED.replace("docker.io/library/", "")]) == (parse_reference(PINNED),)
    with pytest.raises(DataError) as refused:
        parse("node1", ["nginx:1.27"])
    assert str(refused.value) == (
        "node1: data key 'containerd_images' has 'nginx:1.27', which is not pinned by digest: a tag can name "
        "other content tomorrow, and the nodes would then differ by when each was deployed. Fix: list "
        'references pinned by digest, e.g. containerd_images=["registry.k8s.io/pause:3.10@sha256:<64 hex '
        'digits>"] (skopeo inspect docker://REF prints the digest)'
    )
    with pytest.raises(DataError, match="has 'nginx@x', which has the digest 'x'"):
        parse("node1", ["nginx@x"])
    with pytest.raises(DataError, match="is a mapping, not a list of image references"):
        parse("node1", {"nginx": DIGEST})


SAFE_NAME = re.compile(r"[A-Za-z0-9._:/@-]+")


@EXAMPLES
@given(name=hostile, tag=hostile)
def test_a_hostile_reference_is_refused_or_reaches_the_node_as_plain_words(name, tag):
    """Whatever the data holds, an accepted image's names hold no character a shell reads; the
    import script quoting them is valid shell."""
    settings_ = accept("containerd_images", [f"{name}:{tag}@{DIGEST}"])
    if settings_ is None:
        return
    [image] = settings_.containerd_images
    assert all(SAFE_NAME.fullmatch(found) for found in image.names), image.names
    script = import_images_script(
        "/var/cache/containerd-deploy", "/usr/local/bin", [("/x/.fetched-image-0", "b" * 64, image.names)]
    )
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0


@given(
    domain=st.sampled_from(["", "docker.io/", "registry.k8s.io/", "localhost:5000/", "10.0.0.1:443/"]),
    path=st.from_regex(r"[a-z0-9]{1,6}([._-][a-z0-9]{1,4}){0,2}(/[a-z0-9]{1,5}){0,2}", fullmatch=True),
    tag=st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True)),
    digest=st.one_of(st.none(), st.just(DIGEST)),
)
def test_a_normalized_reference_reads_back_the_same(domain, path, tag, digest):
    # (a first part with a dot is a registry's name, as Docker reads it)
    assume(domain or "/" not in path or "." not in path.split("/")[0])
    text = domain + path + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    reference = parse_reference(text)
    assert parse_reference(str(reference)) == reference
    assert reference.repository.endswith(path) and reference.digest == digest
    assert reference.tag == (tag or (None if digest else "latest"))


def test_the_sandbox_image_comes_unless_a_listed_image_gives_its_name():
    listed = (parse_reference(PINNED),)
    pause = parse_reference("registry.k8s.io/pause:3.10")
    assert with_sandbox_image(listed, "registry.k8s.io/pause:3.10") == (*listed, pause)
    assert with_sandbox_image(listed, None) == listed
    assert with_sandbox_image(listed, "Not A Reference") == listed
    pinned_pause = parse_reference(f"registry.k8s.io/pause:3.10@{DIGEST}")
    assert with_sandbox_image((pinned_pause,), f"registry.k8s.io/pause:3.10@{DIGEST}") == (pinned_pause,)
    # By its tag the config names another name than a listed digest: the sandbox image still comes.
    assert with_sandbox_image((pinned_pause,), "registry.k8s.io/pause:3.10")[-1] == pause


CONFIG = 'version = 3\n[plugins."io.containerd.cri.v1.images".pinned_images]\nsandbox = "registry.k8s.io/pause:3.10"\n'


def test_which_images_the_controller_brings_and_which_the_node_lacks():
    node_only = resolve("node1", {"containerd_images": [PINNED], "containerd_version": "2.1.9"})
    assert lists_images(node_only) and images_brought(node_only, CONFIG) == (parse_reference(PINNED),)
    both = resolve(
        "node1",
        {"containerd_images": [PINNED], "containerd_version": "2.1.9", "artifact_source": "controller"},
    )
    pause = parse_reference("registry.k8s.io/pause:3.10")
    assert images_brought(both, CONFIG) == (parse_reference(PINNED), pause)
    # A config made on the node from the new containerd's defaults: its default, or the data's.
    assert images_brought(both, None) == (parse_reference(PINNED), pause)
    newer = resolve("node1", {"containerd_version": "2.2.1", "artifact_source": "controller"})
    assert images_brought(newer, None) == (parse_reference("registry.k8s.io/pause:3.10.1"),)
    given = resolve(
        "node1", {"artifact_source": "controller", "containerd_sandbox_image": "my.registry/pause:1"}
    )
    assert images_brought(given, None) == (parse_reference("my.registry/pause:1"),)
    # A config that names none: the one containerd then uses.
    assert images_brought(both, "version = 3\n") == (parse_reference(PINNED), pause)
    unknown = resolve(
        "node1",
        {
            "containerd_version": "2.9.0",
            "containerd_sha256": {"2.9.0": "a" * 64},
            "artifact_source": "controller",
        },
    )
    assert images_brought(unknown, None) == () and images_brought(unknown, CONFIG) == (pause,)
    off = resolve(
        "node1",
        {"containerd_version": "2.1.9", "artifact_source": "controller", "containerd_images_sandbox": False},
    )
    assert not lists_images(off) and images_brought(off, CONFIG) == ()
    assert not lists_images(resolve("node1", {}))
    assert lists_images(resolve("node1", {"artifact_source": "controller"}))
    brought = images_brought(both, CONFIG)
    assert images_missing(brought, frozenset()) == brought
    has_nginx = frozenset(parse_reference(PINNED).names)
    assert images_missing(brought, has_nginx) == (pause,)
    # Under the tag alone, a pinned image is not the one listed: imported (by its digest).
    assert images_missing(brought, frozenset({"docker.io/library/nginx:1.27", *pause.names})) == brought[:1]


@pytest.mark.parametrize(
    "version, image",
    [
        ("1.6.0", "k8s.gcr.io/pause:3.6"),
        ("1.6.8", "k8s.gcr.io/pause:3.6"),
        ("1.6.9", "registry.k8s.io/pause:3.6"),
        ("1.6.38", "registry.k8s.io/pause:3.6"),
        ("1.7.0", "registry.k8s.io/pause:3.8"),
        ("1.7.29", "registry.k8s.io/pause:3.8"),
        ("2.0.0", "registry.k8s.io/pause:3.10"),
        ("2.1.9", "registry.k8s.io/pause:3.10"),
        ("2.2.0", "registry.k8s.io/pause:3.10.1"),
        ("2.2.1", "registry.k8s.io/pause:3.10.1"),
        ("2.3.4", "registry.k8s.io/pause:3.10.2"),
        ("2.4.0", None),
        ("1.5.9", None),
    ],
)
def test_the_sandbox_image_of_containerds_defaults_by_release(version, image):
    from containerd_deploy.data.config_toml import default_sandbox_image

    assert default_sandbox_image(version) == image


def test_the_default_sandbox_images_are_those_of_containerds_own_defaults():
    """Each `containerd config default` fixture (from the releases the harness serves)."""
    from containerd_deploy.data.config_toml import default_sandbox_image
    from containerd_deploy.plan.verdict import sandbox_image

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "config"
    for path in fixtures.glob("default-*.toml"):
        version = re.match(r"default-([0-9.]+[0-9])", path.name).group(1)  # type: ignore[union-attr]
        assert sandbox_image(path.read_text(), Version(version)) == default_sandbox_image(version), path.name


# The controller's cache, with a stand-in skopeo that writes what the real one does: an OCI layout.


def layout_of(image: bytes, into: Path) -> None:
    """The OCI layout directory skopeo's `oci:` transport makes, from an OCI layout tarball."""
    with tarfile.open(fileobj=io.BytesIO(image)) as tar:
        tar.extractall(into, filter="data")
    index = json.loads((into / "index.json").read_text())
    for entry in index["manifests"]:
        entry.pop("annotations", None)  # skopeo writes no name there
    (into / "index.json").write_text(json.dumps(index))


@pytest.fixture
def skopeo(tmp_path, monkeypatch):
    """A skopeo on PATH that makes the layout of an image for the arch it is asked for (for
    amd64 whatever it is asked, given a file `single-platform`; fails with the text of a file
    `fail`), and records each call."""
    for arch in ("amd64", "arm64"):
        layout_of(oci.build(name="x/y:z", arch=arch), tmp_path / f"source-{arch}")
    calls = tmp_path / "calls"
    program = tmp_path / "bin" / "skopeo"
    program.parent.mkdir()
    here = shlex.quote(str(tmp_path))
    program.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {shlex.quote(str(calls))}\n'
        f"if [ -e {here}/fail ]; then cat {here}/fail >&2; exit 1; fi\n"
        'arch=""; previous=""\n'
        'for argument; do [ "$previous" = --override-arch ] && arch=$argument\n'
        f'  [ "$previous" = --src-authfile ] && cp "$argument" {here}/auth-seen && stat -c %a "$argument" > {here}/auth-mode\n'
        "  previous=$argument; last=$argument; done\n"
        f"[ -e {here}/single-platform ] && arch=amd64\n"
        f'cp -r {here}/source-"$arch"/. "${{last#oci:}}"/\n'
    )
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{program.parent}:{os.environ['PATH']}")
    monkeypatch.delenv("CONTAINERS_REGISTRIES_CONF", raising=False)
    return tmp_path


def test_an_image_for_another_platform_is_refused_before_it_is_cached(skopeo):
    """A digest of a single-platform manifest is copied whatever the platform asked for."""
    (skopeo / "single-platform").write_text("")
    with pytest.raises(FetchError) as refused:
        cache.ensure_image_cached(str(skopeo / "cache"), parse_reference(PINNED), "arm64")
    assert str(refused.value) == (
        f"{PINNED} is an image for linux/amd64, not for the node's linux/arm64; nothing was cached. Fix: list a "
        "digest of the image's index (all platforms), or of its linux/arm64 manifest, for arm64 nodes"
    )
    assert list((skopeo / "cache" / "images").iterdir()) == []
    assert cache.ensure_image_cached(str(skopeo / "cache"), parse_reference(PINNED), "amd64").path.exists()


def calls(skopeo: Path) -> list[str]:
    path = skopeo / "calls"
    return path.read_text().splitlines() if path.exists() else []


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers() if member.isfile()}  # type: ignore[union-attr]


def test_an_image_is_fetched_once_checked_and_kept_under_its_names(skopeo):
    image = parse_reference(PINNED)
    cache_dir = str(skopeo / "cache")
    cached = cache.ensure_image_cached(cache_dir, image, "arm64")
    assert calls(skopeo) == [
        f"copy --quiet --override-os linux --override-arch arm64 docker://docker.io/library/nginx@{DIGEST} "
        f"oci:{cached.path.parent}/" + calls(skopeo)[0].split(f"oci:{cached.path.parent}/")[1]
    ]
    assert cached.sha256 == hashlib.sha256(cached.path.read_bytes()).hexdigest()
    files = members(cached.path)
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    assert cached.path.suffix == ".tar" and cached.path.with_suffix(".json").exists()
    assert [entry["annotations"] for entry in index["manifests"]] == [
        {"io.containerd.image.name": name} for name in image.names
    ]
    assert {entry["digest"] for entry in index["manifests"]} == {cached.manifest}
    assert files["blobs/sha256/" + cached.manifest[7:]]
    assert all(
        hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
        for name, data in files.items()
        if name.startswith("blobs/")
    )
    # Once: the next host (and the next run) takes it from the cache; another arch is another copy.
    assert cache.ensure_image_cached(cache_dir, image, "arm64") == cached and len(calls(skopeo)) == 1
    assert (
        cache.ensure_image_cached(cache_dir, image, "amd64").path != cached.path and len(calls(skopeo)) == 2
    )
    # A cached copy that no longer matches its record is fetched again.
    cached.path.write_bytes(b"swapped")
    assert (
        cache.ensure_image_cached(cache_dir, image, "arm64").sha256 == cached.sha256
        and len(calls(skopeo)) == 3
    )
    assert sorted(path.name for path in cached.path.parent.iterdir() if path.name.startswith(".")) == []
    assert oct(cached.path.parent.stat().st_mode & 0o777) == "0o700"


def test_a_fetch_logs_in_with_the_nodes_credentials_in_a_file_only_this_user_reads_for_the_fetch_alone(
    skopeo,
):
    cache_dir = str(skopeo / "cache")
    cached = cache.ensure_image_cached(
        cache_dir, parse_reference(PINNED), "amd64", credentials={"docker.io": "aHVi"}
    )
    [call] = calls(skopeo)
    authfile = call.split("--src-authfile ", 1)[1].split(" ", 1)[0]
    assert json.loads((skopeo / "auth-seen").read_text()) == {"auths": {"docker.io": {"auth": "aHVi"}}}
    assert (skopeo / "auth-mode").read_text().strip() == "600"
    assert Path(authfile).parent.parent == cached.path.parent and not Path(authfile).exists()
    assert sorted(path.name for path in cached.path.parent.iterdir()) == sorted(
        [cached.path.name, cached.path.with_suffix(".json").name]
    )
    # Without credentials, skopeo logs in as the controller does (its own auth file).
    cache.ensure_image_cached(cache_dir, parse_reference(PINNED), "arm64", credentials={})
    assert "--src-authfile" not in calls(skopeo)[1]


def test_the_fetch_step_fetches_with_the_nodes_credentials_for_the_images_registry(monkeypatch):
    from containerd_deploy.operations import images as operation

    seen = []
    monkeypatch.setattr(
        operation,
        "ensure_image_cached",
        lambda cache_dir, image, arch, credentials: seen.append(credentials) or image,
    )
    registries = resolve(
        "node1",
        {
            "containerd_registries": {
                "docker.io": {
                    "mirrors": [{"host": "https://m.internal", "headers": {"Authorization": "Basic bQ=="}}]
                }
            }
        },
    ).containerd_registries

    class FakeHost:
        name = "node1"

    cached: list = []
    images = [parse_reference(PINNED), parse_reference(f"registry.k8s.io/pause:3.10@{DIGEST}")]
    assert operation._fetch_into_cache(FakeHost(), FakeHost(), "/c", images, "amd64", (), cached, registries)
    assert seen == [{"m.internal": "bQ=="}, {}] and cached == images
    (command,) = [
        command
        for command in commands(
            images_fetched, images=tuple(images), arch="amd64", cache_dir="/c", registries=registries
        )
        if isinstance(command, FunctionCommand)
    ]
    assert command.args[-1] == registries


def test_a_fetch_skopeo_refuses_says_skopeos_reason_and_caches_nothing(skopeo):
    (skopeo / "fail").write_text(
        'time="2026-12-07T12:23:24Z" level=fatal msg="initializing source docker://nginx@sha256:0: reading manifest '
        'sha256:0 in 127.0.0.1:5000/library/nginx: manifest unknown: \\"x\\""\n'
    )
    with pytest.raises(FetchError) as failed:
        cache.ensure_image_cached(str(skopeo / "cache"), parse_reference(PINNED), "amd64")
    message = str(failed.value)
    assert message.startswith(
        f"could not fetch {PINNED} for amd64 to the controller's cache: initializing source docker://nginx@sha256:0: "
        'reading manifest sha256:0 in 127.0.0.1:5000/library/nginx: manifest unknown: "x"; nothing was cached. Fix: '
        "the controller fetches images with skopeo"
    )
    assert "level=fatal" not in message and "$CONTAINERS_REGISTRIES_CONF" in message
    assert list((skopeo / "cache" / "images").iterdir()) == []


def test_skopeo_is_given_the_registries_conf_podman_would_read(skopeo, monkeypatch):
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", "/etc/mine.conf")
    command = cache.skopeo_command(parse_reference(PINNED), "amd64", Path("/l"))
    assert command[:4] == ["skopeo", "--registries-conf", "/etc/mine.conf", "copy"]
    monkeypatch.delenv("CONTAINERS_REGISTRIES_CONF")
    assert cache.skopeo_command(parse_reference("registry.k8s.io/pause:3.10"), "amd64", Path("/l"))[1:] == [
        "copy",
        "--quiet",
        "--override-os",
        "linux",
        "--override-arch",
        "amd64",
        "docker://registry.k8s.io/pause:3.10",
        "oci:/l",
    ]


def test_a_layout_with_a_blob_that_does_not_match_its_digest_is_refused(tmp_path):
    layout = tmp_path / "layout"
    layout_of(oci.build(name="x/y:z"), layout)
    blob = next((layout / "blobs" / "sha256").iterdir())
    blob.write_bytes(blob.read_bytes() + b"!")
    with pytest.raises(FetchError, match=f"does not match its digest \\({blob.name}\\); nothing was cached"):
        cache.layout_tarball(layout, parse_reference(PINNED), "amd64", io.BytesIO())
    index = json.loads((layout / "index.json").read_text())
    index["manifests"] *= 2
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(FetchError, match="skopeo left 2 manifests"):
        cache.layout_tarball(layout, parse_reference(PINNED), "amd64", io.BytesIO())


def test_a_cache_another_user_could_change_is_refused(skopeo):
    shared = skopeo / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(FetchError) as refused:
        cache.ensure_image_cached(str(shared / "cache"), parse_reference(PINNED), "amd64")
    assert str(refused.value) == (
        f"the image cache {shared / 'cache' / 'images'} is not this user's alone ({shared} is writable by others): "
        "another local user could swap an image before it is uploaded to the nodes; nothing was fetched. Fix: set "
        "artifact_cache_dir to a directory only you can write (e.g. ~/.cache/containerd-deploy/artifacts)"
    )
    assert calls(skopeo) == []


# The node's side: the import script, in a sandbox, with a stand-in ctr.

CTR = """#!/bin/sh
# ctr -n NAMESPACE images import FILE | images ls -q | images label NAME LABEL: imports the
# names FILE's index.json gives; records each call with the snapshotter it was given.
echo "$* ${CONTAINERD_SNAPSHOTTER:-(default snapshotter)}" >> "$(dirname "$0")/calls"
[ "$2" = k8s.io ] || exit 3
case "$3 $4" in
  "images import") [ -e "$(dirname "$0")/fail" ] && { echo "ctr: unpack: no space left" >&2; exit 1; }
    tar -xOf "$5" index.json | grep -o '"io.containerd.image.name": *"[^"]*"' | cut -d'"' -f4 >> "$(dirname "$0")/images";;
  "images ls") [ -e "$(dirname "$0")/images" ] && cat "$(dirname "$0")/images"; true;;
esac
"""


@pytest.fixture
def sandbox(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ctr").write_text(CTR)
    (tmp_path / "bin" / "ctr").chmod(0o755)
    (tmp_path / "staging").mkdir(mode=0o700)
    return tmp_path


def upload(sandbox: Path, index: int, name: str) -> tuple[str, str, tuple[str, ...]]:
    path = Path(uploaded_image_path(str(sandbox / "staging"), index))
    reference = parse_reference(name)
    out = io.BytesIO()
    layout = sandbox / f"layout-{index}"
    layout_of(oci.build(name="x/y:z"), layout)
    cache.layout_tarball(layout, reference, "amd64", out)
    path.write_bytes(out.getvalue())
    return str(path), hashlib.sha256(out.getvalue()).hexdigest(), reference.names


def run_import(sandbox: Path, images, **options) -> subprocess.CompletedProcess:
    script = import_images_script(str(sandbox / "staging"), str(sandbox / "bin"), images, **options)
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True)


def test_the_node_checks_every_upload_then_imports_each_under_its_names_and_removes_them(sandbox):
    images = [upload(sandbox, 0, PINNED), upload(sandbox, 1, "registry.k8s.io/pause:3.10")]
    result = run_import(sandbox, images, pinned=("registry.k8s.io/pause:3.10",), snapshotter="native")
    assert result.returncode == 0, result.stderr
    assert (sandbox / "bin" / "images").read_text().split() == [*images[0][2], *images[1][2]]
    assert [line.split(" ")[2:] for line in (sandbox / "bin" / "calls").read_text().splitlines()] == [
        ["images", "import", images[0][0], "native"],
        ["images", "import", images[1][0], "native"],
        [
            "images",
            "label",
            "registry.k8s.io/pause:3.10",
            "io.cri-containerd.pinned=pinned",
            "(default",
            "snapshotter)",
        ],
        ["images", "ls", "-q", "(default", "snapshotter)"],
    ]
    assert not (sandbox / "staging").exists(), "the uploads (and the emptied staging directory) are removed"


def test_an_upload_that_does_not_match_its_sha256_imports_nothing(sandbox):
    good = upload(sandbox, 0, "registry.k8s.io/pause:3.10")
    bad = upload(sandbox, 1, PINNED)
    Path(bad[0]).write_bytes(Path(bad[0]).read_bytes() + b"tampered")
    result = run_import(sandbox, [good, bad])
    assert result.returncode == 1
    assert (
        f"containerd-deploy: the upload of {bad[2][0]} does not match its sha256 (expected {bad[1]}, got "
        in result.stderr
    )
    assert "no image was imported" in result.stderr
    assert not (sandbox / "bin" / "calls").exists(), "ctr was run"
    assert not (sandbox / "staging").exists()


def test_a_failed_import_says_ctrs_reason_and_a_missing_name_is_named(sandbox):
    (sandbox / "bin" / "fail").write_text("")
    result = run_import(sandbox, [upload(sandbox, 0, PINNED)])
    assert result.returncode == 1
    assert (
        f"containerd-deploy: ctr could not import {parse_reference(PINNED).names[0]}: ctr: unpack: no space left"
        in result.stderr
    )
    (sandbox / "bin" / "fail").unlink()
    (sandbox / "staging").mkdir(mode=0o700, exist_ok=True)
    path, sha256, names = upload(sandbox, 0, PINNED)
    result = run_import(sandbox, [(path, sha256, (*names, "docker.io/library/other:1"))])
    assert result.returncode == 1
    assert "ctr imported it, but the node has no image docker.io/library/other:1" in result.stderr


def test_the_import_refuses_a_staging_directory_another_user_could_change(sandbox):
    (sandbox / "staging").chmod(0o777)
    result = run_import(sandbox, [upload(sandbox, 0, PINNED)])
    assert result.returncode == 1 and "the staging directory (containerd_staging_dir):" in result.stderr
    assert not (sandbox / "bin" / "calls").exists()


# The operations.


def test_the_operations_do_nothing_for_a_node_that_has_every_image():
    assert commands(images_fetched, images=(), arch="amd64", cache_dir="/c") == []
    kwargs = dict(arch="amd64", cache_dir="/c", staging_dir="/s", bin_dir="/b")
    assert commands(images_imported, images=(), executing=True, **kwargs) == []
    # An image to import is a change in the dry run too (what the controller fetches first).
    [fetch] = commands(images_imported, images=(parse_reference(PINNED),), **kwargs)
    assert isinstance(fetch, FunctionCommand)


def test_the_fetch_runs_on_the_controller_before_the_node_changes():
    image = parse_reference(PINNED)
    [fetch] = commands(images_fetched, images=(image,), arch="arm64", cache_dir="/c", listed=(image,))
    assert isinstance(fetch, FunctionCommand) and fetch.args[:4] == (
        "/c",
        [image],
        "arm64",
        (image,),
    )


def test_the_import_fetches_uploads_into_staging_and_imports_what_it_uploaded(monkeypatch, tmp_path):
    import containerd_deploy.operations.images as operation

    image, pause = parse_reference(PINNED), parse_reference("registry.k8s.io/pause:3.10")
    found = {
        image: cache.CachedImage(tmp_path / "a.tar", "1" * 64, DIGEST),
        pause: cache.CachedImage(tmp_path / "b.tar", "2" * 64, DIGEST),
    }
    monkeypatch.setattr(
        operation,
        "ensure_image_cached",
        lambda cache_dir, wanted, arch, credentials: (
            found[wanted] if (cache_dir, arch) == ("/c", "amd64") else None
        ),
    )
    yielded = executed(
        images_imported._inner(
            images=(image, pause),
            pinned=pause.names,
            snapshotter="native",
            arch="amd64",
            cache_dir="/c",
            staging_dir="/s",
            bin_dir="/b",
        )
    )
    uploads = [command for command in yielded if isinstance(command, FileUploadCommand)]
    assert [(str(command.src), command.dest) for command in uploads] == [
        (str(tmp_path / "a.tar"), "/s/.fetched-image-0"),
        (str(tmp_path / "b.tar"), "/s/.fetched-image-1"),
    ]
    script = yielded[-1].get_raw_value()
    assert isinstance(yielded[-1], StringCommand)
    assert f'[ "$actual" = {"1" * 64} ]' in script and f'[ "$actual" = {"2" * 64} ]' in script
    assert script.index("/s/.fetched-image-0") < script.index("/s/.fetched-image-1")
    assert "CONTAINERD_SNAPSHOTTER=native " in script
    assert f"images label {pause.names[0]} io.cri-containerd.pinned=pinned" in script
    assert f"images label {image.names[0]}" not in script


class FakeHost:
    name = "node1"

    def __init__(self):
        self.said = []

    def log_styled(self, message, **kwargs):
        from pyinfra import logger

        assert kwargs == {"fg": "red", "log_func": logger.error}
        self.said.append(message)


def executed(generator) -> list:
    """What an operation yields when pyinfra runs it, its commands run on the controller run
    (each must succeed)."""
    yielded = []

    def run():
        for command in generator:
            if isinstance(command, FunctionCommand):
                assert command.function(FakeHost(), FakeHost(), *command.args) is True
            yielded.append(command)

    with_host(run, executing=True)
    return yielded


def with_host(function, executing: bool):
    from pyinfra.api import Config, Inventory, State
    from pyinfra.context import ctx_host, ctx_state

    inventory = Inventory((["node1"], {}))
    state = State(inventory, Config())
    state.is_executing = executing
    host = inventory.get_host("node1")
    with ctx_state.use(state), ctx_host.use(host):
        host.current_op_global_arguments = {}
        try:
            function()
        finally:
            host.current_op_global_arguments = None


def test_a_failed_fetch_stops_the_run_naming_the_sandbox_image_key_when_it_was_not_listed(monkeypatch):
    import containerd_deploy.operations.images as operation

    def refuse(cache_dir, image, arch, credentials):
        raise FetchError(f"could not fetch {image}")

    monkeypatch.setattr(operation, "ensure_image_cached", refuse)
    image, pause = parse_reference(PINNED), parse_reference("registry.k8s.io/pause:3.10")
    from containerd_deploy.controller.run_record import run_of

    state = FakeHost()  # (any object a weak reference can name)
    host = FakeHost()
    assert operation._fetch_into_cache(state, host, "/c", [image], "amd64", (image,), [], {}) is False
    assert host.said == [f"containerd-deploy: node1: could not fetch {image}"]
    assert run_of(state).hosts["node1"].failure == f"node1: could not fetch {image}"  # the report says it
    host = FakeHost()
    assert operation._fetch_into_cache(state, host, "/c", [pause], "amd64", (image,), [], {}) is False
    assert host.said == [
        f"containerd-deploy: node1: could not fetch {pause}; it is the sandbox image of the node's config, which "
        "the controller brings with artifact_source=controller: set containerd_images_sandbox=false to leave it to "
        "the node's registries"
    ]


@pytest.mark.parametrize(
    "text, why",
    [
        # Each part is shown up to 80 characters (a reference is at most a line of a message).
        (f"nginx@{'x' * 200}", f"has the digest {'x' * 80!r}, not sha256: and 64 lowercase hex digits"),
        (f"nginx:{'-' * 200}", f"has the tag {'-' * 80!r}, not a tag (letters, digits, _ . -, at most 128)"),
        (f"{'a_' * 100}.io/x", f"names the registry {('a_' * 100)[:80]!r}, not a host[:port]"),
        (
            f"{'A' * 200}",
            f"has the repository path {'A' * 80!r}: lowercase letters and digits, parts split by / . _ __ or -",
        ),
        # A second @ belongs to the digest; a : before the last / is no tag.
        (f"nginx@{DIGEST}@x", f"has the digest {DIGEST + '@x'!r}, not sha256: and 64 lowercase hex digits"),
        ("registry:5000/a:x/b", "has the repository path 'a:x/b'"),
    ],
)
def test_a_refused_reference_shows_what_it_refused(text, why):
    with pytest.raises(ValueError) as refused:
        parse_reference(text)
    assert str(refused.value).startswith(why), str(refused.value)


def test_a_repository_name_may_be_as_long_as_the_distribution_spec_allows():
    longest = "registry.io/" + "a" * (255 - len("registry.io/"))
    assert parse_reference(longest).repository == longest
    with pytest.raises(ValueError, match="has a name of 256 characters, over 255"):
        parse_reference(longest + "a")


def test_a_refusal_shows_an_item_or_a_value_up_to_120_characters():
    with pytest.raises(DataError) as refused:
        parse("node1", ["A" * 300])
    assert f"has {'A' * 120!r}, which has the repository path" in str(refused.value)
    with pytest.raises(DataError) as refused:
        parse("node1", 7 * 10**200)
    assert f"is {repr(7 * 10**200)[:120]}, not a list" in str(refused.value)


def test_the_sandbox_images_names():
    assert sandbox_names("registry.k8s.io/pause:3.10") == ("registry.k8s.io/pause:3.10",)
    assert sandbox_names(f"pause@{DIGEST}") == (f"docker.io/library/pause@{DIGEST}",)
    assert sandbox_names(None) == () and sandbox_names("Not A Reference") == ()


def test_skopeos_words_when_they_are_not_a_log_line():
    assert cache._said("  Error: no such image\n") == "Error: no such image"
    assert cache._said('time="x" level=fatal msg="a \\"quoted\\" word"\n') == 'a "quoted" word'


def test_a_fetch_that_takes_too_long_or_has_no_skopeo_says_so(skopeo, monkeypatch):
    program = skopeo / "bin" / "skopeo"
    program.write_text("#!/bin/sh\nsleep 5\n")
    with pytest.raises(FetchError, match=f"could not fetch {re.escape(PINNED)} for amd64 within 0 s"):
        cache.ensure_image_cached(str(skopeo / "cache"), parse_reference(PINNED), "amd64", timeout=0.3)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FetchError) as refused:
        cache.ensure_image_cached(str(skopeo / "cache"), parse_reference(PINNED), "amd64")
    assert str(refused.value) == f"could not fetch {PINNED}: skopeo is not installed. Fix: {cache.SKOPEO_FIX}"
    assert sorted(path.name for path in (skopeo / "cache" / "images").iterdir()) == []


def test_the_cris_snapshotter_is_the_configs():
    from containerd_deploy.plan.verdict import cri_snapshotter

    v2 = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\nsnapshotter = "native"\n'
    v3 = 'version = 3\n[plugins."io.containerd.cri.v1.images"]\nsnapshotter = "zfs"\n'
    assert cri_snapshotter(v2, Version("1.7.24")) == "native"
    assert cri_snapshotter(v3, Version("2.1.9")) == "zfs"
    assert cri_snapshotter("version = 3\n", Version("2.1.9")) is None
    assert cri_snapshotter(v3.replace('"zfs"', '""'), Version("2.1.9")) is None
    assert cri_snapshotter(v3.replace('"zfs"', "7"), Version("2.1.9")) is None
    assert cri_snapshotter("version = [", Version("2.1.9")) is None


def test_an_import_with_ctrs_default_snapshotter_sets_none():
    script = import_images_script(
        "/s", "/b", [("/s/.fetched-image-0", "b" * 64, ("x/y@sha256:" + "a" * 64,))]
    )
    assert "CONTAINERD_SNAPSHOTTER" not in script and "images label" not in script


def test_two_images_are_two_cached_files_and_skopeos_long_words_end_the_message(skopeo):
    first = cache.ensure_image_cached(str(skopeo / "cache"), parse_reference(PINNED), "amd64")
    second = cache.ensure_image_cached(
        str(skopeo / "cache"), parse_reference("registry.k8s.io/pause:3.10"), "amd64"
    )
    assert first.path != second.path and len(calls(skopeo)) == 2
    (skopeo / "fail").write_text("x" * 400 + "y" * 600)
    with pytest.raises(FetchError) as refused:
        cache.ensure_image_cached(
            str(skopeo / "cache"), parse_reference("registry.k8s.io/pause:3.9"), "amd64"
        )
    assert f"to the controller's cache: {'y' * 600}; nothing was cached" in str(refused.value)
    assert "xy" not in str(refused.value)


def test_a_config_made_from_new_defaults_brings_the_sandbox_image_and_snapshotter_the_data_sets():
    """containerd_config_extra is applied last: it names the sandbox image, not the default."""
    from containerd_deploy.plan.run import run_config_text, run_sandbox_image
    from containerd_deploy.plan.verdict import cri_snapshotter

    extra = {
        "plugins": {
            "io.containerd.cri.v1.images": {
                "pinned_images": {"sandbox": "reg.internal/pause:1"},
                "snapshotter": "native",
            }
        }
    }
    data = {"containerd_version": "2.1.9", "artifact_source": "controller", "containerd_config_extra": extra}
    settings_ = resolve("node1", data)
    assert run_sandbox_image(settings_, None) == "reg.internal/pause:1"
    assert cri_snapshotter(run_config_text(settings_, None), settings_.containerd_version) == "native"
    assert images_brought(settings_, None) == (parse_reference("reg.internal/pause:1"),)
    plain = resolve("node1", {"containerd_version": "1.7.24", "artifact_source": "controller"})
    assert run_sandbox_image(plain, None) == "registry.k8s.io/pause:3.8"
    assert cri_snapshotter(run_config_text(plain, None), plain.containerd_version) is None


def test_a_config_that_imports_other_files_may_name_its_sandbox_image_there():
    from containerd_deploy.plan.verdict import sandbox_image

    assert (
        sandbox_image('version = 3\nimports = ["/etc/containerd/conf.d/*.toml"]\n', Version("2.1.9")) is None
    )
    assert sandbox_image("version = 3\nimports = []\n", Version("2.1.9")) == "registry.k8s.io/pause:3.10"


def test_a_tarball_an_older_cache_format_made_is_fetched_again(skopeo):
    cached = cache.ensure_image_cached(str(skopeo / "cache"), parse_reference(PINNED), "amd64")
    record = cached.path.with_suffix(".json")
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "format"}))
    assert cache.ensure_image_cached(str(skopeo / "cache"), parse_reference(PINNED), "amd64") == cached
    assert len(calls(skopeo)) == 2


def test_a_layout_without_a_manifest_to_read_is_a_fetch_error_naming_nothing_cached(tmp_path):
    layout = tmp_path / "layout"
    layout_of(oci.build(name="x/y:z"), layout)
    index = json.loads((layout / "index.json").read_text())
    (layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).write_text("{}")
    index["manifests"][0]["digest"] = "sha256:" + hashlib.sha256(b"{}").hexdigest()
    (layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).write_text("{}")
    (layout / "index.json").write_text(json.dumps(index))
    for blob in (layout / "blobs" / "sha256").iterdir():
        if hashlib.sha256(blob.read_bytes()).hexdigest() != blob.name:
            blob.unlink()
    with pytest.raises(
        FetchError, match="skopeo left no image manifest and config to read .*; nothing was cached"
    ):
        cache.layout_tarball(layout, parse_reference(PINNED), "amd64", io.BytesIO())


def test_the_cri_name_of_a_sandbox_image():
    from containerd_deploy.data.images import cri_name

    assert cri_name("pause:3.10") == "docker.io/library/pause:3.10"
    assert cri_name(f"registry.k8s.io/pause:3.10@{DIGEST}") == f"registry.k8s.io/pause@{DIGEST}"
    assert cri_name("Not A Reference") == "Not A Reference" and cri_name(None) is None


def test_an_image_checked_in_the_cache_is_not_hashed_again_in_the_same_run(monkeypatch, tmp_path):
    """The fetch step checks each cached tarball (a hash of it all); the import for each host
    uploads that one, in the same run, without hashing it again. A new run checks it again."""
    import containerd_deploy.operations.images as operation
    from containerd_deploy.controller.images import CachedImage

    image = parse_reference(PINNED)
    asked = []

    def cached(cache_dir, image, arch, credentials):
        asked.append((cache_dir, image, arch))
        return CachedImage(tmp_path / f"{arch}.tar", "0" * 64, DIGEST)

    monkeypatch.setattr(operation, "ensure_image_cached", cached)
    run, found = FakeHost(), []
    for host in (FakeHost(), FakeHost(), FakeHost()):  # the fetch step, then two hosts' imports
        assert operation._fetch_into_cache(run, host, "/c", [image], "amd64", (image,), found, {}) is True
    assert asked == [("/c", image, "amd64")] and len(found) == 3 and len(set(found)) == 1
    assert operation._fetch_into_cache(run, FakeHost(), "/c", [image], "arm64", (image,), [], {}) is True
    assert (
        operation._fetch_into_cache(FakeHost(), FakeHost(), "/c", [image], "amd64", (image,), [], {}) is True
    )
    assert asked == [("/c", image, "amd64"), ("/c", image, "arm64"), ("/c", image, "amd64")]

"""Image archives the operator has (containerd_image_archives): read on the controller for the
names of their images before the plan, checked by their sha256 before any upload, imported on
each node that lacks one of those names, and left alone on a node that has them all."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand

from containerd_deploy.conformance import oci
from containerd_deploy.controller.cache import FetchError
from containerd_deploy.controller.images import ArchiveImages, archive_images, checked_archive
from containerd_deploy.data.images import ImageArchive, parse_archives
from containerd_deploy.data.values import DataError, Refusal
from containerd_deploy.operations.images import images_fetched, images_imported

from .flow import converged, drifted, prepare, settings_for
from .operations import commands
from .test_images import FakeHost, executed
from .test_plan import plan_of

SHA = "b" * 64
FIX = (
    'list each archive as {"path": "/abs/path/on/the/controller.tar", "sha256": "<64 hex digits>"} (an OCI or '
    "docker archive, e.g. from `skopeo copy … oci-archive:FILE:NAME` or `docker save`; sha256sum FILE prints its "
    "sha256)"
)


def tar_of(tmp_path: Path, name: str, members: dict[str, bytes]) -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def archive_of(path: Path) -> ImageArchive:
    return ImageArchive(str(path), hashlib.sha256(path.read_bytes()).hexdigest())


def test_archives_are_paths_with_their_sha256_each_once():
    value = [{"path": "/srv/images//a.tar", "sha256": SHA}, {"path": "/srv/images/a.tar", "sha256": SHA}]
    assert parse_archives("node1", value) == (ImageArchive("/srv/images/a.tar", SHA),)
    assert parse_archives("node1", None) == parse_archives("node1", []) == ()


@pytest.mark.parametrize(
    "value, why",
    [
        ("/srv/a.tar", "is '/srv/a.tar', not a list of archives"),
        ({"path": "/srv/a.tar"}, "is a mapping, not a list of archives"),
        (["/srv/a.tar"], "has '/srv/a.tar', not a path and a sha256"),
        ([{"path": "/srv/a.tar"}], "has {path}, not a path and a sha256"),
        ([{"path": "/a", "sha256": SHA, "name": "x"}], "has {name, path, sha256}, not a path and a sha256"),
        ([{"path": "a.tar", "sha256": SHA}], "has the path 'a.tar', not an absolute path"),
        ([{"path": "/a/../b.tar", "sha256": SHA}], "has the path '/a/../b.tar', not an absolute path"),
        (
            [{"path": "/a.tar", "sha256": "B" * 64}],
            f"has the sha256 {'B' * 64!r} for /a.tar, not 64 lowercase hex digits",
        ),
        ([{"path": "/a.tar", "sha256": 12}], "has the sha256 '12' for /a.tar, not 64 lowercase hex digits"),
    ],
)
def test_a_refused_archive_says_which_and_how_to_name_one(value, why):
    with pytest.raises(DataError) as refused:
        parse_archives("node1", value)
    assert str(refused.value) == f"node1: data key 'containerd_image_archives' {why}. Fix: {FIX}"


LAYOUT = b'{"imageLayoutVersion": "1.0.0"}'


def oci_archive(tmp_path: Path, *annotations: dict, member: str = "index.json") -> Path:
    index = {"manifests": [{"annotations": entry} for entry in annotations]}
    return tar_of(tmp_path, "oci.tar", {"oci-layout": LAYOUT, member: json.dumps(index).encode()})


def refusal(archive: ImageArchive) -> str:
    with pytest.raises(FetchError) as refused:
        archive_images(archive)
    return str(refused.value)


def test_the_names_an_oci_archive_gives_its_images_as_written(tmp_path):
    made = tmp_path / "made.tar"
    made.write_bytes(oci.layout_tarball(b"", "example.internal/team/app:1", "amd64", {}))
    assert archive_images(archive_of(made)).names == ("example.internal/team/app:1",)
    # a whole reference in the OCI name; a digest beside a tag stays; ./index.json is index.json
    names = [
        {"org.opencontainers.image.ref.name": "docker.io/library/nginx:1.27"},
        {"io.containerd.image.name": f"reg.io/a:1@sha256:{'c' * 64}"},
    ]
    path = oci_archive(tmp_path, *names, member="./index.json")
    assert archive_images(archive_of(path)).names == (
        "docker.io/library/nginx:1.27",
        f"reg.io/a:1@sha256:{'c' * 64}",
    )


@pytest.mark.parametrize(
    "name, why",
    [
        # ctr keeps an OCI name as written: one a pod would ask for otherwise is refused
        (
            "nginx:1.27",
            "names an image 'nginx:1.27', which `ctr images import` keeps as written, while a pod asks for docker.io/library/nginx:1.27: name it so",
        ),
        (
            "docker.io/nginx:1",
            "names an image 'docker.io/nginx:1', which `ctr images import` keeps as written, while a pod asks for docker.io/library/nginx:1: name it so",
        ),
        (
            "reg.io/a",
            "names an image 'reg.io/a', which `ctr images import` keeps as written, while a pod asks for reg.io/a:latest: name it so",
        ),
        (
            "1.27",
            "has an image named '1.27', not by a whole reference (registry/path:tag): `ctr images import` would name it import-<date>:<tag>, a name no pod asks for",
        ),
        (
            None,
            "has an image named 'None', not by a whole reference (registry/path:tag): `ctr images import` would name it import-<date>:<tag>, a name no pod asks for",
        ),
    ],
)
def test_an_oci_archive_whose_names_a_pod_would_not_ask_for_is_refused(tmp_path, name, why):
    path = oci_archive(
        tmp_path,
        {"io.containerd.image.name": "example.internal/ok:1"},
        {} if name is None else {"org.opencontainers.image.ref.name": name},
    )
    assert (
        refusal(archive_of(path))
        == f"the image archive {path} {why}; nothing was uploaded. Fix: check the path in containerd_image_archives, or make the archive with the names its images should have ({FIX})"
    )


def test_the_names_a_docker_archive_gives_its_images(tmp_path):
    manifest = [{"RepoTags": ["nginx:1.27", "registry.internal:5000/app:2", "nginx:1.27"]}]
    path = tar_of(tmp_path, "saved.tar", {"manifest.json": json.dumps(manifest).encode()})
    assert archive_images(archive_of(path)).names == (
        "docker.io/library/nginx:1.27",
        "registry.internal:5000/app:2",
    )
    untagged = tar_of(
        tmp_path, "untagged.tar", {"manifest.json": json.dumps([*manifest, {"RepoTags": None}]).encode()}
    )
    assert "has an image without RepoTags" in refusal(archive_of(untagged))


@pytest.mark.parametrize(
    "members, why",
    [
        ({"oci-layout": LAYOUT, "index.json": b'{"manifests": []}'}, "names no image (no index.json entry)"),
        (
            {"oci-layout": LAYOUT, "index.json": b'{"manifests": [{"annotations": ["x"]}]}'},
            "has an image named 'None'",
        ),
        ({"manifest.json": b"[]"}, "names no image (no manifest.json)"),
        ({"other": b"x"}, "names no image (no manifest.json)"),
        ({"oci-layout": LAYOUT}, "names no image (no index.json entry)"),
    ],
)
def test_an_archive_that_names_no_image_is_refused_with_the_fix(tmp_path, members, why):
    path = tar_of(tmp_path, "x.tar", members)
    said = refusal(archive_of(path))
    assert said.startswith(f"the image archive {path} {why}"), said
    assert said.endswith(
        f"nothing was uploaded. Fix: check the path in containerd_image_archives, or make the archive with the names its images should have ({FIX})"
    )


def test_an_index_larger_than_containerd_reads_is_refused(tmp_path, monkeypatch):
    from containerd_deploy.controller import images

    monkeypatch.setattr(images, "ARCHIVE_DOCUMENT_LIMIT", 10)
    path = oci_archive(tmp_path, {"io.containerd.image.name": "example.internal/ok:1"})
    assert refusal(archive_of(path)).startswith(
        f"could not read the image archive {path}: its index.json is over 0 MiB"
    )


def test_an_archive_that_cannot_be_read_is_refused_naming_it(tmp_path):
    with pytest.raises(
        FetchError, match=f"could not read the image archive {tmp_path}/none.tar: No such file"
    ):
        archive_images(ImageArchive(f"{tmp_path}/none.tar", SHA))
    (tmp_path / "not.tar").write_text("not a tar")
    with pytest.raises(FetchError, match=f"could not read the image archive {tmp_path}/not.tar: "):
        archive_images(archive_of(tmp_path / "not.tar"))


def test_an_archive_is_uploaded_only_with_its_sha256(tmp_path):
    path = tar_of(tmp_path, "a.tar", {"manifest.json": b"[]"})
    good = archive_of(path)
    assert checked_archive(good).sha256 == good.sha256 and checked_archive(good).path == path
    with pytest.raises(FetchError) as refused:
        checked_archive(ImageArchive(str(path), SHA))
    assert str(refused.value) == (
        f"the image archive {path} has the sha256 {good.sha256}, not the {SHA} containerd_image_archives gives; "
        f"nothing was uploaded. Fix: if the file is the one you meant, set its sha256 to what `sha256sum {path}` prints"
    )
    with pytest.raises(FetchError, match="could not read the image archive .*: No such file"):
        checked_archive(ImageArchive(f"{tmp_path}/gone.tar", SHA))


def test_the_plan_imports_an_archive_whose_names_the_node_lacks():
    archive = ImageArchive("/srv/a.tar", SHA)
    names = ("docker.io/library/nginx:1.27", "example.internal/app:1")
    data = {"containerd_image_archives": [{"path": "/srv/a.tar", "sha256": SHA}]}
    node = converged(settings_for(data))
    settings = settings_for(data)
    from containerd_deploy.data import artifacts
    from containerd_deploy.plan.run import lists_images, plan_run

    from .flow import no_fetch

    assert lists_images(settings)
    wanted = artifacts.resolve(settings, "amd64", published=no_fetch)
    plan = plan_run(settings, drifted(node, images=frozenset(names[:1])), wanted, ((archive, names),))
    assert plan.archives == ((archive, names),) and plan.changes
    assert (
        "import docker.io/library/nginx:1.27, example.internal/app:1 from /srv/a.tar into the k8s.io namespace "
        "from the controller (each archive checked by its sha256)"
    ) in plan.lines()
    plan = plan_run(settings, drifted(node, images=frozenset(names)), wanted, ((archive, names),))
    assert plan.archives == () and not plan.changes
    other = (ImageArchive("/srv/b.tar", SHA), ("example.internal/b:1",))
    plan = plan_run(settings, drifted(node, images=frozenset(names[:1])), wanted, ((archive, names), other))
    assert (
        "import docker.io/library/nginx:1.27, example.internal/app:1 from /srv/a.tar, example.internal/b:1 from "
        "/srv/b.tar into the k8s.io namespace from the controller (each archive checked by its sha256)"
    ) in plan.lines()
    assert plan_of({}, node).archives == ()


def test_an_archive_alone_brings_the_image_steps_and_one_the_node_has_adds_none(monkeypatch):
    """The image steps add their operations for an archive whose names the node lacks, with no
    image listed; for one whose names it has, none."""
    from containerd_deploy.deploy import images as deploy_images

    data = {"containerd_image_archives": [{"path": "/srv/a.tar", "sha256": SHA}]}
    names = ("docker.io/library/nginx:1",)
    held = ArchiveImages(names, frozenset({"linux/amd64"}))
    monkeypatch.setattr(deploy_images, "_READ", {ImageArchive("/srv/a.tar", SHA): held})
    node = converged(settings_for(data))
    steps = {}
    for has in (frozenset(), frozenset(names)):
        prepared = prepare(monkeypatch, drifted(node, images=has), data)
        steps[has] = [op.name.split(" | ")[0] for op in prepared if op.changes]
    assert steps == {
        frozenset(): ["Take the node's run lock", "Fetch images", "Bring images"],
        frozenset(names): [],
    }


def test_an_archive_is_checked_then_uploaded_and_imported_under_its_names(tmp_path):
    path = tar_of(tmp_path, "a.tar", {"manifest.json": b"[]"})
    archive, names = archive_of(path), ("docker.io/library/nginx:1.27",)
    yielded = executed(
        images_imported._inner(
            images=(),
            archives=((archive, names),),
            arch="amd64",
            cache_dir="/c",
            staging_dir="/s",
            bin_dir="/b",
        )
    )
    [upload] = [command for command in yielded if isinstance(command, FileUploadCommand)]
    assert (str(upload.src), upload.dest) == (str(path), "/s/.fetched-image-0")
    script = yielded[-1].get_raw_value()
    assert isinstance(yielded[-1], StringCommand)
    assert f'[ "$actual" = {archive.sha256} ]' in script and "docker.io/library/nginx:1.27" in script
    # the fetch step checks it; nothing to bring, nothing done
    [check] = commands(images_fetched, images=(), archives=(archive,), arch="amd64", cache_dir="/c")
    assert isinstance(check, FunctionCommand) and check.args[1] == [archive]
    assert commands(images_fetched, images=(), arch="amd64", cache_dir="/c") == []


def test_an_archive_whose_sha256_differs_stops_the_run_without_the_sandbox_images_fix(tmp_path):
    import containerd_deploy.operations.images as operation
    from containerd_deploy.controller.run_record import run_of

    path = tar_of(tmp_path, "a.tar", {"manifest.json": b"[]"})
    archive = ImageArchive(str(path), SHA)
    state, host = FakeHost(), FakeHost()
    assert operation._fetch_into_cache(state, host, "/c", [archive], "amd64", (), [], {}) is False
    [said] = host.said
    assert said.startswith(f"containerd-deploy: node1: the image archive {path} has the sha256 ")
    assert "containerd_images_sandbox" not in said
    assert run_of(state).hosts["node1"].failure == said.removeprefix("containerd-deploy: ")


def test_the_deploy_reads_each_archive_once_and_refuses_one_it_cannot_read_or_of_another_platform(
    tmp_path, monkeypatch
):
    from containerd_deploy.deploy import images as deploy_images

    data = {"containerd_image_archives": [{"path": "/srv/a.tar", "sha256": SHA}]}
    read = []
    held = ArchiveImages(("docker.io/library/nginx:1",), frozenset({"linux/amd64", "linux/arm64"}))
    monkeypatch.setattr(deploy_images, "_READ", {})
    monkeypatch.setattr(deploy_images, "archive_images", lambda archive: read.append(archive) or held)
    settings = settings_for(data)
    expected = ((ImageArchive("/srv/a.tar", SHA), ("docker.io/library/nginx:1",)),)
    assert (
        deploy_images.archive_images_for(settings, "amd64")
        == deploy_images.archive_images_for(settings, "arm64")
        == expected
    )
    assert read == [ImageArchive("/srv/a.tar", SHA)]
    monkeypatch.setattr(
        deploy_images,
        "_READ",
        {ImageArchive("/srv/a.tar", SHA): ArchiveImages(held.names, frozenset({"linux/amd64"}))},
    )
    with pytest.raises(Refusal) as refused:
        deploy_images.archive_images_for(settings, "arm64")
    assert str(refused.value) == (
        f"{settings.host}: data key 'containerd_image_archives': the image archive /srv/a.tar holds images for "
        "linux/amd64, not the node's linux/arm64; nothing was uploaded. Fix: give this host an archive made for "
        "linux/arm64 (e.g. `skopeo copy --override-arch arm64 …`), in its group's data"
    )
    monkeypatch.setattr(
        deploy_images, "archive_images", lambda archive: (_ for _ in ()).throw(FetchError("bad"))
    )
    monkeypatch.setattr(deploy_images, "_READ", {})
    with pytest.raises(Refusal) as refused:
        deploy_images.archive_images_for(settings, "amd64")
    assert str(refused.value) == f"{settings.host}: data key 'containerd_image_archives': bad"


def blob(members: dict, document) -> dict:
    data = json.dumps(document).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    members[f"blobs/sha256/{digest[7:]}"] = data
    return {"digest": digest, "size": len(data)}


def test_the_platforms_an_archive_holds_are_read_as_the_import_finds_them(tmp_path):
    made = tmp_path / "made.tar"
    made.write_bytes(oci.layout_tarball(b"", "example.internal/team/app:1", "arm64", {}))
    assert archive_images(archive_of(made)).platforms == {"linux/arm64"}
    # an index of two platforms, named by its entries; one nested index without platforms
    members: dict = {"oci-layout": LAYOUT}
    manifest = {"config": blob(members, {"os": "linux", "architecture": "s390x"})}
    nested = {"manifests": [blob(members, manifest)]}
    top = [
        {
            **blob(members, {}),
            "platform": {"os": "linux", "architecture": "amd64"},
            "annotations": {"io.containerd.image.name": "example.internal/a:1"},
        },
        {**blob(members, nested), "annotations": {"io.containerd.image.name": "example.internal/b:1"}},
    ]
    members["index.json"] = json.dumps({"manifests": top}).encode()
    path = tar_of(tmp_path, "multi.tar", members)
    assert archive_images(archive_of(path)) == ArchiveImages(
        ("example.internal/a:1", "example.internal/b:1"), frozenset({"linux/amd64", "linux/s390x"})
    )
    # a docker archive: each image's config
    members = {"c.json": json.dumps({"os": "linux", "architecture": "arm64"}).encode()}
    members["manifest.json"] = json.dumps([{"Config": "./c.json", "RepoTags": ["app:1"]}]).encode()
    path = tar_of(tmp_path, "saved.tar", members)
    assert archive_images(archive_of(path)) == ArchiveImages(
        ("docker.io/library/app:1",), frozenset({"linux/arm64"})
    )


def test_an_archive_is_hashed_once_a_run_whatever_the_hosts_arches(monkeypatch):
    import containerd_deploy.operations.images as operation
    from containerd_deploy.controller.images import CachedImage

    archive, hashed = ImageArchive("/srv/a.tar", SHA), []
    monkeypatch.setattr(
        operation, "checked_archive", lambda a: hashed.append(a) or CachedImage(Path(a.path), SHA, "")
    )
    run = FakeHost()
    for arch in ("amd64", "arm64", "amd64"):
        assert operation._fetch_into_cache(run, FakeHost(), "/c", [archive], arch, (), [], {}) is True
    assert hashed == [archive]
    assert operation._fetch_into_cache(FakeHost(), FakeHost(), "/c", [archive], "amd64", (), [], {}) is True
    assert hashed == [archive, archive]  # a new run checks it again


def test_an_archive_of_other_platforms_or_of_none_it_names_is_refused_naming_them(monkeypatch):
    from containerd_deploy.deploy import images as deploy_images

    settings = settings_for({"containerd_image_archives": [{"path": "/srv/a.tar", "sha256": SHA}]})
    start = f"{settings.host}: data key 'containerd_image_archives': the image archive /srv/a.tar holds images for "
    for platforms, said in (
        ({"linux/s390x", "linux/amd64"}, "linux/amd64, linux/s390x"),
        (set(), "no platform it names"),
    ):
        held = ArchiveImages(("docker.io/library/app:1",), frozenset(platforms))
        monkeypatch.setattr(deploy_images, "_READ", {ImageArchive("/srv/a.tar", SHA): held})
        with pytest.raises(Refusal) as refused:
            deploy_images.archive_images_for(settings, "arm64")
        assert str(refused.value).startswith(
            f"{start}{said}, not the node's linux/arm64; nothing was uploaded."
        )


def test_what_is_not_json_of_an_image_reads_as_no_name_and_no_platform(tmp_path):
    entries = json.dumps(
        {"manifests": ["x", {"annotations": {"io.containerd.image.name": "example.internal/a:1"}}]}
    )
    path = tar_of(tmp_path, "oci.tar", {"oci-layout": LAYOUT, "index.json": entries.encode()})
    assert "has an image named 'None'" in refusal(archive_of(path))
    saved = json.dumps(["x"]).encode()
    assert "has an image without RepoTags" in refusal(
        archive_of(tar_of(tmp_path, "d.tar", {"manifest.json": saved}))
    )
    # a Config that names no member: no platform, the names still read
    saved = json.dumps(
        [{"Config": 5, "RepoTags": ["app:1"]}, {"Config": "gone.json", "RepoTags": ["app:2"]}]
    ).encode()
    held = archive_images(archive_of(tar_of(tmp_path, "e.tar", {"manifest.json": saved})))
    assert held == ArchiveImages(("docker.io/library/app:1", "docker.io/library/app:2"), frozenset())


def test_a_docker_archives_repotags_must_be_a_list_of_references(tmp_path):
    def names_of(tags) -> str:
        path = tar_of(tmp_path, "d.tar", {"manifest.json": json.dumps([{"RepoTags": tags}]).encode()})
        return (
            refusal(archive_of(path))
            .removeprefix(f"the image archive {path} ")
            .split("; nothing was uploaded")[0]
        )

    assert names_of("nginx:1") == "has an image without RepoTags: `ctr images import` would give it no name"
    assert names_of(["UPPER"]) == (
        "has the RepoTag 'UPPER', which has the repository path 'UPPER': lowercase letters and digits, parts split "
        "by / . _ __ or -"
    )
    assert names_of(["X" * 200]).startswith(f"has the RepoTag {'X' * 120!r}, which ")


def test_an_oci_name_that_does_not_parse_is_no_whole_reference_and_long_values_are_cut(tmp_path):
    path = oci_archive(tmp_path, {"io.containerd.image.name": "reg.io/UPPER:1"})
    assert refusal(archive_of(path)).startswith(
        f"the image archive {path} has an image named 'reg.io/UPPER:1', not by a whole reference"
    )
    path = oci_archive(tmp_path, {"io.containerd.image.name": "reg.io/" + "A" * 300})
    assert refusal(archive_of(path)).startswith(
        f"the image archive {path} has an image named {('reg.io/' + 'A' * 300)[:120]!r}, not"
    )
    long_path, long_sha = "p" * 300, "c" * 300
    for value, shown in (
        ("x" * 300, f"is {repr('x' * 300)[:120]}, not a list"),
        ([["y" * 300]], f"has {repr(['y' * 300])[:120]}, not a path"),
        ([{"path": long_path, "sha256": SHA}], f"has the path {long_path[:120]!r}, not an absolute path"),
        ([{"path": "/a.tar", "sha256": long_sha}], f"has the sha256 {long_sha[:80]!r} for /a.tar, not 64"),
    ):
        with pytest.raises(DataError) as refused:
            parse_archives("node1", value)
        assert shown in str(refused.value), str(refused.value)


def test_an_index_exactly_at_containerds_limit_is_read_and_one_over_is_refused_in_mib(tmp_path, monkeypatch):
    from containerd_deploy.controller import images

    index = json.dumps(
        {"manifests": [{"annotations": {"io.containerd.image.name": "example.internal/ok:1"}}]}
    )
    index += " " * ((1 << 20) + 1 - len(index))
    path = tar_of(tmp_path, "big.tar", {"oci-layout": LAYOUT, "index.json": index.encode()})
    monkeypatch.setattr(images, "ARCHIVE_DOCUMENT_LIMIT", (1 << 20) + 1)
    assert archive_images(archive_of(path)).names == ("example.internal/ok:1",)
    monkeypatch.setattr(images, "ARCHIVE_DOCUMENT_LIMIT", 1 << 20)
    assert refusal(archive_of(path)).startswith(
        f"could not read the image archive {path}: its index.json is over 1 MiB;"
    )


def test_a_compressed_archive_is_refused_as_not_read(tmp_path):
    import gzip

    plain = oci_archive(tmp_path, {"io.containerd.image.name": "example.internal/ok:1"})
    packed = tmp_path / "packed.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert refusal(archive_of(packed)).startswith(f"could not read the image archive {packed}: ")


def chain(members: dict, levels: int) -> dict:
    """The descriptor of `levels` nested indexes, the innermost naming its one entry's platform."""
    descriptor = {**blob(members, {}), "platform": {"os": "linux", "architecture": f"level{levels}"}}
    for _ in range(levels - 1):
        descriptor = blob(members, {"manifests": [descriptor]})
    return descriptor


def test_nested_indexes_are_read_for_platforms_down_to_a_limit_so_a_cycle_ends(tmp_path):
    from containerd_deploy.controller.images import INDEX_DEPTH

    members: dict = {"oci-layout": LAYOUT}
    top = [
        {**chain(members, INDEX_DEPTH), "annotations": {"io.containerd.image.name": "example.internal/a:1"}},
        {
            **chain(members, INDEX_DEPTH + 1),
            "annotations": {"io.containerd.image.name": "example.internal/b:1"},
        },
    ]
    members["index.json"] = json.dumps({"manifests": top}).encode()
    held = archive_images(archive_of(tar_of(tmp_path, "deep.tar", members)))
    assert held.platforms == {f"linux/level{INDEX_DEPTH}"}
    # an index that names itself: read to the limit, then done
    cyclic = {"oci-layout": LAYOUT}
    data = json.dumps({"manifests": [{"digest": "sha256:" + "e" * 64}]}).encode()
    cyclic["blobs/sha256/" + "e" * 64] = data
    cyclic["index.json"] = json.dumps(
        {
            "manifests": [
                {
                    "digest": "sha256:" + "e" * 64,
                    "annotations": {"io.containerd.image.name": "example.internal/c:1"},
                }
            ]
        }
    ).encode()
    assert archive_images(archive_of(tar_of(tmp_path, "cycle.tar", cyclic))).platforms == frozenset()

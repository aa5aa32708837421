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
from containerd_deploy.controller.images import archive_names, checked_archive
from containerd_deploy.data.images import ImageArchive, parse_archives
from containerd_deploy.data.values import DataError, Refusal
from containerd_deploy.operations.images import images_fetched, images_imported

from .flow import converged, drifted, settings_for
from .operations import commands
from .test_images import FakeHost, with_host
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


def test_the_names_an_oci_archive_gives_its_images(tmp_path):
    made = tmp_path / "made.tar"
    made.write_bytes(oci.layout_tarball(b"", "example.internal/team/app:1", "amd64", {}))
    assert archive_names(archive_of(made)) == ("example.internal/team/app:1",)
    # a whole reference in the OCI name, normalized as containerd names it
    index = {"manifests": [{"annotations": {"org.opencontainers.image.ref.name": "nginx:1.27"}}]}
    path = tar_of(tmp_path, "ref.tar", {"index.json": json.dumps(index).encode()})
    assert archive_names(archive_of(path)) == ("docker.io/library/nginx:1.27",)


def test_the_names_a_docker_archive_gives_its_images(tmp_path):
    manifest = [
        {"RepoTags": ["nginx:1.27", "registry.internal:5000/app:2", "nginx:1.27"]},
        {"RepoTags": None},
    ]
    path = tar_of(tmp_path, "saved.tar", {"manifest.json": json.dumps(manifest).encode()})
    assert archive_names(archive_of(path)) == ("docker.io/library/nginx:1.27", "registry.internal:5000/app:2")


@pytest.mark.parametrize(
    "members",
    [
        {
            "index.json": json.dumps(
                {"manifests": [{"annotations": {"org.opencontainers.image.ref.name": "1.27"}}]}
            )
        },
        {"index.json": json.dumps({"manifests": [{}]})},
        {"manifest.json": json.dumps([{"RepoTags": []}])},
        {"other": "x"},
    ],
)
def test_an_archive_that_names_no_image_is_refused_with_the_fix(tmp_path, members):
    path = tar_of(tmp_path, "x.tar", {name: text.encode() for name, text in members.items()})
    with pytest.raises(FetchError) as refused:
        archive_names(archive_of(path))
    assert str(refused.value).startswith(
        f"the image archive {path} names no image by a whole reference (registry/path:tag), so `ctr images "
        "import` would give its images no name a pod can ask for; nothing was uploaded. Fix: "
    )


def test_an_archive_that_cannot_be_read_is_refused_naming_it(tmp_path):
    with pytest.raises(
        FetchError, match=f"could not read the image archive {tmp_path}/none.tar: No such file"
    ):
        archive_names(ImageArchive(f"{tmp_path}/none.tar", SHA))
    (tmp_path / "not.tar").write_text("not a tar")
    with pytest.raises(FetchError, match=f"could not read the image archive {tmp_path}/not.tar: "):
        archive_names(archive_of(tmp_path / "not.tar"))


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
    assert plan_of({}, node).archives == ()


def test_an_archive_is_checked_then_uploaded_and_imported_under_its_names(tmp_path):
    path = tar_of(tmp_path, "a.tar", {"manifest.json": b"[]"})
    archive, names = archive_of(path), ("docker.io/library/nginx:1.27",)
    yielded = []
    generator = images_imported._inner(
        images=(), archives=((archive, names),), arch="amd64", cache_dir="/c", staging_dir="/s", bin_dir="/b"
    )

    def run():
        for command in generator:
            if isinstance(command, FunctionCommand):
                assert command.function(FakeHost(), FakeHost(), *command.args) is True
            yielded.append(command)

    with_host(run, executing=True)
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
    assert operation._fetch_into_cache(state, host, "/c", [archive], "amd64", (), []) is False
    [said] = host.said
    assert said.startswith(f"containerd-deploy: node1: the image archive {path} has the sha256 ")
    assert "containerd_images_sandbox" not in said
    assert run_of(state).hosts["node1"].failure == said.removeprefix("containerd-deploy: ")


def test_the_deploy_reads_each_archive_once_and_refuses_one_it_cannot_read(tmp_path, monkeypatch):
    from containerd_deploy.deploy import images as deploy_images

    path = tar_of(tmp_path, "saved.tar", {"manifest.json": json.dumps([{"RepoTags": ["nginx:1"]}]).encode()})
    data = {"containerd_image_archives": [{"path": str(path), "sha256": SHA}]}
    read = []
    monkeypatch.setattr(deploy_images, "_NAMES", {})
    monkeypatch.setattr(
        deploy_images, "archive_names", lambda archive: read.append(archive) or ("docker.io/library/nginx:1",)
    )
    settings = settings_for(data)
    expected = ((ImageArchive(str(path), SHA), ("docker.io/library/nginx:1",)),)
    assert deploy_images.archive_images(settings) == deploy_images.archive_images(settings) == expected
    assert len(read) == 1
    monkeypatch.setattr(
        deploy_images, "archive_names", lambda archive: (_ for _ in ()).throw(FetchError("bad"))
    )
    monkeypatch.setattr(deploy_images, "_NAMES", {})
    with pytest.raises(Refusal) as refused:
        deploy_images.archive_images(settings)
    assert str(refused.value) == f"{settings.host}: data key 'containerd_image_archives': bad"

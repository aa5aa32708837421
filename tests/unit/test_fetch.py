"""The controller-side cache: one verified download per file, named by its sha256."""

import hashlib

import pytest

from containerd_deploy.controller.cache import FetchError, cached_path, ensure_cached
from containerd_deploy.data.artifacts import Artifact


def source_at(tmp_path, content: bytes = b"runc binary"):
    """A release file on the mirror (a file:// URL)."""
    source = tmp_path / "runc.amd64"
    source.write_bytes(content)
    return source


def artifact_at(path, digest=None) -> Artifact:
    digest = digest or hashlib.sha256(path.read_bytes()).hexdigest()
    return Artifact("runc", "1.1.11", "amd64", f"file://{path}", digest)


def test_a_verified_file_is_cached_once(tmp_path):
    source = source_at(tmp_path)
    artifact = artifact_at(source)
    cache = tmp_path / "cache"
    path = ensure_cached(str(cache), artifact)
    assert path == cached_path(str(cache), artifact) and path.read_bytes() == b"runc binary"
    assert path.name == f"{artifact.sha256}-runc.amd64"
    source.unlink()  # a second host: served from the cache, the mirror is not asked again
    assert ensure_cached(str(cache), artifact).read_bytes() == b"runc binary"
    assert [p.name for p in cache.iterdir()] == [path.name], "no partial files left"


def test_a_tampered_file_is_never_cached(tmp_path):
    source = source_at(tmp_path, b"evil")
    cache = tmp_path / "cache"
    with pytest.raises(FetchError) as error:
        ensure_cached(str(cache), artifact_at(source, "0" * 64))
    assert str(error.value) == (
        f"checksum mismatch for file://{source}: expected sha256 {'0' * 64}, got "
        f"{hashlib.sha256(b'evil').hexdigest()}; nothing was cached or installed"
    )
    assert list(cache.iterdir()) == []


def test_a_corrupted_cache_entry_is_fetched_again(tmp_path):
    source = source_at(tmp_path)
    artifact = artifact_at(source)
    cache = tmp_path / "cache"
    ensure_cached(str(cache), artifact).write_bytes(b"bit rot")
    assert ensure_cached(str(cache), artifact).read_bytes() == b"runc binary"


def test_an_unreachable_mirror_is_a_clear_error(tmp_path):
    with pytest.raises(FetchError, match=r"could not download file://.*/absent to the controller's cache"):
        ensure_cached(
            str(tmp_path / "cache"),
            Artifact("runc", "1.1.11", "amd64", f"file://{tmp_path}/absent", "1" * 64),
        )


@pytest.mark.parametrize(
    "how", ["anyone can write it", "anyone can write a directory above it", "another user owns it"]
)
def test_a_cache_another_local_user_could_change_is_refused_before_any_download(tmp_path, how):
    """Regression (#26): any cache directory was used as found, so another user who could write
    it swapped a verified release file before its upload to every node."""
    import os

    from .rootless import ROOT

    source = source_at(tmp_path)
    parent = tmp_path / "shared"
    cache = parent / "cache"
    cache.mkdir(parents=True)
    if how == "anyone can write it":
        cache.chmod(0o777)
    elif how == "anyone can write a directory above it":
        parent.chmod(0o777)
    else:
        if not ROOT:
            pytest.skip("makes a directory another user's (run as root)")
        os.chown(cache, 65534, 65534)
    with pytest.raises(FetchError) as refused:
        ensure_cached(str(cache), artifact_at(source))
    assert f"the artifact cache {cache} is not this user's alone" in str(refused.value)
    assert "nothing was downloaded. Fix: set artifact_cache_dir" in str(refused.value)
    assert list(cache.iterdir()) == []


def test_a_partial_download_is_made_anew_never_written_through_a_planted_link(tmp_path):
    import os

    source = source_at(tmp_path)
    artifact = artifact_at(source)
    cache = tmp_path / "cache"
    cache.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"not the cache's")
    path = cached_path(str(cache), artifact)
    (cache / f".{path.name}.{os.getpid()}.partial").symlink_to(victim)
    assert ensure_cached(str(cache), artifact).read_bytes() == b"runc binary"
    assert victim.read_bytes() == b"not the cache's"
    assert [p.name for p in cache.iterdir()] == [path.name]


def test_under_umask_002_the_cache_and_the_directories_it_makes_are_private(tmp_path):
    """Regression (review of #26): the missing directories above the cache were made with the
    umask (0775 under the usual 002 of a user with a private group), and then refused."""
    import os

    source = source_at(tmp_path)
    cache = tmp_path / "home" / ".cache" / "containerd-deploy" / "artifacts"
    old = os.umask(0o002)
    try:
        assert ensure_cached(str(cache), artifact_at(source)).read_bytes() == b"runc binary"
    finally:
        os.umask(old)
    for place in (cache, cache.parent, cache.parent.parent, cache.parent.parent.parent):
        assert place.stat().st_mode & 0o777 == 0o700, place

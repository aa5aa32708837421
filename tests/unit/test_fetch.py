"""The controller-side cache: one verified download per file, named by its sha256."""

import hashlib

import pytest

from containerd_deploy.controller.cache import FetchError, cached_path, ensure_cached
from containerd_deploy.data.artifacts import Artifact


def artifact_at(path, digest=None) -> Artifact:
    digest = digest or hashlib.sha256(path.read_bytes()).hexdigest()
    return Artifact("runc", "1.1.11", "amd64", f"file://{path}", digest)


def test_a_verified_file_is_cached_once(tmp_path):
    source = tmp_path / "runc.amd64"
    source.write_bytes(b"runc binary")
    artifact = artifact_at(source)
    cache = tmp_path / "cache"
    path = ensure_cached(str(cache), artifact)
    assert path == cached_path(str(cache), artifact) and path.read_bytes() == b"runc binary"
    assert path.name == f"{artifact.sha256}-runc.amd64"
    source.unlink()  # a second host: served from the cache, the mirror is not asked again
    assert ensure_cached(str(cache), artifact).read_bytes() == b"runc binary"
    assert [p.name for p in cache.iterdir()] == [path.name], "no partial files left"


def test_a_tampered_file_is_never_cached(tmp_path):
    source = tmp_path / "runc.amd64"
    source.write_bytes(b"evil")
    cache = tmp_path / "cache"
    with pytest.raises(FetchError) as error:
        ensure_cached(str(cache), artifact_at(source, "0" * 64))
    assert str(error.value) == (
        f"checksum mismatch for file://{source}: expected sha256 {'0' * 64}, got "
        f"{hashlib.sha256(b'evil').hexdigest()}; nothing was cached or installed"
    )
    assert list(cache.iterdir()) == []


def test_a_corrupted_cache_entry_is_fetched_again(tmp_path):
    source = tmp_path / "runc.amd64"
    source.write_bytes(b"runc binary")
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

"""The install script, run for real on this machine against temporary directories (file:// URLs)."""

import hashlib
import io
import os
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest

from containerd_deploy.data.artifacts import Artifact
from containerd_deploy.facts.node import parse_node_state
from containerd_deploy.plan.run import artifact_is_installed
from containerd_deploy.remote.node_state import node_state_command
from containerd_deploy.remote.paths import NEW_SUFFIX
from containerd_deploy.remote.scripts import install_artifact_script

from .rootless import ROOT, needs_root, owner


def tarball(path: Path, files: dict[str, bytes], directory: str = "bin") -> str:
    """containerd's shape (files under bin/), or with directory "." the CNI plugins' and crictl's."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{directory}/{name}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def node(tmp_path):
    """A pretend node's directories, all under tmp_path."""
    for name in ("bin", "sbin", "staging", "state", "mirror"):
        (tmp_path / name).mkdir()
    return tmp_path


def run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True)


def install(node: Path, artifact: Artifact, dest: str) -> subprocess.CompletedProcess:
    return run(install_artifact_script(artifact, dest, str(node / "staging"), str(node / "state")))


def state_of(node: Path):
    return parse_node_state(
        run(
            node_state_command(
                str(node / "bin"), str(node / "config.toml"), str(node / "unit"), str(node / "state")
            )
        ).stdout.splitlines()
    )


def containerd(node: Path, version: str, files: dict[str, bytes]) -> Artifact:
    path = node / "mirror" / f"containerd-{version}.tar.gz"
    digest = tarball(path, files)
    return Artifact("containerd", version, "amd64", f"file://{path}", digest)


def test_verified_tarball_is_installed_and_recorded(node):
    artifact = containerd(node, "1.7.11", {"containerd": b"daemon", "ctr": b"client"})
    result = install(node, artifact, str(node / "bin"))
    assert result.returncode == 0, result.stderr
    assert (node / "bin/containerd").read_bytes() == b"daemon"
    assert oct((node / "bin/ctr").stat().st_mode & 0o777) == "0o755"
    assert not (node / "staging").exists()
    manifest = state_of(node).manifests["containerd"]
    assert manifest.fields["version"] == "1.7.11" and manifest.intact()
    assert artifact_is_installed(manifest, artifact, str(node / "bin"))
    assert not artifact_is_installed(manifest, artifact, "/usr/local/bin"), "installed elsewhere"


def test_checksum_mismatch_installs_nothing_and_leaves_nothing(node):
    good = containerd(node, "1.7.11", {"containerd": b"daemon", "ctr": b"client"})
    assert install(node, good, str(node / "bin")).returncode == 0
    before = {path.name: path.stat().st_ino for path in (node / "bin").iterdir()}
    evil = containerd(node, "1.7.12", {"containerd": b"evil", "ctr": b"evil"})
    tampered = Artifact("containerd", "1.7.12", "amd64", evil.url, "e" * 64)
    result = install(node, tampered, str(node / "bin"))
    assert result.returncode != 0
    assert f"checksum mismatch for {evil.url}: expected sha256 {'e' * 64}, got {evil.sha256}" in result.stderr
    assert {path.name: path.stat().st_ino for path in (node / "bin").iterdir()} == before
    assert (node / "bin/containerd").read_bytes() == b"daemon"
    assert not (node / "staging").exists()
    assert state_of(node).manifests["containerd"].fields["version"] == "1.7.11"


def test_missing_download_is_a_clear_error(node):
    missing = Artifact("runc", "1.1.11", "amd64", f"file://{node}/mirror/runc.amd64", "a" * 64)
    result = install(node, missing, str(node / "sbin/runc"))
    assert result.returncode != 0 and f"could not download {missing.url}" in result.stderr
    assert list((node / "sbin").iterdir()) == [] and not (node / "staging").exists()


def test_not_a_release_tarball(node):
    path = node / "mirror/containerd.tar.gz"
    path.write_bytes(b"<html>404</html>")
    artifact = Artifact(
        "containerd", "1.7.11", "amd64", f"file://{path}", hashlib.sha256(path.read_bytes()).hexdigest()
    )
    result = install(node, artifact, str(node / "bin"))
    assert result.returncode != 0 and "is not a release tarball" in result.stderr
    assert list((node / "bin").iterdir()) == []


def test_upgrade_replaces_by_rename_and_drops_files_the_new_release_lacks(node):
    old = containerd(node, "1.6.20", {"containerd": b"old", "containerd-shim": b"v1 shim", "ctr": b"old"})
    assert install(node, old, str(node / "bin")).returncode == 0
    (node / "bin/operator-tool").write_bytes(b"not ours")
    inode = (node / "bin/containerd").stat().st_ino
    new = containerd(node, "2.1.9", {"containerd": b"new", "ctr": b"new"})
    assert install(node, new, str(node / "bin")).returncode == 0
    assert sorted(path.name for path in (node / "bin").iterdir()) == ["containerd", "ctr", "operator-tool"]
    assert (node / "bin/containerd").read_bytes() == b"new"
    assert (node / "bin/containerd").stat().st_ino != inode, "replaced by rename, not rewritten in place"
    assert not list(node.rglob(f"*{NEW_SUFFIX}*"))


def test_single_binary_goes_to_its_path(node):
    path = node / "mirror/runc.amd64"
    path.write_bytes(b"runc binary")
    artifact = Artifact(
        "runc", "1.1.11", "amd64", f"file://{path}", hashlib.sha256(b"runc binary").hexdigest()
    )
    result = install(node, artifact, str(node / "sbin/runc"))
    assert result.returncode == 0, result.stderr
    assert (node / "sbin/runc").read_bytes() == b"runc binary"
    manifest = state_of(node).manifests["runc"]
    installed = (node / "sbin/runc").stat()
    assert manifest.files == {
        str(node / "sbin/runc"): f"{installed.st_ino}:{installed.st_size}:"
        f"{installed.st_ctime_ns // 10**9}.{installed.st_ctime_ns % 10**9:09d}"
    }
    assert manifest.intact()
    (node / "sbin/runc").write_bytes(b"tampered on the node")
    assert not artifact_is_installed(state_of(node).manifests["runc"], artifact, str(node / "sbin/runc"))


@pytest.mark.parametrize("change", ["same bytes written again", "mode changed", "replaced by rename"])
def test_any_change_to_an_installed_file_is_seen_without_hashing(node, change):
    """A file's recorded identity (inode, size, ctime) changes with any write, chmod or rename
    over it, even one that leaves the bytes or the size as they were."""
    path = node / "mirror/runc.amd64"
    path.write_bytes(b"runc binary")
    artifact = Artifact(
        "runc", "1.1.11", "amd64", f"file://{path}", hashlib.sha256(b"runc binary").hexdigest()
    )
    assert install(node, artifact, str(node / "sbin/runc")).returncode == 0
    runc = node / "sbin/runc"
    if change == "same bytes written again":
        runc.write_bytes(b"runc binary")
    elif change == "mode changed":
        runc.chmod(0o4755)
    else:
        (node / "sbin/other").write_bytes(b"runc binary")
        (node / "sbin/other").rename(runc)
    assert not state_of(node).manifests["runc"].intact(), change


def test_a_manifest_from_before_identities_is_checked_by_hashing(node):
    """Nodes deployed by an earlier version of this deploy recorded sha256 digests: still
    intact (no reinstall, no restart) while the bytes are the same."""
    path = node / "mirror/runc.amd64"
    path.write_bytes(b"runc binary")
    digest = hashlib.sha256(b"runc binary").hexdigest()
    artifact = Artifact("runc", "1.1.11", "amd64", f"file://{path}", digest)
    assert install(node, artifact, str(node / "sbin/runc")).returncode == 0
    manifest_path = node / "state/runc.manifest"
    lines = [
        f"file {node / 'sbin/runc'} {digest}" if line.startswith("file ") else line
        for line in manifest_path.read_text().splitlines()
    ]
    manifest_path.write_text("\n".join(lines) + "\n")
    assert artifact_is_installed(state_of(node).manifests["runc"], artifact, str(node / "sbin/runc"))
    (node / "sbin/runc").write_bytes(b"runc binarY")
    assert not state_of(node).manifests["runc"].intact()


def test_cni_plugins_tarball_goes_into_its_directory_and_can_be_removed(node):
    from containerd_deploy.remote.scripts import remove_artifact_script

    path = node / "mirror" / "cni-plugins-linux-amd64-v1.8.0.tgz"
    digest = tarball(path, {"loopback": b"lo", "bridge": b"br", "LICENSE": b"text"}, directory=".")
    artifact = Artifact("cni_plugins", "1.8.0", "amd64", f"file://{path}", digest)
    (node / "cni").mkdir()
    (node / "cni" / "operator-plugin").write_bytes(b"theirs")
    result = install(node, artifact, str(node / "cni"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (node / "cni").iterdir()) == [
        "LICENSE",
        "bridge",
        "loopback",
        "operator-plugin",
    ]
    assert state_of(node).manifests["cni_plugins"].intact()
    # Turned off: exactly what it installed goes, the operator's plugin stays.
    assert run(remove_artifact_script("cni_plugins", str(node / "state"))).returncode == 0
    assert [p.name for p in (node / "cni").iterdir()] == ["operator-plugin"]
    assert "cni_plugins" not in state_of(node).manifests


def test_a_tarball_without_the_components_file_is_refused(node):
    path = node / "mirror" / "cni-plugins-linux-amd64-v1.8.0.tgz"
    digest = tarball(path, {"bridge": b"br"}, directory=".")
    result = install(
        node, Artifact("cni_plugins", "1.8.0", "amd64", f"file://{path}", digest), str(node / "cni")
    )
    assert result.returncode != 0 and "has no loopback; nothing was installed" in result.stderr
    assert not (node / "cni").exists() or list((node / "cni").iterdir()) == []


def test_a_file_uploaded_by_the_controller_is_verified_then_installed_and_removed(node):
    artifact = containerd(node, "1.7.11", {"containerd": b"daemon", "ctr": b"client"})
    uploaded = node / "staging" / ".upload-containerd"
    uploaded.write_bytes(Path(artifact.url[len("file://") :]).read_bytes())
    offline = Artifact(
        "containerd", "1.7.11", "amd64", "http://unreachable.invalid/containerd.tar.gz", artifact.sha256
    )
    result = run(
        install_artifact_script(
            offline, str(node / "bin"), str(node / "staging"), str(node / "state"), uploaded=str(uploaded)
        )
    )
    assert result.returncode == 0, result.stderr
    assert (node / "bin/containerd").read_bytes() == b"daemon"
    assert not (node / "staging").exists(), "the uploaded copy is consumed"
    # A tampered upload is refused like a tampered download, and removed.
    uploaded.parent.mkdir()
    uploaded.write_bytes(b"not the release")
    changed = Artifact("containerd", "1.7.12", "amd64", offline.url, "f" * 64)
    result = run(
        install_artifact_script(
            changed, str(node / "bin"), str(node / "staging"), str(node / "state"), uploaded=str(uploaded)
        )
    )
    assert result.returncode != 0 and "checksum mismatch" in result.stderr
    assert (node / "bin/containerd").read_bytes() == b"daemon"
    assert not (node / "staging").exists()


def test_a_file_the_nodes_own_fetch_checked_is_checked_again_as_it_is_installed(node):
    """Regression (#26): a file this run's node-side fetch had checked was installed unhashed,
    so whoever could change the staging directory between the two commands chose root's
    binaries. What is renamed into place is what was checked, every time."""
    artifact = containerd(node, "1.7.11", {"containerd": b"daemon", "ctr": b"client"})
    script = install_artifact_script(
        artifact,
        str(node / "bin"),
        str(node / "staging"),
        str(node / "state"),
        uploaded=str(node / "staging" / ".fetched-containerd"),
    )
    (node / "staging").mkdir(exist_ok=True)
    (node / "staging" / ".fetched-containerd").write_bytes(b"swapped after the fetch checked it")
    result = run(script)
    assert result.returncode != 0 and "checksum mismatch" in result.stderr
    assert not (node / "bin/containerd").exists() and not (node / "bin/ctr").exists()
    (node / "staging").mkdir(exist_ok=True)
    (node / "staging" / ".fetched-containerd").write_bytes(Path(artifact.url[len("file://") :]).read_bytes())
    result = run(script)
    assert result.returncode == 0, result.stderr
    assert (node / "bin/ctr").read_bytes() == b"client"


def test_release_files_are_made_beside_their_paths_root_owned_and_executable(node):
    """Unpacked in a hidden directory in the destination (renamed into place, never copied
    across filesystems), then gone: only the release's files are left, 0755."""
    artifact = containerd(node, "1.7.11", {"containerd": b"daemon", "ctr": b"client"})
    (node / "bin").mkdir(exist_ok=True)
    (node / "bin" / "operator-tool").write_text("mine")
    result = install(node, artifact, str(node / "bin"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (node / "bin").iterdir()) == ["containerd", "ctr", "operator-tool"]
    for name in ("containerd", "ctr"):
        assert ((node / "bin" / name).stat().st_mode & 0o777, owner(node / "bin" / name)) == (0o755, (0, 0))


def test_fetch_verifies_every_file_before_any_is_kept(node):
    from containerd_deploy.remote.scripts import fetch_artifacts_script, fetched_path

    good = containerd(node, "1.7.11", {"containerd": b"daemon", "ctr": b"client"})
    runc_file = node / "mirror" / "runc.amd64"
    runc_file.write_bytes(b"runc")
    runc = Artifact("runc", "1.1.11", "amd64", f"file://{runc_file}", hashlib.sha256(b"runc").hexdigest())
    staging = str(node / "staging")
    result = run(fetch_artifacts_script([good, runc], staging))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (node / "staging").iterdir()) == [".fetched-containerd", ".fetched-runc"]
    assert Path(fetched_path(staging, runc)).read_bytes() == b"runc"
    for p in (node / "staging").iterdir():
        p.unlink()
    # The second file is bad: the first, already verified, is not kept either.
    tampered = Artifact("runc", "1.1.11", "amd64", runc.url, "0" * 64)
    result = run(fetch_artifacts_script([good, tampered], staging))
    assert result.returncode != 0 and f"checksum mismatch for {runc.url}" in result.stderr
    assert not (node / "staging").exists(), "nothing kept, and the emptied staging directory removed"
    missing = Artifact("runc", "1.1.11", "amd64", f"file://{node}/mirror/absent", runc.sha256)
    result = run(fetch_artifacts_script([good, missing], staging))
    assert result.returncode != 0 and "could not download" in result.stderr
    assert not (node / "staging").exists(), "a staging directory the fetch created is removed again"


@needs_root
def test_remove_tree_detaches_mounts_beneath_and_deletes(tmp_path):
    from containerd_deploy.remote.scripts import remove_tree_script

    tree = tmp_path / "var-lib-containerd"
    (tree / "io.containerd.snapshotter.v1.overlayfs" / "snapshots" / "1").mkdir(parents=True)
    mounted = tree / "rootfs"
    mounted.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mounted)], check=True)
    (mounted / "inside").write_text("a container's file")
    result = run(remove_tree_script(str(tree)))
    assert result.returncode == 0, result.stderr
    assert not tree.exists()
    assert run(remove_tree_script(str(tree))).returncode == 0, "absent already: nothing to do"


@needs_root
def test_remove_tree_empties_a_mount_point_and_keeps_it(tmp_path):
    """Regression (found on a machine, whose /var/lib/containerd is a bind mount, as a node's
    dedicated disk is): a purge failed with 'rm: cannot remove ...: Device or resource busy'."""
    from containerd_deploy.remote.scripts import remove_tree_script

    tree = tmp_path / "var-lib-containerd"
    tree.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tree)], check=True)
    try:
        (tree / "io.containerd.content.v1.content" / "blobs").mkdir(parents=True)
        (tree / ".hidden").write_text("x")
        beneath = tree / "rootfs"
        beneath.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(beneath)], check=True)
        result = run(remove_tree_script(str(tree)))
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(tree) and list(tree.iterdir()) == [], "emptied, the mount point kept"
    finally:
        subprocess.run(["umount", "-R", str(tree)], check=False)


def test_reset_finds_containerds_data_where_the_config_puts_it():
    from containerd_deploy.plan.run import data_directories

    defaults = {"root": "/var/lib/containerd", "state": "/run/containerd"}
    assert data_directories(None) == defaults
    assert data_directories('version = 2\nroot = "/data/containerd"\n') == {
        **defaults,
        "root": "/data/containerd",
    }
    # What the config names, however odd: check_purge judges it (and refuses these).
    assert data_directories('root = "/"\nstate = "relative"\n') == {"root": "/", "state": "relative"}
    assert data_directories("not [ toml") == defaults


def test_what_runs_cut_short_left_in_staging_is_seen_and_removed_and_nothing_else(node):
    from containerd_deploy.remote.scripts import fetch_artifacts_script, remove_staging_leftovers_script

    staging = node / "staging"
    (staging / ".fetched-runc").write_bytes(b"half a run")
    (staging / "containerd.Ab12Cd").mkdir()  # an install's work directory (mktemp)
    (staging / "containerd.Ab12Cd" / "download").write_bytes(b"x")
    (staging / ".fetched-containerd.partial").write_bytes(b"x")
    (staging / "operator-notes.txt").write_text("not ours")
    facts = node_state_command(
        str(node / "bin"),
        str(node / "config.toml"),
        str(node / "unit"),
        str(node / "state"),
        staging_dir=str(staging),
    )
    leftovers = parse_node_state(run(facts).stdout.splitlines()).staging_leftovers
    assert sorted(Path(path).name for path in leftovers) == [
        ".fetched-containerd.partial",
        ".fetched-runc",
        "containerd.Ab12Cd",
    ]

    runc_file = node / "mirror" / "runc.amd64"
    runc_file.write_bytes(b"runc")
    runc = Artifact("runc", "1.1.11", "amd64", f"file://{runc_file}", hashlib.sha256(b"runc").hexdigest())
    assert run(fetch_artifacts_script([runc], str(staging))).returncode == 0
    assert sorted(p.name for p in staging.iterdir()) == [".fetched-runc", "operator-notes.txt"]
    assert (staging / ".fetched-runc").read_bytes() == b"runc", "fetched again, not the leftover"

    (staging / ".fetched-runc").unlink()
    (staging / "runc.Zz99Yy").mkdir()
    assert run(remove_staging_leftovers_script(str(staging))).returncode == 0
    assert sorted(p.name for p in staging.iterdir()) == ["operator-notes.txt"]
    (staging / "operator-notes.txt").unlink()
    (staging / ".fetched-crictl").write_bytes(b"x")
    assert run(remove_staging_leftovers_script(str(staging))).returncode == 0
    assert not staging.exists(), "an emptied staging directory goes too"

    # A run stopped between emptying the staging directory and removing it: the next run sees
    # the empty directory and removes it.
    staging.mkdir()
    leftovers = parse_node_state(run(facts).stdout.splitlines()).staging_leftovers
    assert leftovers == [str(staging)]
    assert run(remove_staging_leftovers_script(str(staging))).returncode == 0
    assert not staging.exists()
    assert parse_node_state(run(facts).stdout.splitlines()).staging_leftovers == []


def test_a_signal_during_cleanup_does_not_cut_the_cleanup_short(node):
    """The lock holder's TERM can arrive while a finished install is cleaning up: it still
    removes its work directory and the emptied staging directory."""
    artifact = containerd(node, "1.7.11", {"containerd": b"daemon", "ctr": b"client"})
    script = install_artifact_script(artifact, str(node / "bin"), str(node / "staging"), str(node / "state"))
    assert script.count('rm -rf "$stage";') == 1
    result = run(script.replace('rm -rf "$stage";', 'kill -TERM $$; rm -rf "$stage";'))
    assert result.returncode == 0, result.stderr
    assert (node / "bin" / "containerd").read_bytes() == b"daemon"
    assert not (node / "staging").exists()


@pytest.mark.parametrize(
    "line",
    [
        'mkdir -p -m 700 -- "$staging"',
        'chmod 700 -- "$staging"',
        "stage=$(mktemp",
        'hidden="$dest_dir',
        "mkdir -m 700",
        "tar -xzf",
        'chown 0:0 "$@"',
        "mv -f -t",
        'manifest_record "$@"',
        'cp "$stage/manifest"',
        'put_in_place "$new_manifest"',
    ],
)
def test_an_install_stopped_by_a_signal_at_any_step_leaves_nothing_behind(node, line):
    """SIGTERM (what the lock holder sends a dead run's leftovers) right after `line` runs."""
    artifact = containerd(node, "1.7.11", {"containerd": b"daemon", "ctr": b"client"})
    script = install_artifact_script(artifact, str(node / "bin"), str(node / "staging"), str(node / "state"))
    lines = script.splitlines()
    at = next(i for i, text in enumerate(lines) if text.strip().startswith(line))
    lines.insert(at + 1, "kill -TERM $$")
    result = run("\n".join(lines))
    assert result.returncode != 0
    left = sorted(
        str(p.relative_to(node)) for p in node.rglob("*") if NEW_SUFFIX in p.name or "staging" in str(p)
    )
    assert left == [], left


def test_a_file_is_written_in_one_command_and_renamed_over_the_old_one(tmp_path):
    from containerd_deploy.remote.scripts import write_file_script

    path = tmp_path / "etc" / "containerd" / "config.toml"
    temp = path.parent / f".config.toml{NEW_SUFFIX}"
    text = "version = 2\n# 'quotes', \"double\", $HOME `ticks` \\ and ünïcode\nno newline at the end"
    assert run(write_file_script(text, str(temp), str(path), "644")).returncode == 0
    assert path.read_text() == text and oct(path.stat().st_mode & 0o777) == "0o644"
    before = path.stat().st_ino
    assert run(write_file_script("second\n", str(temp), str(path), "644")).returncode == 0
    assert path.read_text() == "second\n" and path.stat().st_ino != before, "renamed over, not rewritten"
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.toml"]
    # A failure (here: the rename onto a directory) leaves the old file and no hidden copy.
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").mkdir()
    result = run(write_file_script("y", str(tmp_path / "dir" / ".x.new"), str(tmp_path / "dir" / "x"), "644"))
    assert result.returncode != 0
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["x"]
    assert not any((tmp_path / "dir" / "x").iterdir())


def test_a_fetch_stopped_by_a_signal_stops_its_downloads_and_keeps_nothing(node, tmp_path):
    """Files are fetched side by side; a TERM (the lock holder's) while one is still coming
    stops the others too and leaves no file and no staging directory."""
    import os
    import signal
    import time

    from containerd_deploy.remote.scripts import fetch_artifacts_script

    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "curl").write_text(
        "#!/bin/sh\nfor a; do out=$url; url=$a; done\n"
        'case "$url" in *slow*) echo $$ > "$SLOW_MARK.pid"; mv "$SLOW_MARK.pid" "$SLOW_MARK"; exec sleep 60;; esac\n'
        'while [ "$1" != -o ]; do shift; done; cp "${url#file://}" "$2"\n'
    )
    (fake / "curl").chmod(0o755)
    fast = containerd(node, "1.7.11", {"containerd": b"daemon", "ctr": b"client"})
    slow = Artifact("runc", "1.1.11", "amd64", "http://slow.invalid/runc.amd64", "0" * 64)
    mark = tmp_path / "slow-started"
    process = subprocess.Popen(
        ["sh", "-c", fetch_artifacts_script([fast, slow], str(node / "staging"))],
        env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLOW_MARK": str(mark)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    for _ in range(100):
        if mark.exists() and (node / "staging" / ".fetched-containerd").exists():
            break
        time.sleep(0.1)
    assert mark.exists() and (node / "staging" / ".fetched-containerd").exists(), "both downloads started"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) != 0
    assert not (node / "staging").exists(), list((node / "staging").iterdir())
    # This run's own download (its PID, written before it became the sleep), not any `sleep 60`.
    download = int(mark.read_text())
    for _ in range(50):
        try:
            if Path(f"/proc/{download}/stat").read_text().split()[2] == "Z":
                break  # killed, not yet reaped
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the slow download was not stopped")


def test_a_failure_told_to_a_dropped_connection_still_cleans_up(node):
    """When the SSH connection is gone, telling why the install stopped raises SIGPIPE: the
    script still removes its hidden directory and staging files."""
    bad = node / "mirror" / "not-a-tarball.tar.gz"
    bad.write_bytes(b"not a tarball")
    artifact = Artifact(
        "containerd", "1.7.11", "amd64", f"file://{bad}", hashlib.sha256(b"not a tarball").hexdigest()
    )
    script = install_artifact_script(artifact, str(node / "bin"), str(node / "staging"), str(node / "state"))
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads what the script says any more
    try:
        result = subprocess.run(["sh", "-c", script], stdout=write_end, stderr=write_end)
    finally:
        os.close(write_end)
    assert result.returncode != 0
    left = sorted(
        str(p.relative_to(node)) for p in node.rglob("*") if NEW_SUFFIX in p.name or "staging" in str(p)
    )
    assert left == [], left


def _make_untrusted(node: Path, how: str) -> tuple[Path, str]:
    """A staging directory another user could change, as `how` says; what the refusal names."""
    staging = node / "staging"
    if how == "another user owns it":
        os.chown(staging, 65534, 65534)
        return staging, f"{staging} is owned by uid 65534, not root"
    if how == "anyone can write it":
        staging.chmod(0o777)
        return staging, f"{staging} is writable by group or others"
    if how == "anyone can write a directory above it (sticky, like /tmp)":
        node.chmod(0o1777)
        return staging, f"{node} is writable by group or others"
    if how == "another user owns a directory above it":
        os.chown(node, 65534, 65534)
        return staging, f"{node} is owned by uid 65534, not root"
    if how == "it is a symbolic link":
        staging.rmdir()
        staging.symlink_to(node / "mirror")
        return staging, f"{staging} is a symbolic link"
    elsewhere = node / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "staging").mkdir()
    (node / "via").symlink_to(elsewhere)
    return node / "via" / "staging", f"{node / 'via'} is a symbolic link"


UNTRUSTED = [
    "another user owns it",
    "anyone can write it",
    "anyone can write a directory above it (sticky, like /tmp)",
    "another user owns a directory above it",
    "it is a symbolic link",
    "a directory above it is a symbolic link",
]


@pytest.mark.parametrize("how", UNTRUSTED)
def test_a_staging_directory_another_user_could_change_is_refused_before_anything_is_put_in_it(node, how):
    """Regression (#26): a staging directory that existed was taken over (chown, chmod) and any
    directory above it trusted, so a user who could write a parent swapped the directory
    between the fetch and the install. Now it is root's alone all the way up, or nothing is
    fetched, taken over or touched."""
    from containerd_deploy.remote.scripts import fetch_artifacts_script

    if how.startswith("another user") and not ROOT:
        pytest.skip("makes a directory another user's (run as root)")
    runc_file = node / "mirror" / "runc.amd64"
    runc_file.write_bytes(b"runc")
    runc = Artifact("runc", "1.1.11", "amd64", f"file://{runc_file}", hashlib.sha256(b"runc").hexdigest())
    staging, named = _make_untrusted(node, how)
    target = node / "not-yours"
    target.write_text("kept")
    (staging / ".fetched-runc.partial").symlink_to(target)
    before = staging.lstat()
    result = run(fetch_artifacts_script([runc], str(staging)))
    assert result.returncode != 0
    assert f"containerd_staging_dir): {named}: another user could change" in result.stderr, result.stderr
    after = staging.lstat()
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode), "taken over"
    assert target.read_text() == "kept" and not (staging / ".fetched-runc").exists()
    assert (staging / ".fetched-runc.partial").is_symlink(), "root acted in it (its cleanup)"


def test_a_leftover_name_holding_a_newline_is_never_read_as_two_names(node):
    """Regression (#26): the fact printed leftovers one name a line, and the next run removed
    each line's path as root: a name holding a newline named a second path of its maker's
    choosing. Such a name is left out (the directory's trust check is what keeps them out)."""
    (node / "bin" / ".containerd-deploy-new.1\nvictim").mkdir()
    (node / "staging" / ".fetched-x\nvictim").write_text("")
    (node / "bin" / ".containerd-deploy-new.2").mkdir()
    state = parse_node_state(
        run(
            node_state_command(
                str(node / "bin"), "/c", "/u", str(node / "state"), staging_dir=str(node / "staging")
            )
        ).stdout.splitlines()
    )
    assert state.hidden_leftovers == [str(node / "bin" / ".containerd-deploy-new.2")]
    assert state.staging_leftovers == []


@needs_root
@pytest.mark.parametrize("shell", ["sh", "bash"])  # Debian's dash; bash is /bin/sh elsewhere
def test_the_node_fact_names_each_directory_on_the_way_another_user_could_change(node, shell):
    """The fact's `untrusted` section, run for real: each directory the deploy keeps things in
    and each above it, lstat'ed (a link is never followed), one (path, why) per problem; the
    files the same stat looked at (what the daemon loads) are no directories to judge."""
    base = node / "dirs"
    base.mkdir(mode=0o755)
    # "spaced ": a name the shell's `read` would trim, so never match, so never judge.
    for name, mode in [
        ("ok", 0o700),
        ("group", 0o770),
        ("world", 0o1777),
        ("theirs", 0o700),
        ("spaced ", 0o777),
    ]:
        (base / name).mkdir()
        (base / name).chmod(mode)
        (base / name / "below").mkdir(mode=0o700)
    os.chown(base / "theirs", 65534, 65534)
    (base / "link").symlink_to(base / "ok")
    (base / "file").write_text("")
    wanted = [f"{base}/{name}/below" for name in ("ok", "group", "world", "theirs", "link", "spaced ")]
    wanted += [f"{base}/file", f"{base}/missing/below"]
    (base / "loaded").write_text("")
    script = node_state_command(
        "/b", "/c", "/u", str(node / "state"), loaded=(f"{base}/loaded",), trusted_dirs=tuple(wanted)
    )
    # The sandbox lives under the tester's home: only what the test made is judged.
    result = subprocess.run([shell, "-c", script], capture_output=True, text=True)
    inside = [
        (path, why)
        for path, why in parse_node_state(result.stdout.splitlines()).untrusted_directories
        if path.startswith(str(base))
    ]
    assert sorted(inside) == [
        (f"{base}/file", "is not a directory"),
        (f"{base}/group", "is writable by group or others"),
        (f"{base}/link", "is a symbolic link"),
        (f"{base}/spaced ", "is writable by group or others"),
        (f"{base}/theirs", "is owned by uid 65534, not root"),
        (f"{base}/world", "is writable by group or others"),
    ]


def test_a_directory_the_node_fact_could_not_look_at_is_not_passed(node, tmp_path):
    """Fail closed: a directory that is there but has no line from the fact's one stat (it
    failed) is named, so the fact starts none of the node's binaries and the run is refused."""
    from containerd_deploy.remote.shell import NOT_LOOKED_AT

    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "stat").write_text("#!/bin/sh\nexit 1\n")
    (fake / "ctr").write_text(f"#!/bin/sh\necho ran > {tmp_path}/ran\n")
    for script in (fake / "stat", fake / "ctr"):
        script.chmod(0o755)
    command = node_state_command(
        str(fake), "/c", "/u", str(node / "state"), trusted_dirs=(str(node / "state"),)
    )
    command = command.replace("[ -S /run/containerd/containerd.sock ]", "true")
    result = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, env={"PATH": f"{fake}:/usr/bin:/bin"}
    )
    found = parse_node_state(result.stdout.splitlines()).untrusted_directories
    assert (str(node / "state"), NOT_LOOKED_AT) in found and ("/", NOT_LOOKED_AT) in found
    assert not (tmp_path / "ran").exists(), "ran a binary from a directory it could not judge"


@pytest.mark.parametrize("where", ["state", "bin"])
def test_an_install_on_its_own_acts_in_no_state_or_install_directory_another_user_could_change(node, where):
    """Regression (review of #26): run on its own, the install renamed files into place and
    removed the paths its state directory's manifest listed before it checked that directory."""
    artifact = containerd(node, "1.7.11", {"containerd": b"daemon", "ctr": b"client"})
    victim = node / "victim"
    victim.write_text("kept")
    (node / "state" / "containerd.manifest").write_text(f"component containerd\nfile {victim} 1:2:3\n")
    (node / where).chmod(0o777)
    result = install(node, artifact, str(node / "bin"))
    assert result.returncode != 0 and f"{node / where} is writable by group or others" in result.stderr
    assert victim.read_text() == "kept" and not (node / "bin" / "containerd").exists()


def test_a_file_is_written_anew_never_through_a_name_already_beside_it(node):
    from containerd_deploy.remote.paths import hidden_copy
    from containerd_deploy.remote.scripts import write_file_script

    victim = node / "victim"
    victim.write_text("kept")
    target = node / "config.toml"
    Path(hidden_copy(str(target))).symlink_to(victim)
    result = run(write_file_script("version = 2\n", hidden_copy(str(target)), str(target), "644"))
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "version = 2\n" and victim.read_text() == "kept"


@needs_root
def test_the_node_fact_runs_no_binary_from_a_directory_another_user_could_change(node):
    """Regression (review of #26): the fact said a bin dir was another user's, and ran its
    `containerd config default` and `ctr version` as root all the same (the refusal came after)."""
    ran = node / "ran-as-root"
    for name in ("containerd", "ctr"):
        (node / "bin" / name).write_text(f"#!/bin/sh\ntouch {ran}\n")
        (node / "bin" / name).chmod(0o755)
    bin_dir = str(node / "bin")
    script = node_state_command(
        bin_dir, str(node / "config.toml"), "/u", str(node / "state"), always_defaults=True
    )
    run(script)
    assert ran.exists(), "trusted: the defaults come from the node's containerd"
    ran.unlink()
    os.chown(node / "bin", 65534, 65534)
    state = parse_node_state(
        run(
            node_state_command(
                bin_dir,
                str(node / "config.toml"),
                "/u",
                str(node / "state"),
                always_defaults=True,
                trusted_dirs=(bin_dir,),
            )
        ).stdout.splitlines()
    )
    assert state.untrusted_directories == [(bin_dir, "is owned by uid 65534, not root")]
    assert not ran.exists(), "another user's binary ran as root"


def test_the_release_manifests_fact_reads_what_an_install_recorded_and_sees_a_changed_file(node):
    from containerd_deploy.facts.node import ReleaseManifests

    artifact = containerd(node, "1.7.11", {"containerd": b"daemon", "ctr": b"client"})
    assert install(node, artifact, str(node / "bin")).returncode == 0
    fact = ReleaseManifests()

    def manifests():
        output = run(fact.command(str(node / "state")))
        assert output.returncode == 0, output.stderr
        return fact.process(output.stdout.splitlines())

    found = manifests()
    assert list(found) == ["containerd"]
    assert artifact_is_installed(found["containerd"], artifact, str(node / "bin"))
    (node / "bin" / "ctr").write_bytes(b"tampered")
    assert not artifact_is_installed(manifests()["containerd"], artifact, str(node / "bin"))
    assert run(fact.command(str(node / "absent"))).stdout == "", "no state directory: no manifests"


@pytest.mark.parametrize(
    "path", ["/etc/containerd/config.toml", "/usr/local/bin/containerd", "/a b/c d.manifest"]
)
def test_a_new_copy_is_named_by_one_rule_in_python_and_in_shell(path):
    """The name a script gives a file's new copy is the one the node fact looks for."""
    from containerd_deploy.remote.paths import hidden_copy
    from containerd_deploy.remote.shell import hidden_copy_expression

    script = f"path={shlex.quote(path)}; printf %s {hidden_copy_expression('path')}"
    assert run(script).stdout == hidden_copy(path)


def test_a_manifest_refreshed_after_a_rollback_records_the_files_there_and_leaves_nothing_beside(tmp_path):
    """A file the refreshed manifest lists may be gone (a rollback removes what the kept
    release did not have): the others still get their identities, and no copy is left."""
    from containerd_deploy.remote.manifest import Manifest, manifest_lines, read_manifest

    there, gone = tmp_path / "bin dir" / "containerd", tmp_path / "bin dir" / "gone"
    there.parent.mkdir()
    there.write_text("daemon")
    manifest = tmp_path / "containerd.manifest"
    manifest.write_text(f"component containerd\nversion 1.7.24\nfile {there} 1:2:3\nfile {gone} 4:5:6\n")
    script = "\n".join(["set -eu", *manifest_lines(), f"manifest_refresh {shlex.quote(str(manifest))}"])
    assert run(script).returncode == 0
    recorded = Manifest()
    read_manifest(manifest.read_text().splitlines(), recorded)
    info = there.stat()
    ctime = f"{info.st_ctime_ns // 10**9}.{info.st_ctime_ns % 10**9:09d}"
    assert recorded.fields == {"component": "containerd", "version": "1.7.24"}
    assert recorded.files == {str(there): f"{info.st_ino}:{info.st_size}:{ctime}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin dir", "containerd.manifest"]


def test_a_staging_directory_any_characters_name_is_only_ever_a_path_to_the_fetch(node):
    """Regression (#26): the fetch script listed its files as `kept="$kept <path>"`, the staging
    directory unquoted inside double quotes: `$(…)` in containerd_staging_dir ran as root, and a
    space split a path in the cleanup. Every character a path may hold (settings refuse only
    control characters and backslashes) stays part of the path."""
    from containerd_deploy.data.settings import resolve
    from containerd_deploy.remote.scripts import fetch_artifacts_script

    hostile = str(node / "st $(touch PWNED) `touch PWNED2` 'q\" *; x")
    assert resolve("node1", {"containerd_staging_dir": hostile}).containerd_staging_dir == hostile
    good = containerd(node, "1.7.11", {"containerd": b"daemon", "ctr": b"client"})
    runc_file = node / "mirror" / "runc.amd64"
    runc_file.write_bytes(b"runc")
    runc = Artifact("runc", "1.1.11", "amd64", f"file://{runc_file}", hashlib.sha256(b"runc").hexdigest())
    before = sorted(p.name for p in node.iterdir())
    result = subprocess.run(
        ["sh", "-c", fetch_artifacts_script([good, runc], hostile)], capture_output=True, text=True, cwd=node
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in Path(hostile).iterdir()) == [".fetched-containerd", ".fetched-runc"]
    tampered = Artifact("runc", "1.1.11", "amd64", runc.url, "0" * 64)
    result = subprocess.run(
        ["sh", "-c", fetch_artifacts_script([good, tampered], hostile)],
        capture_output=True,
        text=True,
        cwd=node,
    )
    assert result.returncode != 0 and not Path(hostile).exists()
    assert sorted(p.name for p in node.iterdir()) == before, "nothing made or run beside it"


HOSTILE_NAME = "d $(touch PWNED) `touch PWNED2` 'q\" *; x"


def test_hostile_paths_are_only_ever_paths_to_the_install_the_removal_the_write_and_the_keep(node):
    """Regression (#26): the install put runc's file name inside double quotes (`"$src/<name>"`),
    so a `$(…)` in containerd_runc_path ran as root. Every script that takes a path the operator
    chose, given paths holding every character settings accept, touches those paths alone."""
    from containerd_deploy.data.settings import resolve
    from containerd_deploy.remote import rollback
    from containerd_deploy.remote.scripts import remove_artifact_script, write_file_script

    base = node / HOSTILE_NAME
    runc_path, bin_dir, state = base / f"runc {HOSTILE_NAME}", base / "bin", base / "state"
    assert resolve(
        "node1", {"runc_path": str(runc_path), "containerd_bin_dir": str(bin_dir)}
    ).runc_path == str(runc_path)
    before = sorted(p.name for p in node.iterdir())
    runc_file = node / "mirror" / "runc.amd64"
    runc_file.write_bytes(b"runc")
    runc = Artifact("runc", "1.1.11", "amd64", f"file://{runc_file}", hashlib.sha256(b"runc").hexdigest())
    tarball_artifact = containerd(node, "1.7.11", {"containerd": b"daemon", "ctr": b"client"})
    scripts = [
        install_artifact_script(runc, str(runc_path), str(base / "staging"), str(state)),
        install_artifact_script(tarball_artifact, str(bin_dir), str(base / "staging"), str(state)),
        write_file_script(
            "x = 1\n",
            str(base / f".config {HOSTILE_NAME}.containerd-deploy-new"),
            str(base / f"config {HOSTILE_NAME}"),
            "644",
        ),
        rollback.keep_release_script(
            str(state),
            (str(runc_path), str(bin_dir / "containerd")),
            (str(base / f"config {HOSTILE_NAME}"),),
            "1.7.11",
        ),
    ]
    for script in scripts:
        result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, cwd=node)
        assert result.returncode == 0, result.stderr
    assert runc_path.read_bytes() == b"runc" and (bin_dir / "ctr").read_bytes() == b"client"
    assert (base / f"config {HOSTILE_NAME}").read_text() == "x = 1\n"
    for component in ("runc", "containerd"):
        result = subprocess.run(
            ["sh", "-c", remove_artifact_script(component, str(state))],
            capture_output=True,
            text=True,
            cwd=node,
        )
        assert result.returncode == 0, result.stderr
    assert not runc_path.exists() and not (bin_dir / "ctr").exists()
    assert sorted(p.name for p in node.iterdir()) == sorted([*before, base.name]), (
        "nothing made or run beside"
    )

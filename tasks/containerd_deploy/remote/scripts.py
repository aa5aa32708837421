"""Shell scripts the operations run on a node, built by pure functions (unit-tested locally).

Each script is one SSH round trip and leaves the node either as it was or fully changed:
downloads go to a private staging directory, are checked against the pinned sha256 there, and
only then are installed, each file by an atomic rename in its own directory.
"""

import posixpath
import shlex

from containerd_deploy.data.artifacts import Artifact
from containerd_deploy.remote.manifest import manifest_lines, manifest_path
from containerd_deploy.remote.node_state import staging_leftovers_lines
from containerd_deploy.remote.paths import CRI_NAMESPACE, HIDDEN_DIR_PREFIX, ancestors
from containerd_deploy.remote.shell import (
    FETCH,
    PRELUDE,
    TAB,
    answer_wait_lines,
    hidden_copy_expression,
    put_in_place_lines,
    untrusted_lines,
)

q = shlex.quote


def trusted_dir_lines(path: str, what: str) -> list[str]:
    """Shell lines failing unless `path` and every directory above it are root's alone
    (`untrusted`, from ``shell.untrusted_lines``, defined first): what root keeps there, no
    other user can swap. The node fact asks the same before a run changes anything; this holds
    for an operation run on its own."""
    return [
        f"problem=$(untrusted {' '.join(q(directory) for directory in ancestors(path))})",
        f'[ -z "$problem" ] || fail "{what} $(printf "%s" "$problem" | head -n 1 | tr "\\t" " "): another user '
        'could change what root keeps there; nothing was changed"',
    ]


STAGING = "the staging directory (containerd_staging_dir):"
# What the CRI labels the sandbox image it pulls with: a kubelet's image garbage collection keeps it.
PINNED_LABEL = "io.cri-containerd.pinned=pinned"
IMPORT_TIMEOUT = 600  # seconds one image's import may take (unpacking a large image on a slow disk)


def staging_dir_lines() -> list[str]:
    """Shell lines making "$staging" (checked by ``trusted_dir_lines`` first) this deploy's own
    before anything is put in it: root-owned and 0700 (no other local user reads what waits
    there)."""
    return [
        "# shellcheck disable=SC2174 # parents keep their modes; chmod below covers the directory itself",
        'mkdir -p -m 700 -- "$staging"',
        'chown -h 0:0 -- "$staging"',
        'chmod 700 -- "$staging"',
    ]


def install_artifact_script(
    artifact: Artifact,
    dest: str,
    staging_dir: str,
    state_dir: str,
    uploaded: str | None = None,
) -> str:
    """Fetch, verify and install one artifact, then record what was installed in its manifest.

    `dest` is the directory a tarball's files go into (containerd's bin/, the CNI plugins,
    crictl), or the final path of a single binary (runc). `uploaded` is where the file already
    waits on the node (put there by ``release_files_fetched``); it is checked again all the
    same, as what is renamed into place (a fetch's check and this rename are separate
    commands). Files an earlier release of the same component
    installed and this one does not have are removed; nothing else is touched.
    """
    dest_dir = dest if artifact.layout.tarball else (dest.rsplit("/", 1)[0] or "/")
    lines = [
        PRELUDE,
        FETCH,
        *untrusted_lines(),
        *manifest_lines(),
        f"url={q(artifact.url)}",
        f"expected={q(artifact.sha256)}",
        f"manifest={q(manifest_path(state_dir, artifact.component))}",
        f"uploaded={q(uploaded or '')}",
        f"staging={q(staging_dir)}",
        f"dest_dir={q(dest_dir)}",
        'stage=""',
        'hidden=""',
        'new_manifest=""',
        # On any exit: drop this run's staging directory (and the staging directory itself
        # once empty), an uploaded copy, and the hidden directory of new files (and the
        # manifest's new copy) not yet renamed into place. Set before anything is made, so a run stopped at any line leaves nothing
        # behind. A signal during cleanup must not cut it short (the lock holder sends TERM
        # once the run's connection is gone): it ignores them, then removes everything.
        'cleanup() { trap "" HUP INT TERM PIPE; set +e; [ -z "$stage" ] || rm -rf "$stage"; [ -z "$hidden" ] || rm -rf "$hidden"; '
        '[ -z "$new_manifest" ] || rm -f "$new_manifest"; [ -z "$uploaded" ] || rm -f "$uploaded"; rmdir "$staging" 2>/dev/null || true; }',
        # Root acts in the staging directory (its cleanup too), the state directory (whose
        # manifest names the files it removes) and the destination only once each is root's alone.
        *trusted_dir_lines(staging_dir, STAGING),
        *trusted_dir_lines(state_dir, "the state directory (containerd_deploy_state_dir):"),
        *trusted_dir_lines(dest_dir, "the install directory:"),
        "trap cleanup EXIT",
        "trap 'exit 1' HUP INT TERM PIPE",
        *staging_dir_lines(),
        f'stage=$(mktemp -d "$staging/{artifact.component}.XXXXXX")',
        *_verified_download_lines(uploaded),
        'mkdir -p "$dest_dir"',
        # The new files are made in a hidden directory beside their final paths: on the same
        # filesystem, so each goes into place by a rename (no second copy), and made there, so
        # they get what the destination gives new files (SELinux labels), not the staging
        # directory's. Listed before it exists: cleanup removes it whenever the run stops.
        f'hidden="$dest_dir/{HIDDEN_DIR_PREFIX}$$"',
        'rm -rf "$hidden"',
        'mkdir -m 700 "$hidden"',
        *_unpack_lines(artifact, dest),
        *_rename_and_record_lines(artifact, state_dir),
    ]
    return "\n".join(lines) + "\n"


def _verified_download_lines(uploaded: str | None) -> list[str]:
    """Shell lines putting the release file in "$stage/download", checked against $expected."""
    if uploaded:
        lines = [
            'mv -f "$uploaded" "$stage/download" || fail "the release file $url is not in the staging directory; nothing was installed"'
        ]
    else:
        lines = ['fetch "$url" "$stage/download" || fail "could not download $url; nothing was installed"']
    return [
        *lines,
        'actual=$(sha256sum "$stage/download")',
        "actual=${actual%% *}",
        '[ "$actual" = "$expected" ] || fail "checksum mismatch for $url: expected sha256 $expected, got $actual; nothing was installed"',
    ]


def _unpack_lines(artifact: Artifact, dest: str) -> list[str]:
    """Shell lines putting the release's files in "$hidden" (as "$src") and listing, in
    "$stage/plan", each file's name and final path."""
    layout = artifact.layout
    if not layout.tarball:
        name = dest.rsplit("/", 1)[-1]
        return [
            'src="$hidden"',
            f'mv "$stage/download" "$src/"{q(name)}',
            f'printf "%s{TAB}%s\\n" {q(name)} {q(dest)} > "$stage/plan"',
        ]
    member = f" {q(layout.member)}" if layout.member else ""
    where = f" with a {layout.member}/ directory" if layout.member else ""
    return [
        f'tar -xzf "$stage/download" -C "$hidden" --no-same-owner{member} || fail "$url is not a release tarball{where}; nothing was installed"',
        f'src="$hidden{"/" + layout.member if layout.member else ""}"',
        f'[ -f "$src/{layout.required}" ] || fail "$url has no {(layout.member + "/") if layout.member else ""}{layout.required}; nothing was installed"',
        f'for f in "$src"/*; do if [ -f "$f" ]; then printf "%s{TAB}%s\\n" "${{f##*/}}" "$dest_dir/${{f##*/}}"; fi; done > "$stage/plan"',
    ]


def _rename_and_record_lines(artifact: Artifact, state_dir: str) -> list[str]:
    """Shell lines renaming the files "$stage/plan" lists into place, removing what the previous
    install of the component recorded and this one does not bring, and writing the manifest."""
    return [
        "{",
        f"  echo component {q(artifact.component)}",
        f"  echo version {q(artifact.version)}",
        '  echo "sha256 $expected"',
        '  echo "url $url"',
        '} > "$stage/manifest"',
        # Each command started costs on a small node: one chown, chmod, mv and stat for all files.
        "set --",
        f'while IFS="$(printf "{TAB}")" read -r name path; do set -- "$@" "$src/$name"; done < "$stage/plan"',
        # First make every new file whole (root-owned, 0755), then rename them all (each file
        # keeps its name, so all go into the one directory): a failure before the renames
        # leaves every final path as it was.
        'chown 0:0 "$@"',
        'chmod 0755 "$@"',
        'mv -f -t "$dest_dir" "$@"',
        "set --",
        f'while IFS="$(printf "{TAB}")" read -r name path; do set -- "$@" "$path"; done < "$stage/plan"',
        # Each file's identity once in place (the rename sets its ctime).
        'manifest_record "$@" >> "$stage/manifest"',
        'if [ -f "$manifest" ]; then',
        '  manifest_paths "$stage/manifest" > "$stage/paths"',
        '  manifest_paths_not_in "$manifest" "$stage/paths" | remove_each',
        "fi",
        f"mkdir -p {q(state_dir)}",
        f"new_manifest={hidden_copy_expression('manifest')}",
        'cp "$stage/manifest" "$new_manifest"',
        'put_in_place "$new_manifest" "$manifest" 644',
    ]


def fetched_path(staging_dir: str, artifact: Artifact) -> str:
    """Where a release file waits, verified, between the fetch and its install."""
    return f"{staging_dir}/.fetched-{artifact.component}"


def fetch_artifacts_script(artifacts: list[Artifact], staging_dir: str) -> str:
    """Download every artifact into the staging directory and verify each sha256, before any
    is installed: one bad file and none is kept, so no final path changes. The files are
    fetched side by side (one's download beside another's hashing: a small node's CPUs are
    what a first converge waits on)."""
    # Each file's name in the staging directory; the directory itself only ever as "$staging".
    names = [posixpath.basename(fetched_path(staging_dir, artifact)) for artifact in artifacts]
    lines = [
        PRELUDE,
        FETCH,
        *untrusted_lines(),
        f"staging={q(staging_dir)}",
        'jobs=""',
        'done_ok=""',
        # On failure: stop the other downloads, remove every file fetched so far (and the
        # staging directory once empty).
        # (set +e: a download already gone must not end the cleanup early.)
        'cleanup() { trap "" HUP INT TERM PIPE; set +e; if [ -z "$done_ok" ]; then '
        'for job in $jobs; do pkill -TERM -P "$job" 2>/dev/null; kill "$job" 2>/dev/null; done; wait; '
        f'for name in {" ".join(q(name) for name in names)}; do rm -f -- "$staging/$name" "$staging/$name.partial"; done; '
        'rmdir "$staging" 2>/dev/null; fi; }',
        # Root acts in the staging directory (its cleanup too) only once it is root's alone.
        *trusted_dir_lines(staging_dir, STAGING),
        "trap cleanup EXIT",
        "trap 'exit 1' HUP INT TERM PIPE",
        # Fetch one file to <path>.partial, check it, rename it to <path>; a failure is told on
        # stderr (not in a file: the staging disk may be what is full).
        "get() {",
        '  fetch "$1" "$3.partial" || { echo "containerd-deploy: could not download $1; nothing was installed" >&2; return 1; }',
        '  actual=$(sha256sum "$3.partial")',
        "  actual=${actual%% *}",
        '  [ "$actual" = "$2" ] || { echo "containerd-deploy: checksum mismatch for $1: expected sha256 $2, got $actual; '
        'nothing was installed" >&2; return 1; }',
        '  mv -f "$3.partial" "$3"',
        "}",
        *staging_dir_lines(),
        # What runs cut short left here (this run holds the node's lock: no other run is using it).
        *staging_leftovers_lines(staging_dir, "rm -rf"),
    ]
    for artifact, name in zip(artifacts, names, strict=True):
        lines += [
            f'get {q(artifact.url)} {q(artifact.sha256)} "$staging/"{q(name)} &',
            'jobs="$jobs $!"',
        ]
    lines += [
        'failed=""',
        'for job in $jobs; do wait "$job" || failed=1; done',
        'jobs=""',
        # Each failed download said why; stop (cleanup removes every file).
        '[ -z "$failed" ] || exit 1',
        "done_ok=1",
    ]
    return "\n".join(lines) + "\n"


def remove_staging_leftovers_script(staging_dir: str, keep: bool = False) -> str:
    """Remove what runs cut short left in the staging directory, then the directory if empty
    (or, with `keep`, lock it down for the files about to be uploaded into it)."""
    lines = [
        PRELUDE,
        *untrusted_lines(),
        f"staging={q(staging_dir)}",
        *trusted_dir_lines(staging_dir, STAGING),
    ]
    if keep:
        lines += staging_dir_lines()
    lines += staging_leftovers_lines(staging_dir, "rm -rf")
    if not keep:
        lines.append('rmdir -- "$staging" 2>/dev/null || true')
    return "\n".join(lines) + "\n"


def remove_paths_script(paths: list[str]) -> str:
    """Remove files and directories (what a run cut short left beside the deploy's files)."""
    return "\n".join([PRELUDE, *(f"rm -rf -- {q(path)}" for path in paths)]) + "\n"


def remove_artifact_script(component: str, state_dir: str) -> str:
    """Remove the files a component's manifest lists, then the manifest (the component was turned off)."""
    return (
        "\n".join(
            [
                PRELUDE,
                *manifest_lines(),
                f"manifest={q(manifest_path(state_dir, component))}",
                '[ -f "$manifest" ] || exit 0',
                'manifest_paths "$manifest" | remove_each',
                'rm -f -- "$manifest"',
            ]
        )
        + "\n"
    )


def write_file_script(text: str, temp_path: str, path: str, mode: str) -> str:
    """Write `text` beside `path` and rename it over `path` (atomic), root-owned with `mode`, in
    one command. The text travels in the command line, which the node's other users can read
    while it runs: only for files they may read anyway (not 0600 ones)."""
    import base64

    encoded = base64.b64encode(text.encode()).decode()
    return (
        "\n".join(
            [
                PRELUDE,
                f"temp={q(temp_path)}",
                "trap 'rm -f \"$temp\"' EXIT",
                "trap 'exit 1' HUP INT TERM PIPE",
                f"mkdir -p -- {q(posixpath.dirname(path))}",
                'rm -f -- "$temp"',
                # Made anew (noclobber: O_EXCL), never written through a name already there.
                f'(set -C; printf %s {encoded} | base64 -d > "$temp")',
                *put_in_place_lines(),
                f'put_in_place "$temp" {q(path)} {mode}',
            ]
        )
        + "\n"
    )


def private_file_script(temp_path: str) -> str:
    """Make the root-only 0600 file an upload fills (so the content is never readable by others)."""
    return (
        "\n".join(
            [
                PRELUDE,
                f"temp={q(temp_path)}",
                'mkdir -p -- "$(dirname -- "$temp")"',
                'rm -f -- "$temp"',
                'install -m 600 -o 0 -g 0 /dev/null "$temp"',
            ]
        )
        + "\n"
    )


def replace_file_script(temp_path: str, path: str, mode: str) -> str:
    """Move an uploaded temporary file over `path` atomically, root-owned with `mode`."""
    return (
        "\n".join(
            [
                PRELUDE,
                f"temp={q(temp_path)}",
                *put_in_place_lines(),
                f'put_in_place "$temp" {q(path)} {mode}',
            ]
        )
        + "\n"
    )


def service_script(
    unit: str,
    ctr: str,
    action: str,
    enable: bool,
    version: str,
    timeout: int,
    reload: bool = False,
    rollback_lines: list[str] | None = None,
) -> str:
    """Reload systemd, enable/start/restart the unit, wait until the daemon answers, and check
    its version.

    `action` is "restart", "start" or "" (leave the service as it is and only verify).
    `reload`: a unit file changed (or an earlier run left a reload pending).
    `rollback_lines`: define `rollback` (``rollback.rollback_lines``), called when the daemon
    falls short, before the command fails: a kept release is put back.
    """
    lines = [
        PRELUDE,
        f"unit={q(unit)}",
        f"ctr={q(ctr)}",
        f"expected={q(version)}",
        f"timeout={int(timeout)}",
        # rollback_lines define wait_answer too (a rollback waits for the kept release).
        *(rollback_lines or [*answer_wait_lines(), "rollback() { return 1; }"]),
        # The daemon fell short: say why, put a kept release back (if any), fail.
        'give_up() { echo "containerd-deploy: $*" >&2; [ -z "${journal:-}" ] || { echo "containerd-deploy: last lines of its journal:" >&2; journalctl -u "$unit" -n 30 --no-pager >&2 || true; }; rollback || true; exit 1; }',
    ]
    if enable:
        # `enable` reloads systemd by itself; with --no-reload, the one reload below does for
        # both (a reload takes seconds on a small node).
        lines.append('systemctl enable --quiet --no-reload "$unit"')
    if enable or reload:
        lines.append("systemctl daemon-reload")
    if action:
        # One deliberate start: systemd's start limit (5 in 10 s) counts starts others made (an
        # operator's restart, a crash loop it gave up on) and would refuse it.
        lines.append('systemctl reset-failed "$unit" 2>/dev/null || true')
        lines.append(f'systemctl {action} "$unit" || true')  # the wait below reports why
    lines += [
        'if ! wait_answer "$ctr" "$timeout"; then',
        "  journal=yes",
        '  give_up "$unit did not answer on its socket within ${timeout}s; ctr said: $answer"',
        "fi",
        """client=$(printf '%s\\n' "$answer" | sed -n 's/^ *Version: *//p' | sed -n 1p)""",
        '[ "$client" = "$server" ] || give_up "ctr $client talks to a containerd $server daemon: the running daemon is not the installed binary"',
        'case "$server" in "$expected"*|"v$expected"*) ;; *) give_up "containerd answers as $server, expected $expected";; esac',
        'echo "containerd $server answering (pid $(systemctl show -p MainPID --value "$unit"))"',
    ]
    return "\n".join(lines) + "\n"


def remove_tree_script(path: str) -> str:
    """Delete a directory tree, first detaching whatever is mounted beneath it (container rootfs
    and snapshot mounts outlive a stopped containerd); never crosses into another filesystem.
    A directory that is itself a mount point (a dedicated disk) is emptied and kept."""
    return (
        "\n".join(
            [
                PRELUDE,
                f"dir={q(path.rstrip('/'))}",
                '[ -e "$dir" ] || [ -L "$dir" ] || exit 0',
                # Never through a symbolic link (the path itself or a directory above it): that deletes
                # somewhere else than the config names.
                '[ "$(readlink -f -- "$dir")" = "$dir" ] || fail "$dir is or passes through a symbolic link (to $(readlink -f -- "$dir")); not deleting it"',
                # Deepest first, so nested mounts come off before the ones holding them.
                """findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1' | sort -r | """
                'while read -r m; do umount -l "$m"; done',
                'if findmnt -rn --mountpoint "$dir" >/dev/null; then',
                '  find "$dir" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system -- {} +',
                "else",
                '  rm -rf --one-file-system "$dir"',
                "fi",
            ]
        )
        + "\n"
    )


def uploaded_image_path(staging_dir: str, index: int) -> str:
    """Where an image's tarball waits between its upload and its import (a `.fetched-` name: a
    run cut short leaves it to the next run's leftovers)."""
    return f"{staging_dir}/.fetched-image-{index}"


def import_images_script(
    staging_dir: str,
    bin_dir: str,
    images: list[tuple[str, str, tuple[str, ...]]],
    pinned: tuple[str, ...] = (),
    snapshotter: str = "",
) -> str:
    """Check each uploaded image tarball (path, sha256, the names it gives) against its sha256,
    every one before any is imported; then import each into the CRI's namespace, unpacked for
    `snapshotter` (the CRI's; "": ctr's default), label the names in `pinned` pinned as the CRI
    labels the sandbox image it pulls, and check that the node has each name. The tarballs are
    removed whatever happens."""
    ctr = f"{q(f'{bin_dir}/ctr')} -n {CRI_NAMESPACE}"
    # ctr's --snapshotter, given by the variable it reads (1.6 to 2.x)
    unpack = f"CONTAINERD_SNAPSHOTTER={q(snapshotter)} " if snapshotter else ""
    paths = " ".join(q(path) for path, _, _ in images)
    lines = [
        PRELUDE,
        *untrusted_lines(),
        f"staging={q(staging_dir)}",
        f'cleanup() {{ trap "" HUP INT TERM PIPE; set +e; rm -f -- {paths}; rmdir "$staging" 2>/dev/null; }}',
        *trusted_dir_lines(staging_dir, STAGING),
        "trap cleanup EXIT",
        "trap 'exit 1' HUP INT TERM PIPE",
    ]
    for path, sha256, names in images:
        lines += [
            f"actual=$(sha256sum {q(path)})",
            "actual=${actual%% *}",
            f'[ "$actual" = {q(sha256)} ] || fail "the upload of {names[0]} does not match its sha256 (expected '
            f'{sha256}, got $actual); no image was imported"',
        ]
    for path, _, names in images:
        lines += [
            f"out=$({unpack}timeout {IMPORT_TIMEOUT} {ctr} images import {q(path)} 2>&1) || "
            f'fail "ctr could not import {names[0]}: $(printf "%s" "$out" | tail -n 3)"',
        ]
    for _, _, names in images:
        for name in names:
            if name in pinned:
                lines.append(
                    f"{ctr} images label {q(name)} {PINNED_LABEL} >/dev/null || "
                    f'fail "ctr could not label {name} pinned"'
                )
    lines.append(f"listed=$({ctr} images ls -q)")
    for _, _, names in images:
        for name in names:
            lines.append(
                f'printf "%s\\n" "$listed" | grep -qxF -- {q(name)} || fail "ctr imported it, but the node has no image {name}"'
            )
    return "\n".join(lines) + "\n"

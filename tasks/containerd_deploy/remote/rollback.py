"""Keep the release a node ran before a restart until the new one has proven itself, and put it
back when the new one does not answer (or fails the verify step).

Before a run restarts a running daemon, `keep_release_script` saves everything that restart
depends on — the files of the components it replaces (containerd, runc) by their manifests, those
manifests, config.toml, the unit and its drop-in — in ``<state_dir>/previous-release`` (release
files as hard links where the filesystem allows: every install renames new files over old ones;
the rest copied). `rollback_lines` define the shell function the service and verify commands call
when the new release falls short: it puts those files back (a copy renamed over each path, the
manifests rewritten with the copies' identities), restarts once, waits for the
kept version to answer, and says so; the command still fails, so the run names the host. Once
the new release is verified, the kept one is dropped (`drop_kept_script`).
"""

import shlex

from containerd_deploy.data.artifacts import DAEMON_COMPONENTS
from containerd_deploy.remote.manifest import manifest_lines, manifest_path
from containerd_deploy.remote.paths import KEPT_DIR_NAME, NEW_SUFFIX, ROLLED_BACK_NAME
from containerd_deploy.remote.shell import TAB, answer_wait_lines, hidden_copy_expression

q = shlex.quote

# What a rollback that got the kept release answering says, on stderr (the run's report reads it).
ROLLED_BACK = "containerd-deploy: rolled back:"


def kept_dir(state_dir: str) -> str:
    return f"{state_dir.rstrip('/')}/{KEPT_DIR_NAME}"


def rolled_back_path(state_dir: str) -> str:
    """What a rollback records ("<attempt> <when>"): the next run with the same attempt is refused."""
    return f"{state_dir.rstrip('/')}/{ROLLED_BACK_NAME}"


def keep_release_script(
    state_dir: str, release_files: tuple, other_files: tuple, version: str, attempt: str = ""
) -> str:
    """Save `release_files` (by manifest: an install only ever renames over them, so a hard link
    keeps the old file), `other_files` (the manifests, the files the daemon loads at start:
    copied, since an editor may write them in place) and the version the daemon answers with,
    unless an earlier run's kept release is still there: that run stopped before its release was
    verified, so the older one is the release that last ran well. Written beside its final name
    and renamed: a run stopped here leaves either no kept release or a whole one."""
    linked = dict.fromkeys(release_files)
    paths = [*linked, *(path for path in dict.fromkeys(other_files) if path not in linked)]
    keep = kept_dir(state_dir)
    lines = [
        "set -eu",
        "umask 077",
        f"keep={q(keep)}",
        f"version={q(version)}",
        f"attempt={q(attempt)}",
        'if [ -f "$keep/version" ]; then',
        '  printf "%s\\n" "$attempt" > "$keep/attempt"',
        '  echo "the release kept by an earlier run ($(cat "$keep/version")) stays kept"',
        "  exit 0",
        "fi",
        f'new="$keep{NEW_SUFFIX}"',
        'rm -rf -- "$new" "$keep"',
        "trap 'rm -rf -- \"$new\"' EXIT",
        "trap 'exit 1' HUP INT TERM PIPE",
        'mkdir -p -- "$new/files"',
        "n=0",
        ': > "$new/restore"',
        f"linked={len(linked)}",
        "for path in " + " ".join(q(path) for path in paths) + "; do",
        "  n=$((n + 1))",
        '  if [ -f "$path" ]; then',
        # A link costs nothing (another filesystem gets a copy: mode, owner and times kept).
        '    if [ "$n" -gt "$linked" ] || ! ln -- "$path" "$new/files/$n" 2>/dev/null; then cp -p -- "$path" "$new/files/$n"; fi',
        f'    printf "%s{TAB}%s\\n" "$n" "$path" >> "$new/restore"',
        "  else",
        f'    printf "%s{TAB}%s\\n" - "$path" >> "$new/restore"',
        "  fi",
        "done",
        'printf "%s\\n" "$version" > "$new/version"',
        'printf "%s\\n" "$attempt" > "$new/attempt"',
        'mv -T -- "$new" "$keep"',
        'echo "kept containerd $version to put back if the new release does not answer"',
    ]
    return "\n".join(lines) + "\n"


def rollback_lines(state_dir: str, unit: str, ctr: str, timeout: int) -> list[str]:
    """Shell lines defining `rollback` (and the `wait_answer` it uses): with a kept release, put
    it back, restart once, wait for its version to answer, drop it, and print what happened (on
    stderr); returns 1 when there is nothing kept (nothing is changed then)."""
    keep = kept_dir(state_dir)
    restored = "$keep/restore"
    lines = [
        *answer_wait_lines(),
        *manifest_lines(),
        "rollback() {",
        f"  keep={q(keep)}",
        '  [ -f "$keep/version" ] || return 1',
        "  set +e",
        '  kept=$(cat "$keep/version")',
        '  echo "containerd-deploy: rolling back to containerd $kept (kept in $keep)" >&2',
        # Files the new release brought that the kept one did not have.
    ]
    manifests = " ".join(q(manifest_path(state_dir, component)) for component in DAEMON_COMPONENTS)
    lines += [
        f'  cut -f 2- "{restored}" > "$keep/paths"',
        f"  for manifest in {manifests}; do",
        # Only the components that release was kept of: the others were left alone.
        '    grep -qxF -- "$manifest" "$keep/paths" || continue',
        '    [ -f "$manifest" ] || continue',
        '    manifest_paths_not_in "$manifest" "$keep/paths" | remove_each',
        "  done",
        f'  while IFS="$(printf "{TAB}")" read -r saved path; do',
        '    if [ "$saved" = - ]; then rm -f -- "$path"; continue; fi',
        f"    new={hidden_copy_expression('path')}",
        '    { cp -p -- "$keep/files/$saved" "$new" && put_in_place "$new" "$path"; } \\',
        '      || echo "containerd-deploy: could not put back $path" >&2',
        f'  done < "{restored}"',
        # The files put back are copies (new inodes): their manifests get the identities they
        # have now, or the next run would take them for files changed outside the deploy.
        f"  for manifest in {manifests}; do",
        f"""    awk -F "{TAB}" -v m="$manifest" '$1 != "-" && $2 == m {{ found = 1 }} END {{ exit !found }}' "{restored}" || continue""",
        '    manifest_refresh "$manifest"',
        "  done",
        # What was tried is recorded: the next run with the same data is refused, not restarted
        # into the same failure again (the kept release goes once it answers).
        '  tried=$(cat "$keep/attempt" 2>/dev/null)',
        # Root's alone (0600): it is a hash of files some of which hold credentials.
        f'  [ -z "$tried" ] || (umask 077; printf "%s %s\\n" "$tried" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > {q(rolled_back_path(state_dir))})',
        "  systemctl daemon-reload",
        # A release that failed fast may have used up the unit's start limit.
        f"  systemctl reset-failed {q(unit)} 2>/dev/null",
        f"  systemctl restart {q(unit)}",
        f'  if ! wait_answer {q(ctr)} {int(timeout)} "$kept"; then',
        f'    echo "containerd-deploy: the rollback to containerd $kept did not answer within {int(timeout)}s either; ctr said: $answer" >&2',
        '    echo "containerd-deploy: the kept release stays in $keep" >&2',
        "    return 2",
        "  fi",
        '  rm -rf -- "$keep"',
        f'  echo "{ROLLED_BACK} containerd $server answers again (pid $(systemctl show -p MainPID --value {q(unit)})); running containers were left running" >&2',
        "  return 0",
        "}",
    ]
    return lines


def drop_kept_script(state_dir: str) -> str:
    """The new release is verified: the kept one goes, and the record of an earlier rollback."""
    return (
        f"rm -rf -- {q(kept_dir(state_dir))} {q(kept_dir(state_dir) + NEW_SUFFIX)} "
        f"{q(rolled_back_path(state_dir))}\n"
    )

"""The manifest: what one install of a release artifact put on a node, written last by that
install, read by the node fact, the removal and the rollback. Its format is read and written
here only, in shell and in Python:

    component <component>
    version <version>
    sha256 <the release file's sha256>
    url <where it came from>
    file <path> <identity>        one line a file; the path may hold spaces, the identity not

A file's identity (inode, size, ctime to the nanosecond: ``FILE_IDENTITY_FORMAT``) changes with
any write, chmod or rename over its path, and userspace cannot set a ctime back: recorded when
the file is installed, it proves the file untouched without hashing ~90 MB of binaries a run.
"""

from dataclasses import dataclass, field

from containerd_deploy.remote.shell import (
    FILE_IDENTITY_FORMAT,
    STAT,
    hidden_copy_expression,
    put_in_place_lines,
)

__all__ = ["FILE_IDENTITY_FORMAT"]  # the identity a manifest records (remote/shell.py)
SUFFIX = ".manifest"


def manifest_path(state_dir: str, component: str) -> str:
    return f"{state_dir.rstrip('/')}/{component}{SUFFIX}"


@dataclass
class Manifest:
    """A manifest as the node fact reads it."""

    fields: dict = field(default_factory=dict)  # component, version, sha256, url
    files: dict = field(default_factory=dict)  # path -> identity recorded at install time
    actual: dict = field(default_factory=dict)  # path -> identity now (missing files absent)

    def intact(self) -> bool:
        return bool(self.files) and all(
            self.actual.get(path) == identity for path, identity in self.files.items()
        )


def read_manifest(lines: list[str], manifest: Manifest) -> None:
    """A manifest's lines into `manifest` (the shell's reading: ``manifest_lines``)."""
    for line in lines:
        key, _, value = line.strip().partition(" ")
        if key == "file":
            path, _, identity = value.rpartition(" ")
            # A comma: recorded by a stat run in a locale whose decimal point it is (scripts run
            # it in the C locale: STAT), the same identity.
            manifest.files[path] = identity.replace(",", ".")
        elif key:
            manifest.fields[key] = value


def manifest_entry_lines() -> list[str]:
    """Shell lines defining `manifest_entry LINE`: for a manifest's `file` line, sets
    $entry_path and $entry_identity and returns 0; 1 for any other line (the shell's reading of
    the format; ``read_manifest`` is Python's). A builtin only: the node fact runs it on every
    line of every manifest, every run."""
    return [
        "manifest_entry() {",
        '  case "$1" in "file "*) ;; *) return 1;; esac',
        "  entry_rest=${1#file }",
        "  entry_path=${entry_rest% *}",
        "  # shellcheck disable=SC2034 # read by the node fact (remote/node_state.py)",
        "  entry_identity=${entry_rest##* }",
        "}",
    ]


def manifest_lines() -> list[str]:
    """Shell lines defining, besides `manifest_entry` (``manifest_entry_lines``) and
    `put_in_place` (``shell.put_in_place_lines``):

    - `manifest_paths MANIFEST`: each path it lists;
    - `manifest_paths_not_in MANIFEST LIST`: each path it lists that is not a line of LIST;
    - `manifest_record PATH...`: the `file` lines of PATHs as they are now;
    - `manifest_refresh MANIFEST`: its `file` lines given the identities their paths have now
      (files put back as copies; a file gone is left out), written beside it and renamed over it;
    - `remove_each`: remove each path read from standard input.
    """
    return [
        *put_in_place_lines(),
        *manifest_entry_lines(),
        "manifest_paths() {",
        '  while IFS= read -r line; do if manifest_entry "$line"; then printf \'%s\\n\' "$entry_path"; fi; done < "$1"',
        "}",
        # An empty LIST holds no pattern and so matches nothing: every path is printed.
        'manifest_paths_not_in() { manifest_paths "$1" | grep -vxF -f "$2" || true; }',
        f"manifest_record() {{ [ $# -eq 0 ] || {STAT} -c 'file %n {FILE_IDENTITY_FORMAT}' -- \"$@\"; }}",
        "manifest_refresh() {",
        "  refreshing=$1",
        f"  refreshed={hidden_copy_expression('refreshing')}",
        "  set --",
        "  while IFS= read -r line; do",
        '    if manifest_entry "$line" && [ -f "$entry_path" ]; then set -- "$@" "$entry_path"; fi',
        '  done < "$refreshing"',
        '  { grep -v "^file " "$refreshing" || true; manifest_record "$@"; } > "$refreshed" &&',
        '  put_in_place "$refreshed" "$refreshing" 644',
        "}",
        'remove_each() { while IFS= read -r path; do rm -f -- "$path"; done; }',
    ]

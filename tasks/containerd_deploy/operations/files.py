"""Operations on single files and directories: write a file's content (a diff shown, secrets
redacted), remove files, leftovers of runs cut short, and directories.
"""

import hashlib
import posixpath
import secrets
import shlex
from collections.abc import Callable, Iterator
from io import StringIO
from typing import IO

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.api.command import PyinfraCommand
from pyinfra.facts.files import Directory, File, FileContents, Sha256File
from pyinfra.operations.util.files import generate_color_diff

from containerd_deploy.data.values import redact_secrets
from containerd_deploy.operations import ESCALATIONS, FROM_NODE, FromNode, _escalated
from containerd_deploy.remote.paths import UPLOAD_DIR_PREFIX, hidden_copy
from containerd_deploy.remote.scripts import (
    private_file_script,
    remove_paths_script,
    remove_tree_script,
    replace_file_script,
    write_file_script,
)

q = shlex.quote


def upload_directory() -> str:
    """A fresh, unguessable directory name for uploads through sudo (made by the login user, 0700)."""
    return f"{UPLOAD_DIR_PREFIX}{secrets.token_hex(12)}"


def private_uploads(files: list[tuple[str | IO, str]], upload_dir: str) -> Iterator[PyinfraCommand]:
    """Upload each (source, root-only path) pair. Logged in as root, straight to the path.
    Through sudo, pyinfra's SFTP writes as the login user, then copies as root: the copy goes
    through `upload_dir`, made here by the login user itself (0700, so no other user reads a
    secret in it or swaps a file), and each path keeps the owner and mode it already has.
    Root never acts in the shared temporary directory: the login user makes `upload_dir`,
    first removing those of its own a run cut short left there, and `uploads_done` has it
    remove `upload_dir` once the files are in place."""
    if _escalated():
        yield _as_login_user(
            f"find {q(posixpath.dirname(UPLOAD_DIR_PREFIX) + '/')} -maxdepth 1 "
            f'-name {q(posixpath.basename(UPLOAD_DIR_PREFIX) + "*")} -user "$(id -u)" -exec rm -rf -- {{}} +; '
            f"mkdir -m 700 {q(upload_dir)}"
        )
    for index, (source, path) in enumerate(files):
        yield FileUploadCommand(
            source, path, remote_temp_filename=f"{upload_dir}/{index}" if _escalated() else None
        )


def uploads_done(upload_dir: str) -> Iterator[PyinfraCommand]:
    """The login user removes the directory `private_uploads` went through (through sudo)."""
    if _escalated():
        yield _as_login_user(f"rm -rf -- {q(upload_dir)}")


def _as_login_user(command: str) -> StringCommand:
    return StringCommand(command, **ESCALATIONS)


def redacted_lines(text: str) -> list[str]:
    """Lines of a file for a diff, credential values hidden (`key = "***"`)."""
    return [redact_secrets(line) + "\n" for line in text.splitlines()]


def show_diff(path: str, current: str | None, wanted: str, secret: bool) -> None:
    """With pyinfra's --diff, log what a write will change, as files.put does (never a secret)."""
    if not host.state.config.DIFF or host.state.is_executing:
        return
    verb = "create" if current is None else "modify"
    if secret:
        host.log(f"Will {verb} {path} (contents not shown: it holds credentials)")
        return
    host.log(f"Will {verb} {path}")
    for line in generate_color_diff(redacted_lines(current or ""), redacted_lines(wanted)):
        logger.info("  %s", line)
    logger.info("")


@operation()
def file_content(
    path: str,
    content: str | Callable[[], str],
    current_sha256: str | None | FromNode = FROM_NODE,
    mode: str = "644",
    current_text: str | None = None,
    diff: bool = True,
):
    """
    Make ``path`` hold ``content``: write it beside the path, then rename it over the path (atomic).

    + path: the file on the node
    + content: the wanted text, or a callable returning it (called when the operation runs)
    + current_sha256: sha256 of the node's file from the ``ContainerdNode`` fact, None if absent;
      read from the node when not given
    + mode: octal mode of the file; ``600`` files (credentials) are uploaded into a root-only
      file, never passed in a command line, shown or world-readable for an instant
    + current_text: the node's file, when the caller has it; with ``--diff`` it is read
      otherwise (not for ``600`` files, whose contents are never shown)
    + diff: with pyinfra's ``--diff``, show what the write changes (the deploy shows its plan's)

    **Example:**

    .. code:: python

        file_content(
            name="Install the containerd unit",
            path="/etc/systemd/system/containerd.service",
            content=unit_text,
            current_sha256=node.unit_sha256,
        )
    """
    if isinstance(current_sha256, FromNode):
        current_sha256 = host.get_fact(Sha256File, path=path)
    text = content() if callable(content) else content
    if hashlib.sha256(text.encode()).hexdigest() == current_sha256:
        host.noop(f"{path} is up to date")
        return
    # Read only to show it, while pyinfra detects changes: never again when the run executes.
    if (
        diff
        and host.state.config.DIFF
        and not host.state.is_executing
        and current_text is None
        and current_sha256 is not None
        and mode != "600"
    ):
        current_text = "\n".join(host.get_fact(FileContents, path=path) or []) + "\n"
    if diff:
        show_diff(path, current_text if current_sha256 is not None else None, text, secret=mode == "600")
    temp_path = hidden_copy(path)
    if mode != "600":
        # One command (an upload costs two more round trips); the text is readable by all anyway.
        yield write_file_script(text, temp_path, path, mode)
        return
    # Created private before the upload writes into it: credentials are never world-readable,
    # nor passed in a command line.
    yield private_file_script(temp_path)
    via = upload_directory()
    yield from private_uploads([(StringIO(text), temp_path)], via)
    yield replace_file_script(temp_path, path, mode)
    yield from uploads_done(via)


@operation()
def file_absent(path: str, present: bool | FromNode = FROM_NODE, remove_empty_parent: bool = False):
    """
    Remove a file the deploy wrote earlier and no longer wants.

    + path: the file on the node
    + present: whether the ``ContainerdNode`` fact found it; asked of the node when not given
    + remove_empty_parent: also remove its directory if nothing else is left in it

    **Example:**

    .. code:: python

        file_absent(name="Remove the proxy drop-in", path=dropin, present=dropin in node.files)
    """
    if isinstance(present, FromNode):
        present = bool(host.get_fact(File, path=path))
    if not present:
        host.noop(f"{path} is absent")
        return
    if remove_empty_parent:
        yield StringCommand(
            "rm",
            "-f",
            "--",
            q(path),
            "&&",
            "rmdir",
            "--ignore-fail-on-non-empty",
            "--",
            q(posixpath.dirname(path)),
        )
    else:
        yield StringCommand("rm", "-f", "--", q(path))


@operation()
def leftovers_absent(paths: list[str]):
    """
    Remove what runs cut short left beside the paths the deploy writes: hidden copies not yet
    renamed into place, hidden release directories, a manifest's or a kept release's new copy.

    + paths: the leftovers the ``ContainerdNode`` fact found (only names the deploy makes)

    **Example:**

    .. code:: python

        leftovers_absent(name="Remove what runs cut short left", paths=node.hidden_leftovers)
    """
    if not paths:
        host.noop("no run cut short left anything")
        return
    yield remove_paths_script(paths)


@operation()
def directory_absent(path: str, present: bool | FromNode = FROM_NODE, only_if_empty: bool = False):
    """
    Remove a directory the deploy made (with everything in it, or only once it is empty).

    + path: the directory on the node
    + present: whether it is (or may be) there; asked of the node when not given
    + only_if_empty: leave it when anything else is in it

    **Example:**

    .. code:: python

        directory_absent(name="Remove the state directory", path="/var/lib/containerd-deploy",
                         present=True, only_if_empty=True)
    """
    if isinstance(present, FromNode):
        present = bool(host.get_fact(Directory, path=path))
    if not present:
        host.noop(f"{path} is absent")
        return
    if only_if_empty:
        yield StringCommand("rmdir", "--ignore-fail-on-non-empty", "--", q(path), "2>/dev/null", "||", "true")
    else:
        yield remove_tree_script(path)

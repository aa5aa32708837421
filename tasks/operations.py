"""pyinfra operations of this deploy: thin, each decides from the node state it is given.

The deploy gives them the state the `ContainerdNode` fact gathered at the start of the run
instead of asking the node again, so a run with nothing to do costs one round trip for that
fact. Called on their own (in a deploy of the operator's), they read that state themselves:
an argument left at `FROM_NODE` is asked of the node with a fact of its own.
"""

import hashlib
import posixpath
import secrets
import shlex
from collections.abc import Callable, Iterator
from io import StringIO
from typing import IO

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, FunctionCommand, OperationError, StringCommand, operation
from pyinfra.api.command import PyinfraCommand
from pyinfra.facts.files import Directory, File, FileContents, Sha256File
from pyinfra.operations.util.files import generate_color_diff

from .artifacts import Artifact
from .facts import (
    UPLOAD_DIR_PREFIX,
    DistroPackage,
    Manifest,
    ReleaseManifests,
    RunLock,
    UnitState,
    hidden_copy,
)
from .fetch import FetchError, cached_path, ensure_cached
from .hooks import HookFailed, hook_argv, run_hook
from .lock import NO_SESSION, LockState, take_lock_script, unavailable_message
from .rollback import drop_kept_script, keep_release_script, rollback_lines
from .scripts import (
    fetch_artifacts_script,
    fetched_path,
    install_artifact_script,
    private_file_script,
    remove_artifact_script,
    remove_paths_script,
    remove_staging_leftovers_script,
    remove_tree_script,
    replace_file_script,
    service_script,
    write_file_script,
)
from .values import redact_secrets

q = shlex.quote


class FromNode:
    """The default of an operation's state argument: read it from the node (see FROM_NODE)."""

    def __repr__(self) -> str:
        return "FROM_NODE"


FROM_NODE = FromNode()


def installed_manifest(
    component: str, state_dir: str, given: "Manifest | None | FromNode"
) -> Manifest | None:
    if isinstance(given, FromNode):
        return host.get_fact(ReleaseManifests, state_dir=state_dir).get(component)
    return given


def unit_state(unit: str) -> tuple[bool, bool]:
    """(active, enabled) of a systemd unit, asked of the node (one command)."""
    return host.get_fact(UnitState, unit=unit)


def _escalated() -> bool:
    """Whether this operation's commands run through sudo/doas/su (so uploads go via the login user)."""
    arguments: dict = dict(host.current_op_global_arguments or {})
    return bool(arguments.get("_sudo") or arguments.get("_doas") or arguments.get("_su_user"))


def upload_directory() -> str:
    """A fresh, unguessable directory name for uploads through sudo (made by the login user, 0700)."""
    return f"{UPLOAD_DIR_PREFIX}{secrets.token_hex(12)}"


def private_uploads(files: list[tuple[str | IO, str]], upload_dir: str) -> Iterator[PyinfraCommand]:
    """Upload each (source, root-only path) pair. Logged in as root, straight to the path.
    Through sudo, pyinfra's SFTP writes as the login user, then copies as root: the copy goes
    through `upload_dir`, made here by the login user itself (0700, so no other user reads a
    secret in it or swaps a file), and each path keeps the owner and mode it already has.
    The caller removes `upload_dir` (as root) when the files are in place."""
    escalated = _escalated()
    if escalated:
        # _su_user="" (falsy): pyinfra's default, which its type hint does not admit as None.
        yield StringCommand("mkdir", "-m", "700", q(upload_dir), _sudo=False, _doas=False, _su_user="")
    for index, (source, path) in enumerate(files):
        yield FileUploadCommand(
            source, path, remote_temp_filename=f"{upload_dir}/{index}" if escalated else None
        )


def artifact_is_installed(manifest: Manifest | None, artifact: Artifact, paths_under: str) -> bool:
    """True when the node has exactly this artifact's files, unmodified, at the wanted place."""
    return bool(
        manifest
        and manifest.fields.get("sha256") == artifact.sha256
        and manifest.fields.get("version") == artifact.version
        and manifest.intact()
        and all(
            path == paths_under or path.startswith(paths_under.rstrip("/") + "/") for path in manifest.files
        )
    )


def _fetch_into_cache(state, host, cache_dir: str, artifacts: list[Artifact]) -> bool:
    """Run on the controller: make sure the cache has a verified copy of every artifact."""
    for artifact in artifacts:
        try:
            ensure_cached(cache_dir, artifact)
        except FetchError as error:
            host.log_styled(f"containerd-deploy: {host.name}: {error}", fg="red", log_func=logger.error)
            return False
    return True


@operation()
def release_files_fetched(
    artifacts: list[Artifact],
    staging_dir: str,
    cache_dir: str | None = None,
    leftovers: list[str] | tuple = (),
):
    """
    Get every release file a run installs into the node's staging directory, each verified,
    before any is installed: a bad or missing file stops the run with no final path changed.

    + artifacts: the ``Artifact`` objects to install (empty: nothing to do)
    + staging_dir: the node's staging directory
    + cache_dir: a directory on the controller: download there once per controller (verified)
      and upload over SSH, instead of the node downloading the URLs itself
    + leftovers: what runs cut short left in the staging directory (removed first)

    **Example:**

    .. code:: python

        release_files_fetched(
            name="Fetch and verify release files",
            artifacts=[containerd, runc],
            staging_dir="/var/cache/containerd-deploy",
        )
    """
    if not artifacts and not leftovers:
        host.noop("no release file to fetch")
        return
    if not artifacts:
        yield remove_staging_leftovers_script(staging_dir)
        return
    if cache_dir is None:
        yield fetch_artifacts_script(
            artifacts, staging_dir
        )  # it locks staging down and removes leftovers first
        return
    yield FunctionCommand(_fetch_into_cache, (cache_dir, artifacts), {})
    yield remove_staging_leftovers_script(staging_dir, keep=True)
    via = upload_directory()
    yield from private_uploads(
        [
            (str(cached_path(cache_dir, artifact)), fetched_path(staging_dir, artifact))
            for artifact in artifacts
        ],
        via,
    )
    if _escalated():
        yield StringCommand("rm", "-rf", "--", q(via))


@operation()
def run_lock_taken(
    owner: str,
    lock: LockState | FromNode = FROM_NODE,
    changes: Callable[[], bool] | None = None,
    anchor_pid: int = 0,
):
    """
    Take the node's run lock for the rest of this run (until its SSH connection, or with
    ``anchor_pid`` the process of a run on the node itself, ends), when the run will change the
    node. Another run holding it is waited for (10 s), then the run stops; so does a run that
    finds another run held the node after it read ``lock``, since it decided from a stale look.

    + owner: who this run is, shown to a run that finds the node busy
    + lock: the lock's state this run read before deciding (``NodeState.lock``, a
      ``LockState``); read from the node when not given
    + changes: whether any later operation will change the node (asked when this operation
      runs); the lock is left alone when none will and nobody holds it. None: always take it
    + anchor_pid: a run on the node itself (pyinfra @local): hold the lock for this process

    **Example:**

    .. code:: python

        run_lock_taken(
            name="Take the node's run lock",
            owner="controller ci-1 pid 4242",
        )
    """
    state: LockState = host.get_fact(RunLock, anchor_pid=anchor_pid) if isinstance(lock, FromNode) else lock
    if state.kind == "held":
        host.noop("this run holds the node's run lock")
        return
    if state.kind == "unavailable":
        raise OperationError(unavailable_message(host.name, state.why or NO_SESSION))
    # A busy node was read while another run changed it: the lock is taken (waited for, and the
    # run stopped) even when nothing seemed to need changing.
    if state.kind != "busy" and changes is not None and not changes():
        host.noop("nothing will change: the run lock is not needed")
        return
    yield take_lock_script(host.name, owner, state.generation, anchor_pid)


@operation()
def release_artifact(
    artifact: Artifact,
    dest: str,
    staging_dir: str,
    state_dir: str,
    installed: Manifest | None | FromNode = FROM_NODE,
    verified: bool = False,
    fetched: bool = True,
):
    """
    Install a release artifact fetched by ``release_files_fetched`` (its sha256 checked on the node),
    then put its files in place with atomic renames and record them in a manifest.

    + artifact: the resolved ``Artifact`` (URL and pinned sha256)
    + dest: directory for a tarball's files, or the final path of a single binary
    + staging_dir: where the fetched file waits
    + state_dir: where the manifest of installed files is kept
    + installed: the component's manifest from the ``ContainerdNode`` fact (None: not installed);
      read from ``state_dir`` on the node when not given
    + verified: the node itself downloaded and checked the file earlier in this run
      (artifact_source=node), so it is not hashed a second time; a file uploaded from the
      controller is checked on the node before it is installed
    + fetched: ``release_files_fetched`` put the file into ``staging_dir`` earlier in the run
      (the deploy fetches every file before it installs any); False: download and verify it
      here, for one artifact installed on its own

    **Example:**

    .. code:: python

        release_artifact(
            name="Install runc",
            artifact=Artifact("runc", "1.1.11", "amd64", url, sha256),
            dest="/usr/local/sbin/runc",
            staging_dir="/var/cache/containerd-deploy",
            state_dir="/var/lib/containerd-deploy",
            fetched=False,
        )
    """
    installed = installed_manifest(artifact.component, state_dir, installed)
    if artifact_is_installed(installed, artifact, dest):
        host.noop(f"{artifact.component} {artifact.version} ({artifact.sha256[:12]}) is installed and intact")
        return
    yield install_artifact_script(
        artifact,
        dest,
        staging_dir,
        state_dir,
        uploaded=fetched_path(staging_dir, artifact) if fetched else None,
        verified=verified and fetched,
    )


@operation()
def release_artifact_absent(
    component: str, state_dir: str, installed: Manifest | None | FromNode = FROM_NODE
):
    """
    Remove what an earlier run installed of a component the data no longer asks for.

    + component: e.g. ``cni_plugins``
    + state_dir: where the manifests are kept
    + installed: the component's manifest from the ``ContainerdNode`` fact (None: nothing to do);
      read from ``state_dir`` on the node when not given

    **Example:**

    .. code:: python

        release_artifact_absent(name="Remove crictl", component="crictl",
                                state_dir="/var/lib/containerd-deploy", installed=node.manifests.get("crictl"))
    """
    if installed_manifest(component, state_dir, installed) is None:
        host.noop(f"{component} is not installed")
        return
    yield remove_artifact_script(component, state_dir)


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
        host.state.config.DIFF
        and not host.state.is_executing
        and current_text is None
        and current_sha256 is not None
        and mode != "600"
    ):
        current_text = "\n".join(host.get_fact(FileContents, path=path) or []) + "\n"
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
    yield replace_file_script(temp_path, path, mode, upload_dir=via if _escalated() else "")


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
    renamed into place, hidden release directories, upload directories.

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
def containerd_service(
    unit: str,
    ctr: str,
    version: str,
    timeout: int,
    active: bool | FromNode = FROM_NODE,
    enabled: bool | FromNode = FROM_NODE,
    restart: bool | Callable[[], bool] = False,
    reload: bool | Callable[[], bool] = False,
    rollback: str = "",
):
    """
    Keep the containerd unit enabled and running; reload systemd and restart it when told;
    wait until it answers. One command, with at most one systemd reload. When it does not
    answer (as ``version``), a release ``release_kept`` kept is put back before the run fails.

    + unit: the systemd unit name
    + ctr: path of the installed ``ctr``, used to ask the daemon for its version
    + version: the containerd version the daemon must report
    + timeout: seconds to wait for the daemon to answer after (re)starting it
    + active, enabled: the unit's state from the ``ContainerdNode`` fact; asked of systemd on
      the node when not given
    + restart: whether (or a callable deciding at run time whether) to restart
    + reload: whether (or a callable deciding at run time whether) systemd must reload its units
    + rollback: the deploy's state directory, where ``release_kept`` keeps the release to put
      back; "" never rolls back

    **Example:**

    .. code:: python

        containerd_service(
            name="Run containerd",
            unit="containerd.service", ctr="/usr/local/bin/ctr", version="1.7.11",
            timeout=60, active=False, enabled=False, restart=any_changed(binaries, config),
            reload=any_changed(unit_file),
        )
    """
    if isinstance(active, FromNode) or isinstance(enabled, FromNode):
        asked = unit_state(unit)
        active = asked[0] if isinstance(active, FromNode) else active
        enabled = asked[1] if isinstance(enabled, FromNode) else enabled
    must_restart = restart() if callable(restart) else restart
    must_reload = reload() if callable(reload) else reload
    action = "restart" if must_restart else ("" if active else "start")
    if host.state.config.DIFF and not host.state.is_executing:
        said = {
            "restart": f"Will restart {unit} (something it loads at start changed)",
            "start": f"Will start {unit}",
        }.get(action, f"No restart: {unit} keeps running")
        host.log(said + (" after a systemd daemon-reload" if must_reload else ""))
    if not action and enabled and not must_reload:
        host.noop(f"{unit} is enabled and running")
        return
    yield service_script(
        unit,
        ctr,
        action,
        enable=not enabled,
        version=version,
        timeout=timeout,
        reload=must_reload,
        rollback_lines=rollback_lines(rollback, unit, ctr, timeout) if rollback else None,
    )


@operation()
def release_kept(
    state_dir: str,
    release_files: list[str] | tuple | Callable[[], list[str]],
    other_files: list[str] | tuple | Callable[[], list[str]],
    version: str,
    when: bool | Callable[[], bool] = True,
):
    """
    Keep the release a running containerd was started from, so that ``containerd_service`` and
    the verify step can put it back if the release this run installs falls short. Hard links
    where the filesystem allows (installs rename new files over old ones), copies otherwise.
    A release an earlier, unfinished run kept stays: it is the one that last ran well.

    + state_dir: the deploy's state directory (the release is kept in ``previous-release`` there)
    + release_files: the binaries of the components this run replaces, by manifest (linked:
      installs rename over them), or a callable giving them when the operation runs
    + other_files: those components' manifests and the files the daemon loads at start
      (copied; those missing now are removed on a rollback), or a callable
    + version: the containerd version that release answers as
    + when: whether (or a callable deciding when the operation runs whether) this run will
      restart the daemon; nothing is kept otherwise

    **Example:**

    .. code:: python

        release_kept(
            name="Keep the running release until the new one is verified",
            state_dir="/var/lib/containerd-deploy",
            release_files=["/usr/local/bin/containerd", "/usr/local/sbin/runc"],
            other_files=["/var/lib/containerd-deploy/containerd.manifest",
                         "/etc/containerd/config.toml", "/etc/systemd/system/containerd.service"],
            version="1.7.24",
        )
    """
    if not (when() if callable(when) else when):
        host.noop("no restart: nothing to keep")
        return
    linked = release_files() if callable(release_files) else release_files
    copied = other_files() if callable(other_files) else other_files
    yield keep_release_script(state_dir, tuple(linked), tuple(copied), version)


@operation()
def kept_release_dropped(state_dir: str, present: bool | Callable[[], bool] = True):
    """
    Drop the release ``release_kept`` kept, once the new one has answered and been verified.

    + state_dir: the deploy's state directory
    + present: whether (or a callable deciding when the operation runs whether) a kept
      release is there: one kept by this run, or one an unfinished run left

    **Example:**

    .. code:: python

        kept_release_dropped(name="Drop the kept release", state_dir="/var/lib/containerd-deploy")
    """
    if not (present() if callable(present) else present):
        host.noop("no release kept")
        return
    yield drop_kept_script(state_dir)


def _hook(state, host, key: str, argv: list[str], timeout: int) -> bool:
    """Run on the controller: a restart hook; its failure fails the operation, naming why."""
    try:
        output = run_hook(key, argv, timeout, host.name)
    except HookFailed as error:
        host.log_styled(f"containerd-deploy: {error}", fg="red", log_func=logger.error)
        return False
    for line in output.splitlines()[-5:]:
        host.log(f"{key}: {line}")
    return True


@operation()
def restart_hook(
    key: str,
    command: list[str] | tuple,
    address: str,
    timeout: int,
    when: bool | Callable[[], bool] = True,
):
    """
    Run a command on the controller for this host, when its containerd will be restarted (e.g.
    ``kubectl drain {host}`` before, ``kubectl uncordon {host}`` after). A failing or timed-out
    command fails the operation, so the host's later operations do not run.

    + key: the data key the command came from (named in errors)
    + command: the program and its arguments; ``{host}`` and ``{address}`` in an argument are
      replaced by the host's inventory name and the address the controller connects to (each
      stays one argument: no shell runs)
    + address: the address the controller connects to for this host
    + timeout: seconds the command may run before it is killed (with what it started)
    + when: whether (or a callable deciding when the operation runs whether) the host's
      containerd will be, or was, restarted by this run

    **Example:**

    .. code:: python

        restart_hook(
            name="Drain the node before containerd restarts",
            key="containerd_restart_hook_before",
            command=["kubectl", "drain", "{host}", "--ignore-daemonsets"],
            address="10.0.0.5", timeout=600, when=True,
        )
    """
    if not command or not (when() if callable(when) else when):
        host.noop("no restart: no hook to run")
        return
    argv = hook_argv(tuple(command), host.name, address)
    if not host.state.is_executing:
        host.log(f"Will run {shlex.join(argv)} on the controller ({key})")
    yield FunctionCommand(_hook, (key, argv, timeout), {})


@operation()
def service_absent(unit: str, present: bool | FromNode = FROM_NODE):
    """
    Stop and disable a unit, and kill what its cgroup still holds (with ``KillMode=process``
    the shims and containers outlive the daemon; without their binaries they must go too).

    + unit: the systemd unit name
    + present: whether the ``ContainerdNode`` fact found the unit installed, enabled or running;
      asked of systemd on the node (running or enabled) when not given

    **Example:**

    .. code:: python

        service_absent(name="Stop containerd", unit="containerd.service", present=node.active)
    """
    if isinstance(present, FromNode):
        present = any(unit_state(unit))
    if not present:
        host.noop(f"{unit} is not installed")
        return
    yield StringCommand(
        "systemctl",
        "disable",
        "--now",
        "--",
        q(unit),
        "2>/dev/null",
        ";",
        "systemctl",
        "kill",
        "-s",
        "KILL",
        "--",
        q(unit),
        "2>/dev/null",
        ";",
        "systemctl",
        "reset-failed",
        "--",
        q(unit),
        "2>/dev/null",
        ";",
        "true",
    )


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


@operation()
def distro_packages_absent(packages: list[DistroPackage]):
    """
    Remove the distribution's containerd packages with the node's own package manager, which
    stops their service. Nothing that depends on them is removed: dpkg and rpm refuse instead
    (e.g. docker.io needs containerd), and the run stops there with the node unchanged.

    + packages: the ``DistroPackage`` entries the ``ContainerdNode`` fact found

    **Example:**

    .. code:: python

        distro_packages_absent(name="Remove the distro's containerd", packages=node.distro_packages)
    """
    if not packages:
        host.noop("no distribution package installs containerd")
        return
    for manager in ("dpkg", "rpm"):
        names = sorted({package.name for package in packages if package.manager == manager})
        if names and manager == "dpkg":
            yield StringCommand(
                "env", "DEBIAN_FRONTEND=noninteractive", "dpkg", "--remove", "--", *map(q, names)
            )
        elif names:
            yield StringCommand("rpm", "--erase", "--", *map(q, names))

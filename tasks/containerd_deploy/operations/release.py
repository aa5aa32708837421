"""Operations on the release's files: fetch (on the node, or from the controller's cache), verify
and install each component; keep the running release for a rollback, drop it; remove a
component, and the distribution's own containerd packages.
"""

import shlex

from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, operation

from containerd_deploy.controller.cache import FetchError, cached_path, ensure_cached
from containerd_deploy.data.artifacts import Artifact
from containerd_deploy.facts.node import DistroPackage, ReleaseManifests
from containerd_deploy.operations import FROM_NODE, FromNode, failed_on_controller
from containerd_deploy.operations.files import private_uploads, upload_directory, uploads_done
from containerd_deploy.plan.run import artifact_is_installed
from containerd_deploy.remote.manifest import Manifest
from containerd_deploy.remote.rollback import drop_kept_script, keep_release_script
from containerd_deploy.remote.scripts import (
    fetch_artifacts_script,
    fetched_path,
    install_artifact_script,
    remove_artifact_script,
    remove_staging_leftovers_script,
)

q = shlex.quote


def installed_manifest(
    component: str, state_dir: str, given: "Manifest | None | FromNode"
) -> Manifest | None:
    if isinstance(given, FromNode):
        return host.get_fact(ReleaseManifests, state_dir=state_dir).get(component)
    return given


def _fetch_into_cache(state, host, cache_dir: str, artifacts: list[Artifact]) -> bool:
    """Run on the controller: make sure the cache has a verified copy of every artifact."""
    for artifact in artifacts:
        try:
            ensure_cached(cache_dir, artifact)
        except FetchError as error:
            return failed_on_controller(state, host, f"{host.name}: {error}")
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
    yield from uploads_done(via)


@operation()
def release_artifact(
    artifact: Artifact,
    dest: str,
    staging_dir: str,
    state_dir: str,
    installed: Manifest | None | FromNode = FROM_NODE,
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


@operation()
def release_kept(
    state_dir: str,
    release_files: list[str] | tuple,
    other_files: list[str] | tuple,
    version: str,
    when: bool = True,
    attempt: str = "",
):
    """
    Keep the release a running containerd was started from, so that ``containerd_service`` and
    the verify step can put it back if the release this run installs falls short. Hard links
    where the filesystem allows (installs rename new files over old ones), copies otherwise.
    A release an earlier, unfinished run kept stays: it is the one that last ran well.

    + state_dir: the deploy's state directory (the release is kept in ``previous-release`` there)
    + release_files: the binaries of the components this run replaces, by manifest (linked:
      installs rename over them)
    + other_files: those components' manifests and the files the daemon loads at start
      (copied; those missing now are removed on a rollback)
    + version: the containerd version that release answers as
    + when: whether this run restarts the daemon (the deploy's plan says); nothing is kept
      otherwise
    + attempt: what this run restarts into (the plan's ``attempt``): a rollback records it, so
      the next run does not try the same again

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
    if not when:
        host.noop("no restart: nothing to keep")
        return
    yield keep_release_script(state_dir, tuple(release_files), tuple(other_files), version, attempt)


@operation()
def kept_release_dropped(state_dir: str, present: bool = True):
    """
    Drop the release ``release_kept`` kept, once the new one has answered and been verified.

    + state_dir: the deploy's state directory
    + present: whether a kept release is there: one kept by this run, or one an unfinished
      run left

    **Example:**

    .. code:: python

        kept_release_dropped(name="Drop the kept release", state_dir="/var/lib/containerd-deploy")
    """
    if not present:
        host.noop("no release kept")
        return
    yield drop_kept_script(state_dir)


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

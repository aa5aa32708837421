"""The run's plan: from the node's state and the settings, what this run will do to the node,
decided before the first operation is added."""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from containerd_deploy.data.artifacts import COMPONENTS, DAEMON_COMPONENTS, Artifact, destination
from containerd_deploy.data.config_toml import ConfigError, value_at
from containerd_deploy.data.images import ImageArchive, ImageRef, with_sandbox_image
from containerd_deploy.data.settings import Settings
from containerd_deploy.facts.node import NodeState, newer_than_daemon
from containerd_deploy.plan.files import (
    config_base,
    crictl_config,
    crictl_config_is_ours,
    desired_config,
    loaded_at_start,
    no_config_defaults,
    proxy_dropin_mode,
    proxy_dropin_path,
    proxy_dropin_text,
    registry_files,
    text_sha256,
    unit_text,
)
from containerd_deploy.plan.verdict import sandbox_image
from containerd_deploy.remote.manifest import Manifest
from containerd_deploy.remote.paths import CRICTL_CONFIG


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


def daemon_is_stale(settings: Settings, node: NodeState) -> bool:
    """A daemon older than what is on disk is a leftover of a run that stopped (or an upgrade
    that never restarted it): its ctr answers with another version, its binary was replaced,
    or a file it loads at start is newer than it. It is restarted even when a run changes nothing."""
    return node.active and bool(
        (node.ctr_server and node.ctr_client and node.ctr_server != node.ctr_client)
        or node.exe.endswith(" (deleted)")
        or newer_than_daemon(node.started, node.mtimes, loaded_at_start(settings))
    )


def lists_images(settings: Settings) -> bool:
    """Whether the controller brings images to this node (so the node fact lists its images)."""
    return bool(settings.containerd_images or settings.containerd_image_archives) or brings_sandbox_image(
        settings
    )


def brings_sandbox_image(settings: Settings) -> bool:
    return settings.artifact_source == "controller" and settings.containerd_images_sandbox


def run_config_text(settings: Settings, config_text: str | None) -> str:
    """The config.toml a run leaves, to read what it sets: `config_text`, or for one made on the
    node from the new containerd's defaults, what the data sets on an empty one (the defaults
    fill in the rest, as containerd does for what a config leaves out)."""
    if config_text is not None:
        return config_text
    return desired_config(settings, f"version = {2 if settings.containerd_version.major < 2 else 3}\n")


def run_sandbox_image(settings: Settings, config_text: str | None) -> str | None:
    """The sandbox image of the config.toml a run leaves (`config_text`; None: made on the node
    from the new containerd's defaults)."""
    return sandbox_image(run_config_text(settings, config_text), settings.containerd_version)


def images_brought(settings: Settings, config_text: str | None) -> tuple[ImageRef, ...]:
    """The images the controller brings: those listed, and with artifact_source=controller the
    sandbox image of the config the run leaves."""
    sandbox = run_sandbox_image(settings, config_text) if brings_sandbox_image(settings) else None
    return with_sandbox_image(settings.containerd_images, sandbox)


def images_missing(images: tuple[ImageRef, ...], present: frozenset) -> tuple[ImageRef, ...]:
    """Of `images`, those the node lacks under one of the names an import gives it."""
    return tuple(image for image in images if not set(image.names) <= present)


NAMES = {"containerd": "containerd", "runc": "runc", "cni_plugins": "the CNI plugins", "crictl": "crictl"}


@dataclass(frozen=True)
class FileToLeave:
    """A file the deploy owns, as a run leaves it."""

    text: str | None  # None: config.toml from the defaults of the containerd this run installs
    mode: str
    current_sha256: str | None  # the node's file now (None: it has none)

    @property
    def changes(self) -> bool:
        return self.text is None or text_sha256(self.text) != self.current_sha256


@dataclass(frozen=True)
class Plan:
    """What one run does to one node, decided before its first operation is added: the steps
    build their operations from it, the dry run and --diff show it, the run reports it."""

    install: tuple[str, ...] = ()  # components installed or replaced (fetched and verified first)
    remove: tuple[str, ...] = ()  # components removed (their <component>_version unset)
    files: Mapping[str, FileToLeave] = field(default_factory=dict)  # every file it owns, by path
    write: tuple[str, ...] = ()  # of them, those written: their content differs (or is not known yet)
    delete: tuple[str, ...] = ()  # files removed
    leftovers: bool = False  # what runs cut short left beside the deploy's files is removed
    distro_packages: bool = False  # the distribution's containerd packages are removed
    reload: bool = False  # systemd reloads its units
    enable: bool = False
    start: bool = False  # the daemon was not running and is started
    restart: tuple[str, ...] = ()  # why the daemon is restarted (empty: it is not)
    restarts_running: bool = False  # a running daemon is restarted: the hooks run around it
    keep: bool = False  # the running release is kept until the new one is verified
    keep_components: tuple[str, ...] = ()  # of it, the binaries this run replaces
    drop_kept: bool = False  # a kept release is dropped (once the new one answered)
    config_text: str | None = None  # config.toml as this run leaves it (None: from new defaults)
    # What a restart goes into (the release files' checksums and every file's text): a rollback
    # records it, and a run that would try the same again is refused.
    attempt: str = ""
    stop: bool = False  # taking the node back: the service is stopped and disabled
    purge: tuple[str, ...] = ()  # taking the node back: containerd's data directories deleted
    # component -> (the version on the node, "" for none; the version installed), for `install`
    versions: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    fetched_by: str = "node"  # who downloads the release files: the node, or the controller
    running: bool = False  # containerd is running before the run
    hooks: tuple[str, ...] = ()  # the restart hooks the controller runs (data keys)
    verify: bool = False  # the verify step runs (containerd_verify)
    verify_pulls: bool = False  # it pulls a missing sandbox image through the node's registries
    # the image the verify step runs a container from (None: the one the new defaults name)
    verify_image: str | None = None
    images: tuple[ImageRef, ...] = ()  # images the controller brings: the node lacks them
    # archives the controller brings (each with the names of its images): the node lacks a name
    archives: tuple[tuple[ImageArchive, tuple[str, ...]], ...] = ()
    # the controller would bring the sandbox image, but none is known of the config the run leaves
    sandbox_unknown: bool = False

    @property
    def changes(self) -> bool:
        """Whether the run changes the node: it takes the run lock first, and the verify step
        runs a container (a release an unfinished run kept is a change too: that run's verify
        step never passed)."""
        return bool(
            self.install
            or self.remove
            or self.write
            or self.delete
            or self.leftovers
            or self.distro_packages
            or self.reload
            or self.enable
            or self.start
            or self.restart
            or self.keep
            or self.drop_kept
            or self.stop
            or self.purge
            or self.images
            or self.archives
        )

    def lines(self) -> list[str]:
        """The plan as an operator reads it, one line per kind of change, then what the run
        checks."""
        return (self._change_lines() or ["no change"]) + self._check_lines()

    def _change_lines(self) -> list[str]:
        said = ["stop and disable containerd"] if self.stop else []
        if self.install:
            said.append(
                "install "
                + ", ".join(self._installed(component) for component in self.install)
                + f" (fetched by the {self.fetched_by}, sha256 verified)"
            )
        if self.remove:
            said.append("remove " + ", ".join(NAMES[c] for c in self.remove))
        if self.write:
            said.append(
                "write "
                + ", ".join(self.write)
                + (" (config.toml from the new containerd's defaults)" if self.config_text is None else "")
            )
        if self.delete:
            said.append("remove " + ", ".join(self.delete))
        if self.leftovers:
            said.append("remove what runs cut short left beside the deploy's files")
        if self.distro_packages:
            said.append("remove the distribution's containerd package")
        if self.reload:
            said.append("reload systemd units")
        if self.keep:
            said.append("keep the running release, to put back if the restarted one fails")
        if self.restart:
            said.append(
                ("restart the running containerd" if self.restarts_running else "start containerd")
                + f" ({'; '.join(self.restart)})"
            )
        elif self.start:
            said.append("start containerd")
        elif self.running and said and not self.stop:
            said.append("no restart (nothing containerd loads at start changes)")
        if self.hooks:
            said.append("run " + " and ".join(self.hooks) + " on the controller around the restart")
        if self.images:
            by_tag = [str(image) for image in self.images if image.digest is None]
            checked = (
                "(by its tag alone: not pinned by digest)"
                if len(by_tag) == len(self.images)
                else f"(checked by digest; {', '.join(by_tag)} by its tag alone)"
                if by_tag
                else "(checked by digest)"
            )
            said.append(
                f"import {', '.join(str(image) for image in self.images)} into the k8s.io namespace from the "
                f"controller {checked}"
            )
        if self.archives:
            said.append(
                "import "
                + ", ".join(f"{', '.join(names)} from {archive}" for archive, names in self.archives)
                + " into the k8s.io namespace from the controller (each archive checked by its sha256)"
            )
        if self.enable:
            said.append("enable containerd")
        if self.drop_kept:
            said.append("drop the release kept for a rollback")
        if self.purge:
            said.append("delete containerd's data in " + ", ".join(self.purge))
        return said

    def _installed(self, component: str) -> str:
        old, new = self.versions.get(component, ("", ""))
        shown = NAMES[component]
        if not new:
            return shown
        return f"{shown} {old} → {new}" if old and old != new else f"{shown} {new}"

    def _check_lines(self) -> list[str]:
        unknown = (
            [
                "bring no sandbox image from the controller: the config this run leaves names none this deploy "
                "can read (a file it imports may; a containerd release's default is known up to 2.3): set "
                "containerd_sandbox_image to bring it"
            ]
            if self.sandbox_unknown
            else []
        )
        if not self.verify:
            return unknown
        if not self.changes:
            return [*unknown, "verify the running containerd (no container: this run changes nothing)"]
        image = self.verify_image or "the sandbox image the config names"
        pulled = " (pulled first if the node lacks it)" if self.verify_pulls else " (if the node has it)"
        return [*unknown, f"verify containerd, then run a container from {image}{pulled}"]


def plan_run(
    settings: Settings,
    node: NodeState,
    wanted: dict[str, Artifact],
    archives: tuple[tuple[ImageArchive, tuple[str, ...]], ...] = (),
) -> Plan:
    """The plan of a run that leaves `node` with the release files `wanted` and `settings`'
    files, service and rollback (containerd_state=present), and the images of `archives` (each
    with the names it holds). A config.toml that does not parse, or that `settings` cannot be
    applied to, is refused here: before any operation."""
    install = tuple(
        component
        for component, artifact in wanted.items()
        if not artifact_is_installed(node.manifests.get(component), artifact, destination(settings, artifact))
    )
    remove = tuple(
        component for component in COMPONENTS if component not in wanted and component in node.manifests
    )
    binaries_current = "containerd" not in install
    base = config_base(settings, node, binaries_current)
    if base is None and binaries_current:  # the installed binary gave no defaults to start from
        raise no_config_defaults(settings)
    config_text = desired_config(settings, base) if base is not None else None
    files = {
        settings.containerd_config_path: FileToLeave(config_text, "644", text_sha256(node.config_text)),
        settings.containerd_unit_path: FileToLeave(
            unit_text(settings.containerd_bin_dir, settings.containerd_limit_nofile), "644", node.unit_sha256
        ),
        **{
            path: FileToLeave(text, mode, node.files.get(path))
            for path, (text, mode) in registry_files(settings).items()
        },
    }
    dropin, dropin_text = proxy_dropin_path(settings), proxy_dropin_text(settings)
    delete = [path for path in node.managed_hosts if path not in files]
    if dropin_text is not None:
        files[dropin] = FileToLeave(dropin_text, proxy_dropin_mode(settings), node.files.get(dropin))
    elif dropin in node.files:
        delete.append(dropin)
    if "crictl" in wanted:
        files[CRICTL_CONFIG] = FileToLeave(crictl_config(), "644", node.files.get(CRICTL_CONFIG))
    elif crictl_config_is_ours(node):
        delete.append(CRICTL_CONFIG)
    write = tuple(path for path, file in files.items() if file.changes)
    loaded = loaded_at_start(settings)
    restart = [f"{NAMES[c]} {wanted[c].version} installed" for c in install if c in DAEMON_COMPONENTS]
    # A config.toml from new defaults comes with a new binary: that restart says why.
    restart += [
        f"{path} changed"
        for path in (*write, *delete)
        if path in loaded and (path != settings.containerd_config_path or config_text is not None)
    ]
    if daemon_is_stale(settings, node):
        restart.append("it is older than what is on disk")
    restarts_running = node.active and bool(restart)
    keep = bool(settings.containerd_rollback and restarts_running and "containerd" in node.manifests)
    unit_files = (settings.containerd_unit_path, dropin)
    return Plan(
        versions={
            component: (
                node.manifests[component].fields.get("version", "") if component in node.manifests else "",
                wanted[component].version,
            )
            for component in install
        },
        fetched_by="controller" if settings.artifact_source == "controller" else "node",
        running=node.active,
        hooks=tuple(
            key
            for key in ("containerd_restart_hook_before", "containerd_restart_hook_after")
            if restarts_running and getattr(settings, key)
        ),
        verify=settings.containerd_verify,
        verify_pulls=bool(settings.containerd_registry_config_path),
        verify_image=run_sandbox_image(settings, config_text),
        images=images_missing(images_brought(settings, config_text), node.images),
        archives=tuple((archive, names) for archive, names in archives if not set(names) <= node.images),
        sandbox_unknown=brings_sandbox_image(settings) and run_sandbox_image(settings, config_text) is None,
        install=install,
        remove=remove,
        files=files,
        write=write,
        delete=tuple(delete),
        leftovers=bool(node.hidden_leftovers or node.staging_leftovers),
        distro_packages=settings.containerd_distro_package == "remove" and bool(node.distro_packages),
        reload=node.need_daemon_reload or any(path in unit_files for path in (*write, *delete)),
        enable=not node.enabled,
        start=not node.active and not restart,
        restart=tuple(restart),
        restarts_running=restarts_running,
        keep=keep,
        keep_components=tuple(c for c in DAEMON_COMPONENTS if keep and c in install),
        # An unfinished run's kept release, or the record of a rollback, goes once this run got
        # through (the record: a run that passed its verify step was not the one it undid).
        drop_kept=keep or bool(node.kept_release or node.rolled_back),
        config_text=config_text,
        attempt=attempt_of(wanted, files),
    )


def attempt_of(wanted: dict[str, Artifact], files: Mapping[str, FileToLeave]) -> str:
    """One word for what a run leaves the node with: its release files and its files' texts."""
    return (
        text_sha256(
            json.dumps(
                {
                    "release": {component: artifact.sha256 for component, artifact in wanted.items()},
                    "files": {path: file.text for path, file in files.items()},
                },
                sort_keys=True,
            )
        )
        or ""
    )


DATA_DEFAULTS = {"root": "/var/lib/containerd", "state": "/run/containerd"}


def data_directories(config_text: str | None) -> dict[str, str]:
    """containerd's `root` and `state` directories (key -> path), as its config sets them (or
    their defaults where it does not, or cannot be read)."""
    found = {}
    for key, default in DATA_DEFAULTS.items():
        value = None
        if config_text:
            try:
                value = value_at(config_text, (key,))
            except ConfigError:
                value = None
        found[key] = value if isinstance(value, str) else default
    return found


def plan_removal(settings: Settings, node: NodeState) -> Plan:
    """The plan of a run that takes the node back (containerd_state=absent, or purged: also
    containerd's data directories, as its config names them)."""
    dropin = proxy_dropin_path(settings)
    present = {
        **{path: True for path in node.managed_hosts},
        settings.containerd_config_path: node.config_text is not None,
        settings.containerd_unit_path: node.unit_sha256 is not None,
        dropin: dropin in node.files,
        CRICTL_CONFIG: crictl_config_is_ours(node),
    }
    delete = tuple(path for path, there in present.items() if there)
    return Plan(
        remove=tuple(component for component in COMPONENTS if component in node.manifests),
        delete=delete,
        leftovers=bool(node.hidden_leftovers),
        stop=node.service.get("ActiveState") not in (None, "", "inactive")
        or node.enabled
        or node.unit_sha256 is not None,
        reload=settings.containerd_unit_path in delete or dropin in delete,
        drop_kept=bool(node.kept_release or node.rolled_back),  # the rollback's record goes with it
        purge=tuple(data_directories(node.config_text).values())
        if settings.containerd_state == "purged"
        else (),
    )

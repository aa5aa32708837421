"""The whole deploy for one node: look once, then install, configure and run containerd."""

import os
import posixpath
import socket
import weakref

import pyinfra
from pyinfra import host
from pyinfra.api import deploy

from containerd_deploy.controller import read_files, verified
from containerd_deploy.controller.cache import fetch_digest
from containerd_deploy.controller.run_record import HostRun, host_run, run_of
from containerd_deploy.data import artifacts, registries
from containerd_deploy.data.settings import (
    DEFAULTS,
    KEYS,
    NVIDIA_HANDLER,
    Settings,
    arch_of,
    for_host,
    runtime_handlers,
)
from containerd_deploy.data.values import DataError, Refusal
from containerd_deploy.deploy.configure import config_left, configure_containerd
from containerd_deploy.deploy.images import archive_images_for, bring_images, fetch_images
from containerd_deploy.deploy.install import fetch_release_files, install_release_files
from containerd_deploy.deploy.order import deploy_file_frames_known
from containerd_deploy.deploy.report import report_at_exit
from containerd_deploy.deploy.reset import check_purge, purged_directories, remove_containerd
from containerd_deploy.deploy.service import (
    check_hooks,
    drop_kept_release,
    hooks_around_restart,
    keep_running_release,
    run_containerd,
)
from containerd_deploy.deploy.show import as_said_by_the_cli, show_plan
from containerd_deploy.deploy.verify import verify_containerd
from containerd_deploy.facts.daemon import seen_at_start
from containerd_deploy.facts.node import ContainerdNode, MissingBinaries, NodeState
from containerd_deploy.operations.files import leftovers_absent
from containerd_deploy.operations.service import run_lock_taken
from containerd_deploy.plan.files import (
    loaded_at_start,
    managed_paths,
    proxy_dropin_path,
    registry_files,
    text_sha256,
)
from containerd_deploy.plan.run import Plan, lists_images, plan_removal, plan_run
from containerd_deploy.plan.verdict import (
    INSTALLED_BY_THE_DEPLOY,
    binary_location,
    configured_runtimes,
    handler_binaries_to_check,
    kubelet_driver_problem,
    missing_binary_problem,
    runtime_binaries,
)
from containerd_deploy.remote.lock import busy_message, unavailable_message
from containerd_deploy.remote.paths import CRICTL_CONFIG, LOCK_DIR, ancestors
from containerd_deploy.remote.rollback import rolled_back_path


def runs_on_the_node() -> bool:
    """pyinfra's @local: the run's commands are children of this process, not of an sshd."""
    from pyinfra.connectors.local import LocalConnector

    return getattr(host, "connector_cls", None) is LocalConnector


def trusted_directories(settings: Settings) -> dict[str, str]:
    """Each directory root keeps, makes or removes the deploy's files in -> what names it (a
    data key, or what the deploy keeps there): it and every directory above it must be root's
    alone, or another local user could swap what root installs, reads or deletes there."""
    directories = {
        settings.containerd_deploy_state_dir: "containerd_deploy_state_dir",
        settings.containerd_staging_dir: "containerd_staging_dir",
        settings.containerd_bin_dir: "containerd_bin_dir",
        posixpath.dirname(settings.runc_path): "runc_path",
        settings.cni_bin_dir: "cni_bin_dir",
        posixpath.dirname(settings.containerd_config_path): "containerd_config_path",
        posixpath.dirname(proxy_dropin_path(settings)): "containerd_unit_path",
    }
    if settings.containerd_registry_config_path:
        directories.setdefault(settings.containerd_registry_config_path, "containerd_registry_config_path")
    for path in registry_files(settings):  # certs.d/<registry>/: hosts.toml, with credentials too
        directories.setdefault(posixpath.dirname(path), "containerd_registries")
    directories.setdefault(posixpath.dirname(CRICTL_CONFIG), "")  # crictl's config: a fixed path
    directories.setdefault(LOCK_DIR, "")  # the run lock
    return directories


def untrusted_problem(settings: Settings, node: NodeState) -> str | None:
    """What to say when a directory the deploy keeps things in, or one above it, is not root's
    alone (the node fact asks each, `untrusted`)."""
    named = trusted_directories(settings)
    problems = []
    for path, why in node.untrusted_directories:
        keys = list(
            dict.fromkeys(key for directory, key in named.items() if key and path in ancestors(directory))
        )
        quoted = [repr(key) for key in keys]
        what = (
            f"data key{'s' if len(keys) > 1 else ''} {' and '.join(quoted)}"
            if keys
            else "a place the deploy keeps files in"
        )
        keys_text = " / ".join(keys)
        risk = "another local user could change what root keeps there"
        if why == "is a symbolic link":
            risk = "root would keep its files wherever the link points"
            fix = (
                f"set {keys_text} to the real path, without the link"
                if keys
                else "replace the link with a directory"
            )
        elif why == "is not a directory":
            fix = "move the file away" + (f", or set {keys_text} to another path" if keys else "")
        elif path in named:  # a directory the deploy keeps things in itself: made by another user
            fix = (
                f"make it root's alone (chown root:root {path}; chmod go-w {path}) once you know nothing in it "
                "came from another user" + (f", or set {keys_text} to another directory" if keys else "")
            )
        else:  # a directory above it (a shared one, such as /var/tmp): the place is the problem
            fix = (
                f"set {keys_text} to a directory that only root can write, all the way up (not under {path})"
                if keys
                else f"make {path} writable by root alone"
            )
        problems.append(f"{path} {why}, on the path of {what}: {risk}; nothing was changed. Fix: {fix}")
    return f"\n{settings.host}: ".join(problems) or None


def check_trusted(settings: Settings, node: NodeState) -> None:
    """Root keeps the deploy's files only where no other user can change them."""
    problem = untrusted_problem(settings, node)
    if problem:
        raise Refusal(f"{settings.host}: {problem}")


def gather(settings: Settings) -> NodeState:
    """What the node fact says of the node, with what the controller last read of the files it
    did not read again (they have the identity they had then); the node asked in full when
    something of those is gone from the controller meanwhile."""
    remembered = read_files.read(settings.host)
    node = ask_node(settings, remembered)
    if not fill_in_unread(settings, node, remembered):
        node = ask_node(settings, read_files.HostFiles())
    remember_files(settings, node, remembered)
    return node


def read_paths(settings: Settings) -> tuple:
    """The files whose contents the node fact gives: config.toml (text), the unit and the other
    managed files (sha256)."""
    return (settings.containerd_config_path, settings.containerd_unit_path, *managed_paths(settings))


def fill_in_unread(settings: Settings, node: NodeState, remembered: read_files.HostFiles) -> bool:
    """Give `node` what the fact did not read again, from `remembered`: True when all of it could
    be."""
    for path in node.unread:
        entry = remembered.files.get(path)
        if entry is None or node.identities.get(path) != entry.identity or node.boot != remembered.boot:
            return False
        if path == settings.containerd_config_path:
            if entry.text is None:
                return False
            node.config_text = entry.text
        elif path == settings.containerd_unit_path:
            node.unit_sha256 = entry.sha256
        else:
            node.files[path] = entry.sha256
    return True


def remember_files(settings: Settings, node: NodeState, remembered: read_files.HostFiles) -> None:
    """Keep what the node fact (or `remembered`) says of the files it reads, by their identity
    now, for the next run (written only when that changed); confirmed when it is what the last
    run read at the same identity."""
    config, unit = settings.containerd_config_path, settings.containerd_unit_path
    files = {}
    for path in read_paths(settings) if node.boot else ():
        digest = (
            text_sha256(node.config_text)
            if path == config
            else node.unit_sha256
            if path == unit
            else node.files.get(path)
        )
        identity = node.identities.get(path)
        if digest is None or identity is None:
            continue
        before = remembered.files.get(path) if remembered.boot == node.boot else None
        entry = read_files.ReadFile(
            identity,
            digest,
            node.config_text if path == config else None,
            confirmed=path in node.unread
            or (before is not None and (before.identity, before.sha256) == (identity, digest)),
        )
        if read_files.keepable(entry):
            files[path] = entry
    record = read_files.HostFiles(node.boot, files)
    if record != remembered:
        read_files.write(settings.host, record)


def ask_node(settings: Settings, remembered: read_files.HostFiles) -> NodeState:
    """The node fact, told the files it need not read again (those two runs read the same at the
    identity they have now, in this boot)."""
    known = tuple(
        (path, entry.identity)
        for path in read_paths(settings)
        if (entry := remembered.files.get(path)) is not None and entry.confirmed
    )
    return host.get_fact(
        ContainerdNode,
        bin_dir=settings.containerd_bin_dir,
        config_path=settings.containerd_config_path,
        unit_path=settings.containerd_unit_path,
        state_dir=settings.containerd_deploy_state_dir,
        files=managed_paths(settings),
        certs_dir=settings.containerd_registry_config_path,
        marker=registries.MARKER,
        always_defaults=settings.containerd_config_base == "default",
        loaded=loaded_at_start(settings),
        staging_dir=settings.containerd_staging_dir,
        install_dirs=(posixpath.dirname(settings.runc_path), settings.cni_bin_dir),
        anchor_pid=os.getpid() if runs_on_the_node() else 0,
        handler_binaries=asked_binaries(settings),
        trusted_dirs=tuple(trusted_directories(settings)),
        known_pid=last_checked_pid(settings),
        known_files=known,
        known_boot=remembered.boot,
        images=lists_images(settings),
    )


def last_checked_pid(settings: Settings) -> int:
    """The MainPID of the daemon this controller last checked in full on the host, when the
    verify step may judge from that check (0: it asks the daemon in full anyway)."""
    if not settings.containerd_verify or settings.containerd_verify_interval <= 0:
        return 0
    record = verified.read(settings.host)
    pid = record.identity[0] if record is not None and record.identity else 0
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else 0


def asked_binaries(settings: Settings) -> tuple:
    """The binaries the node fact looks for: those of the data's runtime handlers the deploy does
    not install."""
    return tuple(dict.fromkeys(binary for _, binary in handler_binaries_to_check(runtime_handlers(settings))))


def check_locked(settings: Settings, node: NodeState) -> None:
    """A run that could not take the lock stops (after the host's own refusals, which say more):
    it would be unguarded against another run."""
    if node.lock.kind == "unavailable":
        raise Refusal(unavailable_message(settings.host, node.lock.why or "the node did not answer for it"))


def check_not_busy(settings: Settings, node: NodeState) -> None:
    """One run at a time per node: another run held the lock all the time the node fact waited."""
    if node.lock.kind == "busy":
        raise Refusal(busy_message(settings.host, node.lock.owner))


def run_owner() -> str:
    return f"controller {socket.gethostname()} pid {os.getpid()}"


def take_run_lock(node: NodeState, plan: Plan) -> None:
    """The run's first operation when the plan changes the node: the node's run lock. A run
    that changes nothing needs none (one that read the node while another run held it was
    refused: check_not_busy)."""
    if plan.changes:
        run_lock_taken(
            name="Take the node's run lock",
            owner=run_owner(),
            lock=node.lock,
            changes=True,
            anchor_pid=os.getpid() if runs_on_the_node() else 0,
        )


def remember_plan(settings: Settings, plan: Plan) -> None:
    """What the end-of-run report needs of the plan (deploy/report.py)."""
    record = host_run(host)
    record.plan, record.changes = plan.lines(), plan.changes
    if plan.restarts_running:
        old, new = plan.versions.get("containerd", ("", str(settings.containerd_version)))
        version = f"containerd {old} → {new}" if old and old != new else f"containerd {new}"
        record.restart = f"{version} ({'; '.join(plan.restart)})"


def check_supported(settings: Settings, node: NodeState) -> str:
    """The host's release arch; refuses hosts this deploy cannot serve, before changing them."""
    if not node.machine:
        raise Refusal(
            f"{settings.host}: could not read the node's state (is it a Linux host with a POSIX shell?)"
        )
    if node.kernel and node.kernel != "Linux":
        raise Refusal(
            f"{settings.host}: the node runs {node.kernel}, not Linux; containerd's release binaries "
            "are Linux programs. Use a Linux host."
        )
    arch = arch_of(settings.host, node.machine)
    if not node.systemd:
        raise Refusal(
            f"{settings.host}: systemd is not running as PID 1 (no /run/systemd/system); this deploy "
            "installs containerd as a systemd service. Use a systemd host."
        )
    return arch


def check_kubelet(settings: Settings, node: NodeState) -> None:
    """A kubelet already set up on the node must use the cgroup driver containerd will use."""
    problem = kubelet_driver_problem(node.kubelet_config, settings.containerd_systemd_cgroup)
    if problem:
        raise Refusal(f"{settings.host}: {problem}")


def check_runtime_binaries(settings: Settings, node: NodeState) -> None:
    """Every runtime handler the data adds must find its binaries on the node: containerd would
    start with it, and every pod that asks for it would fail."""
    problems = []
    for handler, binary in handler_binaries_to_check(runtime_handlers(settings)):
        if binary not in node.missing_binaries:
            continue
        where = binary_location(binary, settings.containerd_bin_dir)
        if handler == NVIDIA_HANDLER and settings.containerd_nvidia_runtime:
            problems.append(
                f"data key 'containerd_nvidia_runtime' adds the runtime handler 'nvidia', but {where} is not "
                "on the node. Fix: install the NVIDIA Container Toolkit (package nvidia-container-toolkit) first, "
                "set containerd_nvidia_runtime_path to where it put nvidia-container-runtime, or set "
                "containerd_nvidia_runtime to false"
            )
        else:
            problems.append(
                f"data key 'containerd_runtimes': {missing_binary_problem(handler, binary, settings.containerd_bin_dir)}"
            )
    if problems:
        raise Refusal(f"{settings.host}: " + f"\n{settings.host}: ".join(problems))


def config_handler_binaries(settings: Settings, plan: Plan) -> list[tuple[str, str]]:
    """(handler, binary) the runtime handlers config.toml keeps from the node's own config need,
    beyond what the deploy installs and what the node fact already asked for the data's."""
    asked = {binary for _, binary in handler_binaries_to_check(runtime_handlers(settings))}
    runtimes = configured_runtimes(plan.config_text, settings.containerd_version)
    return [
        (handler, binary)
        for handler, binary in runtime_binaries(runtimes)
        if binary not in INSTALLED_BY_THE_DEPLOY and binary not in asked
    ]


def check_config_handlers(settings: Settings, plan: Plan) -> None:
    """A handler the node's config.toml already declares must find its binaries too: containerd
    would start with it, the verify step would name it and roll the restart back, and the next
    run would do the same (one more question of the node, only when such handlers exist, and
    only when this run restarts containerd or verifies it)."""
    needed = config_handler_binaries(settings, plan)
    if not needed or not (plan.restart or settings.containerd_verify):
        return  # nothing loads it anew, and nothing checks it: this run leaves it as it is
    missing = host.get_fact(
        MissingBinaries,
        bin_dir=settings.containerd_bin_dir,
        binaries=tuple(dict.fromkeys(binary for _, binary in needed)),
    )
    config = settings.containerd_config_path
    problems = [
        f"{config} declares the runtime handler {handler!r}, which needs "
        f"{binary_location(binary, settings.containerd_bin_dir)}, not on the node: containerd would start "
        "with it, every pod asking for it would fail, and the verify step would roll each restart back, run "
        f"after run; nothing was changed. Fix: install it first, or take the handler's table "
        f"(runtimes.{handler}) out of {config}"
        for handler, binary in needed
        if binary in missing
    ]
    if problems:
        raise Refusal(f"{settings.host}: " + f"\n{settings.host}: ".join(problems))


def check_not_repeating_a_rollback(settings: Settings, node: NodeState, plan: Plan) -> None:
    """A run never restarts into what the last rollback undid: it would fail the same way and
    roll back again, run after run (each time restarting the node's containers' runtime)."""
    attempt, _, when = node.rolled_back.partition(" ")
    if not settings.containerd_rollback or not plan.restart or not attempt or attempt != plan.attempt:
        return
    record = rolled_back_path(settings.containerd_deploy_state_dir)
    raise Refusal(
        f"{settings.host}: the last run made this same change ({'; '.join(plan.lines())}) and rolled it back "
        f"at {when or 'an unknown time'}: the restarted containerd did not answer or failed its verify step. "
        "Running it again would restart containerd and roll back again; nothing was changed. Fix: correct "
        "what that run's error named (its output, `journalctl -u containerd`), then remove "
        f"{record} to try the same change again, or change the data"
    )


def check_distro_package(settings: Settings, node: NodeState) -> None:
    """A containerd from the distribution's packages stays only if the operator says to remove it."""
    if not node.distro_packages or settings.containerd_distro_package == "remove":
        return
    found = ", ".join(
        f"{package.name} {package.version} ({package.manager}, {package.path})"
        for package in node.distro_packages
    )
    running = "; containerd.service is running" if node.active else ""
    raise Refusal(
        f"{settings.host}: a distribution package installs containerd here: {found}{running}. This deploy "
        "installs its own under the same unit name, and package upgrades would restart it. Fix: remove the "
        "package (apt-get remove containerd / dnf remove containerd), or set data key "
        "'containerd_distro_package' to 'remove' to have the deploy remove it (its packaged config.toml stays "
        "and is kept as the starting config)."
    )


_checked_states: "weakref.WeakSet" = weakref.WeakSet()  # runs (pyinfra States) whose inventory passed


def check_inventory_data(state) -> None:
    """Every active host's data, once per run, before the first host is asked anything: one
    bad value anywhere stops the run with no host asked or changed (pyinfra prepares hosts one
    after another, so checking each host's own data only as it comes would have asked the
    hosts before it already)."""
    if state in _checked_states:
        return
    for other in state.inventory.get_active_hosts():
        settings = for_host(other)
        if settings.containerd_state == "present":
            artifacts.check_all_arches(settings)  # an unpinned version is refused before the node is asked
            check_hooks(settings, other)
    _checked_states.add(state)


def remove_leftovers(node: NodeState) -> None:
    """Only when a run cut short left some: see `_containerd_node`."""
    if node.hidden_leftovers:
        leftovers_absent(
            name="Remove what runs cut short left beside the deploy's files", paths=node.hidden_leftovers
        )


@deploy("containerd node", data_defaults=DEFAULTS)
def containerd_node():
    report_at_exit(host.state)
    deploy_file_frames_known(host.state)
    try:  # first: a refused run's report is written too (not left as the last run's)
        host_run(host).report_file = KEYS["containerd_report"].parse(
            host.name, "containerd_report", host.data.get("containerd_report"), {}
        )
    except DataError:
        pass  # refused with the rest of the host's data, next
    try:
        _containerd_node()
    except Refusal as refusal:
        # the refusal of another host's data, when this host's preparation checked them all
        refused = getattr(refusal, "host", None) or host.name
        run_of(host.state).hosts.setdefault(refused, HostRun()).refused = str(refusal)
        if pyinfra.is_cli:
            raise as_said_by_the_cli(refusal) from None
        raise


def _containerd_node():
    """Each step adds its operations only when the plan gives it something to do, so a run
    lists what it changes (and the verify step, a check): a no-op adds the verify step's
    operation alone. pyinfra's CLI walks the call stack for each operation and deploy step of
    each host, and reads every global argument for each: that was most of what a fleet's no-op
    cost the controller. Each gate below is the skipped operations' own "nothing to do"."""
    check_inventory_data(host.state)
    settings = for_host(host)
    node = gather(settings)
    check_not_busy(settings, node)
    if settings.containerd_state != "present":
        check_trusted(settings, node)
        check_locked(settings, node)
        check_purge(settings, node)  # what the data and config say, before the node is asked more
        check_purge(settings, node, purged_directories(settings, node))
        plan = plan_removal(settings, node)
        show_plan(settings, node, plan)
        remember_plan(settings, plan)
        take_run_lock(node, plan)
        remove_leftovers(node)
        if plan.changes:
            remove_containerd(settings, node, plan)
        return
    arch = check_supported(settings, node)
    check_trusted(settings, node)
    check_locked(settings, node)
    check_kubelet(settings, node)
    check_runtime_binaries(settings, node)
    check_distro_package(settings, node)
    wanted = artifacts.resolve(settings, arch, published=fetch_digest)
    plan = plan_run(settings, node, wanted, archive_images_for(settings, arch))
    check_config_handlers(settings, plan)
    check_not_repeating_a_rollback(settings, node, plan)
    show_plan(settings, node, plan)
    remember_plan(settings, plan)
    host_run(host).versions = {component: artifact.version for component, artifact in wanted.items()}

    rollback = settings.containerd_deploy_state_dir if settings.containerd_rollback else ""
    take_run_lock(node, plan)
    if plan.images or plan.archives:  # on the controller: a failure there leaves the node as it was
        fetch_images(settings, plan, arch)
    hooks_around_restart(settings, plan, "before")
    remove_leftovers(node)
    if plan.install or node.staging_leftovers:
        fetch_release_files(settings, node, wanted, plan)
    if plan.keep:  # once every file is fetched and verified, before any is installed
        keep_running_release(settings, node, plan)
    if plan.install or plan.remove or plan.distro_packages:
        install_release_files(settings, node, wanted, plan)
    config_text = config_left(settings, plan)
    if plan.write or plan.delete:
        configure_containerd(settings, node, plan, config_text)
    if plan.reload or plan.enable or plan.start or plan.restart:
        run_containerd(settings, node, plan, rollback=rollback)
    if plan.images or plan.archives:
        bring_images(settings, plan, arch)
    if settings.containerd_verify:
        verify_containerd(
            settings,
            config_text,
            run_container=plan.changes,
            rollback=rollback,
            seen=seen_at_start(node, looked_for=asked_binaries(settings)),
        )
    if plan.drop_kept:
        drop_kept_release(settings, plan)
    hooks_around_restart(settings, plan, "after")

"""The verify step's verdict: what the running daemon must be (`Expected`, from the settings and
the config.toml the run leaves) and how what it reports measures up (`judge`), each problem
worded once for the deploy's preflight, its verify step and the conformance suite."""

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from containerd_deploy.controller.verified import VerifiedDaemon
from containerd_deploy.data.config_toml import (
    PATHS,
    ConfigError,
    default_sandbox_image,
    read_schema,
    runc_systemd_cgroup,
    value_at,
)
from containerd_deploy.data.settings import Settings
from containerd_deploy.facts.daemon import DaemonState
from containerd_deploy.facts.node import AppArmor, newer_than_daemon
from containerd_deploy.remote.paths import APPARMOR_PARSER, KUBELET_CONFIG, SERVICE_PATH

# The profile containerd's CRI gives a container that asks for none (a kubelet's default).
APPARMOR_PROFILE = "cri-containerd.apparmor.d"

# The CRI plugins a kubelet needs, as `ctr plugins ls` names them (type, id); 2.x split the
# runtime and images parts out of the grpc one.
CRI_PLUGINS = {
    1: (("io.containerd.grpc.v1", "cri"),),
    2: (
        ("io.containerd.grpc.v1", "cri"),
        ("io.containerd.cri.v1", "runtime"),
        ("io.containerd.cri.v1", "images"),
    ),
}


RUNC_TYPE = "io.containerd.runc.v2"


def shim_binary(runtime_type: str) -> str | None:
    """The shim containerd starts for a runtime type: io.containerd.<name>.<version> runs
    containerd-shim-<name>-<version>; a path names the shim itself."""
    if runtime_type.startswith("/"):
        return runtime_type
    parts = runtime_type.split(".")
    if len(parts) == 4 and parts[:2] == ["io", "containerd"]:
        return f"containerd-shim-{parts[2]}-{parts[3]}"
    return None


def runtime_binaries(runtimes) -> list[tuple[str, str]]:
    """(handler, binary) for every binary a configured runtime handler needs on the node: its
    shim, and for runc-type handlers the OCI runtime the shim runs (BinaryName, else runc).
    `runtimes` is the config's runtimes table (snake_case keys) or the CRI status's (camelCase)."""
    needed = []
    for handler, runtime in sorted((runtimes or {}).items()):
        if not isinstance(runtime, Mapping):
            continue
        runtime_type = runtime.get("runtime_type") or runtime.get("runtimeType") or RUNC_TYPE
        shim = shim_binary(str(runtime_type))
        if shim:
            needed.append((handler, shim))
        if runtime_type == RUNC_TYPE:
            options = runtime.get("options") or {}
            needed.append((handler, str(options.get("BinaryName") or "runc")))
    return needed


# Shipped in containerd's release tarball (1.6 also ships the v1 shims) or installed by the
# deploy itself (runc): never missing before an install, whatever the node has now.
INSTALLED_BY_THE_DEPLOY = ("containerd-shim-runc-v2", "containerd-shim-runc-v1", "containerd-shim", "runc")


def handler_binaries_to_check(runtimes) -> list[tuple[str, str]]:
    """(handler, binary) the data's runtime handlers need that the deploy does not install:
    checked on the node before any change."""
    table = {
        runtime.name: {
            "runtime_type": runtime.runtime_type,
            "options": {"BinaryName": runtime.binary_name},  # empty: runc
        }
        for runtime in runtimes
    }
    return [
        (handler, binary)
        for handler, binary in runtime_binaries(table)
        if binary not in INSTALLED_BY_THE_DEPLOY
    ]


def binary_location(binary: str, bin_dir: str) -> str:
    """A handler's binary as a message names it: a path, or a name and where containerd looks."""
    if binary.startswith("/"):
        return binary
    searched = ":".join(dict.fromkeys([bin_dir, *SERVICE_PATH.split(":")]))
    return f"{binary} (looked for in {searched})"


def missing_binary_problem(handler: str, binary: str, bin_dir: str) -> str:
    """What to say of a runtime handler whose binary is not on the node, with the fix (the same
    before a run changes the node and when the verify step or the conformance suite finds it)."""
    where = binary_location(binary, bin_dir)
    return (
        f"the runtime handler {handler!r} needs {where}, which is not on the node: every pod that asks "
        f"for it would fail. Fix: install it first, correct its binary_name/runtime_type in "
        f"containerd_runtimes, or take {handler!r} out of containerd_runtimes (or out of the config)"
    )


def container_handlers(runtimes) -> tuple:
    """(handler, binary) the container check runs one container through: runc, and each
    runc-type handler with a BinaryName of its own. Other runtime types (Kata, gVisor) take
    options ctr cannot pass; the conformance suite runs a CRI pod through each."""
    handlers = [("runc", "")]
    for handler, runtime in sorted((runtimes or {}).items()):
        if handler == "runc" or not isinstance(runtime, Mapping):
            continue
        binary = (runtime.get("options") or {}).get("BinaryName")
        if (runtime.get("runtime_type") or RUNC_TYPE) == RUNC_TYPE and binary:
            handlers.append((handler, str(binary)))
    return tuple(handlers)


def configured_runtimes(config_text: str | None, containerd_version) -> dict:
    """The runtimes table a config declares (empty if there is none, the config cannot be read,
    or its schema is one whose runtimes this deploy does not know where to find)."""
    if not config_text:
        return {}
    try:
        schema = read_schema(config_text, containerd_version)
    except ConfigError:
        return {}
    path = PATHS["runtimes"].get(schema)
    runtimes = value_at(config_text, path) if path else None
    return runtimes if isinstance(runtimes, dict) else {}


@dataclass(frozen=True)
class Expected:
    version: str
    systemd_cgroup: bool
    unit: str = "containerd.service"
    sandbox_image: str | None = None
    # Files the running daemon must have loaded: it must have started after they were written.
    loaded_files: tuple = ()
    # (handler, binary) each configured runtime handler needs on the node.
    runtime_binaries: tuple = ()
    bin_dir: str = "/usr/local/bin"
    # (handler, runc-compatible binary or "") each run a container in the container check.
    handlers: tuple = (("runc", ""),)
    # (setting, value) the effective config must have: PATHS keys the data sets.
    settings: tuple = ()
    # The config turns the CRI's AppArmor off (disable_apparmor): no profile is expected.
    apparmor_off: bool = False


@dataclass
class Verdict:
    problems: list = field(default_factory=list)
    checked: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # what leaves the node short of a server's safety

    def summary(self, version: str) -> str:
        text = f"containerd {version} verified: " + "; ".join(self.checked)
        return text + ("" if not self.notes else " (" + "; ".join(self.notes) + ")")


def release_version(text: str | None) -> str | None:
    """'containerd github.com/containerd/containerd v1.7.11 64b8a81' -> '1.7.11' (Debian's '1.6.20~ds1' too)."""
    match = re.search(r"\bv?(\d+\.\d+\.\d+)", text) if text else None
    return match.group(1) if match else None


def apparmor_daemon_problem(apparmor: AppArmor, daemon_started: float | None, unit: str) -> str | None:
    """Why the running containerd may confine no container with AppArmor on a kernel that has it
    on (None: no reason known, or the kernel has it off, or containerd runs in a container, where
    it uses none). containerd asks once per process, at its first container, whether AppArmor is
    there, and `/sbin/apparmor_parser` is part of the answer."""
    if not apparmor.enabled or apparmor.daemon_container:
        return None
    restart = f"systemctl restart {unit}"
    if apparmor.parser_changed is None:
        return (
            f"the kernel has AppArmor on but {APPARMOR_PARSER} is not installed, so containerd runs every "
            f"container unconfined: install AppArmor's userspace (Debian's apparmor package), then restart "
            f"containerd ({restart})"
        )
    if newer_than_daemon(daemon_started, {APPARMOR_PARSER: apparmor.parser_changed}, (APPARMOR_PARSER,)):
        installed = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(apparmor.parser_changed))
        return (
            f"{APPARMOR_PARSER} (AppArmor's userspace) was installed or replaced after containerd started "
            f"({installed}); if it was missing when containerd created its first container, containerd decided then "
            f"that AppArmor was not there and runs every container unconfined until it restarts: restart it "
            f"({restart}; after an upgrade of the apparmor package, it is only this warning that goes)"
        )
    return None


def apparmor_label_problem(
    label: str, apparmor: AppArmor, daemon_started: float | None, unit: str
) -> str | None:
    """What is wrong with the AppArmor `label` a pod's container (asking for no profile) runs
    under, on a kernel with AppArmor on, containerd outside any container (None: containerd's
    default profile, enforcing)."""
    wanted = f"{APPARMOR_PROFILE} (enforce)"
    if label == wanted:
        return None
    seen = f"runs under the AppArmor label {label!r}, not {wanted}"
    if label == f"{APPARMOR_PROFILE} (complain)":
        return f"{seen}: the profile only logs (complain mode); enforce it (aa-enforce {APPARMOR_PROFILE})"
    if label != "unconfined":
        return f"{seen}: something other than containerd's default set it"
    why = apparmor_daemon_problem(apparmor, daemon_started, unit)
    return f"{seen}: {why}" if why else f"{seen}; see journalctl -u {unit}"


def cri_apparmor_off(config_text: str, containerd_version) -> bool:
    """Whether a config turns the CRI's AppArmor off (disable_apparmor = true)."""
    try:
        schema = read_schema(config_text, containerd_version)
    except ConfigError:
        return False
    return value_at(config_text, PATHS["disable_apparmor"][schema]) is True


def kubelet_cgroup_driver(config_yaml: str) -> str:
    """The cgroupDriver of a KubeletConfiguration file (the kubelet's default, cgroupfs, if unset)."""
    for line in config_yaml.splitlines():
        key, _, value = line.partition(":")
        if key == "cgroupDriver":
            return value.partition("#")[0].strip().strip("'\"") or "cgroupfs"
    return "cgroupfs"


def kubelet_driver_problem(kubelet_config: str | None, systemd_cgroup: bool) -> str | None:
    """What is wrong when a kubelet on the node uses another cgroup driver than containerd's runc
    (said the same before a run changes the node and when the verify step finds it)."""
    if kubelet_config is None:
        return None
    kubelet = kubelet_cgroup_driver(kubelet_config)
    ours = "systemd" if systemd_cgroup else "cgroupfs"
    if kubelet == ours:
        return None
    return (
        f"the kubelet's cgroupDriver is {kubelet} ({KUBELET_CONFIG}) but data key "
        f"'containerd_systemd_cgroup' makes containerd's runc use {ours}; pods would fail or be "
        "mis-accounted. Fix: set both to systemd (kubelet cgroupDriver: systemd, then restart the kubelet; "
        "containerd_systemd_cgroup=true), or both to cgroupfs."
    )


def sandbox_image(config_text: str, containerd_version) -> str | None:
    """The pause image a config names, at its schema's path; where it names none, the one
    containerd `containerd_version` then uses (None: a config that does not parse, or a release
    whose default this deploy does not know)."""
    try:
        schema = read_schema(config_text, containerd_version)
    except ConfigError:
        return None
    image = value_at(config_text, PATHS["sandbox_image"][schema])
    if image is None:  # not set: containerd's own default (unless a file it imports may set it)
        return None if value_at(config_text, ("imports",)) else default_sandbox_image(containerd_version)
    return image if isinstance(image, str) and image else None


def cri_snapshotter(config_text: str, containerd_version) -> str | None:
    """The snapshotter a config has the CRI use (None: containerd's default, or a config that
    does not parse)."""
    try:
        schema = read_schema(config_text, containerd_version)
    except ConfigError:
        return None
    found = value_at(config_text, PATHS["snapshotter"][schema])
    return found if isinstance(found, str) and found else None


def judge(expected: Expected, state: DaemonState, remembered: tuple | None = None) -> Verdict:
    """Every way the node falls short of `expected`, each with its likely fix. `remembered`: what
    a full check of this same daemon found of what its start fixes (`start_fixed`), said again
    instead of judged from `state` (which then need not hold a ctr answer, plugins, config dump
    or images: the same process answers as it did)."""
    verdict = Verdict()
    if state.active_state != "active":
        verdict.problems.append(
            f"{expected.unit} is {state.active_state or 'not loaded'}, not active: see journalctl -u {expected.unit}"
        )
        return verdict
    if not state.ctr_server and (remembered is None or state.ctr_asked):
        verdict.problems.append(
            f"containerd does not answer on its socket (ctr said: {state.ctr_error.strip()[:300]}): "
            f"see journalctl -u {expected.unit}"
        )
        return verdict
    if remembered is None:
        for check in (
            _judge_version,
            _judge_freshness,
            _judge_plugins,
            _judge_effective_config,
            _judge_kubelet,
            _judge_apparmor,
            _judge_sandbox_image,
        ):
            check(expected, state, verdict)
    else:
        verdict.checked.append(f"{'; '.join(remembered)} (as its last full check found)")
        for check in (_judge_freshness, _judge_kubelet, _judge_apparmor):
            check(expected, state, verdict)
    _judge_runtime_binaries(expected, state, verdict)
    return verdict


def start_fixed(expected: Expected, state: DaemonState) -> tuple:
    """What the checks of what a daemon's start fixes (its version, CRI plugins, effective config)
    found of `state`: the same for as long as the same process runs with what it loaded."""
    verdict = Verdict()
    for check in START_FIXED:
        check(expected, state, verdict)
    return tuple(verdict.checked)


def expected_digest(expected: Expected) -> str:
    """A digest of what the daemon must be, and of how it is checked (the checks of what its
    start fixes, and this module's text): a record of a full check holds for these only, so a
    deploy that checks otherwise checks in full again. The same in every process."""
    checks = [check.__name__ for check in START_FIXED]
    return hashlib.sha256(repr((expected, checks, _CHECKS_TEXT)).encode()).hexdigest()


_CHECKS_TEXT = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def daemon_identity(state) -> tuple:
    """The daemon as a process (a DaemonState or the node fact's NodeState): its MainPID, start
    time and binary. A restart, a new binary or a reboot makes another one."""
    return (state.main_pid, state.started, state.exe)


def full_check_reason(
    record: VerifiedDaemon | None, seen: DaemonState, expected: Expected, now: float, interval: int
) -> str | None:
    """Why the verify step asks the daemon itself (None: the record of a full check of the daemon
    the run's first look saw, for what it must be now, less than `interval` seconds ago, stands,
    and that look asked the rest)."""
    identity = daemon_identity(seen)
    if record is None:
        return "no full check of it is recorded on this controller"
    if not identity[0] or identity[1] is None or not identity[2]:
        return "the run's first look could not tell which process it is"
    if tuple(record.identity) != identity:
        return "it is not the daemon last checked in full (restarted, replaced or rebooted since)"
    if record.expected != expected_digest(expected):
        return "what it must be changed since its last full check"
    if not 0 <= now - record.at < interval:
        return f"its last full check is not within containerd_verify_interval ({interval} s)"
    unasked = [
        binary
        for _, binary in expected.runtime_binaries
        if binary not in INSTALLED_BY_THE_DEPLOY and binary not in seen.looked_for
    ]
    if unasked:
        return f"the run's first look did not look for {', '.join(dict.fromkeys(unasked))}"
    return None


def _restart(expected: Expected) -> str:
    return f"restart it (systemctl restart {expected.unit}) or rerun the deploy"


def _judge_version(expected: Expected, state: DaemonState, verdict: Verdict) -> None:
    """The daemon answers as the declared version, with its own ctr."""
    server = release_version(state.ctr_server)
    if release_version(state.ctr_client) != server:
        verdict.problems.append(
            f"ctr {state.ctr_client} talks to a containerd {state.ctr_server} daemon: the running daemon is "
            f"not the installed binary; {_restart(expected)}"
        )
    elif server != expected.version:
        verdict.problems.append(
            f"containerd answers as {state.ctr_server}, expected {expected.version}: {_restart(expected)}"
        )
    else:
        verdict.checked.append(f"answers as {server} with its own ctr")


def _judge_freshness(expected: Expected, state: DaemonState, verdict: Verdict) -> None:
    """The daemon runs the binary, unit and config on disk, not older ones it started with."""
    restart = _restart(expected)
    if state.exe.endswith(" (deleted)"):
        verdict.problems.append(
            f"the running daemon's binary {state.exe} was replaced after it started: {restart}"
        )
    if state.need_daemon_reload:
        verdict.problems.append(
            f"{expected.unit} changed on disk and systemd has not reloaded it: run systemctl daemon-reload, "
            f"then {restart}"
        )
    stale = newer_than_daemon(state.started, state.mtimes, expected.loaded_files)
    if stale:
        verdict.problems.append(
            f"{', '.join(stale)} changed after the running daemon started, so it runs with the old "
            f"settings: {restart}"
        )
    elif state.started:
        verdict.checked.append("runs the unit and config on disk")


def _judge_plugins(expected: Expected, state: DaemonState, verdict: Verdict) -> None:
    """The CRI plugins a kubelet needs are loaded."""
    generation = 1 if int(expected.version.split(".")[0]) < 2 else 2
    not_ok = [
        f"{kind} {name}: {state.plugins.get((kind, name), 'not loaded')}"
        for kind, name in CRI_PLUGINS[generation]
        if state.plugins.get((kind, name)) != "ok"
    ]
    if not_ok:
        verdict.problems.append(
            f"CRI plugins not running ({'; '.join(not_ok)}), so a kubelet cannot use this node: remove "
            '"cri" from disabled_plugins in the config and check journalctl -u containerd for the plugin\'s error'
        )
    else:
        verdict.checked.append("CRI plugins loaded")


def _judge_effective_config(expected: Expected, state: DaemonState, verdict: Verdict) -> None:
    """The effective config (containerd config dump) has what the data sets."""
    try:
        effective = bool(runc_systemd_cgroup(state.dump)) if state.dump is not None else None
    except ConfigError as error:
        state.dump, state.dump_error = None, f"its output {error}"
    if state.dump is None:
        verdict.problems.append(f"containerd config dump failed: {state.dump_error.strip()[:300]}")
        return
    if effective != expected.systemd_cgroup:
        verdict.problems.append(
            f"the effective config (containerd config dump) has SystemdCgroup = {str(effective).lower()} on "
            f"the runc runtime but containerd_systemd_cgroup is {str(expected.systemd_cgroup).lower()}: "
            "something overrides it (containerd_config_extra, or a file in the config's imports)"
        )
    else:
        verdict.checked.append(f"SystemdCgroup = {str(effective).lower()} in effect")
    for setting, wanted in expected.settings:
        found = next(
            (
                value
                for value in (value_at(state.dump, path) for path in dict.fromkeys(PATHS[setting].values()))
                if value is not None
            ),
            None,
        )
        if found != wanted:
            verdict.problems.append(
                f"the effective config (containerd config dump) has {setting} = {_toml(found)}, but the data "
                f"sets {_toml(wanted)}: something overrides it (containerd_config_extra, or a file in the "
                "config's imports, e.g. one nvidia-ctk wrote)"
            )
        else:
            verdict.checked.append(f"{setting} = {_toml(wanted)} in effect")


# The checks whose outcome only a restart can change: the version a daemon answers as (its ctr
# on disk is checked by the plan, against the manifest), the plugins it loaded and the config it
# read (the files it loaded are checked each run: a newer one is stale).
START_FIXED = (_judge_version, _judge_plugins, _judge_effective_config)


def _judge_kubelet(expected: Expected, state: DaemonState, verdict: Verdict) -> None:
    """A kubelet on the node (if any) uses the same cgroup driver."""
    driver_problem = kubelet_driver_problem(state.kubelet_config, expected.systemd_cgroup)
    if driver_problem:
        verdict.problems.append(driver_problem)
    elif state.kubelet_config is not None:
        verdict.checked.append(f"kubelet cgroupDriver {kubelet_cgroup_driver(state.kubelet_config)} matches")


def _judge_apparmor(expected: Expected, state: DaemonState, verdict: Verdict) -> None:
    """Containers run under containerd's AppArmor profile where the kernel has AppArmor on: a
    warning (the node works, less safely) when the daemon may run them unconfined."""
    why = (
        None
        if expected.apparmor_off
        else apparmor_daemon_problem(state.apparmor, state.started, expected.unit)
    )
    if why:
        verdict.warnings.append(f"AppArmor: {why}")


def _judge_sandbox_image(expected: Expected, state: DaemonState, verdict: Verdict) -> None:
    """The sandbox image is listed (or why no container can run yet)."""
    if state.sandbox_image.startswith("unlisted"):
        verdict.problems.append(
            f"could not list the k8s.io images to find the sandbox image {expected.sandbox_image}: "
            f"{state.sandbox_image[len('unlisted') :].strip()[:300]}; see journalctl -u {expected.unit}"
        )
    elif state.sandbox_image != "present":
        verdict.notes.append(image_absent_note(expected.sandbox_image))


def image_absent_note(image: str | None) -> str:
    """Why no container runs from a sandbox image the node does not have (or no image at all)."""
    if not image:
        return "no container run: the config names no sandbox image"
    return f"no container run: the sandbox image {image} is not on the node yet (a kubelet pulls it for the first pod)"


def _judge_runtime_binaries(expected: Expected, state: DaemonState, verdict: Verdict) -> None:
    """Every runtime handler's binary is installed."""
    missing = [
        (handler, binary) for handler, binary in expected.runtime_binaries if binary in state.missing_binaries
    ]
    for handler, binary in missing:
        verdict.problems.append(missing_binary_problem(handler, binary, expected.bin_dir))
    if expected.runtime_binaries and not missing:
        verdict.checked.append(
            f"the runtime handlers' binaries are installed ({', '.join(sorted({h for h, _ in expected.runtime_binaries}))})"
        )


def _toml(value) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return f'"{value}"' if isinstance(value, str) else str(value)


def data_settings(settings: Settings) -> tuple:
    """(setting, value) of the config settings the data sets that the effective config must show."""
    wanted = (
        ("default_runtime_name", settings.containerd_default_runtime),
        ("enable_cdi", settings.containerd_enable_cdi),
        (
            "cdi_spec_dirs",
            list(settings.containerd_cdi_spec_dirs) if settings.containerd_cdi_spec_dirs else None,
        ),
    )
    return tuple((setting, value) for setting, value in wanted if value is not None)

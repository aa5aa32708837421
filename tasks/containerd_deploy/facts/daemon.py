"""The running containerd as the verify step sees it: one fact that asks the daemon itself (ctr,
the CRI plugins, its effective config, whether the sandbox image is there) and the binaries its
runtime handlers need (the script: remote/daemon_state.py).
"""

import base64
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from containerd_deploy.facts.node import (
    AppArmor,
    NodeState,
    decode_lines,
    parse_apparmor,
    parse_ctr_version,
    parse_process_section,
    split_sections,
)
from containerd_deploy.remote.daemon_state import daemon_state_command


@dataclass
class DaemonState:
    """The running containerd as the deploy's verify step sees it."""

    active_state: str = ""
    need_daemon_reload: bool = False
    main_pid: int = 0
    exe: str = ""
    started: float | None = None  # epoch seconds the daemon process started
    mtimes: dict = field(default_factory=dict)  # path -> epoch mtime of files it should have loaded
    ctr_client: str | None = None
    ctr_server: str | None = None
    ctr_error: str = ""
    ctr_asked: bool = True  # False: the run's first look knew this daemon, and did not ask its ctr
    plugins: dict = field(default_factory=dict)  # (type, id) -> status, from `ctr plugins ls`
    dump: str | None = None
    dump_error: str = ""
    kubelet_config: str | None = None
    apparmor: AppArmor = AppArmor()  # what the daemon decides AppArmor by
    sandbox_image: str = "absent"  # in the k8s.io namespace: "present", "absent" or "unlisted <why>"
    missing_binaries: list = field(default_factory=list)  # runtime handlers' binaries not on the node
    looked_for: tuple = ()  # the binaries asked about (the node fact's; this fact's are the expected ones)


def parse_daemon_state(lines: list[str]) -> DaemonState:
    state = DaemonState()
    for name, body in split_sections(lines):
        if name == "service":
            props = dict(line.strip().partition("=")[::2] for line in body if "=" in line)
            state.active_state = props.get("ActiveState", "")
            state.need_daemon_reload = props.get("NeedDaemonReload") == "yes"
            state.main_pid = int(props.get("MainPID") or 0) if (props.get("MainPID") or "0").isdigit() else 0
        elif name in ("exe", "started", "mtimes"):
            parse_process_section(name, body, state)
        elif name == "ctr":
            state.ctr_client, state.ctr_server = parse_ctr_version(body)
            state.ctr_error = "\n".join(body) if not state.ctr_server else ""
        elif name == "plugins":
            for line in body[1:]:
                columns = line.split()
                if len(columns) >= 4:
                    state.plugins[(columns[0], columns[1])] = columns[-1]
        elif name == "dump":
            outcome, _, encoded = "".join(body).strip().partition(" ")
            text = base64.b64decode(encoded).decode(errors="replace")
            if outcome == "ok":
                state.dump = text
            else:
                state.dump_error = text or "no output"
        elif name == "kubelet":
            state.kubelet_config = decode_lines(body) if any(line.strip() for line in body) else None
        elif name == "apparmor":
            state.apparmor = parse_apparmor(body)
        elif name == "missing":
            state.missing_binaries = [line for line in body if line]
        elif name == "image":
            state.sandbox_image = " ".join(line.strip() for line in body if line.strip()) or "absent"
    return state


def seen_at_start(node: NodeState, looked_for: tuple = ()) -> DaemonState:
    """The daemon as the node fact saw it when the run started: its service, process, version
    (a ctr answer), the kubelet's config and which of the binaries it `looked_for` are missing,
    but not its plugins, config dump or images, which only this module's fact asks."""
    return DaemonState(
        active_state=node.service.get("ActiveState", ""),
        need_daemon_reload=node.service.get("NeedDaemonReload") == "yes",
        main_pid=node.main_pid,
        exe=node.exe,
        started=node.started,
        mtimes=dict(node.mtimes),
        ctr_client=node.ctr_client,
        ctr_server=node.ctr_server,
        ctr_error="" if node.ctr_server or node.ctr_not_asked else "no answer to the run's first question",
        ctr_asked=not node.ctr_not_asked,
        kubelet_config=node.kubelet_config,
        apparmor=node.apparmor,
        missing_binaries=list(node.missing_binaries),
        looked_for=tuple(looked_for),
    )


class ContainerdDaemon(FactBase):
    """
    Returns a ``DaemonState``: the running containerd's service state, process, version,
    CRI plugins, effective config, a kubelet's config, and whether the sandbox image is there.
    """

    @staticmethod
    def default():
        return DaemonState()

    def command(self, bin_dir, config_path, unit, files=(), image="", binaries=()):
        return daemon_state_command(bin_dir, config_path, unit, tuple(files), image, tuple(binaries))

    def process(self, output):
        return parse_daemon_state(output)

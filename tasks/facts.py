"""One combined fact: everything the deploy needs to know about a node, in one SSH round trip.

pyinfra keeps no fact cache and every `host.get_fact` is a command on the node, so instead of
a dozen small facts the deploy asks once, at the start, for: the architecture and init system,
what earlier runs installed (their manifests) and whether those files are still intact, the
unit file's and config file's current contents, the service's state, and what the running
daemon reports.
"""

import base64
import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

# Marks the start of each section of the fact's output (a line that no section's content has).
SECTION = "##containerd-deploy:"


@dataclass
class Manifest:
    """What one install of a release artifact put on the node (written last, by that install)."""

    fields: dict = field(default_factory=dict)  # component, version, sha256, url
    files: dict = field(default_factory=dict)  # path -> sha256 recorded at install time
    actual: dict = field(default_factory=dict)  # path -> sha256 now (missing files absent)

    def intact(self) -> bool:
        return bool(self.files) and all(self.actual.get(path) == digest for path, digest in self.files.items())


@dataclass
class NodeState:
    machine: str = ""
    systemd: bool = False
    manifests: dict = field(default_factory=dict)  # component -> Manifest
    unit_sha256: str | None = None
    config_text: str | None = None
    service: dict = field(default_factory=dict)  # systemctl show properties
    ctr_client: str | None = None
    ctr_server: str | None = None
    default_config: str | None = None
    files: dict = field(default_factory=dict)  # path -> sha256 of the other files the deploy manages
    managed_hosts: list = field(default_factory=list)  # hosts.toml files this deploy wrote

    @property
    def main_pid(self) -> int:
        try:
            return int(self.service.get("MainPID", "0"))
        except ValueError:
            return 0

    @property
    def active(self) -> bool:
        return self.service.get("ActiveState") == "active"

    @property
    def enabled(self) -> bool:
        return self.service.get("UnitFileState") == "enabled"


def node_state_command(bin_dir: str, config_path: str, unit_path: str, state_dir: str,
                       files: tuple = (), certs_dir: str = "", marker: str = "", always_defaults: bool = False) -> str:
    q = shlex.quote
    ctr, containerd = q(f"{bin_dir}/ctr"), q(f"{bin_dir}/containerd")
    # Defaults come from the installed binary: needed when there is no config file to start
    # from, or always when the operator chose to start from defaults.
    defaults_when = "true" if always_defaults else f"[ ! -f {q(config_path)} ]"
    return "\n".join([
        f'echo "{SECTION}machine $(uname -m)"',
        f'if [ -d /run/systemd/system ]; then echo "{SECTION}systemd"; fi',
        f"for m in {q(state_dir)}/*.manifest; do",
        '  [ -f "$m" ] || continue',
        f'  echo "{SECTION}manifest ${{m##*/}}"',
        '  cat "$m"',
        f'  echo "{SECTION}actual ${{m##*/}}"',
        '''  sed -n 's/^file //p' "$m" | while read -r path _; do [ -f "$path" ] && sha256sum "$path"; done''',
        "done",
        f'echo "{SECTION}unit"',
        f"[ -f {q(unit_path)} ] && sha256sum {q(unit_path)}",
        f'echo "{SECTION}config"',
        # base64 keeps the file's exact bytes (blank lines, no trailing newline) through the
        # line-based fact output.
        f"[ -f {q(config_path)} ] && base64 -w0 {q(config_path)} && echo",
        f'echo "{SECTION}service"',
        "systemctl show containerd.service -p ActiveState -p UnitFileState -p MainPID -p NeedDaemonReload 2>/dev/null",
        f'echo "{SECTION}ctr"',
        f"[ -x {ctr} ] && [ -S /run/containerd/containerd.sock ] && timeout 10 {ctr} version 2>&1",
        f'echo "{SECTION}default"',
        f"{defaults_when} && [ -x {containerd} ] && {containerd} config default 2>/dev/null | base64 -w0 && echo",
        f'echo "{SECTION}files"',
        *[f"[ -f {q(path)} ] && sha256sum {q(path)}" for path in files],
        f'echo "{SECTION}managed"',
        (f"[ -d {q(certs_dir)} ] && grep -l -s -F -- {q(marker)} {q(certs_dir)}/*/hosts.toml" if certs_dir else ":"),
        "exit 0",
    ])


def _decode(lines: list[str]) -> str | None:
    joined = "".join(line.strip() for line in lines)
    return base64.b64decode(joined).decode(errors="replace") if joined else None


def parse_ctr_version(lines: list[str]) -> tuple[str | None, str | None]:
    """(client, server) versions from `ctr version` output; server is None if it did not answer."""
    versions = {}
    section = None
    for line in lines:
        stripped = line.strip()
        if stripped in ("Client:", "Server:"):
            section = stripped[:-1].lower()
        elif section and stripped.startswith("Version:"):
            versions.setdefault(section, stripped.split(":", 1)[1].strip())
    return versions.get("client"), versions.get("server")


def _sha256sums(lines: list[str]) -> dict[str, str]:
    """path -> digest from `sha256sum` output lines."""
    digests = {}
    for line in lines:
        digest, _, path = line.strip().partition("  ")
        if path:
            digests[path] = digest
    return digests


def parse_node_state(lines: list[str]) -> NodeState:
    state = NodeState()
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith(SECTION):
            sections.append((line[len(SECTION):].strip(), []))
        elif sections:
            sections[-1][1].append(line)
    for header, body in sections:
        name, _, argument = header.partition(" ")
        if name == "machine":
            state.machine = argument
        elif name == "systemd":
            state.systemd = True
        elif name == "manifest":
            manifest = state.manifests.setdefault(argument.removesuffix(".manifest"), Manifest())
            for line in body:
                key, _, value = line.strip().partition(" ")
                if key == "file":
                    path, _, digest = value.rpartition(" ")
                    manifest.files[path] = digest
                elif key:
                    manifest.fields[key] = value
        elif name == "actual":
            manifest = state.manifests.setdefault(argument.removesuffix(".manifest"), Manifest())
            manifest.actual.update(_sha256sums(body))
        elif name == "unit":
            state.unit_sha256 = next(iter(_sha256sums(body).values()), None)
        elif name == "config":
            state.config_text = _decode(body)
        elif name == "service":
            for line in body:
                key, _, value = line.strip().partition("=")
                if key:
                    state.service[key] = value
        elif name == "ctr":
            state.ctr_client, state.ctr_server = parse_ctr_version(body)
        elif name == "default":
            state.default_config = _decode(body)
        elif name == "files":
            state.files.update(_sha256sums(body))
        elif name == "managed":
            state.managed_hosts = [line.strip() for line in body if line.strip()]
    return state


class ContainerdNode(FactBase):
    """
    Returns a ``NodeState``: arch, init system, installed artifacts and their integrity, the
    unit and config files, the service state and the running daemon's version.
    """

    @staticmethod
    def default():
        return NodeState()

    def command(self, bin_dir, config_path, unit_path, state_dir, files=(), certs_dir="", marker="",
                always_defaults=False):
        return node_state_command(bin_dir, config_path, unit_path, state_dir, files, certs_dir, marker, always_defaults)

    def process(self, output):
        return parse_node_state(output)


class ContainerdDefaultConfig(FactBase):
    """
    Returns the text of ``containerd config default`` from the installed binary (None if absent).
    """

    def command(self, bin_dir):
        containerd = shlex.quote(f"{bin_dir}/containerd")
        return f"{containerd} config default | base64 -w0; echo"

    def process(self, output):
        return _decode(output)

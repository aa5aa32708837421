"""Conformance targets from a pyinfra inventory: its hosts and their SSH data, as an OpenSSH config.

testinfra's ssh:// backend uses the OpenSSH client, so each inventory host becomes a `Host`
entry (address, port, user, key, known_hosts): host keys are verified as OpenSSH does.
"""

import fnmatch
import json
import shlex
import subprocess
import sys

_LOAD = """
import json, sys
from pyinfra.api import State
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory
with ctx_state.use(State()):
    inventory = make_inventory(sys.argv[1], cwd=".")
json.dump([(host.name, list(host.groups), host.data.dict()) for host in inventory], sys.stdout, default=str)
"""


def load(path: str) -> list[tuple[str, list[str], dict]]:
    """(name, groups, data) of every host in a pyinfra inventory file, group_data included."""
    # In a process of its own: pyinfra's CLI package monkey-patches the process for gevent on
    # import, which this one (threads, gRPC, subprocesses) must not get.
    result = subprocess.run([sys.executable, "-c", _LOAD, path], capture_output=True, text=True)
    if result.returncode:
        raise ValueError(f"cannot load the pyinfra inventory {path}: {result.stderr.strip()[-2000:]}")
    return [tuple(host) for host in json.loads(result.stdout)]


def select(hosts, limit: str | None):
    """pyinfra's --limit: names or group names (comma-separated, glob patterns allowed)."""
    if not limit:
        return hosts
    patterns = [pattern for pattern in limit.split(",") if pattern]
    return [
        host
        for host in hosts
        if any(fnmatch.fnmatch(name, pattern) for pattern in patterns for name in [host[0], *host[1]])
    ]


def _quote(value) -> str:
    return shlex.quote(str(value))


def ssh_config(hosts, control_dir: str, accept_new_host_keys: bool = False) -> str:
    """OpenSSH `Host` entries; connection sockets go in `control_dir`, a directory private to
    the caller (in a shared /tmp, another local user could make the socket first and answer
    the checks)."""
    entries = []
    for name, _, data in hosts:
        lines = [f"Host {name}", f"  HostName {data.get('ssh_hostname') or name}"]
        for option, key in (
            ("Port", "ssh_port"),
            ("User", "ssh_user"),
            ("IdentityFile", "ssh_key"),
            ("UserKnownHostsFile", "ssh_known_hosts_file"),
        ):
            if data.get(key):
                lines.append(f"  {option} {_quote(data[key])}")
        if data.get("ssh_key"):
            lines.append("  IdentitiesOnly yes")
        strict = "accept-new" if accept_new_host_keys else data.get("ssh_strict_host_key_checking")
        if strict:
            lines.append(f"  StrictHostKeyChecking {strict}")
        # One connection per host for the whole run: the suite runs dozens of commands.
        lines += [
            "  ControlMaster auto",
            f"  ControlPath {_quote(control_dir + '/%C')}",
            "  ControlPersist 60",
        ]
        entries.append("\n".join(lines) + "\n")
    return "\n".join(entries)


def host_specs(hosts) -> list[str]:
    """testinfra host specs; hosts whose pyinfra data says `_sudo` run the checks with sudo."""
    return [f"ssh://{name}" + ("?sudo=true" if data.get("_sudo") else "") for name, _, data in hosts]


def accept_new_wrapper(user_config: str | None) -> str:
    """An OpenSSH config that accepts unknown host keys (recording them), then reads the usual one."""
    include = user_config or "~/.ssh/config"
    return f"Host *\n  StrictHostKeyChecking accept-new\n\nInclude {_quote(include)}\n"

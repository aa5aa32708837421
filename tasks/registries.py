"""Registry hosts the modern way: one `<config_path>/<registry>/hosts.toml` per registry.

Pure functions. A file that carries credentials (headers) is written 0600 and its content is
never printed: the operations upload it without a diff.
"""

import re
from collections.abc import Mapping

import tomlkit

from .settings import DataError

MARKER = "# Managed by containerd-deploy (data key containerd_registries): edits here are overwritten."
MIRROR_FIELDS = {"host", "capabilities", "skip_verify", "ca", "headers", "override_path"}
CAPABILITIES = {"pull", "resolve", "push"}
KEY = "containerd_registries"
FIX = (f"set {KEY} to a mapping of registry name to {{server, mirrors: [{{host, capabilities, skip_verify, "
       "ca, headers}}]}}, e.g. {\"docker.io\": {\"mirrors\": [{\"host\": \"https://mirror.internal\"}]}}")


def default_server(registry: str) -> str:
    return "https://registry-1.docker.io" if registry == "docker.io" else f"https://{registry}"


def parse(host: str, value) -> dict:
    """Validated registry specs from data (raises DataError naming the host and key)."""
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping):
        raise DataError(host, KEY, f"is {value!r}, not a mapping", FIX)
    registries = {}
    for registry, spec in value.items():
        if not re.fullmatch(r"_default|[A-Za-z0-9.-]+(:\d+)?", str(registry)):
            raise DataError(host, KEY, f"names the registry {registry!r}, not a host[:port] name", FIX)
        if not isinstance(spec, Mapping) or set(spec) - {"server", "mirrors"}:
            raise DataError(host, KEY, f"has {spec!r} for {registry!r}; only server and mirrors are known", FIX)
        mirrors = spec.get("mirrors", [])
        if not isinstance(mirrors, list) or not mirrors:
            raise DataError(host, KEY, f"has no list of mirrors for {registry!r}", FIX)
        for mirror in mirrors:
            if not isinstance(mirror, Mapping) or not re.match(r"^https?://", str(mirror.get("host", ""))):
                raise DataError(host, KEY, f"has the mirror {mirror!r} for {registry!r}, which needs an http(s):// host", FIX)
            if set(mirror) - MIRROR_FIELDS:
                raise DataError(host, KEY, f"has unknown fields {sorted(set(mirror) - MIRROR_FIELDS)} in a mirror of {registry!r}", FIX)
            capabilities = mirror.get("capabilities", ["pull", "resolve"])
            if not isinstance(capabilities, list) or set(capabilities) - CAPABILITIES:
                raise DataError(host, KEY, f"has capabilities {capabilities!r} for {mirror['host']}; use pull, resolve, push", FIX)
            headers = mirror.get("headers", {})
            if not isinstance(headers, Mapping):
                raise DataError(host, KEY, f"has headers for {mirror['host']} that are not a mapping", FIX)
        registries[str(registry)] = {"server": spec.get("server"), "mirrors": [dict(m) for m in mirrors]}
    return registries


def has_credentials(spec: Mapping) -> bool:
    return any(mirror.get("headers") for mirror in spec["mirrors"])


def hosts_toml(registry: str, spec: Mapping) -> str:
    """The hosts.toml of one registry: its mirrors tried in order, then the server."""
    document = tomlkit.document()
    document.add(tomlkit.comment(MARKER[2:]))
    server = spec.get("server") or (None if registry == "_default" else default_server(registry))
    if server:
        document["server"] = server
    hosts = tomlkit.table(is_super_table=True)
    for mirror in spec["mirrors"]:
        table = tomlkit.table()
        table["capabilities"] = mirror.get("capabilities", ["pull", "resolve"])
        for field in ("skip_verify", "ca", "override_path"):
            if field in mirror:
                table[field] = mirror[field]
        if mirror.get("headers"):
            header = tomlkit.table()
            for name, header_value in mirror["headers"].items():
                header[name] = header_value
            table["header"] = header
        hosts[mirror["host"]] = table
    document["host"] = hosts
    return tomlkit.dumps(document)

"""Registry hosts the modern way: one `<config_path>/<registry>/hosts.toml` per registry.

Pure functions. A file that carries credentials (headers) is written 0600 and its content is
never printed: the operations upload it without a diff.
"""

import re
import urllib.parse
from collections.abc import Mapping

import tomlkit

from containerd_deploy.data.values import DataError, control_characters, redact_url, url_problem

MARKER = "# Managed by containerd-deploy (data key containerd_registries): edits here are overwritten."
MIRROR_FIELDS = {"host", "capabilities", "skip_verify", "ca", "headers", "override_path"}
CAPABILITIES = {"pull", "resolve", "push"}
KEY = "containerd_registries"
FIX = (
    f"set {KEY} to a mapping of registry name to {{server, mirrors: [{{host, capabilities, skip_verify, "
    'ca, headers}]}, e.g. {"docker.io": {"mirrors": [{"host": "https://mirror.internal"}]}}'
)


def default_server(registry: str) -> str:
    return "https://registry-1.docker.io" if registry == "docker.io" else f"https://{registry}"


# A registry's directory under certs.d: `_default`, or host[:port] of DNS labels (so never `.`,
# `..` or a path: the file must land where the node fact and a reset look for it).
REGISTRY_NAME = re.compile(
    r"_default|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*(:[0-9]{1,5})?"
)
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _printable(value) -> bool:
    return isinstance(value, str) and not control_characters(value)


def _names(value) -> str:
    """Field names of a mapping, never its values (which may be credentials)."""
    return (
        "{" + ", ".join(sorted(str(key) for key in value)) + "}"
        if isinstance(value, Mapping)
        else type(value).__name__
    )


def _mirror_host(mirror) -> str:
    """A mirror's host for messages, without credentials."""
    host_value = mirror.get("host") if isinstance(mirror, Mapping) else None
    return redact_url(host_value) if isinstance(host_value, str) else "a mirror"


def _check_mirror(host: str, registry: str, mirror) -> None:
    if not isinstance(mirror, Mapping):
        raise DataError(
            host, KEY, f"has a mirror of {registry!r} that is a {type(mirror).__name__}, not a mapping", FIX
        )
    shown = _mirror_host(mirror)
    if url_problem(mirror.get("host"), ("http", "https")):
        raise DataError(
            host,
            KEY,
            f"has the mirror {shown!r} for {registry!r}, which needs an http(s):// host "
            "without spaces or credentials (put credentials in headers)",
            FIX,
        )
    if set(mirror) - MIRROR_FIELDS:
        raise DataError(
            host,
            KEY,
            f"has unknown fields {sorted(set(mirror) - MIRROR_FIELDS)} in a mirror of {registry!r}",
            FIX,
        )
    capabilities = mirror.get("capabilities", ["pull", "resolve"])
    if not isinstance(capabilities, list) or not capabilities or set(capabilities) - CAPABILITIES:
        raise DataError(
            host, KEY, f"has capabilities {capabilities!r} for {shown}; use pull, resolve, push", FIX
        )
    for flag in ("skip_verify", "override_path"):
        if flag in mirror and not isinstance(mirror[flag], bool):
            raise DataError(host, KEY, f"has {flag} for {shown} that is not true or false", FIX)
    ca = mirror.get("ca", "")
    if not (_printable(ca) or (isinstance(ca, list) and all(_printable(item) and item for item in ca))):
        raise DataError(
            host, KEY, f"has a ca for {shown} that is not a path (or list of paths) on the node", FIX
        )
    headers = mirror.get("headers", {})
    if not isinstance(headers, Mapping):
        raise DataError(host, KEY, f"has headers for {shown} that are not a mapping", FIX)
    for name, header_value in headers.items():
        values = header_value if isinstance(header_value, list) else [header_value]
        # The value is never shown: headers carry credentials.
        if (
            not isinstance(name, str)
            or not HEADER_NAME.fullmatch(name)
            or not values
            or not all(_printable(item) for item in values)
        ):
            raise DataError(
                host,
                KEY,
                f"has a header {str(name)[:64]!r} for {shown} whose name is not an HTTP "
                "header name or whose value is not a single-line string (value not shown)",
                FIX,
            )


def parse(host: str, value) -> dict:
    """Validated registry specs from data (raises DataError naming the host and key; messages
    name registries, mirrors and fields, never header values)."""
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping):
        raise DataError(host, KEY, f"is a {type(value).__name__}, not a mapping", FIX)
    registries = {}
    for registry, spec in value.items():
        if not isinstance(registry, str) or not REGISTRY_NAME.fullmatch(registry):
            raise DataError(
                host,
                KEY,
                f"names the registry {str(registry)[:80]!r}, not a host[:port] name (or _default)",
                FIX,
            )
        if not isinstance(spec, Mapping) or set(spec) - {"server", "mirrors"}:
            raise DataError(
                host, KEY, f"has {_names(spec)} for {registry!r}; only server and mirrors are known", FIX
            )
        server = spec.get("server")
        if server is not None and url_problem(server, ("http", "https")):
            raise DataError(
                host,
                KEY,
                f"has a server for {registry!r} that is not an http(s):// URL without credentials",
                FIX,
            )
        mirrors = spec.get("mirrors", [])
        if not isinstance(mirrors, list) or not mirrors:
            raise DataError(host, KEY, f"has no list of mirrors for {registry!r}", FIX)
        for mirror in mirrors:
            _check_mirror(host, registry, mirror)
        registries[registry] = {"server": server, "mirrors": [dict(m) for m in mirrors]}
    return registries


def has_credentials(spec: Mapping) -> bool:
    return any(mirror.get("headers") for mirror in spec["mirrors"])


BASIC = re.compile(r"Basic\s+([A-Za-z0-9+/=]+)", re.IGNORECASE)


def basic_credentials(registry: str, registries: Mapping) -> dict[str, str]:
    """host[:port] -> the base64 `user:password` each host the node's config names for
    `registry` (its own entry, else `_default`'s) is sent in an `Authorization: Basic` header:
    what a containers auth file (skopeo's --authfile) holds for that host. The registry's own
    server is named as the registry is (docker.io, not registry-1.docker.io). Other headers
    (a bearer token) have no place there and are left out."""
    spec = registries.get(registry) or registries.get("_default")
    found: dict[str, str] = {}
    for mirror in spec["mirrors"] if spec else ():
        netloc = urllib.parse.urlsplit(mirror["host"]).netloc
        host = registry if netloc == urllib.parse.urlsplit(default_server(registry)).netloc else netloc
        for name, value in (mirror.get("headers") or {}).items():
            for item in value if isinstance(value, list) else [value]:
                basic = BASIC.fullmatch(item.strip()) if name.lower() == "authorization" else None
                if basic:
                    found.setdefault(host, basic.group(1))
    return found


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

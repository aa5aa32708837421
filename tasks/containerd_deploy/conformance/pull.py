"""Pulls through a node's registries: where a reference goes, and why a pull failed, in words.

containerd reads `<config_path>/<registry>/hosts.toml` on every pull (`_default/hosts.toml` for
a registry without its own) and tries its hosts in order, then the server. A failed pull comes
back from the CRI as one long gRPC message; this module turns it into what was expected, what
happened and the likely fix. Pure functions: the tests read the node, these only explain.
"""

import re
import tomllib
from dataclasses import dataclass, field

DOCKER_HUB = "docker.io"
DEFAULT_CONFIG_PATH = "/etc/containerd/certs.d"
KEY = "containerd_registries"


def registry_of(reference: str) -> str:
    """The registry a reference names, as containerd reads it: `nginx` and `library/nginx:1` are
    docker.io's; a first component with a dot or colon, or `localhost`, is a registry."""
    first, _, rest = reference.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


def default_server(registry: str) -> str:
    return "https://registry-1.docker.io" if registry == DOCKER_HUB else f"https://{registry}"


@dataclass
class Route:
    """Where a pull of one registry goes: the hosts.toml that applies (if any), its mirrors in
    order, then the server."""

    registry: str
    hosts_file: str | None
    mirrors: list[str] = field(default_factory=list)
    server: str = ""

    def describe(self) -> str:
        hops = [*self.mirrors, f"{self.server} (server)"] if self.server else list(self.mirrors)
        via = f"{self.hosts_file}: " if self.hosts_file else "no hosts.toml: "
        return via + " -> ".join(hops)


def route(registry: str, config_path: str, hosts_files: dict[str, str]) -> Route:
    """The route of `registry` given the hosts.toml files found under config_path (registry
    directory name -> file text). Header values are never kept: they may be credentials."""
    for name in (registry, "_default"):
        text = hosts_files.get(name)
        if text is None:
            continue
        path = f"{config_path}/{name}/hosts.toml"
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return Route(registry, path, [], "(unreadable hosts.toml)")
        hosts = document["host"] if isinstance(document.get("host"), dict) else {}
        server = document.get("server") or (default_server(registry) if name != "_default" else "")
        return Route(registry, path, list(hosts), server)
    return Route(registry, None, [], default_server(registry))


UNAUTHORIZED = re.compile(r"\b401\b|unauthorized|authorization failed|no basic auth credentials", re.I)
FORBIDDEN = re.compile(r"\b403\b|forbidden", re.I)
TLS = re.compile(r"x509:|certificate signed by unknown authority|tls: |certificate is not valid", re.I)
UNREACHABLE = re.compile(
    r"connection refused|no route to host|network is unreachable|i/o timeout|"
    r"no such host|server misbehaving|context deadline exceeded|connection reset",
    re.I,
)
NOT_FOUND = re.compile(r"not found|manifest unknown|name unknown", re.I)


def _excerpt(detail: str, pattern: re.Pattern) -> str:
    """The part of containerd's message around what matched (it can be very long)."""
    match = pattern.search(detail)
    if not match:
        return detail[-300:]
    start = max(0, match.start() - 160)
    return ("…" if start else "") + detail[start : match.end() + 80].strip()


def explain_failure(reference: str, route_: Route, detail: str) -> str:
    """A failed pull of `reference`, explained: expected, found, fix."""
    registry = route_.registry
    expected = f"expected {reference} to pull through {route_.describe()}"
    if route_.hosts_file is None:
        return (
            f"no route: {registry} has no hosts.toml on the node (it is not in {KEY}), so containerd went "
            f"to {route_.server} itself, and the pull failed: {_excerpt(detail, UNREACHABLE)}. Fix: add "
            f"{registry!r} with a mirror the node can reach to {KEY} and redeploy (no restart needed)"
        )
    if UNAUTHORIZED.search(detail):
        return (
            f"401 Unauthorized: {expected}, but the registry refused the credentials sent "
            f"({_excerpt(detail, UNAUTHORIZED)}). Fix: correct the Authorization header of that mirror in "
            f'{KEY} ("Basic " + base64 of user:password, or "Bearer <token>") and redeploy'
        )
    if FORBIDDEN.search(detail):
        return (
            f"403 Forbidden: {expected}, but the registry denied access ({_excerpt(detail, FORBIDDEN)}). "
            f"Fix: give the credentials in {KEY} pull rights on that repository"
        )
    if TLS.search(detail):
        return (
            f"TLS verification failed: {expected}, but the mirror's certificate was not trusted "
            f'({_excerpt(detail, TLS)}). Fix: set "ca" of that mirror in {KEY} to the path of its CA '
            "certificate on the node (or add the CA to the node's trust store), then redeploy"
        )
    if UNREACHABLE.search(detail):
        return (
            f"mirror down: {expected}, but none of them answered ({_excerpt(detail, UNREACHABLE)}). Fix: start "
            f"the mirror, or point {registry!r} in {KEY} at one the node can reach, and redeploy"
        )
    if NOT_FOUND.search(detail):
        return (
            f"not found: {expected}, but no host had it ({_excerpt(detail, NOT_FOUND)}). Fix: push the image "
            "to the mirror (or enable its pull-through cache), or correct the reference"
        )
    return f"the pull failed: {expected}; containerd said: {detail[-600:]}"


def page_title(html: str) -> str | None:
    match = re.search(r"<title>(.*?)</title>", html, re.I | re.S)
    return match.group(1).strip() if match else None

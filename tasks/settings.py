"""Every data key the deploy reads: its one default, and its validation.

Inventory data, group_data/ files and `--data key=value` override these defaults (pyinfra's
usual precedence). `resolve()` turns one host's raw data into a validated `Settings`, before
any operation touches the host; a bad value raises `DataError`, naming the host, the key and
the fix.
"""

import posixpath
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version
from pyinfra.api.exceptions import DeployError

DEFAULTS: dict = {
    # "present": a containerd node; "absent": stop it and remove what this deploy installed;
    # "purged": absent, and containerd's data (images, snapshots) too.
    "containerd_state": "present",
    # What to install.
    "containerd_version": "2.2.1",
    "containerd_sha256": None,
    "runc_version": "1.3.4",
    "runc_sha256": None,
    # Optional, off while their version is unset: CNI plugins (into cni_bin_dir) and crictl.
    "cni_plugins_version": None,
    "cni_plugins_sha256": None,
    "crictl_version": None,
    "crictl_sha256": None,
    # Where from: upstream's release layout under one base URL, or per-artifact templates.
    "artifact_mirror": "https://github.com",
    "containerd_download_url": "{mirror}/containerd/containerd/releases/download/v{version}/containerd-{version}-linux-{arch}.tar.gz",
    "runc_download_url": "{mirror}/opencontainers/runc/releases/download/v{version}/runc.{arch}",
    "cni_plugins_download_url": "{mirror}/containernetworking/plugins/releases/download/v{version}/cni-plugins-linux-{arch}-v{version}.tgz",
    "crictl_download_url": "{mirror}/kubernetes-sigs/cri-tools/releases/download/v{version}/crictl-v{version}-linux-{arch}.tar.gz",
    # How they reach the node: each node downloads ("node"), or the controller downloads and
    # verifies each file once into artifact_cache_dir and uploads it over SSH ("controller").
    "artifact_source": "node",
    # file:// URLs read files on the node (or the controller): only when the operator says so.
    "artifact_allow_file_urls": False,
    "artifact_cache_dir": "~/.cache/containerd-deploy/artifacts",
    # Components whose checksum may be read from the .sha256sum next to the file when neither
    # files/checksums.toml nor data has one. Empty: never trust the file's own source.
    "artifact_trust_mirror_checksums": [],
    # Where to.
    "containerd_bin_dir": "/usr/local/bin",
    "runc_path": "/usr/local/sbin/runc",
    "cni_bin_dir": "/opt/cni/bin",
    "containerd_config_path": "/etc/containerd/config.toml",
    "containerd_unit_path": "/etc/systemd/system/containerd.service",
    "containerd_deploy_state_dir": "/var/lib/containerd-deploy",
    "containerd_staging_dir": "/var/cache/containerd-deploy",
    # config.toml: start from the node's file ("existing", keeping operator edits) or from the
    # installed binary's `containerd config default` ("default"), then apply the keys below.
    "containerd_config_base": "existing",
    "containerd_systemd_cgroup": True,
    "containerd_sandbox_image": None,
    "containerd_snapshotter": None,
    "containerd_max_container_log_line_size": None,
    "containerd_oom_score": None,
    "containerd_runtimes": [],
    "containerd_config_extra": {},
    # Registries the modern way: config_path + one hosts.toml per registry.
    "containerd_registry_config_path": "/etc/containerd/certs.d",
    "containerd_registries": {},
    # The systemd service.
    "containerd_http_proxy": None,
    "containerd_https_proxy": None,
    "containerd_no_proxy": None,
    "containerd_limit_nofile": None,
    "containerd_ready_timeout": 60,
    # A containerd from the distribution's packages (apt's containerd, docker.io's, containerd.io):
    # "refuse" to deploy beside it, or "remove" the package (dpkg --remove / rpm -e; conffiles such
    # as its config.toml stay, and a package that depends on it makes the removal fail).
    "containerd_distro_package": "refuse",
    # The last step: check the running daemon as a kubelet will use it; fail the run if not.
    "containerd_verify": True,
}

# Release lines this deploy knows how to configure (config schema v2 for 1.x, v3+ for 2.x).
SUPPORTED_CONTAINERD = (Version("1.6"), Version("3"))
SUPPORTED_RUNC = (Version("1.1"), Version("2"))
SUPPORTED_CNI_PLUGINS = (Version("1.0"), Version("2"))
SUPPORTED_CRICTL = (Version("1.20"), Version("2"))
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# ASCII digits only: Python's \d also matches other scripts' digits, which no release has.
VERSION = re.compile(r"^v?([0-9]+\.[0-9]+\.[0-9]+)$")
# Trees of the operating system that no data key may name as a directory the deploy locks
# down, empties or deletes (staging, state, containerd's data when purged): each, and each
# of its ancestors, is refused.
SYSTEM_TREES = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt",
    "/opt", "/proc", "/root", "/run", "/run/user", "/run/lock", "/sbin", "/srv", "/sys", "/tmp", "/usr",
    "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib64", "/usr/libexec", "/usr/local", "/usr/local/bin",
    "/usr/local/lib", "/usr/local/sbin", "/usr/local/share", "/usr/sbin", "/usr/share", "/usr/src", "/var",
    "/var/backups", "/var/cache", "/var/lib", "/var/local", "/var/lock", "/var/log", "/var/mail", "/var/opt",
    "/var/run", "/var/spool", "/var/tmp",
})


def control_characters(text: str) -> bool:
    """Whether `text` holds a character that has no place in a path, URL or unit value: C0 and
    C1 controls (NUL, newline, …), and any white space but the plain space (tabs, Unicode line
    separators: tools split lines and strip words at them)."""
    return any(ord(char) < 32 or 127 <= ord(char) < 160 or (char.isspace() and char != " ") for char in text)


def is_system_tree(path: str) -> bool:
    """`path` (normalized, absolute) is a tree of the operating system or holds one."""
    return path in SYSTEM_TREES or any(tree.startswith(path.rstrip("/") + "/") for tree in SYSTEM_TREES)


def redact_url(url: str) -> str:
    """The URL with any password in it replaced by ***, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<a URL that cannot be parsed>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}"))


class DataError(DeployError):
    """A data value this deploy cannot use; raised before the host is changed."""

    def __init__(self, host: str, key: str, problem: str, fix: str):
        self.host, self.key = host, key
        super().__init__(f"{host}: data key {key!r} {problem}. Fix: {fix}")


@dataclass(frozen=True)
class Settings:
    host: str
    containerd_state: str
    containerd_version: Version
    containerd_sha256: str | dict | None
    runc_version: Version
    runc_sha256: str | dict | None
    cni_plugins_version: Version | None
    cni_plugins_sha256: str | dict | None
    crictl_version: Version | None
    crictl_sha256: str | dict | None
    artifact_mirror: str
    containerd_download_url: str
    runc_download_url: str
    cni_plugins_download_url: str
    crictl_download_url: str
    artifact_source: str
    artifact_allow_file_urls: bool
    containerd_distro_package: str
    artifact_cache_dir: str
    artifact_trust_mirror_checksums: tuple
    containerd_bin_dir: str
    runc_path: str
    cni_bin_dir: str
    containerd_config_path: str
    containerd_unit_path: str
    containerd_deploy_state_dir: str
    containerd_staging_dir: str
    containerd_config_base: str
    containerd_systemd_cgroup: bool
    containerd_sandbox_image: str | None
    containerd_snapshotter: str | None
    containerd_max_container_log_line_size: int | None
    containerd_oom_score: int | None
    containerd_runtimes: tuple
    containerd_config_extra: dict
    containerd_registry_config_path: str
    containerd_registries: dict
    containerd_http_proxy: str | None
    containerd_https_proxy: str | None
    containerd_no_proxy: str | None
    containerd_limit_nofile: str | None
    containerd_ready_timeout: int
    containerd_verify: bool


def parse_version(host: str, key: str, value, supported: tuple[Version, Version]) -> Version:
    # `--data containerd_version=2.0` arrives as the float 2.0: compare its text.
    text = str(value).strip()
    match = VERSION.match(text)
    low, high = supported
    fix = f"set {key} to a release number such as {low.major}.{low.minor}.0 (X.Y.Z, no 'latest')"
    if not match:
        raise DataError(host, key, f"is {value!r}, not a release version", fix)
    try:
        version = Version(match.group(1))
    except InvalidVersion:  # pragma: no cover - the pattern admits only valid versions
        raise DataError(host, key, f"is {value!r}, not a release version", fix)
    if not low <= version < high:
        raise DataError(host, key, f"is {version}, outside the supported {low}.x to <{high} releases", fix)
    return version


def _optional_version(host: str, key: str, value, supported: tuple[Version, Version]) -> Version | None:
    return None if value in (None, "", False) else parse_version(host, key, value, supported)


COMPONENT_NAMES = ("containerd", "runc", "cni_plugins", "crictl")


def _components(host: str, key: str, value) -> tuple:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or any(item not in COMPONENT_NAMES for item in items):
        raise DataError(host, key, f"is {value!r}, not a list of component names",
                        f"list some of {', '.join(COMPONENT_NAMES)} (or leave it empty)")
    return tuple(items)


def _cache_dir(host: str, key: str, value) -> str:
    """A directory on the controller (`~` allowed)."""
    if not isinstance(value, str) or not value.strip() or control_characters(value):
        raise DataError(host, key, f"is {value!r}, not a directory", "set it to a directory on the controller, e.g. ~/.cache/containerd-deploy/artifacts")
    return posixpath.expanduser(value.strip())


def _sha256(host: str, key: str, value) -> str | dict | None:
    fix = f"set {key} to the 64-character lowercase hex sha256 from the release's .sha256sum file"
    if value in (None, ""):
        return None
    if isinstance(value, Mapping):
        for arch, digest in value.items():
            if arch not in ("amd64", "arm64"):
                raise DataError(host, key, f"has an entry for {arch!r}, not amd64 or arm64", fix)
            _sha256(host, key, digest)
        return dict(value)
    if not isinstance(value, str) or not SHA256.match(value):
        raise DataError(host, key, f"is {value!r}, not a sha256", fix)
    return value


def _absolute_path(host: str, key: str, value) -> str:
    """An absolute path without `..`, control characters, backslashes or trailing spaces (other
    spaces and characters are fine: every command quotes it); never `/` itself."""
    fix = f"set {key} to an absolute path such as {DEFAULTS[key]}"
    # (A backslash too: sha256sum escapes names holding one, so the node fact could not read them back.)
    if (not isinstance(value, str) or not value.startswith("/") or ".." in value.split("/")
            or control_characters(value) or "\\" in value or value != value.rstrip()):
        raise DataError(host, key, f"is {value!r}, not an absolute path", fix)
    path = "/" + posixpath.normpath(value).lstrip("/")
    if path == "/":
        raise DataError(host, key, "is '/', not a path of its own", fix)
    # The kernel's limits (NAME_MAX, PATH_MAX): refused here rather than failing on the node.
    if len(path.encode()) >= 4096 or any(len(part.encode()) > 255 for part in path.split("/")):
        raise DataError(host, key, f"is {path[:80]!r}…, longer than a path may be (255 bytes a name, 4095 in all)", fix)
    return path


def _dedicated_directory(host: str, key: str, value) -> str:
    """A directory the deploy owns outright (made root-only, emptied, removed): no system tree."""
    path = _absolute_path(host, key, value)
    if is_system_tree(path):
        raise DataError(host, key, f"is {path!r}, a directory of the operating system (or one holding one), "
                        "which the deploy would make root-only and empty",
                        f"set {key} to a directory of its own, such as {DEFAULTS[key]}")
    return path


def _url(host: str, key: str, url: str, allow_file: bool, shown) -> None:
    """Refuse a URL that is not http(s) (or file://, when allowed), holds credentials, spaces or
    control characters, or could be read as an option (a leading -)."""
    schemes = ("https", "http", "file") if allow_file else ("https", "http")
    fix = (f"set {key} to an {' or '.join(s + '://' for s in schemes)} URL without spaces or credentials"
           + ("" if allow_file else " (file:// URLs need artifact_allow_file_urls=true)"))
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise DataError(host, key, f"is {shown!r}, not a URL", fix) from None
    if parts.scheme not in schemes or control_characters(url) or any(char.isspace() for char in url):
        raise DataError(host, key, f"is {shown!r}, not an {'/'.join(schemes)} URL", fix)
    if parts.scheme != "file" and (not parts.hostname or parts.hostname.startswith("-")):
        raise DataError(host, key, f"is {shown!r}, which names no host", fix)
    if "@" in parts.netloc:
        # Credentials would travel in the node's command lines and land in its manifests.
        raise DataError(host, key, f"is {shown!r}, which holds credentials",
                        "give the mirror credentials-free read access from the nodes (or the controller, "
                        "with artifact_source=controller), e.g. by network; URLs with user:password are not "
                        "supported")


def _mirror(host: str, key: str, value, allow_file: bool) -> str:
    mirror = str(value).rstrip("/")
    _url(host, key, mirror, allow_file, redact_url(mirror))
    return mirror


def _url_template(host: str, key: str, value, mirror: str, allow_file: bool) -> str:
    fields = {"mirror": mirror, "version": "1.0.0", "arch": "amd64"}
    try:
        url = str(value).format(**fields)
    except (KeyError, IndexError, ValueError, AttributeError) as error:
        raise DataError(
            host, key, f"is {redact_url(str(value))!r}, which is not a valid template ({error})",
            f"use only the fields {{mirror}}, {{version}} and {{arch}}, as in the default {DEFAULTS[key]}",
        ) from None
    _url(host, key, url, allow_file, redact_url(str(value)))
    return str(value)


def _bool(host: str, key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise DataError(host, key, f"is {value!r}, not true or false", f"set {key} to true or false")


def _positive_int(host: str, key: str, value) -> int:
    try:
        number = int(value) if isinstance(value, int) or re.fullmatch(r"[0-9]+", str(value)) else 0
    except (TypeError, ValueError):
        number = 0
    if number <= 0 or isinstance(value, bool):
        raise DataError(host, key, f"is {value!r}, not a positive number of seconds", f"set {key} to e.g. {DEFAULTS[key]}")
    return number


def _choice(host: str, key: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise DataError(host, key, f"is {value!r}", f"set {key} to one of: {', '.join(choices)}")
    return value


def _optional_text(host: str, key: str, value, example: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or control_characters(value) or '"' in value:
        raise DataError(host, key, f"is {value!r}, not a single-line string", f"set {key} to e.g. {example}")
    return value


def _proxy(host: str, key: str, value, example: str) -> str | None:
    """A proxy URL (credentials allowed: the drop-in holding it is written 0600, and messages
    show it without the password); control characters and spaces are refused."""
    if value in (None, ""):
        return None
    shown = redact_url(value) if isinstance(value, str) else value
    if not isinstance(value, str) or control_characters(value) or any(char.isspace() for char in value):
        raise DataError(host, key, f"is {shown!r}, not a single-line value without spaces", f"set {key} to e.g. {example}")
    if key != "containerd_no_proxy":
        try:
            parts = urllib.parse.urlsplit(value)
            valid = parts.scheme in ("http", "https", "socks5") and bool(parts.hostname)
        except ValueError:
            valid = False
        if not valid:
            raise DataError(host, key, f"is {shown!r}, not a proxy URL", f"set {key} to e.g. {example}")
    return value


def has_credentials(url: str | None) -> bool:
    return bool(url) and "@" in urllib.parse.urlsplit(url).netloc


def _optional_int(host: str, key: str, value, low: int, high: int) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DataError(host, key, f"is {value!r}", f"set {key} to a whole number from {low} to {high}, or leave it unset")
    return value


def _limit_nofile(host: str, key: str, value) -> str | None:
    if value in (None, ""):
        return None
    text = str(value) if not isinstance(value, bool) else ""
    fix = f"set {key} to a number, SOFT:HARD with SOFT <= HARD, or infinity (systemd's LimitNOFILE)"
    match = re.fullmatch(r"([0-9]+|infinity)(?::([0-9]+|infinity))?", text)
    if not match:
        raise DataError(host, key, f"is {value!r}", fix)
    soft, hard = (float("inf") if part == "infinity" else int(part) for part in (match[1], match[2] or match[1]))
    if soft > hard or not 0 < soft:
        raise DataError(host, key, f"is {value!r}, a soft limit above its hard limit (or zero)", fix)
    return text


def _runtimes(host: str, key: str, value) -> tuple:
    from .config_toml import Runtime

    fix = (f"set {key} to a list of mappings with name, and optionally runtime_type, binary_name "
           "and options, e.g. [{\"name\": \"crun\", \"binary_name\": \"/usr/bin/crun\"}]")
    if not isinstance(value, (list, tuple)):
        raise DataError(host, key, f"is {value!r}, not a list", fix)
    runtimes = []
    for entry in value:
        if not isinstance(entry, Mapping) or not re.fullmatch(r"[A-Za-z0-9_.-]+", str(entry.get("name", ""))):
            raise DataError(host, key, f"has the entry {entry!r}, which needs a name of letters, digits, . _ -", fix)
        unknown = set(entry) - {"name", "runtime_type", "binary_name", "options"}
        if unknown:
            raise DataError(host, key, f"has unknown fields {sorted(unknown)} in {entry['name']!r}", fix)
        if entry["name"] == "runc":
            raise DataError(host, key, "redefines 'runc', which the deploy owns", "give the extra runtime another name")
        if not isinstance(entry.get("options", {}), Mapping):
            raise DataError(host, key, f"has non-mapping options in {entry['name']!r}", fix)
        runtimes.append(Runtime(entry["name"], entry.get("runtime_type", "io.containerd.runc.v2"),
                                entry.get("binary_name"), dict(entry.get("options", {}))))
    return tuple(runtimes)


def _registries(host: str, key: str, value) -> dict:
    from . import registries

    return registries.parse(host, value)


def _mapping(host: str, key: str, value, fix: str) -> dict:
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping):
        raise DataError(host, key, f"is {value!r}, not a mapping", fix)
    return dict(value)


def resolve(host: str, data: Mapping) -> Settings:
    """Validated settings for one host from its data (missing keys take DEFAULTS)."""
    value = {key: data.get(key, default) for key, default in DEFAULTS.items()}
    allow_file = _bool(host, "artifact_allow_file_urls", value["artifact_allow_file_urls"])
    mirror = _mirror(host, "artifact_mirror", value["artifact_mirror"], allow_file)
    return Settings(
        host=host,
        containerd_state=_choice(host, "containerd_state", value["containerd_state"], ("present", "absent", "purged")),
        containerd_version=parse_version(host, "containerd_version", value["containerd_version"], SUPPORTED_CONTAINERD),
        containerd_sha256=_sha256(host, "containerd_sha256", value["containerd_sha256"]),
        runc_version=parse_version(host, "runc_version", value["runc_version"], SUPPORTED_RUNC),
        runc_sha256=_sha256(host, "runc_sha256", value["runc_sha256"]),
        cni_plugins_version=_optional_version(host, "cni_plugins_version", value["cni_plugins_version"], SUPPORTED_CNI_PLUGINS),
        cni_plugins_sha256=_sha256(host, "cni_plugins_sha256", value["cni_plugins_sha256"]),
        crictl_version=_optional_version(host, "crictl_version", value["crictl_version"], SUPPORTED_CRICTL),
        crictl_sha256=_sha256(host, "crictl_sha256", value["crictl_sha256"]),
        artifact_mirror=mirror,
        containerd_download_url=_url_template(host, "containerd_download_url", value["containerd_download_url"], mirror, allow_file),
        runc_download_url=_url_template(host, "runc_download_url", value["runc_download_url"], mirror, allow_file),
        cni_plugins_download_url=_url_template(host, "cni_plugins_download_url", value["cni_plugins_download_url"], mirror, allow_file),
        crictl_download_url=_url_template(host, "crictl_download_url", value["crictl_download_url"], mirror, allow_file),
        artifact_source=_choice(host, "artifact_source", value["artifact_source"], ("node", "controller")),
        artifact_allow_file_urls=allow_file,
        containerd_distro_package=_choice(host, "containerd_distro_package", value["containerd_distro_package"],
                                          ("refuse", "remove")),
        artifact_cache_dir=_cache_dir(host, "artifact_cache_dir", value["artifact_cache_dir"]),
        artifact_trust_mirror_checksums=_components(host, "artifact_trust_mirror_checksums",
                                                    value["artifact_trust_mirror_checksums"]),
        containerd_bin_dir=_absolute_path(host, "containerd_bin_dir", value["containerd_bin_dir"]),
        runc_path=_absolute_path(host, "runc_path", value["runc_path"]),
        cni_bin_dir=_absolute_path(host, "cni_bin_dir", value["cni_bin_dir"]),
        containerd_config_path=_absolute_path(host, "containerd_config_path", value["containerd_config_path"]),
        containerd_unit_path=_absolute_path(host, "containerd_unit_path", value["containerd_unit_path"]),
        containerd_deploy_state_dir=_dedicated_directory(host, "containerd_deploy_state_dir", value["containerd_deploy_state_dir"]),
        containerd_staging_dir=_dedicated_directory(host, "containerd_staging_dir", value["containerd_staging_dir"]),
        containerd_config_base=_choice(host, "containerd_config_base", value["containerd_config_base"], ("existing", "default")),
        containerd_systemd_cgroup=_bool(host, "containerd_systemd_cgroup", value["containerd_systemd_cgroup"]),
        containerd_sandbox_image=_optional_text(host, "containerd_sandbox_image", value["containerd_sandbox_image"],
                                                "registry.k8s.io/pause:3.10"),
        containerd_snapshotter=_optional_text(host, "containerd_snapshotter", value["containerd_snapshotter"], "overlayfs"),
        containerd_max_container_log_line_size=_optional_int(
            host, "containerd_max_container_log_line_size", value["containerd_max_container_log_line_size"], -1, 1 << 30),
        containerd_oom_score=_optional_int(host, "containerd_oom_score", value["containerd_oom_score"], -1000, 1000),
        containerd_runtimes=_runtimes(host, "containerd_runtimes", value["containerd_runtimes"]),
        containerd_config_extra=_mapping(host, "containerd_config_extra", value["containerd_config_extra"],
                                         "set containerd_config_extra to a mapping of TOML tables and keys"),
        containerd_registry_config_path=(
            _absolute_path(host, "containerd_registry_config_path", value["containerd_registry_config_path"])
            if value["containerd_registry_config_path"] else ""),
        containerd_registries=_registries(host, "containerd_registries", value["containerd_registries"]),
        containerd_http_proxy=_proxy(host, "containerd_http_proxy", value["containerd_http_proxy"], "http://proxy:3128"),
        containerd_https_proxy=_proxy(host, "containerd_https_proxy", value["containerd_https_proxy"], "http://proxy:3128"),
        containerd_no_proxy=_proxy(host, "containerd_no_proxy", value["containerd_no_proxy"], "localhost,127.0.0.1,.svc"),
        containerd_limit_nofile=_limit_nofile(host, "containerd_limit_nofile", value["containerd_limit_nofile"]),
        containerd_ready_timeout=_positive_int(host, "containerd_ready_timeout", value["containerd_ready_timeout"]),
        containerd_verify=_bool(host, "containerd_verify", value["containerd_verify"]),
    )


def for_host(host) -> "Settings":
    """Settings of a pyinfra host (inventory, group and --data values over DEFAULTS)."""
    return resolve(host.name, {key: host.data.get(key, default) for key, default in DEFAULTS.items()})


def arch_of(host: str, machine: str) -> str:
    """Release arch name from `uname -m`: x86_64 -> amd64, aarch64 -> arm64."""
    try:
        return ARCHES[machine]
    except KeyError:
        raise DataError(
            host, "(host architecture)", f"is {machine!r}; containerd releases exist for amd64 and arm64 only",
            "deploy to x86_64 or aarch64 hosts, or leave this host out of the inventory",
        ) from None

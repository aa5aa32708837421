"""Every data key the deploy reads, declared once in `KEYS`: its default, its check, and its row
in the data table of docs/data.md (`python -m containerd_deploy.data.settings` prints the table).

Inventory data, group_data/ files and `--data key=value` override these defaults (pyinfra's
usual precedence). `resolve()` turns one host's raw data into a validated `Settings`, before
any operation touches the host; a bad value raises `DataError`, naming the host, the key and
the fix.
"""

import difflib
import json
import posixpath
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from packaging.version import Version

from containerd_deploy.data import hooks, images, registries
from containerd_deploy.data.values import (
    DataError,
    control_characters,
    is_system_tree,
    normal_path,
    path_problem,
    redact_url,
    url_problem,
)

# Release lines this deploy knows how to configure (config schema v2 for 1.x, v3+ for 2.x).
SUPPORTED_CONTAINERD = (Version("1.6"), Version("3"))
SUPPORTED_RUNC = (Version("1.1"), Version("2"))
SUPPORTED_CNI_PLUGINS = (Version("1.0"), Version("2"))
SUPPORTED_CRICTL = (Version("1.20"), Version("2"))
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# ASCII digits only: Python's \d also matches other scripts' digits, which no release has.
VERSION = re.compile(r"^v?([0-9]+\.[0-9]+\.[0-9]+)$")


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
    containerd_images: tuple
    containerd_image_archives: tuple
    containerd_images_sandbox: bool
    containerd_snapshotter: str | None
    containerd_max_container_log_line_size: int | None
    containerd_oom_score: int | None
    containerd_restrict_oom_score_adj: bool | None
    containerd_runtimes: tuple
    containerd_nvidia_runtime: bool
    containerd_nvidia_runtime_path: str
    containerd_default_runtime: str | None
    containerd_enable_cdi: bool | None
    containerd_cdi_spec_dirs: tuple | None
    containerd_config_extra: dict
    containerd_registry_config_path: str
    containerd_registries: dict
    containerd_http_proxy: str | None
    containerd_https_proxy: str | None
    containerd_no_proxy: str | None
    containerd_limit_nofile: str | None
    containerd_ready_timeout: int
    containerd_verify: bool
    containerd_verify_interval: int
    containerd_report: str
    containerd_rollback: bool
    containerd_restart_hook_before: tuple
    containerd_restart_hook_after: tuple
    containerd_restart_hook_timeout: int


def parse_version(host: str, key: str, value, supported: tuple[Version, Version]) -> Version:
    # `--data containerd_version=2.0` arrives as the float 2.0: compare its text.
    text = str(value).strip()
    match = VERSION.match(text)
    low, high = supported
    fix = f"set {key} to a release number such as {low.major}.{low.minor}.0 (X.Y.Z, no 'latest')"
    if not match:
        raise DataError(host, key, f"is {value!r}, not a release version", fix)
    version = Version(match.group(1))  # the pattern admits only valid versions
    if not low <= version < high:
        raise DataError(host, key, f"is {version}, outside the supported {low}.x to <{high} releases", fix)
    return version


def _optional_version(host: str, key: str, value, supported: tuple[Version, Version]) -> Version | None:
    return None if value in (None, "", False) else parse_version(host, key, value, supported)


COMPONENT_NAMES = ("containerd", "runc", "cni_plugins", "crictl")


def _components(host: str, key: str, value) -> tuple:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or any(item not in COMPONENT_NAMES for item in items):
        raise DataError(
            host,
            key,
            f"is {value!r}, not a list of component names",
            f"list some of {', '.join(COMPONENT_NAMES)} (or leave it empty)",
        )
    return tuple(items)


def _cache_dir(host: str, key: str, value) -> str:
    """A directory on the controller (`~` allowed)."""
    if not isinstance(value, str) or not value.strip() or control_characters(value):
        raise DataError(
            host,
            key,
            f"is {value!r}, not a directory",
            "set it to a directory on the controller, e.g. ~/.cache/containerd-deploy/artifacts",
        )
    return posixpath.expanduser(value.strip())


def _sha256(host: str, key: str, value) -> str | dict | None:
    """A sha256, or a mapping of arch to one."""
    fix = (
        f"set {key} to the 64-character lowercase hex sha256 from the release's .sha256sum file, a mapping "
        'of arch to it ({"amd64": …, "arm64": …}), or a mapping of version to either ({"1.7.24": …})'
    )
    if value in (None, ""):
        return None
    if isinstance(value, Mapping):
        for arch, digest in value.items():
            if arch not in ("amd64", "arm64"):
                raise DataError(host, key, f"has an entry for {arch!r}, not amd64 or arm64", fix)
            _sha256(host, key, digest)
        return dict(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # pyinfra's --data reads a checksum of digits as a number: its leading zeros are gone.
        raise DataError(
            host,
            key,
            f"is the number {value!r}, not a sha256 (--data reads digits as a number)",
            f"quote it as JSON text: --data '{key}=\"<64 hex digits>\"'",
        )
    if not isinstance(value, str) or not SHA256.match(value):
        raise DataError(host, key, f"is {value!r}, not a sha256", fix)
    return value


def by_version(value) -> bool:
    """Whether a checksum value is a mapping of release version to checksum."""
    return isinstance(value, Mapping) and bool(value) and all(VERSION.match(str(name)) for name in value)


def _checksum(host: str, key: str, value, version: Version | None) -> str | dict | None:
    """The checksum data gives for `version`: a sha256 or a mapping of arch to one, as given, or
    from a mapping of version to either, its entry for `version` (None when it has none: a
    checksum is never applied to a version it was not given for)."""
    if not by_version(value):
        return _sha256(host, key, value)
    entries = {Version(VERSION.match(str(name)).group(1)): entry for name, entry in value.items()}  # type: ignore[union-attr]
    for entry in entries.values():
        _sha256(host, key, entry)
    return _sha256(host, key, entries.get(version)) if version is not None else None


def _controller_file(host: str, key: str, value) -> str:
    """A file on the controller (`~` allowed), or "" for none."""
    if value is None or value is False or value == "":
        return ""
    if not isinstance(value, str) or not value.strip() or control_characters(value) or value.endswith("/"):
        raise DataError(
            host,
            key,
            f"is {value!r}, not a file",
            "set it to a file on the controller, e.g. ~/containerd-deploy-report.json (or leave it unset)",
        )
    return posixpath.expanduser(value.strip())


def _absolute_path(host: str, key: str, value, example: str | None = None) -> str:
    """An absolute path (``values.path_problem``), normalized; never `/` itself."""
    problem = path_problem(value)
    if problem:
        if problem == "not an absolute path":
            shown = repr(value)
        elif problem == "not a path of its own":  # as the deploy would use it: `/` for `//`
            shown = repr(normal_path(value))
        else:  # too long to show whole
            shown = f"{normal_path(value)[:80]!r}…"
        raise DataError(
            host,
            key,
            f"is {shown}, {problem}",
            f"set {key} to an absolute path such as {example or DEFAULTS[key]}",
        )
    return normal_path(value)


def _dedicated_directory(host: str, key: str, value) -> str:
    """A directory the deploy owns outright (made root-only, emptied, removed): no system tree."""
    path = _absolute_path(host, key, value)
    if is_system_tree(path):
        raise DataError(
            host,
            key,
            f"is {path!r}, a directory of the operating system (or one holding one), "
            "which the deploy would make root-only and empty",
            f"set {key} to a directory of its own, such as {DEFAULTS[key]}",
        )
    return path


def _url(host: str, key: str, url: str, allow_file: bool, shown) -> None:
    """Refuse a URL that is not http(s) (or file://, when allowed), holds credentials, spaces or
    control characters, or could be read as an option (a leading -)."""
    schemes = ("https", "http", "file") if allow_file else ("https", "http")
    fix = f"set {key} to an {' or '.join(s + '://' for s in schemes)} URL without spaces or credentials" + (
        "" if allow_file else " (file:// URLs need artifact_allow_file_urls=true)"
    )
    problem = url_problem(url, schemes)
    if problem and problem != "holds credentials":
        raise DataError(
            host, key, f"is {shown!r}, {'which ' if problem == 'names no host' else ''}{problem}", fix
        )
    if problem:
        # Credentials would travel in the node's command lines and land in its manifests.
        raise DataError(
            host,
            key,
            f"is {shown!r}, which holds credentials",
            "give the mirror credentials-free read access from the nodes (or the controller, "
            "with artifact_source=controller), e.g. by network; URLs with user:password are not "
            "supported",
        )


def _mirror(host: str, key: str, value, allow_file: bool) -> str:
    mirror = str(value).rstrip("/")
    _url(host, key, mirror, allow_file, redact_url(mirror))
    return mirror


def _url_template(host: str, key: str, value, mirror: str, allow_file: bool) -> str:
    # Sample values, to see that the template fills and makes a URL: any version and arch would do.
    fields = {"mirror": mirror, "version": "1.0.0", "arch": "amd64"}  # pragma: no mutate
    try:
        url = str(value).format(**fields)
    except (KeyError, IndexError, ValueError, AttributeError) as error:
        raise DataError(
            host,
            key,
            f"is {redact_url(str(value))!r}, which is not a valid template ({error})",
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


def _seconds(host: str, key: str, value, least: int) -> int:
    # Digits only: int() would also take " 5", "+5" and "5_0".
    whole = isinstance(value, int) and not isinstance(value, bool) or re.fullmatch(r"[0-9]+", str(value))
    if not whole or int(value) < least:
        kind = "a positive" if least else "a whole"
        raise DataError(
            host, key, f"is {value!r}, not {kind} number of seconds", f"set {key} to e.g. {DEFAULTS[key]}"
        )
    return int(value)


def _positive_int(host: str, key: str, value) -> int:
    return _seconds(host, key, value, 1)


def _seconds_or_zero(host: str, key: str, value) -> int:
    return _seconds(host, key, value, 0)


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
        raise DataError(
            host, key, f"is {shown!r}, not a single-line value without spaces", f"set {key} to e.g. {example}"
        )
    if key != "containerd_no_proxy" and url_problem(value, ("http", "https", "socks5"), credentials=True):
        raise DataError(host, key, f"is {shown!r}, not a proxy URL", f"set {key} to e.g. {example}")
    return value


def has_credentials(url: str | None) -> bool:
    return bool(url) and "@" in urllib.parse.urlsplit(url).netloc


def _optional_int(host: str, key: str, value, low: int, high: int) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DataError(
            host, key, f"is {value!r}", f"set {key} to a whole number from {low} to {high}, or leave it unset"
        )
    return value


def _limit_nofile(host: str, key: str, value) -> str | None:
    if value in (None, ""):
        return None
    text = str(value) if not isinstance(value, bool) else ""
    fix = f"set {key} to a number, SOFT:HARD with SOFT <= HARD, or infinity (systemd's LimitNOFILE)"
    match = re.fullmatch(r"([0-9]+|infinity)(?::([0-9]+|infinity))?", text)
    if not match:
        raise DataError(host, key, f"is {value!r}", fix)
    soft, hard = (
        float("inf") if part == "infinity" else int(part) for part in (match[1], match[2] or match[1])
    )
    if soft > hard or not 0 < soft:
        raise DataError(host, key, f"is {value!r}, a soft limit above its hard limit (or zero)", fix)
    return text


# Handler names that promise a sandbox, and the shim that gives it (Kata Containers, gVisor).
SANDBOX_RUNTIME_TYPES = {
    "kata": "io.containerd.kata.v2",
    "gvisor": "io.containerd.runsc.v1",
    "runsc": "io.containerd.runsc.v1",
}


def sandbox_runtime_type(name: str) -> str | None:
    """The shim a handler called `name` needs to be the sandbox it is named for (`kata`,
    `kata-qemu`, `gvisor`, `runsc`, …), or None."""
    return SANDBOX_RUNTIME_TYPES.get(re.split(r"[-_.]", name.lower(), maxsplit=1)[0])


def _config_extra(host: str, key: str, value, raw: Mapping) -> dict:
    from containerd_deploy.data.config_toml import extra_problem

    extra = _mapping(host, key, value, "set containerd_config_extra to a mapping of TOML tables and keys")
    problem = extra_problem(extra, hosts_toml=bool(raw["containerd_registry_config_path"]))
    if problem:
        raise DataError(host, key, problem, "take it out of containerd_config_extra")
    return extra


def _runtimes(host: str, key: str, value) -> tuple:
    from containerd_deploy.data.config_toml import Runtime

    fix = (
        f"set {key} to a list of mappings with name, and optionally runtime_type, binary_name "
        'and options, e.g. [{"name": "crun", "binary_name": "/usr/bin/crun"}]'
    )
    if not isinstance(value, (list, tuple)):
        raise DataError(host, key, f"is {value!r}, not a list", fix)
    runtimes = []
    for entry in value:
        if not isinstance(entry, Mapping) or not re.fullmatch(r"[A-Za-z0-9_.-]+", str(entry.get("name", ""))):
            raise DataError(
                host, key, f"has the entry {entry!r}, which needs a name of letters, digits, . _ -", fix
            )
        unknown = set(entry) - {"name", "runtime_type", "binary_name", "options"}
        if unknown:
            raise DataError(host, key, f"has unknown fields {sorted(unknown)} in {entry['name']!r}", fix)
        if entry["name"] == "runc":
            raise DataError(
                host, key, "redefines 'runc', which the deploy owns", "give the extra runtime another name"
            )
        if not isinstance(entry.get("options", {}), Mapping):
            raise DataError(host, key, f"has non-mapping options in {entry['name']!r}", fix)
        if any(option is None for option in entry.get("options", {}).values()) or any(
            entry.get(field, "") is None for field in ("runtime_type", "binary_name")
        ):
            raise DataError(host, key, f"has no value (None) for a field of {entry['name']!r}", fix)
        sandbox = sandbox_runtime_type(entry["name"])
        if sandbox and "runtime_type" not in entry:
            # Without it the handler is runc's: pods asking for this RuntimeClass run unsandboxed.
            raise DataError(
                host,
                key,
                f"has {entry['name']!r} without a runtime_type, which would make it a runc handler: "
                "pods asking for it would run without the sandbox its name promises",
                f'give it the sandbox\'s shim, e.g. {{"name": "{entry["name"]}", "runtime_type": "{sandbox}"}}',
            )
        runtimes.append(
            Runtime(
                entry["name"],
                entry.get("runtime_type", "io.containerd.runc.v2"),
                entry.get("binary_name"),
                dict(entry.get("options", {})),
            )
        )
    return tuple(runtimes)


NVIDIA_HANDLER = "nvidia"
# containerd's own CDI directories (its default cdi_spec_dirs).
CDI_SPEC_DIRS_EXAMPLE = '["/etc/cdi", "/var/run/cdi"]'
CDI_SINCE = Version("1.7")


def _nvidia_runtime(host: str, key: str, value, raw: Mapping) -> bool:
    enabled = _bool(host, key, value)
    declared = raw["containerd_runtimes"] if isinstance(raw["containerd_runtimes"], (list, tuple)) else []
    if enabled and any(
        isinstance(entry, Mapping) and entry.get("name") == NVIDIA_HANDLER for entry in declared
    ):
        raise DataError(
            host,
            key,
            f"is true and containerd_runtimes also defines {NVIDIA_HANDLER!r}",
            f"keep one: take the {NVIDIA_HANDLER!r} entry out of containerd_runtimes (the preset writes it), "
            "or set containerd_nvidia_runtime to false",
        )
    return enabled


def _default_runtime(host: str, key: str, value, raw: Mapping) -> str | None:
    """A handler this deploy configures: runc, one of containerd_runtimes, or the nvidia preset's."""
    if value in (None, ""):
        return None
    names = [
        "runc",
        *(runtime.name for runtime in _runtimes(host, "containerd_runtimes", raw["containerd_runtimes"])),
    ]
    if _bool(host, "containerd_nvidia_runtime", raw["containerd_nvidia_runtime"]):
        names.append(NVIDIA_HANDLER)
    if value not in names:
        raise DataError(
            host,
            key,
            f"is {value!r}, which is not a runtime handler this deploy configures ({', '.join(names)})",
            "name one of those, add the handler to containerd_runtimes (for nvidia: set containerd_nvidia_runtime "
            "to true), or unset it to leave the config's default_runtime_name as it is",
        )
    return value


def _needs_cdi(host: str, key: str, raw: Mapping) -> None:
    version = parse_version(host, "containerd_version", raw["containerd_version"], SUPPORTED_CONTAINERD)
    if version < CDI_SINCE:
        raise DataError(
            host,
            key,
            f"is set, but containerd {version} has no CDI support (it came in {CDI_SINCE})",
            f"unset {key}, or set containerd_version to {CDI_SINCE}.0 or later",
        )


def _enable_cdi(host: str, key: str, value, raw: Mapping) -> bool | None:
    if value in (None, ""):
        return None
    enabled = _bool(host, key, value)
    _needs_cdi(host, key, raw)
    return enabled


def _optional_bool(host: str, key: str, value) -> bool | None:
    return None if value in (None, "") else _bool(host, key, value)


def _cdi_spec_dirs(host: str, key: str, value, raw: Mapping) -> tuple | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(
            host,
            key,
            f"is {value!r}, not a list of directories",
            f"set {key} to a list of absolute paths, e.g. {CDI_SPEC_DIRS_EXAMPLE}, or unset it",
        )
    directories = tuple(_absolute_path(host, key, entry, "/etc/cdi") for entry in value)
    _needs_cdi(host, key, raw)
    return directories


def runtime_handlers(settings: "Settings") -> tuple:
    """Every extra runtime handler the deploy writes: containerd_runtimes, then the nvidia preset's."""
    from containerd_deploy.data.config_toml import Runtime

    preset = (
        (Runtime(NVIDIA_HANDLER, binary_name=settings.containerd_nvidia_runtime_path),)
        if settings.containerd_nvidia_runtime
        else ()
    )
    return settings.containerd_runtimes + preset


def _images(host: str, key: str, value) -> tuple:
    return images.parse(host, value)


def _image_archives(host: str, key: str, value) -> tuple:
    return images.parse_archives(host, value)


def _registries(host: str, key: str, value) -> dict:
    return registries.parse(host, value)


def _mapping(host: str, key: str, value, fix: str) -> dict:
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping):
        raise DataError(host, key, f"is {value!r}, not a mapping", fix)
    return dict(value)


def _optional_absolute_path(host: str, key: str, value) -> str:
    return _absolute_path(host, key, value) if value else ""


# Each key's parser: (host, key, value, raw) -> the validated value, or DataError. `raw` holds
# every key's unparsed value, for the few keys that depend on another.
Parser = Callable[[str, str, Any, Mapping], Any]

# The factories below run once, at import, to build KEYS; mutmut activates a mutant only while a
# test runs, so it cannot judge them (`no mutate`). What they wrap is tested through every key.


def _plain(parse: Callable[[str, str, Any], Any]) -> Parser:
    return lambda host, key, value, raw: parse(host, key, value)  # pragma: no mutate


def _one_of(*choices: str) -> Parser:
    return lambda host, key, value, raw: _choice(host, key, value, choices)  # pragma: no mutate


def _release(supported: tuple[Version, Version]) -> Parser:
    return lambda host, key, value, raw: parse_version(host, key, value, supported)  # pragma: no mutate


def _optional_release(supported: tuple[Version, Version]) -> Parser:
    return lambda host, key, value, raw: _optional_version(host, key, value, supported)  # pragma: no mutate


def _checksum_of(component: str, supported: tuple[Version, Version]) -> Parser:
    return lambda host, key, value, raw: _checksum(  # pragma: no mutate
        host,
        key,
        value,
        _optional_version(host, f"{component}_version", raw[f"{component}_version"], supported),
    )


def _text_like(example: str) -> Parser:
    return lambda host, key, value, raw: _optional_text(host, key, value, example)  # pragma: no mutate


def _int_between(low: int, high: int) -> Parser:
    return lambda host, key, value, raw: _optional_int(host, key, value, low, high)  # pragma: no mutate


def _proxy_like(example: str) -> Parser:
    return lambda host, key, value, raw: _proxy(host, key, value, example)  # pragma: no mutate


def _mapping_of(fix: str) -> Parser:
    return lambda host, key, value, raw: _mapping(host, key, value, fix)  # pragma: no mutate


def _allow_file(host: str, raw: Mapping) -> bool:
    return _bool(host, "artifact_allow_file_urls", raw["artifact_allow_file_urls"])


def _mirror_key(host: str, key: str, value, raw: Mapping) -> str:
    return _mirror(host, key, value, _allow_file(host, raw))


def _url_template_key(host: str, key: str, value, raw: Mapping) -> str:
    allow_file = _allow_file(host, raw)
    return _url_template(
        host, key, value, _mirror(host, "artifact_mirror", raw["artifact_mirror"], allow_file), allow_file
    )


@dataclass(frozen=True)
class Key:
    """One data key, declared once: its default, its parser, and its row in docs/data.md."""

    default: Any
    parse: Parser
    doc: str
    shown: str | None = None  # the default column of docs/data.md, when the default alone says too little

    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        if isinstance(self.default, (bool, list, dict)):
            return f"`{json.dumps(self.default)}`"
        return f"`{self.default}`"


_PROXY_DOC = (
    " for containerd, in the drop-in `containerd.service.d/http-proxy.conf` (removed when all are unset); "
    "values are escaped for systemd (`%` → `%%`, quotes), so a percent-encoded password reaches containerd "
    "as typed; a proxy URL with credentials makes the drop-in 0600 and is shown as `user:***@` in messages"
)

# Every data key the deploy reads, in the order docs/data.md lists them (and they are checked).
KEYS: dict[str, Key] = {
    "containerd_state": Key(
        "present",
        _one_of("present", "absent", "purged"),
        doc="`present`: a containerd node; `absent`: stop and disable containerd (and what its cgroup still runs) and remove what this deploy installed — release files by their manifests, unit, drop-in, config.toml, its hosts.toml files, crictl.yaml — and nothing else; `purged`: `absent`, and containerd's `root`/`state` directories (images, snapshots, containers) too — only directories of containerd's own: containerd's defaults, or a `root`/`state` in config.toml that holds nothing but containerd's own layout (its `io.containerd.*` directories, sockets, `tmpmounts`, …); one that holds anything else, is or holds a system tree or a path the deploy manages, has `..`, or is on a path another user could change or through a symbolic link is refused before any change",
    ),
    "containerd_distro_package": Key(
        "refuse",
        _one_of("refuse", "remove"),
        doc="a containerd installed by the node's package manager (Debian/Ubuntu `containerd`, `docker.io`'s, Docker's `containerd.io`, Fedora/RHEL's): `refuse` stops the run before any change, naming the package; `remove` removes it (`dpkg --remove` / `rpm --erase`, which stop its service) once the release files are fetched and verified. Its conffiles stay, so a packaged `config.toml` is the starting config; a package that depends on it (e.g. `docker.io`) makes the removal fail with nothing removed",
    ),
    "containerd_version": Key(
        "2.2.1",
        _release(SUPPORTED_CONTAINERD),
        doc="containerd release to install (X.Y.Z; 1.6.x to 2.x; [pinned versions](artifacts.md), the install guide's is 1.7.11)",
    ),
    "containerd_sha256": Key(
        None,
        _checksum_of("containerd", SUPPORTED_CONTAINERD),
        shown="none (from `files/checksums.toml`)",
        doc='sha256 of the release tarball, for versions not in the table: `{"<version>": "<sha256>"}` (or `{"<version>": {"amd64": …, "arm64": …}}`), used only for that version; a plain string (or `{"amd64": …, "arm64": …}`) applies to `containerd_version` and must be set in the same place (the same `--data`, host or group), else it is refused',
    ),
    "runc_version": Key(
        "1.3.4",
        _release(SUPPORTED_RUNC),
        doc="runc release to install (X.Y.Z; 1.1.x and later 1.x; the guide's is 1.1.11)",
    ),
    "runc_sha256": Key(
        None,
        _checksum_of("runc", SUPPORTED_RUNC),
        shown="none (from `files/checksums.toml`)",
        doc="sha256 of `runc.<arch>`, as for `containerd_sha256`",
    ),
    "cni_plugins_version": Key(
        None,
        _optional_release(SUPPORTED_CNI_PLUGINS),
        shown="unset (not installed)",
        doc="CNI plugins release to install into `cni_bin_dir`; unsetting it later removes exactly the files it installed",
    ),
    "cni_plugins_sha256": Key(
        None,
        _checksum_of("cni_plugins", SUPPORTED_CNI_PLUGINS),
        shown="none (from `files/checksums.toml`)",
        doc="sha256 of `cni-plugins-linux-<arch>-v<version>.tgz`, as for `containerd_sha256`",
    ),
    "crictl_version": Key(
        None,
        _optional_release(SUPPORTED_CRICTL),
        shown="unset (not installed)",
        doc="crictl release to install into `containerd_bin_dir`, with `/etc/crictl.yaml` pointing at containerd's socket; unsetting it removes both",
    ),
    "crictl_sha256": Key(
        None,
        _checksum_of("crictl", SUPPORTED_CRICTL),
        shown="none (from `files/checksums.toml`)",
        doc="sha256 of `crictl-v<version>-linux-<arch>.tar.gz`, as for `containerd_sha256`",
    ),
    "artifact_mirror": Key(
        "https://github.com",
        _mirror_key,
        doc="base URL holding upstream's release layout (`…/containerd/containerd/releases/download/v<version>/…`)",
    ),
    "containerd_download_url": Key(
        "{mirror}/containerd/containerd/releases/download/v{version}/containerd-{version}-linux-{arch}.tar.gz",
        _url_template_key,
        doc="template of the containerd tarball URL (`{mirror}`, `{version}`, `{arch}`)",
    ),
    "runc_download_url": Key(
        "{mirror}/opencontainers/runc/releases/download/v{version}/runc.{arch}",
        _url_template_key,
        doc="template of the runc URL",
    ),
    "cni_plugins_download_url": Key(
        "{mirror}/containernetworking/plugins/releases/download/v{version}/cni-plugins-linux-{arch}-v{version}.tgz",
        _url_template_key,
        doc="template of the CNI plugins URL",
    ),
    "crictl_download_url": Key(
        "{mirror}/kubernetes-sigs/cri-tools/releases/download/v{version}/crictl-v{version}-linux-{arch}.tar.gz",
        _url_template_key,
        doc="template of the crictl URL",
    ),
    "artifact_source": Key(
        "node",
        _one_of("node", "controller"),
        doc="`node`: each node downloads the URLs itself; `controller`: the controller downloads each file once into `artifact_cache_dir`, verifies it, and uploads it to every node over SSH (nodes need no route to the mirror); the node checks the sha256 again either way",
    ),
    "artifact_allow_file_urls": Key(
        False,
        _plain(_bool),
        doc="let `artifact_mirror` and the `*_download_url` templates be `file://` URLs (files on the node, or on the controller with `artifact_source=controller`); otherwise only `https://` and `http://` URLs are accepted, none with credentials, spaces or control characters",
    ),
    "artifact_cache_dir": Key(
        "~/.cache/containerd-deploy/artifacts",
        _plain(_cache_dir),
        doc="the controller's cache for `artifact_source=controller` (files named by their sha256)",
    ),
    "artifact_trust_mirror_checksums": Key(
        [],
        _plain(_components),
        doc='components (e.g. `["containerd"]`) whose checksum, when neither `files/checksums.toml` nor data has one, the controller may read from the `.sha256sum` published next to the file — an explicit opt-in to trusting the file\'s own source',
    ),
    "containerd_bin_dir": Key(
        "/usr/local/bin", _plain(_absolute_path), doc="where the tarball's `bin/` files go"
    ),
    "runc_path": Key("/usr/local/sbin/runc", _plain(_absolute_path), doc="where runc goes"),
    "cni_bin_dir": Key("/opt/cni/bin", _plain(_absolute_path), doc="where the CNI plugins go"),
    "containerd_config_path": Key(
        "/etc/containerd/config.toml", _plain(_absolute_path), doc="containerd's config file"
    ),
    "containerd_unit_path": Key(
        "/etc/systemd/system/containerd.service", _plain(_absolute_path), doc="the systemd unit file"
    ),
    "containerd_deploy_state_dir": Key(
        "/var/lib/containerd-deploy",
        _plain(_dedicated_directory),
        doc="manifests of what this deploy installed (versions, file checksums), and the release kept for a rollback; a directory of its own (no system tree), root's alone all the way up (refused before any change otherwise)",
    ),
    "containerd_staging_dir": Key(
        "/var/cache/containerd-deploy",
        _plain(_dedicated_directory),
        doc="where downloads wait until verified (emptied after each install); a directory of its own, root's alone all the way up (another user's, one under a directory others can write such as /var/tmp, or a symbolic link on the way is refused before any change), made 0700 before use, so no other local user can swap a verified file",
    ),
    "containerd_config_base": Key(
        "existing",
        _one_of("existing", "default"),
        doc="`existing`: edit the node's config.toml in place, keeping every other setting and comment; `default`: start from the installed binary's `containerd config default` each run (drops edits made outside this deploy)",
    ),
    "containerd_systemd_cgroup": Key(
        True,
        _plain(_bool),
        doc="`SystemdCgroup` of the runc runtime (and of runc-type extra runtimes); must match the kubelet's `cgroupDriver`",
    ),
    "containerd_sandbox_image": Key(
        None,
        _text_like("registry.k8s.io/pause:3.10"),
        shown="unset (containerd's default)",
        doc="the pause image: 1.x `sandbox_image`, 2.x `pinned_images.sandbox`",
    ),
    "containerd_images": Key(
        [],
        _plain(_images),
        doc="images the controller brings to each node that lacks them, for nodes with no route to a registry: references pinned by digest (`registry/path:tag@sha256:…`), each checked to be for the node's platform. The controller fetches each once per node arch into `artifact_cache_dir` with `skopeo` (its own containers configuration: `skopeo login`, registries.conf, certs.d), before the node is changed, uploads it over SSH, checks it again on the node and imports it into the `k8s.io` namespace under the name a CRI pull gives it (`registry/path@sha256:…`: pods ask for it as listed, or by digest). With `artifact_source=controller` the sandbox image comes too (`containerd_images_sandbox`). A node that has the name gets nothing; one taken off the list is left on the node",
    ),
    "containerd_image_archives": Key(
        [],
        _plain(_image_archives),
        doc="image archives on the controller the controller brings to each node that lacks their images, as `containerd_images`: a list of `{path, sha256}` (an OCI archive whose index names each image, `io.containerd.image.name` or a whole `org.opencontainers.image.ref.name`, or a docker archive with `RepoTags`). Each is checked against its sha256 on the controller before it is uploaded and on the node before it is imported into the `k8s.io` namespace under the names it holds; for the node's platform, as the operator made it. A node that has every name gets nothing",
    ),
    "containerd_images_sandbox": Key(
        True,
        _plain(_bool),
        doc="with `artifact_source=controller`, the controller brings the sandbox image the config names (`containerd_sandbox_image`, `containerd_config_extra`, or where it names none the one the containerd release uses: known for 1.6 to 2.3) as it brings `containerd_images` — by its tag alone unless the config names it by digest (`…:3.10@sha256:…`) — labelled pinned as the CRI's own pull of it is (1.7 and later), so a node with no route to a registry starts pods and the verify step runs its container on a fresh node; a controller that cannot fetch it stops the run before any change. `false`: leave it to the node (its registries)",
    ),
    "containerd_snapshotter": Key(
        None, _text_like("overlayfs"), shown="unset", doc="the CRI snapshotter (e.g. `overlayfs`, `native`)"
    ),
    "containerd_max_container_log_line_size": Key(
        None,
        _int_between(-1, 1 << 30),
        shown="unset",
        doc="CRI `max_container_log_line_size` (bytes; -1 for no limit)",
    ),
    "containerd_oom_score": Key(
        None,
        _int_between(-1000, 1000),
        shown="unset",
        doc="the daemon's `oom_score` (the unit also sets `OOMScoreAdjust=-999`)",
    ),
    "containerd_restrict_oom_score_adj": Key(
        None,
        _plain(_optional_bool),
        shown="unset (the config's: false)",
        doc="CRI `restrict_oom_score_adj`: no container's `oom_score_adj` below containerd's own. For a containerd that cannot lower it (no `CAP_SYS_RESOURCE`: inside LXC or systemd-nspawn), where every pod fails with `failed to update /proc/self/oom_score_adj`",
    ),
    "containerd_runtimes": Key(
        [],
        _plain(_runtimes),
        doc="extra CRI runtime handlers: a list of `{name, runtime_type, binary_name, options}`; `runtime_type` defaults to `io.containerd.runc.v2`, for which `binary_name` names a runc-compatible binary (crun, nvidia-container-runtime); a handler named for a sandbox (`kata…`, `gvisor`, `runsc`) must give its `runtime_type`. Each handler's binary must be on the node (checked before any change). Taking one out of the list leaves its table in the config",
    ),
    "containerd_nvidia_runtime": Key(
        False,
        _nvidia_runtime,
        doc="the GPU preset: add the `nvidia` handler (runc shim, `BinaryName` = `containerd_nvidia_runtime_path`, the cgroup driver of runc); the NVIDIA Container Toolkit must be installed. Make it the default with `containerd_default_runtime: nvidia`. See [GPU nodes](gpu.md)",
    ),
    "containerd_nvidia_runtime_path": Key(
        "/usr/bin/nvidia-container-runtime",
        _plain(_absolute_path),
        doc="the preset's `BinaryName`: where the toolkit installed `nvidia-container-runtime`",
    ),
    "containerd_default_runtime": Key(
        None,
        _default_runtime,
        shown="unset (the config's, runc by default)",
        doc="`default_runtime_name`: the handler of pods that name none; `runc`, a `containerd_runtimes` name, or `nvidia` with the preset. Unset leaves the config's value as it is (so one set by `nvidia-ctk --set-as-default` stays)",
    ),
    "containerd_enable_cdi": Key(
        None,
        _enable_cdi,
        shown="unset (the config's: off in 1.7, on in 2.x)",
        doc="`enable_cdi` of the CRI plugin (Container Device Interface: devices named in CDI specs, e.g. `nvidia.com/gpu=all`); containerd 1.7 or later",
    ),
    "containerd_cdi_spec_dirs": Key(
        None,
        _cdi_spec_dirs,
        shown="unset (containerd's: `/etc/cdi`, `/var/run/cdi`)",
        doc="`cdi_spec_dirs`: the directories CDI specs are read from, a list of absolute paths; containerd 1.7 or later",
    ),
    "containerd_config_extra": Key(
        {},
        _config_extra,
        doc="any other TOML, as nested mappings, deep-merged last (tables merge, other values replace); what the deploy owns (`version`, `root`, `state`, `imports`, runc's `SystemdCgroup`, the registry `config_path`, the CRI plugin in `disabled_plugins`), a value in place of a table holding it, registry mirrors beside hosts.toml files, and a value of None are refused",
    ),
    "containerd_registry_config_path": Key(
        "/etc/containerd/certs.d",
        _plain(_optional_absolute_path),
        doc='CRI registry `config_path`; `""` leaves it unset. Refused if the config still has old-style `registry.mirrors` (containerd\'s CRI plugin does not load with both)',
    ),
    "containerd_registries": Key(
        {},
        _plain(_registries),
        doc='one `hosts.toml` per registry under `containerd_registry_config_path`, e.g. `{"docker.io": {"mirrors": [{"host": "https://mirror.internal", "capabilities": ["pull", "resolve"], "skip_verify": false, "ca": "/etc/ssl/mirror.pem", "headers": {"Authorization": "Basic …"}}]}}`; optional `server` (default: the registry\'s own). Files with headers are 0600; removed when their registry leaves the data',
    ),
    "containerd_http_proxy": Key(
        None, _proxy_like("http://proxy:3128"), shown="unset", doc="`HTTP_PROXY`" + _PROXY_DOC
    ),
    "containerd_https_proxy": Key(
        None, _proxy_like("http://proxy:3128"), shown="unset", doc="`HTTPS_PROXY`" + _PROXY_DOC
    ),
    "containerd_no_proxy": Key(
        None, _proxy_like("localhost,127.0.0.1,.svc"), shown="unset", doc="`NO_PROXY`" + _PROXY_DOC
    ),
    "containerd_limit_nofile": Key(
        None,
        _plain(_limit_nofile),
        shown="unset (systemd's default)",
        doc="`LimitNOFILE` of the unit (a number, `SOFT:HARD` with SOFT ≤ HARD, or `infinity`; ASCII digits)",
    ),
    "containerd_ready_timeout": Key(
        60, _plain(_positive_int), doc="seconds to wait for containerd to answer after a (re)start"
    ),
    "containerd_verify": Key(
        True,
        _plain(_bool),
        doc="last step of every run: check the running daemon (see [Verify](verify.md)), and run a container when the run changed the node; fail the run, naming each problem, if it falls short; a passing check of an unchanged node is no change",
    ),
    "containerd_verify_interval": Key(
        86400,
        _plain(_seconds_or_zero),
        doc="seconds a full check of the running daemon stands for: a run that changes nothing, on a node whose daemon is the same process this controller last checked in full (same PID, start time and binary, for the same expected version and settings), within this time, checks it from the one question every run asks (it is active with its socket there, runs the unit, config and binary on disk, a kubelet's cgroup driver, the handlers' binaries) instead of asking its version, plugins and effective config again — so a daemon that hangs while it keeps its process is seen at the next full check; the record is kept on the controller (`~/.cache/containerd-deploy/verified`); 0: a full check every run",
    ),
    "containerd_report": Key(
        "",
        _plain(_controller_file),
        shown="unset",
        doc="a file on the controller the end-of-run report is also written to, as JSON (every host of the run: its status — unchanged, changed, restarted, rolled back, failed, refused, unreachable, interrupted, stopped — what changed, the versions restarted from and into, and the verify step's result and whether a container ran; when the run finished, and for a host whose every operation succeeded the version of each component it runs now); written when the run ends, a refused run and Ctrl-C included — but not when no host could be reached (pyinfra stops before the deploy runs; the run exits 1); `~` allowed",
    ),
    "containerd_rollback": Key(
        True,
        _plain(_bool),
        doc="before a run restarts a running containerd, keep the release it runs (files by manifest, config, unit) until the new one answers and passes the verify step; if it does not, put the kept one back, restart once, wait for it to answer, and fail the run naming the host (see [Rolling out to a fleet](rollout.md))",
    ),
    "containerd_restart_hook_before": Key(
        "",
        _plain(hooks.parse_hook),
        doc="a command the controller runs before it changes a node whose containerd this run will restart, e.g. `kubectl drain {host} --ignore-daemonsets --delete-emptydir-data`; a command line (split into arguments, no shell) or a list of arguments; `{host}` is the inventory name, `{address}` what the controller connects to; if it fails or times out, that node is not changed",
        shown="unset",
    ),
    "containerd_restart_hook_after": Key(
        "",
        _plain(hooks.parse_hook),
        doc="a command the controller runs once that node's restarted containerd has answered and passed the verify step, e.g. `kubectl uncordon {host}`; same form as the before hook; not run when the run failed or rolled back",
        shown="unset",
    ),
    "containerd_restart_hook_timeout": Key(
        600,
        _plain(_positive_int),
        doc="seconds each restart hook may take; one still running then is killed (with what it started) and counts as failed",
    ),
}

DEFAULTS: dict = {name: key.default for name, key in KEYS.items()}


def data_table() -> str:
    """The data table of docs/data.md, from KEYS (`python -m containerd_deploy.data.settings` prints it)."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {key.shown_default()} | {key.doc} |" for name, key in KEYS.items()]
    return "\n".join(lines) + "\n"


# A data key that starts as the deploy's keys do (containerd_, runc_, cni_, crictl_, artifact_) is
# the deploy's: one not declared in KEYS is a typo.
KEY_PREFIXES = tuple(sorted({name.split("_")[0] + "_" for name in KEYS}))
# pyinfra's data layers, first wins (pyinfra/api/host.py): where a host's value was set.
GROUP_LAYER = "its groups' data"
DATA_LAYERS = (
    "the deploy",
    "--data",
    "the host's inventory data",
    GROUP_LAYER,
    "the inventory's data for all hosts",
    "the deploy's defaults",
)


def _check_known(host: str, data: Mapping, sources: Mapping[str, str]) -> None:
    unknown = sorted(name for name in data if name.startswith(KEY_PREFIXES) and name not in KEYS)
    if not unknown:
        return
    name = unknown[0]
    where = f" (set in {sources[name]})" if name in sources else ""
    also = f"; nor are {', '.join(unknown[1:])}" if unknown[1:] else ""
    closest = difflib.get_close_matches(name, KEYS, n=1, cutoff=0.8)
    raise DataError(
        host,
        name,
        f"is not a data key of this deploy{where}{also}",
        (f"did you mean {closest[0]}?" if closest else "remove it (docs/data.md lists every key)")
        + "; a name of your own, such as a group_data variable, starts with _",
    )


def _check_checksums_bound(host: str, raw: Mapping, sources: Mapping[str, str]) -> None:
    """A checksum not given by version applies to the version set beside it: one set in
    another place (another --data, host, group, or the default version) is refused."""
    for component in COMPONENT_NAMES:
        key, version_key = f"{component}_sha256", f"{component}_version"
        if raw[key] in (None, "") or by_version(raw[key]) or raw[version_key] in (None, "", False):
            continue
        given, version_from = sources.get(key), sources.get(version_key, DATA_LAYERS[-1])
        if given is not None and given != version_from:
            version = VERSION.match(str(raw[version_key]).strip()).group(1)  # type: ignore[union-attr]
            raise DataError(
                host,
                key,
                f"is set in {given}, but {version_key} ({version}) comes from {version_from}: a checksum "
                "is only used for the version it was given for",
                f'give it by version, {key}={{"{version}": "<sha256>"}}, or set {version_key} and {key} '
                "in the same place",
            )


def resolve(host: str, data: Mapping, sources: Mapping[str, str] | None = None) -> Settings:
    """Validated settings for one host from its data (missing keys take their defaults).
    `sources` names where each key was set (one of DATA_LAYERS), when the data has layers."""
    _check_known(host, data, sources or {})
    raw = {name: data.get(name, key.default) for name, key in KEYS.items()}
    settings = Settings(
        host=host, **{name: key.parse(host, name, raw[name], raw) for name, key in KEYS.items()}
    )
    if sources:
        _check_checksums_bound(host, raw, sources)
    return settings


def data_sources(host) -> dict[str, str]:
    """key -> where a pyinfra host's value of it comes from: a data layer (DATA_LAYERS; a layer is
    a mapping, or a callable giving one, as pyinfra keeps the deploy's defaults), and for group
    data the group (pyinfra merges a host's groups into one layer, the last group's value winning)."""
    sources: dict[str, str] = {}
    for name, layer in zip(DATA_LAYERS, host.data.datas, strict=True):
        for key in layer() if callable(layer) else layer:
            if key not in sources:
                sources[key] = _group_of(host, key) if name == GROUP_LAYER else name
    return sources


def _group_of(host, key: str) -> str:
    for group in reversed(host.groups):
        if key in host.inventory.get_group_data(group):
            return f"the data of group {group}"
    return GROUP_LAYER


def for_host(host) -> "Settings":
    """Settings of a pyinfra host (inventory, group and --data values over DEFAULTS)."""
    return resolve(host.name, host.data.dict(), data_sources(host))


def arch_of(host: str, machine: str) -> str:
    """Release arch name from `uname -m`: x86_64 -> amd64, aarch64 -> arm64."""
    try:
        return ARCHES[machine]
    except KeyError:
        raise DataError(
            host,
            "(host architecture)",
            f"is {machine!r}; containerd releases exist for amd64 and arm64 only",
            "deploy to x86_64 or aarch64 hosts, or leave this host out of the inventory",
        ) from None


if __name__ == "__main__":
    print(data_table(), end="")

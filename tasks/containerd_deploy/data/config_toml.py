"""Edit containerd's config.toml as TOML (tomlkit), never as lines of text.

Pure functions: text in, text out. Everything the deploy does not own (other tables, comments,
ordering, quoting) comes out byte-for-byte as it went in; a value already as wanted is not
rewritten.
"""

import copy
import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field

import tomlkit
from packaging.version import Version
from tomlkit.exceptions import ParseError
from tomlkit.items import Item, Table

_CRI_V2 = ("plugins", "io.containerd.grpc.v1.cri")
# containerd 2.x split the CRI plugin: images (and registries) and runtime got plugin IDs of
# their own (schema 3, kept by 4).
_CRI_IMAGES = ("plugins", "io.containerd.cri.v1.images")
_CRI_RUNTIME = ("plugins", "io.containerd.cri.v1.runtime")

# The sandbox (pause) image containerd uses when its config names none, as `containerd config
# default` prints it: (first release, image), from containerd's source at every release tag
# (pkg/cri/config, internal/cri/config) of the lines this table covers.
DEFAULT_SANDBOX_IMAGES = (
    (Version("1.6.0"), "k8s.gcr.io/pause:3.6"),
    (Version("1.6.9"), "registry.k8s.io/pause:3.6"),
    (Version("1.7.0"), "registry.k8s.io/pause:3.8"),
    (Version("2.0.0"), "registry.k8s.io/pause:3.10"),
    (Version("2.2.0"), "registry.k8s.io/pause:3.10.1"),
    (Version("2.3.0"), "registry.k8s.io/pause:3.10.2"),
)
DEFAULT_SANDBOX_KNOWN_BELOW = Version("2.4")  # a later line's default is not known here


def default_sandbox_image(containerd_version) -> str | None:
    """The sandbox image containerd `containerd_version` uses when its config names none (None:
    a release line this deploy does not know it for)."""
    version = Version(str(containerd_version))
    if version >= DEFAULT_SANDBOX_KNOWN_BELOW:
        return None
    found = [image for first, image in DEFAULT_SANDBOX_IMAGES if first <= version]
    return found[-1] if found else None


# Where each setting lives, by config schema version.
PATHS: dict[str, dict[int, tuple[str, ...]]] = {
    "runtimes": {2: _CRI_V2 + ("containerd", "runtimes"), 3: _CRI_RUNTIME + ("containerd", "runtimes")},
    "sandbox_image": {2: _CRI_V2 + ("sandbox_image",), 3: _CRI_IMAGES + ("pinned_images", "sandbox")},
    "registry": {2: _CRI_V2 + ("registry",), 3: _CRI_IMAGES + ("registry",)},
    "snapshotter": {2: _CRI_V2 + ("containerd", "snapshotter"), 3: _CRI_IMAGES + ("snapshotter",)},
    "max_container_log_line_size": {
        2: _CRI_V2 + ("max_container_log_line_size",),
        3: _CRI_RUNTIME + ("max_container_log_line_size",),
    },
    "restrict_oom_score_adj": {
        2: _CRI_V2 + ("restrict_oom_score_adj",),
        3: _CRI_RUNTIME + ("restrict_oom_score_adj",),
    },
    "default_runtime_name": {
        2: _CRI_V2 + ("containerd", "default_runtime_name"),
        3: _CRI_RUNTIME + ("containerd", "default_runtime_name"),
    },
    # CDI: containerd 1.7 and later (settings refuses these keys for 1.6).
    "disable_apparmor": {2: _CRI_V2 + ("disable_apparmor",), 3: _CRI_RUNTIME + ("disable_apparmor",)},
    "enable_cdi": {2: _CRI_V2 + ("enable_cdi",), 3: _CRI_RUNTIME + ("enable_cdi",)},
    "cdi_spec_dirs": {2: _CRI_V2 + ("cdi_spec_dirs",), 3: _CRI_RUNTIME + ("cdi_spec_dirs",)},
}
for _paths in PATHS.values():
    _paths[4] = _paths[3]
RUNC_OPTIONS_PATH = {schema: runtimes + ("runc", "options") for schema, runtimes in PATHS["runtimes"].items()}
# How disabled_plugins may name the CRI plugins (short name, 1.x and 2.x plugin IDs).
CRI_PLUGIN_IDS = {
    "cri",
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.runtime",
    "io.containerd.cri.v1.images",
}
# The oldest containerd that reads each schema version.
SCHEMA_NEEDS = {2: Version("1.3"), 3: Version("2.0"), 4: Version("2.3")}


class ConfigError(ValueError):
    """The config document cannot be edited safely; the message says why and what to do."""


@dataclass(frozen=True)
class Runtime:
    """An extra CRI runtime handler (e.g. crun, nvidia-container-runtime, kata)."""

    name: str
    runtime_type: str = "io.containerd.runc.v2"
    binary_name: str | None = None  # for runc-compatible binaries, under the runc.v2 shim
    options: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Knobs:
    """What the deploy sets in config.toml; None leaves a setting as the base document has it."""

    systemd_cgroup: bool = True
    sandbox_image: str | None = None
    registry_config_path: str | None = None
    snapshotter: str | None = None
    max_container_log_line_size: int | None = None
    oom_score: int | None = None
    restrict_oom_score_adj: bool | None = None
    runtimes: tuple[Runtime, ...] = ()
    default_runtime: str | None = None
    enable_cdi: bool | None = None
    cdi_spec_dirs: tuple[str, ...] | None = None
    extra: Mapping = field(default_factory=dict)  # merged last, table by table


def _not_toml(error: Exception) -> ConfigError:
    return ConfigError(f"is not valid TOML ({error}); fix or remove the file, the deploy left it as it is")


def parse(text: str) -> tomlkit.TOMLDocument:
    """The document to edit (tomlkit keeps every comment and setting it does not change)."""
    try:
        return tomlkit.parse(text)
    except ParseError as error:
        raise _not_toml(error) from None


def schema_version(document: Mapping, containerd_version: Version) -> int:
    """The document's config schema, checked against the containerd that will read it."""
    version = document.get("version")
    if version is None:
        raise ConfigError(
            "has no `version` key, so containerd reads it as the long-removed version 1 schema; "
            "migrate it with `containerd config migrate` (or move it away to start from defaults)"
        )
    if version not in SCHEMA_NEEDS:
        raise ConfigError(f"declares version = {version}, which this deploy does not know (2, 3 or 4)")
    if containerd_version < SCHEMA_NEEDS[version]:
        raise ConfigError(
            f"declares version = {version}, which containerd {containerd_version} cannot read "
            f"(it needs containerd >= {SCHEMA_NEEDS[version]}); set containerd_config_base=default to rebuild it "
            "from this containerd's `containerd config default` (a rollback from 2.x does this once)"
        )
    return int(version)


def _unwrap(value):
    return value.unwrap() if isinstance(value, Item) else value


def _table_at(document, path: tuple[str, ...]):
    """The table at `path`, creating missing ones (2.0.0-2.0.6 and 2.1.0-2.1.4 omit runc's options)."""
    node = document
    for depth, key in enumerate(path):
        if key not in node:
            node[key] = tomlkit.table()
        node = node[key]
        if not isinstance(node, (Table, tomlkit.TOMLDocument)):
            raise ConfigError(
                f"has a value, not a table, at {'.'.join(path[: depth + 1])}; it must be a table"
            )
    return node


def _indent_like_siblings(table, key: str) -> None:
    """Give an inserted key the indentation of the keys beside it (cosmetic, for humans)."""
    container = table.value if isinstance(table, Table) else table
    for sibling, item in container.body:
        inserted = container.item(key)
        if (
            sibling is not None
            and sibling.key != key
            and not isinstance(item, Table)
            and isinstance(inserted, Item)
        ):
            inserted.trivia.indent = item.trivia.indent
            return


def _already(table, key: str, value) -> bool:
    """`table` (tomlkit's or a plain dict) holds `value` at `key`, of the same type: the one rule
    for "leave it as it is", shared by the edit and by the check that skips editing."""
    current = _unwrap(table.get(key))
    return key in table and type(current) is type(value) and current == value


def _set(document, path: tuple[str, ...], value) -> None:
    """Set the value at `path` (creating tables), leaving it untouched when it already is that."""
    table = _table_at(document, path[:-1])
    key = path[-1]
    if _already(table, key, value):
        return
    inserting = key not in table
    table[key] = value
    if inserting and not isinstance(table[key], Table):
        _indent_like_siblings(table, key)


def _plain_at(node: object, path: tuple[str, ...]):
    """What a plain document holds at `path` (None: nothing there)."""
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def _holds(plain: Mapping, path: tuple[str, ...], value) -> bool:
    """The plain document already has `value` at `path` (as `_set` would leave it)."""
    table = _plain_at(plain, path[:-1])
    return isinstance(table, Mapping) and _already(table, path[-1], value)


def _leaves(prefix: tuple[str, ...], extra: Mapping) -> list[tuple[tuple[str, ...], object]]:
    """A deep merge as the values it sets: tables merge key by key; any other value replaces
    what is there."""
    leaves: list[tuple[tuple[str, ...], object]] = []
    for key, value in extra.items():
        if isinstance(value, Mapping):
            leaves += _leaves(prefix + (key,), value)
        else:
            leaves.append((prefix + (key,), value))
    return leaves


def _refuse_registry_mirrors(plain: Mapping, schema: int) -> None:
    registry = PATHS["registry"][schema]
    table = _plain_at(plain, registry)
    if isinstance(table, Mapping) and table.get("mirrors"):
        raise ConfigError(
            f"has registry mirrors in [{'.'.join(registry)}.mirrors]; containerd's CRI plugin does not "
            "load when they and config_path are both set. Move them to hosts.toml files (data key "
            "containerd_registries) and delete that table, or set containerd_registry_config_path to ''"
        )


def _cri_disabled_at(document: Mapping) -> list[int]:
    """Where `disabled_plugins` names a CRI plugin (Docker's containerd.io package ships
    `disabled_plugins = ["cri"]`); this deploy makes a kubelet's runtime, so they go."""
    disabled = document.get("disabled_plugins")
    if not isinstance(disabled, list):
        return []
    return [index for index, plugin in enumerate(disabled) if str(plugin) in CRI_PLUGIN_IDS]


# What the deploy sets in config.toml and containerd_config_extra may not (path -> why); keys
# compared without case, as containerd's TOML decoder matches fields.
OWNED_BY_THE_DEPLOY = {
    ("version",): "the schema, which the deploy takes from the file and containerd_version",
    ("root",): "containerd's data directory, which `purged` finds there (edit config.toml itself)",
    ("state",): "containerd's state directory, which `purged` finds there (edit config.toml itself)",
    ("imports",): "other files merged into config.toml, which could set anything the deploy owns",
    **{
        path + ("SystemdCgroup",): "runc's cgroup driver: set containerd_systemd_cgroup"
        for path in RUNC_OPTIONS_PATH.values()
    },
    **{path + ("config_path",): "set containerd_registry_config_path" for path in PATHS["registry"].values()},
}
_OWNED = {tuple(key.lower() for key in path): why for path, why in OWNED_BY_THE_DEPLOY.items()}
# Tables holding what the deploy sets: replaced by a value, what it set there is gone.
_TABLES = {
    tuple(key.lower() for key in path[:end])
    for path in (*OWNED_BY_THE_DEPLOY, *(p for by_schema in PATHS.values() for p in by_schema.values()))
    for end in range(1, len(path))
}
_MIRRORS = {tuple(key.lower() for key in path + ("mirrors",)) for path in PATHS["registry"].values()}


def extra_problem(extra: Mapping, hosts_toml: bool = True, prefix: tuple[str, ...] = ()) -> str | None:
    """Why containerd_config_extra cannot be merged into config.toml (None: it can): it sets
    what the deploy owns, replaces a table holding it, disables the CRI plugin, sets registry
    mirrors beside the hosts.toml files (`hosts_toml`: containerd_registry_config_path is set;
    the CRI plugin does not load with both), or holds a value TOML has not (None)."""
    for key, value in extra.items():
        path = (*prefix, str(key))
        folded = tuple(part.lower() for part in path)
        dotted = ".".join(path)
        if folded in _OWNED:
            return f"sets {dotted}, which the deploy owns ({_OWNED[folded]})"
        if folded in _TABLES and not isinstance(value, Mapping):
            return f"replaces the table {dotted} with {value!r}: the deploy sets keys inside it"
        if hosts_toml and folded in _MIRRORS:
            return (
                f"sets {dotted}, registry mirrors beside containerd_registries' hosts.toml files (use those)"
            )
        if folded == ("disabled_plugins",):
            plugins = value if isinstance(value, (list, tuple)) else [value]
            if any(str(plugin).lower() in CRI_PLUGIN_IDS for plugin in plugins):
                return "disables the CRI plugin in disabled_plugins, which a kubelet needs"
            if not isinstance(value, (list, tuple)):
                return f"sets disabled_plugins to {value!r}, not a list of plugin IDs"
        if isinstance(value, Mapping):
            problem = extra_problem(value, hosts_toml, path)
            if problem:
                return problem
        elif _holds_none(value):
            return f"has no value (None) at {dotted}, which TOML cannot write"
    return None


def _holds_none(value) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_holds_none(item) for item in value)
    if isinstance(value, Mapping):
        return any(_holds_none(item) for item in value.values())
    return value is None


def _edits(schema: int, knobs: Knobs) -> list[tuple[tuple[str, ...], object]]:
    """Every value the knobs set, as (path in `schema`, value), in the order they are set."""
    edits: list[tuple[tuple[str, ...], object]] = [
        (RUNC_OPTIONS_PATH[schema] + ("SystemdCgroup",), knobs.systemd_cgroup)
    ]
    if knobs.sandbox_image is not None:
        edits.append((PATHS["sandbox_image"][schema], knobs.sandbox_image))
    if knobs.registry_config_path:
        edits.append((PATHS["registry"][schema] + ("config_path",), knobs.registry_config_path))
    if knobs.snapshotter is not None:
        edits.append((PATHS["snapshotter"][schema], knobs.snapshotter))
    if knobs.max_container_log_line_size is not None:
        edits.append((PATHS["max_container_log_line_size"][schema], knobs.max_container_log_line_size))
    if knobs.oom_score is not None:
        edits.append((("oom_score",), knobs.oom_score))
    if knobs.restrict_oom_score_adj is not None:
        edits.append((PATHS["restrict_oom_score_adj"][schema], knobs.restrict_oom_score_adj))
    for runtime in knobs.runtimes:
        base = PATHS["runtimes"][schema] + (runtime.name,)
        edits.append((base + ("runtime_type",), runtime.runtime_type))
        options = dict(runtime.options)
        if runtime.binary_name:
            options["BinaryName"] = runtime.binary_name
        if runtime.runtime_type == "io.containerd.runc.v2":
            # A runc-compatible handler must use the same cgroup driver as runc itself.
            options.setdefault("SystemdCgroup", knobs.systemd_cgroup)
        edits += _leaves(base + ("options",), options)
    if knobs.default_runtime is not None:
        edits.append((PATHS["default_runtime_name"][schema], knobs.default_runtime))
    if knobs.enable_cdi is not None:
        edits.append((PATHS["enable_cdi"][schema], knobs.enable_cdi))
    if knobs.cdi_spec_dirs is not None:
        edits.append((PATHS["cdi_spec_dirs"][schema], list(knobs.cdi_spec_dirs)))
    return edits + _leaves((), knobs.extra)


def _as_wanted(plain: Mapping, edits: list[tuple[tuple[str, ...], object]]) -> bool:
    """Editing would change nothing: no CRI plugin disabled, the value each path ends with (the
    last edit of it: containerd_config_extra may override a knob) already there."""
    final = dict(edits)
    return not _cri_disabled_at(plain) and all(_holds(plain, path, value) for path, value in final.items())


def _edited(text: str, edits: list[tuple[tuple[str, ...], object]]) -> str:
    """`text` with the CRI plugins enabled and `edits` set, through tomlkit."""
    document = parse(text)
    for index in reversed(_cri_disabled_at(document)):
        del document["disabled_plugins"][index]
    for path, value in edits:
        _set(document, path, value)
    return tomlkit.dumps(document)


def render(text: str, containerd_version: Version, knobs: Knobs) -> str:
    """`text` with every knob applied, in the schema the document declares."""
    plain = _plain(text)
    schema = schema_version(plain, containerd_version)
    if knobs.registry_config_path:
        _refuse_registry_mirrors(plain, schema)
    edits = _edits(schema, knobs)
    if _as_wanted(plain, edits):
        # A rerun's case, returned without tomlkit's parse: that parse was most of what a
        # converged node's rerun cost the controller beyond pyinfra's own work.
        return text
    text = _edited(text, edits)
    _plain(text)  # what the deploy's readers (and containerd) read back: refused here if they cannot
    return text


@functools.lru_cache(maxsize=64)
def _plain(text: str) -> dict:
    """The document as plain Python values, for reading only, parsed once per text: a run reads
    the same config.toml and `config dump` of each host several times. The standard library's
    reader, several times faster than tomlkit's (which only what is edited needs). Never mutated."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _not_toml(error) from None


def read_schema(text: str, containerd_version: Version) -> int:
    """`schema_version` of a config text, for readers (parsed once per text)."""
    return schema_version(_plain(text), containerd_version)


def value_at(text: str, path: tuple[str, ...]):
    """The plain value at `path` in a config document (a copy: the parse is shared), or None."""
    return copy.deepcopy(_plain_at(_plain(text), path))


def runc_systemd_cgroup(text: str) -> bool | None:
    """The runc runtime's SystemdCgroup in a config (e.g. `containerd config dump`), None if unset."""
    for path in dict.fromkeys(RUNC_OPTIONS_PATH.values()):
        value = value_at(text, path + ("SystemdCgroup",))
        if value is not None:
            return bool(value)
    return None

"""Edit containerd's config.toml as TOML (tomlkit), never as lines of text.

Pure functions: text in, text out. Everything the deploy does not own (other tables, comments,
ordering, quoting) comes out byte-for-byte as it went in.
"""

import tomlkit
from packaging.version import Version
from tomlkit.exceptions import ParseError
from tomlkit.items import Table

# Where the CRI plugin's runc runtime options live, by config schema version. containerd 2.x
# moved the runtime part of the CRI plugin to its own plugin ID (schema 3, kept by 4).
RUNC_OPTIONS_PATH = {
    2: ("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes", "runc", "options"),
    3: ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes", "runc", "options"),
    4: ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes", "runc", "options"),
}
# The oldest containerd that reads each schema version.
SCHEMA_NEEDS = {2: Version("1.3"), 3: Version("2.0"), 4: Version("2.3")}


class ConfigError(ValueError):
    """The config document cannot be edited safely; the message says why and what to do."""


def parse(text: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except ParseError as error:
        raise ConfigError(f"is not valid TOML ({error}); fix or remove the file, the deploy left it as it is") from None


def schema_version(document: tomlkit.TOMLDocument, containerd_version: Version) -> int:
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
            f"(it needs containerd >= {SCHEMA_NEEDS[version]}); regenerate it with this containerd's "
            "`containerd config default`"
        )
    return int(version)


def _table_at(document: tomlkit.TOMLDocument, path: tuple[str, ...]) -> Table:
    """The table at `path`, creating the missing ones (2.0.0-2.0.6 and 2.1.0-2.1.4 omit options)."""
    node = document
    for key in path:
        if key not in node:
            node[key] = tomlkit.table()
        node = node[key]
        if not isinstance(node, (Table, tomlkit.TOMLDocument)) and not hasattr(node, "items"):
            raise ConfigError(f"has a non-table value at {'.'.join(path)}; it must be a table")
    return node


def _indent_like_siblings(table: Table, key: str) -> None:
    """Give an inserted key the indentation of the keys beside it (cosmetic, for humans)."""
    for sibling, item in table.value.body:
        if sibling is not None and sibling.key != key and not isinstance(item, Table):
            table.value.item(key).trivia.indent = item.trivia.indent
            return


def set_systemd_cgroup(text: str, containerd_version: Version, enabled: bool = True) -> str:
    """`text` with the runc runtime's SystemdCgroup set, in the schema the document declares."""
    document = parse(text)
    options = _table_at(document, RUNC_OPTIONS_PATH[schema_version(document, containerd_version)])
    if options.get("SystemdCgroup") is not enabled:
        inserting = "SystemdCgroup" not in options
        options["SystemdCgroup"] = enabled
        if inserting:
            _indent_like_siblings(options, "SystemdCgroup")
    return tomlkit.dumps(document)


def runc_systemd_cgroup(text: str) -> bool | None:
    """The runc runtime's SystemdCgroup in a config (e.g. `containerd config dump`), None if unset."""
    document = parse(text)
    for path in dict.fromkeys(RUNC_OPTIONS_PATH.values()):
        node = document
        for key in path:
            node = node.get(key) if hasattr(node, "get") else None
            if node is None:
                break
        if node is not None and "SystemdCgroup" in node:
            return bool(node["SystemdCgroup"])
    return None

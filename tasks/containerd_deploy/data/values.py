"""What every data check shares: the error that names host, key and fix, and the tests for
values that may never reach a node (control characters, system trees, passwords in URLs)."""

import posixpath
import re
import urllib.parse

from pyinfra.api.exceptions import DeployError

# Trees of the operating system that no data key may name as a directory the deploy locks
# down, empties or deletes (staging, state, containerd's data when purged): each, and each
# of its ancestors, is refused.
SYSTEM_TREES = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/run/user",
        "/run/lock",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/usr/bin",
        "/usr/include",
        "/usr/lib",
        "/usr/lib64",
        "/usr/libexec",
        "/usr/local",
        "/usr/local/bin",
        "/usr/local/lib",
        "/usr/local/sbin",
        "/usr/local/share",
        "/usr/sbin",
        "/usr/share",
        "/usr/src",
        "/var",
        "/var/backups",
        "/var/cache",
        "/var/lib",
        "/var/local",
        "/var/lock",
        "/var/log",
        "/var/mail",
        "/var/opt",
        "/var/run",
        "/var/spool",
        "/var/tmp",
    }
)


def control_characters(text: str) -> bool:
    """Whether `text` holds a character that has no place in a path, URL or unit value: C0 and
    C1 controls (NUL, newline, …), and any white space but the plain space (tabs, Unicode line
    separators: tools split lines and strip words at them)."""
    return any(ord(char) < 32 or 127 <= ord(char) < 160 or (char.isspace() and char != " ") for char in text)


def is_system_tree(path: str) -> bool:
    """`path` (normalized, absolute) is a tree of the operating system or holds one."""
    return path in SYSTEM_TREES or any(tree.startswith(path.rstrip("/") + "/") for tree in SYSTEM_TREES)


NOT_PLAIN = "not a plain path (it has .., . or doubled slashes)"


def normal_path(path: str) -> str:
    """`path` without `.`, doubled slashes or a trailing slash (normpath keeps a leading `//`)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def path_problem(path, plain: bool = False) -> str | None:
    """Why `path` is not an absolute path every command on a node takes as it is, or None: "not
    an absolute path" (also for `..`, control characters, a backslash: sha256sum escapes names
    holding one, so the node fact could not read them back; trailing spaces), "'/', not a path
    of its own", "longer than a path may be …". `plain`: a path used as written (containerd's
    own directories, which `purged` deletes) may not have `..`, `.` or doubled slashes either."""
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or control_characters(path)
        or "\\" in path
        or path != path.rstrip()
    ):
        return "not an absolute path"
    normal = normal_path(path)
    if plain and ("//" in path or ".." in path.split("/") or normal != (path.rstrip("/") or "/")):
        return NOT_PLAIN
    if ".." in path.split("/"):
        return "not an absolute path"
    if normal == "/":
        return "not a path of its own"
    # The kernel's limits (NAME_MAX, PATH_MAX): refused here rather than failing on the node.
    if len(normal.encode()) >= 4096 or any(len(part.encode()) > 255 for part in normal.split("/")):
        return "longer than a path may be (255 bytes a name, 4095 in all)"
    return None


def url_problem(url, schemes: tuple[str, ...], credentials: bool = False) -> str | None:
    """Why `url` is not a URL the deploy can hand to a node (one of `schemes`, no white space or
    control character, a host that cannot be read as an option, no user:password unless
    `credentials`), or None: "not a URL", "not a <schemes> URL", "names no host", "holds
    credentials"."""
    try:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    except ValueError:
        return "not a URL"
    if parts is None:
        return "not a URL"
    if parts.scheme not in schemes or control_characters(url) or any(char.isspace() for char in url):
        return f"not an {'/'.join(schemes)} URL"
    if parts.scheme != "file" and (not parts.hostname or parts.hostname.startswith("-")):
        return "names no host"
    if not credentials and "@" in parts.netloc:
        return "holds credentials"
    return None


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


# The one rule for hiding credentials wherever the deploy shows text (refusals, diffs, what a
# hook printed): a URL's password (`scheme://user:password@`); the value of a quoted mapping item
# whose key names a credential (`'Authorization': '…'`, as a refusal quotes a value); and the
# rest of the line after such a name in an assignment (`token=…`, `Authorization: Bearer …`,
# `password = "…"` in TOML), a quoted value keeping its quotes.
_SECRET_NAME = r"(?:authorization|password|passwd|token|secret|(?<![a-z])auth)"  # not "unauthorized"
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s/@'\"]*?:)[^\s/@'\"]*@")
_CREDENTIAL_ITEM = re.compile(
    rf"""(['"][^'"]*{_SECRET_NAME}[^'"]*['"]\s*:\s*)(['"]).*?(?<!\\)\2""",
    re.IGNORECASE,
)
_CREDENTIAL_ASSIGNMENT = re.compile(
    rf"""((?<![\w.'"-])[\w.-]*{_SECRET_NAME}[\w.-]*\s*[=:]\s*|"[^"\n]*{_SECRET_NAME}[^"\n]*"\s*=\s*)(\S[^\n]*)""",
    re.IGNORECASE,
)


def _hidden_value(match: re.Match) -> str:
    value = match[2]
    quote = value[0] if len(value) > 1 and value[0] in "'\"" and value.endswith(value[0]) else ""
    return f"{match[1]}{quote}***{quote}"


# A credential inside a quoted word of a command line or an argument list, however it is
# written: a header (`-H 'Authorization: Splunk …'`, `'PRIVATE-TOKEN: …'`: the rest of the
# word), an option and its value (`--token …`, `--password=…`), curl's `-u user:…`, and a
# bearer token standing alone (`Bearer eyJ…`: a word with a digit, not "the bearer of").
_QUOTED_HEADER = re.compile(
    rf"""((?<=['"])[\w-]*{_SECRET_NAME}[\w-]*\s*:\s*)[^'"\n]+""",
    re.IGNORECASE,
)
_CREDENTIAL_OPTION = re.compile(
    rf"""((?<![\w-])--?[\w-]*{_SECRET_NAME}[\w-]*(?:\s+|=)['"]?)[^\s'"]+""",
    re.IGNORECASE,
)
_CURL_USER = re.compile(r"""((?<![\w-])(?:-u|--user)(?:\s+|=)['"]?[^\s:'"]*:)[^\s'"]+""")
_BEARER = re.compile(r"""(\bbearer\s+)(?=[^\s'"]*[0-9])[^\s'",}]+""", re.IGNORECASE)


def redact_secrets(text: str) -> str:
    """`text` with URL passwords and credential values replaced by ***."""
    text = _CREDENTIAL_ITEM.sub(r"\1\2***\2", _URL_PASSWORD.sub(r"\1***@", text))
    for rule in (_QUOTED_HEADER, _CREDENTIAL_OPTION, _CURL_USER, _BEARER):
        text = rule.sub(r"\1***", text)
    return _CREDENTIAL_ASSIGNMENT.sub(_hidden_value, text)


class Refusal(DeployError):
    """A run this deploy will not make, said before it changes anything: the host and the problem
    first, then the fix; never a secret."""

    def __init__(self, message: str):
        self.message = redact_secrets(message)
        super().__init__(self.message)


class DataError(Refusal):
    """A data value this deploy cannot use; raised before the host is changed. The message
    never shows a secret, whichever key a value was (mistakenly) given to."""

    def __init__(self, host: str, key: str, problem: str, fix: str):
        self.host, self.key = host, key
        super().__init__(f"{host}: data key {key!r} {problem}. Fix: {fix}")

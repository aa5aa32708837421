"""A restart hook as data (containerd_restart_hook_before/_after): a program and its
arguments, e.g. `kubectl drain {host} --ignore-daemonsets`, checked before any change.

A hook is never a shell line: `{host}` (the inventory name) and `{address}` (what the controller
connects to) are put into single arguments, so a name holding `;` or spaces is one argument to
the program, not shell syntax. Running it is controller/hooks.py's.
"""

import shlex
import string

from containerd_deploy.data.values import DataError

PLACEHOLDERS = ("host", "address")


def parse_hook(host: str, key: str, value) -> tuple[str, ...]:
    """A command line (split as a POSIX shell would split words, no shell run) or a list of
    arguments; () when unset. Each argument may name {host} and {address}, nothing else."""
    example = (
        "kubectl uncordon {host}" if key.endswith("_after") else "kubectl drain {host} --ignore-daemonsets"
    )
    fix = f"set {key} to a command such as '{example}' (placeholders: {{host}}, {{address}}; '{{{{' for a brace)"
    if value in (None, "", []):
        return ()
    if isinstance(value, str) and any(ord(char) < 32 or ord(char) == 127 for char in value):
        # A line break would be a second command to a shell; here it would silently be a space.
        raise DataError(host, key, f"is {value!r}, with a control character (one command, on one line)", fix)
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as error:
            raise DataError(
                host, key, f"is {value!r}, which does not split into arguments ({error})", fix
            ) from None
    elif isinstance(value, (list, tuple)) and all(isinstance(arg, str) for arg in value):
        argv = list(value)
    else:
        raise DataError(host, key, f"is {value!r}, not a command line or a list of arguments", fix)
    if not argv or not argv[0]:
        raise DataError(host, key, f"is {value!r}, which names no program", fix)
    for arg in argv:
        if any(ord(char) < 32 or ord(char) == 127 for char in arg):
            raise DataError(host, key, f"has an argument with a control character ({arg!r})", fix)
        try:
            fields = list(string.Formatter().parse(arg))
        except ValueError as error:
            raise DataError(
                host, key, f"has an argument {arg!r} that is not a template ({error})", fix
            ) from None
        for _, field, spec, conversion in fields:
            if field is not None and (field not in PLACEHOLDERS or spec or conversion):
                raise DataError(
                    host, key, f"has an argument {arg!r} with an unknown placeholder {{{field}}}", fix
                )
    return tuple(argv)


def hook_argv(argv: tuple, host_name: str, address: str, key: str) -> list[str]:
    """The hook's arguments with the placeholders filled in (each stays one argument). An
    argument a placeholder would turn into an option is refused: a host named
    `--selector=kubernetes.io/os=linux` must not make `kubectl drain {host}` drain every node."""
    filled = []
    for arg in argv:
        value = arg.format(host=host_name, address=address)
        if value.startswith("-") and not arg.startswith("-"):
            raise DataError(
                host_name,
                key,
                f"would pass {value!r} (from {arg!r}), which the program would read as an option, not a name",
                "give the host an inventory name and address that do not start with '-'",
            )
        filled.append(value)
    return filled

"""Commands the controller runs around a node's containerd restart (data keys
containerd_restart_hook_before/_after): e.g. `kubectl drain {host} --ignore-daemonsets` and
`kubectl uncordon {host}`.

A hook is a program and its arguments, never a shell line: `{host}` (the inventory name) and
`{address}` (what the controller connects to) are put into single arguments, so a name holding
`;` or spaces is one argument to the program, not shell syntax.
"""

import os
import shlex
import signal
import string
import subprocess

from .values import DataError, redact_secrets

PLACEHOLDERS = ("host", "address")
OUTPUT_SHOWN = 20  # last lines of a failed hook's output in the error


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


def hook_argv(argv: tuple, host_name: str, address: str) -> list[str]:
    """The hook's arguments with the placeholders filled in (each stays one argument)."""
    return [arg.format(host=host_name, address=address) for arg in argv]


class HookFailed(Exception):
    pass


def run_hook(key: str, argv: list[str], timeout: int, host_name: str) -> str:
    """Run a hook on the controller; its output on success, HookFailed naming the host, the key,
    the command and why (exit status and the last lines it printed, or the timeout) otherwise.
    A hook that runs past `timeout` is killed with everything it started."""
    shown = shlex.join(argv)
    environment = dict(os.environ, CONTAINERD_DEPLOY_HOST=host_name)
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=environment,
            start_new_session=True,  # its own process group: a timeout kills what it started too
        )
    except OSError as error:
        raise HookFailed(f"{host_name}: data key {key!r}: could not run {shown}: {error.strerror}") from None
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise HookFailed(
            f"{host_name}: data key {key!r}: {shown} did not finish within {timeout}s "
            f"(containerd_restart_hook_timeout); killed it{_tail(output)}"
        ) from None
    if process.returncode > 0:
        raise HookFailed(
            f"{host_name}: data key {key!r}: {shown} failed (exit status {process.returncode}){_tail(output)}"
        )
    if process.returncode < 0:  # killed by that signal (the OOM killer, an operator's Ctrl-C)
        how = f"was killed by {_signal_name(-process.returncode)}"
        raise HookFailed(f"{host_name}: data key {key!r}: {shown} {how}{_tail(output)}")
    return output


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _tail(output: str) -> str:
    lines = [line for line in (output or "").splitlines() if line.strip()][-OUTPUT_SHOWN:]
    shown = (redact_secrets(line) for line in lines)  # kubectl errors quote objects
    # One line: a rollout reports the last line the run printed about the host.
    return ("; it said: " + " | ".join(shown)) if lines else ""

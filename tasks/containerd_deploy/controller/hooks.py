"""Run a restart hook on the controller, around a node's containerd restart (data keys
containerd_restart_hook_before/_after; the command as data/hooks.py parsed it): its exit status
decides, its output is shown redacted, a hang is cut at its timeout.
"""

import os
import shlex
import signal
import subprocess

from containerd_deploy.data.values import redact_secrets

OUTPUT_SHOWN = 20  # last lines of a failed hook's output in the error


class HookFailed(Exception):
    pass


def run_hook(key: str, argv: list[str], timeout: int, host_name: str) -> str:
    """Run a hook on the controller; its output (redacted) on success, HookFailed naming the host, the key,
    the command and why (exit status and the last lines it printed, or the timeout) otherwise.
    A hook that runs past `timeout` is killed with everything it started."""
    shown = redact_secrets(shlex.join(argv))  # e.g. curl -H 'Authorization: Bearer …'
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
    return redact_secrets(output)


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

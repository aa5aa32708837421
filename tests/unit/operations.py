"""Operations as pyinfra tests its own: node state in, commands out, with no host.

`commands(op, connector_arguments, **kwargs)` runs an operation's generator in a pyinfra
State with one inventory host, as pyinfra does when it prepares a run, and returns what it
yields; `run_commands` executes the shell commands with fake binaries first on PATH, which
record the argv they were given, so a test sees exactly what reached each program.
"""

import os
import subprocess
from pathlib import Path

from pyinfra.api import Config, FileUploadCommand, Inventory, State, StringCommand
from pyinfra.context import ctx_host, ctx_state


class Facts:
    """The node's answers: fact class -> function of the fact's arguments; each question asked
    is kept in `asked` (fact name, arguments). A fact without an answer fails the test."""

    def __init__(self, answers: dict | None = None):
        self.answers, self.asked = dict(answers or {}), []

    def get_fact(self, fact, **arguments):
        self.asked.append((fact.__name__, arguments))
        assert fact in self.answers, f"the operation asked the node for {fact.__name__}{arguments}"
        return self.answers[fact](**arguments)


def commands(
    op,
    connector_arguments: dict | None = None,
    facts: Facts | None = None,
    executing: bool = False,
    verbose: bool = False,
    **kwargs,
) -> list:
    """What `op(**kwargs)` yields for a host whose operation runs with `connector_arguments`
    (e.g. {"_sudo": True}), the node answering facts with `facts` (default: none may be
    asked); [] when it calls host.noop. `executing`: as when pyinfra runs the operation, not
    when it prepares the run; `verbose`: as under `pyinfra -v`."""
    inventory = Inventory((["node1"], {}))
    state = State(inventory, Config())
    state.is_executing = executing
    state.print_noop_info = verbose
    host = inventory.get_host("node1")
    host.get_fact = (facts or Facts()).get_fact  # type: ignore[method-assign]
    with ctx_state.use(state), ctx_host.use(host):
        host.current_op_global_arguments = dict(connector_arguments or {})
        try:
            return list(op._inner(**kwargs))
        finally:
            host.current_op_global_arguments = None


def shell_text(command) -> str:
    return command.get_raw_value() if isinstance(command, StringCommand) else str(command)


FAKE = """#!/bin/sh
# Record this program's argv, NUL-separated, one file per call.
n=$(ls "$ARGV_LOG" | wc -l)
for arg in "$0" "$@"; do printf '%s\\0' "$arg"; done > "$ARGV_LOG/$n"
"""


def run_commands(tmp_path: Path, texts: list[str], fakes: tuple[str, ...]) -> list[list[str]]:
    """Run each shell text with `fakes` (program names) replaced by recorders; returns the argv
    of every call, in order (argv[0] is the program's name)."""
    bin_dir, log = tmp_path / "fake-bin", tmp_path / "argv"
    bin_dir.mkdir(exist_ok=True)
    log.mkdir(exist_ok=True)
    for name in fakes:
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ARGV_LOG": str(log)}
    for text in texts:
        subprocess.run(["sh", "-c", text], env=env, check=False, capture_output=True, cwd=tmp_path)
    calls = sorted(log.iterdir(), key=lambda path: int(path.name))
    argvs = [call.read_bytes().decode().split("\0")[:-1] for call in calls]
    return [[Path(argv[0]).name, *argv[1:]] for argv in argvs]


def uploads(yielded: list) -> list[FileUploadCommand]:
    return [command for command in yielded if isinstance(command, FileUploadCommand)]

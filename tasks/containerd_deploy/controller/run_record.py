"""What the deploy knows of each host's run beyond pyinfra's results — its plan, a refusal, what
the verify step said — kept per run (a pyinfra State) for the end-of-run report
(deploy/report.py)."""

import weakref
from dataclasses import dataclass, field
from typing import Any


@dataclass
class HostRun:
    """What the deploy knows of one host's run beyond pyinfra's results."""

    plan: list[str] = field(default_factory=list)  # the plan's lines (plan/run.py)
    changes: bool = False  # the plan changes the node
    restart: str = ""  # what the running containerd restarts into, and why ("": it does not)
    refused: str = ""  # why the run was refused for this host
    verify: str = ""  # what the verify step said of the node
    container: bool = False  # the verify step ran a container
    warnings: list = field(default_factory=list)  # what the verify step warned of (the node works)
    report_file: str = ""  # containerd_report of this host
    versions: dict = field(default_factory=dict)  # component -> the version the run leaves it at
    failure: str = (
        ""  # why an operation run on the controller failed (a restart hook): pyinfra keeps no output of it
    )


@dataclass
class Run:
    hosts: dict[str, HostRun] = field(default_factory=dict)  # by host name
    interrupted: bool = False  # stopped by Ctrl-C
    reported: bool = False  # the report is printed when the process exits
    # Images already checked in the cache this run, by (cache, image, arch): a host's import
    # uploads them without hashing each again.
    cached_images: dict = field(default_factory=dict)


_RUNS: "weakref.WeakKeyDictionary[Any, Run]" = weakref.WeakKeyDictionary()


def run_of(state) -> Run:
    if state not in _RUNS:
        _RUNS[state] = Run()
    return _RUNS[state]


def host_run(host) -> HostRun:
    """This run's record of `host` (a pyinfra Host), made on first use."""
    return run_of(host.state).hosts.setdefault(host.name, HostRun())

"""What the benchmark computes from what it observed: pure functions, unit-tested."""

import re
from dataclasses import dataclass, field

# sshd at LogLevel VERBOSE logs one line per command a client runs in a session (and one per
# SFTP subsystem, pyinfra's file uploads), naming the client's port.
SESSION_LINE = re.compile(r"Starting session: (?:command|subsystem '[^']*') for \S+ from \S+ port (\d+)")
ACCEPTED_LINE = re.compile(r"Accepted \S+ for \S+ from \S+ port (\d+)")

# The floors: the figure, the comparison, the bound.
FLOORS = {
    "first_converge_ratio": 1.3,
    "noop_remote_commands": 12,
    "noop_exec_true_ratio": 1.3,
    "fanout_ratio": 1.5,
    "upstream_artifact_sets": 1,
}


def remote_commands(journal: str) -> int:
    """How many commands (and SFTP uploads) ran over the SSH connections that sshd accepted in
    this stretch of its VERBOSE log; sessions of older connections (the bench's own) are not counted."""
    accepted = set(ACCEPTED_LINE.findall(journal))
    return sum(1 for port in SESSION_LINE.findall(journal) if port in accepted)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def cpu_times(proc_stat: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat's "cpu" line (idle and iowait are not busy)."""
    values = [int(value) for value in proc_stat.splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest and guest_nice (fields 9 and 10) are already counted in user and nice.
    total = sum(values[:8])
    return total - idle, total


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the host's CPU time that was busy between two `cpu_times` readings."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total if total else 0.0


def artifact_sets(served_bytes: int, set_bytes: int) -> float:
    """Bytes the mirror served, in units of one node's artifact set."""
    return served_bytes / set_bytes if set_bytes else float("nan")


@dataclass
class Row:
    name: str
    figure: str
    floor: str = ""
    holds: bool | None = None  # None: reported, no floor


@dataclass
class Report:
    machine: dict
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, figure: str, floor: str = "", holds: bool | None = None) -> None:
        self.rows.append(Row(name, figure, floor, holds))
        verdict = "" if holds is None else (" (holds)" if holds else " (DOES NOT HOLD)")
        print(f"{name}: {figure}{'  floor: ' + floor if floor else ''}{verdict}", flush=True)

    def markdown(self) -> str:
        lines = [
            "# Benchmarks",
            "",
            "Written by `make bench` (`python -m bench`); every figure below comes from one run,",
            "measured side by side on local qemu (TCG) VMs.",
            "",
            "## Machine",
            "",
        ]
        lines += [f"- {key}: {value}" for key, value in self.machine.items()]
        lines += ["", "## Figures", "", "| Measure | Figure | Floor | Holds |", "|---|---|---|---|"]
        for row in self.rows:
            holds = "" if row.holds is None else ("yes" if row.holds else "**no**")
            lines.append(f"| {row.name} | {row.figure} | {row.floor} | {holds} |")
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


# Fan-out at fleet scale (issue #16): the controller's share per node; at 64 nodes, issue #27's goal.
FANOUT_FLOORS = {"noop_cpu_per_node": 0.2, "noop_cpu_per_node_at_64": 0.1, "rss_per_node_mib": 2.0}


def marginal(low: tuple[int, float], high: tuple[int, float]) -> float:
    """What each node past the first `low[0]` added: (high value - low value) / (high count - low count)."""
    (low_count, low_value), (high_count, high_value) = low, high
    return (high_value - low_value) / (high_count - low_count) if high_count != low_count else float("nan")


def replace_section(text: str, heading: str, body: str) -> str:
    """`text` (markdown) with its `## heading` section (up to the next `## `) replaced by `body`,
    or `body` appended when there is none; `body` starts with its own heading line."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == f"## {heading}"), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rest = "".join(lines[end:])
    return "".join(lines[:start]) + body.rstrip("\n") + "\n" + ("\n" + rest if rest else "")


def package_of(filename: str) -> str:
    """The part of the controller a profiled function belongs to: a site-package's top-level
    name, this deploy (`containerd_deploy`), the standard library, or Python's built-ins."""
    if filename.startswith("~") or filename.startswith("<"):
        return "built-ins"
    parts = filename.replace("\\", "/").split("/")
    if "site-packages" in parts:
        name = parts[parts.index("site-packages") + 1]
        return name.removesuffix(".py")
    if "containerd_deploy" in parts:
        return "containerd_deploy (this deploy)"
    return "standard library"


def time_by_package(stats: dict) -> list[tuple[str, float]]:
    """Own time (tottime) summed by `package_of`, largest first, from pstats' `stats` mapping
    ((file, line, function) -> (calls, primitive calls, tottime, cumtime, callers))."""
    totals: dict[str, float] = {}
    for (filename, _, _), (_, _, tottime, _, _) in stats.items():
        package = package_of(filename)
        totals[package] = totals.get(package, 0.0) + tottime
    return sorted(totals.items(), key=lambda item: item[1], reverse=True)


def section(text: str, heading: str) -> str | None:
    """The `## heading` section of markdown `text` (up to the next `## `), or None."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == f"## {heading}"), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "".join(lines[start:end]).rstrip("\n") + "\n"

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

"""`python -m bench.fanout`: the controller at fleet scale — first converge and no-op rerun on
1, 8, 32 and 64 nodes at once — and what an idle node costs the host, which decides the node kind.

Nodes are systemd-nspawn machines (tests/harness/nspawn.py) booted from the VM image: they run
natively and idle at next to nothing, where a TCG VM spends host CPU even idle, so at 32+ nodes
the figures are the controller's rather than starved guests'. Writes the "Fan-out at fleet
scale" section of docs/benchmarks.md (the rest of the file is `python -m bench`'s).
"""

import argparse
import functools
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.e2e.helpers import changed_ops
from tests.harness import __main__ as harness
from tests.harness import image, mirror, nspawn, vm
from tests.harness.paths import REPO_ROOT

from .measure import (
    FANOUT_FLOORS,
    FLOORS,
    marginal,
    median,
    remote_commands,
    replace_section,
    time_by_package,
)

SUITE = "trixie"
HEADING = "Fan-out at fleet scale"
OUTPUT = REPO_ROOT / "docs" / "benchmarks.md"
IDLE_SECONDS = 30
VERBOSE_SSHD = {"/etc/ssh/sshd_config.d/bench.conf": "LogLevel VERBOSE\n"}  # one log line per command
USER_HZ = os.sysconf("SC_CLK_TCK")
NOTE_FIXED_AND_MARGINAL = "What a no-op costs the controller is a fixed part (starting Python, importing pyinfra and the deploy, reading the inventory: about the whole 1-node figure) plus a part per node; the 8-node row's per-node figure still carries the fixed part, the marginal row says what each node adds. pyinfra's CLI orders its operations by their call stack (`get_operation_order_from_stack`), once per operation and host; the deploy's own code is a few percent of the profile below. The cheap wins this profile pointed to were taken: each host's config.toml and `config dump` were parsed by tomlkit seven times (44% of an 8-node no-op's controller time; 3.2 CPU s before, 1.8 after), then once, and now not at all when the file already holds what the deploy sets (17% of a 32-node no-op before). Cuts of pyinfra's per-operation work followed. A frame of the exec'd deploy.py made `inspect.getmodule` scan all of `sys.modules`, three times per operation and host (a fifth of an 8-node no-op's profile); the deploy now records the file as no module's, which answers the same without the scan. And a step adds operations only for what the plan has it do: a no-op adds one, the verify step's check, in one deploy step (it added 13 operations in 7 deploy steps, then 8 in 6, each walking the call stack and reading every global argument from the host's data, `pop_global_arguments`). What is left beside `exec -- true` is the deploy's own import and planning, the node fact's larger answer, and pyinfra's work for that one operation."
Row = tuple[str, str, str, bool | None]  # measure, figure, floor, holds (None: no floor)


def names(count: int) -> list[str]:
    return [f"fanout-{index}" for index in range(1, count + 1)]


def boot(wanted: list[str], data: dict) -> list[vm.Node]:
    """Fresh machines (as if never used), with the deploy's data pointing at the mirror."""
    built = image.build(SUITE)
    nodes = []
    for name in wanted:
        nodes.append(nspawn.start(name, built, files=VERBOSE_SSHD))
        vm.replace_file(vm.node_dir(name) / "data.json", json.dumps(data))
    return nodes


# What pyinfra itself costs to run one command on a node: the floor of a no-op rerun.
EXEC_TRUE = ("exec", "--", "true")


@functools.cache
def as_installed() -> dict:
    """The environment a run is measured in: every module compiled, as `pip install` leaves an
    installed package. pyinfra's CLI writes no bytecode, so an editable checkout would compile
    the deploy's ~45 modules from source every run (~0.1-0.2 s), and only them: they are compiled
    in their own `__pycache__` first (ignored by git). (Not into a PYTHONPYCACHEPREFIX: there
    Python looks for every module's bytecode, pyinfra's and the standard library's too, and
    compiled ~40 of them from source every run.)"""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    }
    package = REPO_ROOT / "tasks" / "containerd_deploy"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], env=env, check=True)
    return env


def deploy(
    wanted: list[str], profile: Path | None = None, data: dict | None = None, what: tuple = ("deploy.py",)
) -> dict:
    """One pyinfra run against `wanted` at once: wall and controller CPU seconds, its peak RSS,
    the JSON results; `profile`: under cProfile, written there; `data`: given with --data;
    `what`: the deploy, or e.g. EXEC_TRUE."""
    head, tail = (what[: what.index("--")], what[what.index("--") :]) if "--" in what else (what, ())
    command = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else [])]
    command += ["-m", "pyinfra", "inventories/local.py", *head, "-y", "--json"]
    for name in wanted:
        command += ["--limit", name]
    for key, value in (data or {}).items():
        command += ["--data", f"{key}={value}"]
    command += tail
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=out, stderr=err, text=True, env=as_installed()
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"deploy to {len(wanted)} nodes failed:\n{stderr[-4000:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,
        "results": json.loads(stdout[stdout.index("{") :]),
    }


def noop_against_exec_true(name: str, data: dict | None, rounds: int) -> dict:
    """A converged node's no-op rerun beside `pyinfra … exec -- true` on it, `rounds` of each,
    alternating (which goes first alternates too): wall medians, their ratio, changes seen."""
    walls: dict[tuple, list[float]] = {("deploy.py",): [], EXEC_TRUE: []}
    changes = 0
    for round_number in range(rounds):
        for what in list(walls)[:: 1 if round_number % 2 == 0 else -1]:
            run = deploy([name], data=data, what=what)
            walls[what].append(run["wall"])
            changes += len(changed_ops(run["results"], name)) if what != EXEC_TRUE else 0
    deploys, floors = walls[("deploy.py",)], walls[EXEC_TRUE]
    return {
        "noop": median(deploys),
        "exec_true": median(floors),
        "ratio": median(deploys) / median(floors),
        "changes": changes,
    }


def journal_mark(node: vm.Node) -> int:
    return int(node.ssh("date +%s").stdout)


def commands_run(nodes: list[vm.Node], since: dict[str, int]) -> list[int]:
    """Remote commands each node ran for the deploy since its mark (sshd's VERBOSE log)."""
    counts = []
    for node in nodes:
        journal = node.ssh(f"journalctl -u ssh --since @{since[node.name] + 1} -o cat --no-pager").stdout
        counts.append(remote_commands(journal))
    return counts


def marks(nodes: list[vm.Node]) -> dict[str, int]:
    found = {node.name: journal_mark(node) for node in nodes}
    time.sleep(1.5)  # the log from the next whole second on holds only the deploy's connection
    return found


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def memory_kib(pids: list[int], field: str = "Pss") -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def idle_share(pids_of) -> tuple[float, float]:
    """(share of one host CPU, MiB of memory) a node's processes took over IDLE_SECONDS."""
    before = cpu_ticks(pids_of())
    time.sleep(IDLE_SECONDS)
    pids = pids_of()
    used = (cpu_ticks(pids) - before) / USER_HZ
    return used / IDLE_SECONDS, memory_kib(pids) / 1024


def idle_costs(data: dict, vm_data: dict) -> dict:
    """An idle node of each kind with containerd deployed and running: its CPU share and memory."""
    (machine,) = boot(["fanout-idle"], data)
    deploy(["fanout-idle"])
    time.sleep(5)
    light = idle_share(lambda: nspawn.processes(machine.pid or 0))
    vm.stop("fanout-idle")
    (guest,) = harness.up(["fanout-idle-vm"], SUITE)
    vm.replace_file(vm.node_dir("fanout-idle-vm") / "data.json", json.dumps(vm_data))
    deploy(["fanout-idle-vm"])
    time.sleep(20)  # past the deploy's own tail
    heavy = idle_share(lambda: [guest.pid or 0])
    harness.down(["fanout-idle-vm"])
    return {"nspawn": light, "vm": heavy}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--counts", default="1,8,32,64", help="fleet sizes, comma-separated (default 1,8,32,64)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="no-op reruns per size (median)")
    parser.add_argument("--profile-at", type=int, default=32, help="profile a no-op at this size (0: none)")
    args = parser.parse_args(argv)
    counts = sorted({int(count) for count in args.counts.split(",")})
    release = mirror.release(SUITE)
    port = harness.ensure_mirror()["port"]
    vm_data = harness.node_data(release, port, vm.VM)
    data = harness.node_data(release, port, vm.MACHINE)
    rows: list[Row] = []
    notes: list[str] = []
    try:
        idle = idle_costs(data, vm_data)
        measured: dict[int, dict] = {}
        for count in counts:
            wanted = names(count)
            harness.down(wanted)
            nodes = boot(wanted, data)
            since = marks(nodes)
            first = deploy(wanted)
            first_commands = commands_run(nodes, since)
            noops, floors = [], []
            for round_number in range(max(1, args.rounds)):  # beside pyinfra's own floor, alternating
                if round_number % 2:
                    floors.append(deploy(wanted, what=EXEC_TRUE))
                since = marks(nodes)
                noops.append(deploy(wanted))
                noop_commands = commands_run(nodes, since)
                if round_number % 2 == 0:
                    floors.append(deploy(wanted, what=EXEC_TRUE))
            noop = sorted(noops, key=lambda run: run["wall"])[len(noops) // 2]
            changes = sum(len(changed_ops(run["results"], name)) for run in noops for name in wanted)
            measured[count] = {
                "first": first,
                "first_commands": first_commands,
                "noop": noop,
                "noop_cpu": median([run["cpu"] for run in noops]),
                "noop_rss": median([run["rss_mib"] for run in noops]),
                "noop_commands": noop_commands,
                "exec_true_cpu": median([run["cpu"] for run in floors]),
                "changes": changes,
            }
            print(
                f"{count} nodes: first {first['wall']:.1f} s / {first['cpu']:.1f} CPU s; no-op "
                f"{noop['wall']:.1f} s / {measured[count]['noop_cpu']:.2f} CPU s, {changes} changes",
                flush=True,
            )
            if count == counts[0]:  # the no-op beside pyinfra's own floor, on one machine
                measured[count]["against"] = noop_against_exec_true(wanted[0], None, max(5, args.rounds))
            if count == args.profile_at:
                profile = Path(tempfile.mkdtemp(prefix="bench-profile-")) / "noop.prof"
                deploy(wanted, profile=profile)
                measured[count]["profile"] = pstats.Stats(str(profile))
            if count != counts[-1]:
                harness.down(wanted)
        rows, notes = report(counts, measured, idle, args.rounds)
    finally:
        harness.down([*names(max(counts)), "fanout-idle", "fanout-idle-vm"])
    text = OUTPUT.read_text() if OUTPUT.exists() else "# Benchmarks\n"
    OUTPUT.write_text(replace_section(text, HEADING, markdown(rows, notes)))
    print(f"wrote the {HEADING!r} section of {OUTPUT.relative_to(REPO_ROOT)}")
    return 0


def report(counts: list[int], measured: dict, idle: dict, rounds: int) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    light_cpu, light_mib = idle["nspawn"]
    heavy_cpu, heavy_mib = idle["vm"]
    rows.append(
        (
            "Idle node (containerd running)",
            f"TCG VM: {heavy_cpu:.1%} of a host CPU, {heavy_mib:.0f} MiB; nspawn machine: "
            f"{light_cpu:.2%} of a host CPU, {light_mib:.0f} MiB (over {IDLE_SECONDS} s)",
            "",
            None,
        )
    )
    against = measured[counts[0]]["against"]
    rows.append(
        (
            "No-op rerun against `pyinfra … exec -- true`, 1 node",
            f"{against['noop']:.2f} s vs {against['exec_true']:.2f} s (medians of {max(5, rounds)}, "
            f"alternating): {against['ratio']:.2f}x; {against['changes']} changes",
            f"≤ {FLOORS['noop_exec_true_ratio']}x, 0 changes",
            against["ratio"] <= FLOORS["noop_exec_true_ratio"] and against["changes"] == 0,
        )
    )
    for count in counts:
        figures = measured[count]
        first = figures["first"]
        rows.append(
            (
                f"First converge, {count} node{'s' if count > 1 else ''}",
                f"{first['wall']:.1f} s; controller {first['cpu']:.1f} CPU s ({first['cpu'] / count:.3f} per node), "
                f"peak RSS {first['rss_mib']:.0f} MiB; remote commands per node "
                f"{min(figures['first_commands'])}–{max(figures['first_commands'])}",
                "",
                None,
            )
        )
    for count in counts:
        figures = measured[count]
        per_node = figures["noop_cpu"] / count
        floor = FANOUT_FLOORS["noop_cpu_per_node_at_64" if count >= 64 else "noop_cpu_per_node"]
        rows.append(
            (
                f"No-op rerun, {count} node{'s' if count > 1 else ''}",
                f"{figures['noop']['wall']:.1f} s; controller {figures['noop_cpu']:.2f} CPU s "
                f"({per_node:.3f} per node; `exec -- true` on the same nodes {figures['exec_true_cpu']:.2f} CPU s, "
                f"{figures['exec_true_cpu'] / count:.3f} per node), peak RSS {figures['noop_rss']:.0f} MiB; remote commands per node "
                f"{min(figures['noop_commands'])}–{max(figures['noop_commands'])}; {figures['changes']} changes "
                f"(median of {rounds})",
                f"≤ {floor} CPU s per node" if count >= 8 else "",
                per_node <= floor and figures["changes"] == 0 if count >= 8 else None,
            )
        )
    big = [count for count in counts if count >= 8]
    if len(big) >= 2:
        low, high = big[0], big[-1]
        cpu_step = marginal((low, measured[low]["noop_cpu"]), (high, measured[high]["noop_cpu"]))
        floor_step = marginal((low, measured[low]["exec_true_cpu"]), (high, measured[high]["exec_true_cpu"]))
        low_per_node = measured[low]["noop_cpu"] / low
        high_per_node = measured[high]["noop_cpu"] / high
        rows.append(
            (
                f"No-op CPU per node, {low} → {high} nodes",
                f"{low_per_node:.3f} → {high_per_node:.3f} CPU s per node; each node past {low} added {cpu_step:.3f} CPU s "
                f"(to `exec -- true`: {floor_step:.3f})",
                "flat (not growing)",
                high_per_node <= low_per_node * 1.05 and cpu_step <= FANOUT_FLOORS["noop_cpu_per_node"],
            )
        )
        rss_step = marginal((low, measured[low]["noop_rss"]), (high, measured[high]["noop_rss"]))
        first_step = marginal(
            (low, measured[low]["first"]["rss_mib"]), (high, measured[high]["first"]["rss_mib"])
        )
        rows.append(
            (
                f"Controller memory per extra node, {low} → {high} nodes",
                f"no-op {rss_step:.2f} MiB; first converge {first_step:.2f} MiB",
                f"≤ {FANOUT_FLOORS['rss_per_node_mib']} MiB",
                max(rss_step, first_step) <= FANOUT_FLOORS["rss_per_node_mib"],
            )
        )
    notes = [
        f"Nodes: systemd-nspawn machines (tests/harness/nspawn.py) booting the VM image's root read-only "
        "under an overlay each, systemd as PID 1, own sshd on 127.0.0.1, containerd deployed and verified by "
        "the deploy as on a VM. An idle TCG VM takes the host CPU shown above even with nothing to do, so "
        f"{max(counts)} of them would starve one another and the controller on {os.cpu_count()} cores; the "
        "machines leave the CPUs to the controller. They are a measuring device for the controller, not "
        "nodes the conformance suite vouches for (they share the host's kernel); conformance is proven on VMs.",
        "Controller CPU is the pyinfra process's user + system time (wait4), its whole share: pyinfra runs every "
        "host in one process, in greenlets. Remote commands are counted from each node's sshd log (VERBOSE).",
        NOTE_FIXED_AND_MARGINAL,
    ]
    for count, figures in measured.items():
        if "profile" in figures:
            stats = figures["profile"].stats
            total = sum(row[2] for row in stats.values())
            parts = ", ".join(f"{name} {seconds / total:.0%}" for name, seconds in time_by_package(stats)[:8])
            top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:8]
            functions = "; ".join(
                f"`{Path(file).name}:{function}` {row[2] / total:.0%}" for (file, _, function), row in top
            )
            notes.append(
                f"Where a {count}-node no-op's controller time goes (cProfile, own time, {total:.1f} s profiled): "
                f"{parts}. Largest functions: {functions}."
            )
    return rows, notes


def markdown(rows: list[Row], notes: list[str]) -> str:
    lines = [
        f"## {HEADING}",
        "",
        "Written by `python -m bench.fanout` (`make bench-fanout`); one run, side by side.",
        "",
        "| Measure | Figure | Floor | Holds |",
        "|---|---|---|---|",
    ]
    for name, figure, floor, holds in rows:
        lines.append(
            f"| {name} | {figure} | {floor} | {'' if holds is None else ('yes' if holds else '**no**')} |"
        )
    lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

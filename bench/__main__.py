"""`python -m bench`: run the five benchmarks on local VMs and write docs/benchmarks.md.

1. First converge of a fresh node, against bench/floor.sh doing the same work by hand in one
   SSH session (same mirror, same files): the median of several fresh pairs.
2. The no-op rerun: wall time, remote commands (sshd's own log), changes, containerd's MainPID;
   and beside `pyinfra … exec -- true` on the same node (pyinfra's own floor), alternating.
3. Fan-out: first converge of 1 and of 4 nodes at once, beside the script by hand on 4 nodes
   at once (how far the host's CPUs let anything scale); no-op reruns on 1, 4 and 8 nodes.
4. Upstream bytes: what the mirror served for 4 nodes, each fetching (artifact_source=node)
   and through the controller's cache (artifact_source=controller).
5. The controller's peak memory (max RSS of the pyinfra process) for 1, 4 and 8 nodes.
"""

import argparse
import concurrent.futures
import functools
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.e2e.helpers import changed_ops
from tests.harness import __main__ as harness
from tests.harness import mirror, vm
from tests.harness.paths import REPO_ROOT

from . import fanout
from .fanout import HEADING as FANOUT_HEADING
from .measure import (
    FLOORS,
    Report,
    artifact_sets,
    busy_share,
    cpu_times,
    median,
    remote_commands,
    replace_section,
    section,
)

SUITE = "trixie"  # Debian 13 nodes with Debian 13's containerd 1.7.24 and runc 1.1.15
FLOOR_SCRIPT = Path(__file__).with_name("floor.sh")
OUTPUT = REPO_ROOT / "docs" / "benchmarks.md"


class CountingMirror(mirror.Mirror):
    """The test mirror, counting the bytes it serves (to see what reached the nodes)."""

    def __init__(self):
        self.served = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(mirror._QuietHandler):
            def copyfile(self, source, outputfile):
                start = source.tell()
                super().copyfile(source, outputfile)
                with outer.lock:
                    outer.served += source.tell() - start

        super().__init__()
        self.server.RequestHandlerClass = functools.partial(Handler, directory=str(mirror.mirror_root()))

    def take(self) -> int:
        with self.lock:
            served, self.served = self.served, 0
        return served


def host_cpu() -> tuple[int, int]:
    return cpu_times(Path("/proc/stat").read_text())


def deploy(names: list[str], data: dict) -> dict:
    """One pyinfra run against `names` at once: wall seconds, the controller's peak RSS and CPU
    seconds, how busy the host's CPUs were, the results."""
    cpu_before = host_cpu()
    run = fanout.deploy(names, data=data)
    return {
        "wall": run["wall"],
        "max_rss_mb": run["rss_mib"],
        "controller_cpu": run["cpu"],
        "host_busy": busy_share(cpu_before, host_cpu()),
        "results": run["results"],
    }


def accepts_connections(node: vm.Node, timeout: float = 60) -> None:
    """Wait until sshd takes new connections again (it re-executes itself on a reload)."""
    deadline = time.monotonic() + timeout
    while True:
        probe = subprocess.run(
            [
                "ssh",
                "-o",
                "ControlMaster=no",
                "-o",
                "ControlPath=none",
                *vm.ssh_options(node.port),
                "root@127.0.0.1",
                "true",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(
                f"{node.name}: sshd takes no new connection after its reload: {probe.stderr[-500:]}"
            )
        time.sleep(0.5)


def main_pid(node: vm.Node) -> str:
    return node.ssh("systemctl show -p MainPID --value containerd").stdout.strip()


def floor(nodes: list[vm.Node], data: dict, unit: str) -> dict:
    """bench/floor.sh on each node at once, each over one fresh SSH connection (no shared master:
    pyinfra pays a handshake too): wall seconds until the last one is done, host CPU busy share."""
    exports = "".join(
        f"export {key}={shlex.quote(value)}\n"
        for key, value in {
            "MIRROR": data["artifact_mirror"],
            "CONTAINERD_VERSION": data["containerd_version"],
            "CONTAINERD_SHA256": data["containerd_sha256"],
            "RUNC_VERSION": data["runc_version"],
            "RUNC_SHA256": data["runc_sha256"],
            "UNIT": unit,
        }.items()
    )
    script = exports + FLOOR_SCRIPT.read_text()

    def run_on(node: vm.Node) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "ssh",
                "-o",
                "ControlMaster=no",
                "-o",
                "ControlPath=none",
                *vm.ssh_options(node.port),
                "root@127.0.0.1",
                "sh -s",
            ],
            input=script,
            text=True,
            capture_output=True,
            timeout=900,
        )

    cpu_before = host_cpu()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        results = list(pool.map(run_on, nodes))
    for node, result in zip(nodes, results, strict=True):
        if result.returncode != 0:
            raise SystemExit(f"bench/floor.sh failed on {node.name}:\n{result.stderr[-3000:]}")
    return {"wall": time.monotonic() - started, "host_busy": busy_share(cpu_before, host_cpu())}


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        line.split(":", 1)[1].strip()
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    pyinfra_version = subprocess.run(
        [sys.executable, "-m", "pyinfra", "--version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": f"{os.cpu_count()} ({cpu})",
        "memory": memory,
        "hypervisor": f"{qemu}, TCG (no KVM), {vm.CPUS} vCPUs and {vm.MEMORY_MB} MiB per VM",
        "nodes": "Debian 13, containerd and runc from Debian's packages in upstream's release layout",
        "controller": f"Python {platform.python_version()}, {pyinfra_version}",
    }


def run(max_nodes: int, rounds: int) -> Report:
    release = mirror.release(SUITE)
    report = Report(machine())
    names = [f"bench-{i}" for i in range(1, max_nodes + 1)]
    floor_names = [f"bench-floor-{i}" for i in range(1, 5)]
    nodes = {}

    def boot(wanted: list[str], fresh: bool = False) -> list[vm.Node]:
        """Nodes are booted when a measure needs them (idle TCG VMs still take CPU); `fresh`: from
        the saved state again, as if never used."""
        if fresh:
            harness.down(wanted)
        for started in harness.up(wanted, SUITE):
            # One log line per command a client runs: the count of remote commands.
            started.ssh("echo 'LogLevel VERBOSE' > /etc/ssh/sshd_config.d/bench.conf && systemctl reload ssh")
            nodes[started.name] = started
        for node in (nodes[name] for name in wanted):
            accepts_connections(node)
        return [nodes[name] for name in wanted]

    from containerd_deploy.plan.files import unit_text

    unit = unit_text("/usr/local/bin")
    with CountingMirror() as counting:
        data = {
            "artifact_mirror": counting.url_for_guests(),
            "containerd_version": release.containerd_version,
            "containerd_sha256": release.containerd_sha256,
            "runc_version": release.runc_version,
            "runc_sha256": release.runc_sha256,
        }
        set_bytes = sum(
            path.stat().st_size
            for path in (
                mirror.containerd_tarball_path(release.containerd_version),
                mirror.runc_binary_path(release.runc_version),
            )
        )

        # 1. First converge against the floor: pairs of fresh nodes, the order alternating
        # between rounds; the median of the pairs' ratios.
        pairs = []
        for round_number in range(rounds):
            by_hand, node = boot([floor_names[0], names[0]], fresh=True)
            if round_number % 2 == 0:
                floor_run, one = floor([by_hand], data, unit), deploy(names[:1], data)
            else:
                one, floor_run = deploy(names[:1], data), floor([by_hand], data, unit)
            pairs.append((one, floor_run))
        harness.down(floor_names[:1])
        ratios = [one["wall"] / floor_run["wall"] for one, floor_run in pairs]
        ratio = median(ratios)
        one_wall = median([one["wall"] for one, _ in pairs])
        floor_wall = median([floor_run["wall"] for _, floor_run in pairs])
        one = pairs[-1][0]
        report.add(
            "First converge, 1 node",
            f"{one_wall:.1f} s vs {floor_wall:.1f} s by hand (medians of {rounds} "
            f"fresh pairs): {ratio:.2f}x (pairs: {', '.join(f'{r:.2f}x' for r in ratios)})",
            f"≤ {FLOORS['first_converge_ratio']}x",
            ratio <= FLOORS["first_converge_ratio"],
        )

        # 2. The no-op rerun (the node the last pair converged).
        first = nodes[names[0]]
        pid, since = main_pid(first), int(first.ssh("date +%s").stdout)
        time.sleep(1.5)  # the log from the next whole second on holds only the deploy's connection
        noop = deploy(names[:1], data)
        journal = first.ssh(f"journalctl -u ssh --since @{since + 1} -o cat --no-pager").stdout
        commands = remote_commands(journal)
        changes = len(changed_ops(noop["results"], names[0]))
        same_pid = main_pid(first) == pid
        noop_wall = median([noop["wall"]] + [deploy(names[:1], data)["wall"] for _ in range(rounds - 1)])
        report.add(
            "No-op rerun, 1 node",
            f"{noop_wall:.1f} s (median of {rounds}); {commands} remote "
            f"commands; {changes} changes; MainPID {'unchanged' if same_pid else 'CHANGED'}",
            f"0 changes, no restart, ≤ {FLOORS['noop_remote_commands']} commands",
            changes == 0 and same_pid and commands <= FLOORS["noop_remote_commands"],
        )

        # The no-op against pyinfra's own floor: one command on the same node, alternating.
        floor_rounds = max(rounds, 5)
        against = fanout.noop_against_exec_true(names[0], data, floor_rounds)
        report.add(
            "No-op rerun against `pyinfra … exec -- true`, 1 node",
            f"{against['noop']:.2f} s vs {against['exec_true']:.2f} s (medians of {floor_rounds}, "
            f"alternating): {against['ratio']:.2f}x; {against['changes']} changes",
            f"≤ {FLOORS['noop_exec_true_ratio']}x, 0 changes",
            against["ratio"] <= FLOORS["noop_exec_true_ratio"] and against["changes"] == 0,
        )

        # 3. Four nodes at once: the floor script on four fresh nodes, then the deploy on four.
        floor_four = floor(boot(floor_names, fresh=True), data, unit)
        harness.down(floor_names)
        boot(names[:4], fresh=True)
        fan = names[:4]
        counting.take()
        four = deploy(fan, data)
        served_node = artifact_sets(counting.take(), set_bytes)
        fan_ratio = four["wall"] / one_wall
        floor_fan_ratio = floor_four["wall"] / floor_wall
        cpu_bound = floor_four["host_busy"] >= 0.9
        report.add(
            "First converge, 4 nodes at once",
            f"{four['wall']:.1f} s: {fan_ratio:.2f}x one node (host CPUs {four['host_busy']:.0%} busy); "
            f"by hand on 4 at once: {floor_four['wall']:.1f} s, {floor_fan_ratio:.2f}x one "
            f"(host CPUs {floor_four['host_busy']:.0%} busy); deploy/by hand at 4: "
            f"{four['wall'] / floor_four['wall']:.2f}x",
            f"≤ {FLOORS['fanout_ratio']}x, given VMs not CPU-starved"
            + (" (they are here: see the notes)" if cpu_bound else ""),
            None if cpu_bound else fan_ratio <= FLOORS["fanout_ratio"],
        )

        # 4. Upstream bytes: four nodes each fetching (above), then through the controller's cache.
        report.add("Upstream bytes, 4 nodes, artifact_source=node", f"{served_node:.2f} artifact sets")
        deploy(fan, {**data, "containerd_state": "purged"})
        cache = tempfile.mkdtemp(prefix="bench-cache-")
        counting.take()
        # The controller reaches the mirror on its own loopback (the guests' 10.0.2.2).
        cached = deploy(
            fan,
            {
                **data,
                "artifact_source": "controller",
                "containerd_images_sandbox": False,  # the harness's sandbox image is on no registry
                "artifact_cache_dir": cache,
                "artifact_mirror": f"http://127.0.0.1:{counting.port}",
            },
        )
        served_cached = artifact_sets(counting.take(), set_bytes)
        shutil.rmtree(cache, ignore_errors=True)
        report.add(
            "Upstream bytes, 4 nodes, artifact_source=controller",
            f"{served_cached:.2f} artifact sets ({cached['wall']:.1f} s)",
            f"{FLOORS['upstream_artifact_sets']} set for any N",
            round(served_cached, 2) <= FLOORS["upstream_artifact_sets"],
        )

        # 3 and 5. No-op reruns at 1, 4 and 8 nodes; the controller's memory and CPU for each.
        if max_nodes > 4:
            boot(names[4:], fresh=True)
            deploy(names[4:], data)
        noops = {1: noop}
        for count in sorted({4, max_nodes}):
            noops[count] = deploy(names[:count], data)
        for count, result in noops.items():
            report.add(
                f"No-op rerun, {count} node{'s' if count > 1 else ''} at once",
                f"{result['wall']:.1f} s ({result['wall'] / noop_wall:.2f}x one node); host CPUs "
                f"{result['host_busy']:.0%} busy; controller {result['controller_cpu']:.1f} CPU s, "
                f"peak RSS {result['max_rss_mb']:.0f} MiB",
            )
        report.add(
            "Controller peak RSS, first converge",
            f"1 node {one['max_rss_mb']:.0f} MiB; "
            f"4 nodes {four['max_rss_mb']:.0f} MiB; 4 through the cache {cached['max_rss_mb']:.0f} MiB",
        )
        report.notes.append(
            f"{os.cpu_count()} host CPUs run every VM under TCG. A first converge is CPU-bound inside the guest "
            "(curl, sha256 and gunzip of ~50 MB, ~130 MB of binaries written, Go binaries started under "
            f"emulation): the hand-written script on 4 nodes at once takes {floor_fan_ratio:.2f}x its one-node time "
            f"(the deploy {fan_ratio:.2f}x), with the host CPUs {floor_four['host_busy']:.0%} busy. The issue's "
            "fan-out floor assumes VMs that are not CPU-starved, so it is reported, not judged, when the script by "
            "hand is CPU-bound too. What the deploy adds at 4 nodes (the deploy/by-hand ratio) is its own guest "
            "work (facts, the verify step's Go binaries) competing for the same CPUs, and pyinfra's lock-step: "
            "each operation waits for the slowest node before the next starts."
        )
        report.notes.append(
            "The no-op fan-out: the controller's CPU seconds are its whole share (pyinfra runs hosts in "
            "parallel in one process); the rest of the wall time is the guests answering under emulation, "
            "on host CPUs as busy as shown."
        )
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8, help="the largest fan-out (at least 4)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="fresh node pairs for the first converge (median)"
    )
    args = parser.parse_args(argv)
    names = [f"bench-{i}" for i in range(1, max(4, args.nodes) + 1)]
    try:
        report = run(max(4, args.nodes), max(1, args.rounds))
    finally:
        harness.down([*(f"bench-floor-{i}" for i in range(1, 5)), *names])
    OUTPUT.parent.mkdir(exist_ok=True)
    text = report.markdown()
    # `python -m bench.fanout` writes a section of its own here: it stays.
    fanout = section(OUTPUT.read_text(), FANOUT_HEADING) if OUTPUT.exists() else None
    OUTPUT.write_text(replace_section(text, FANOUT_HEADING, fanout) if fanout else text)
    print(f"wrote {OUTPUT.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench`: run the five benchmarks on local VMs and write docs/benchmarks.md.

1. First converge of a fresh node, against bench/floor.sh doing the same work by hand in one
   SSH session (same mirror, same files).
2. The no-op rerun: wall time, remote commands (sshd's own log), changes, containerd's MainPID.
3. Fan-out: first converge of 1 and of 4 nodes at once; no-op reruns on 1, 4 and 8 nodes.
4. Upstream bytes: what the mirror served for 4 nodes, each fetching (artifact_source=node)
   and through the controller's cache (artifact_source=controller).
5. The controller's peak memory (max RSS of the pyinfra process) for 1, 4 and 8 nodes.
"""

import argparse
import functools
import json
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

from .measure import FLOORS, Report, artifact_sets, remote_commands

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


def deploy(names: list[str], data: dict) -> dict:
    """One pyinfra run against `names` at once: wall seconds, peak RSS, results, exit code."""
    command = [sys.executable, "-m", "pyinfra", "inventories/local.py", "deploy.py", "-y", "--json"]
    for name in names:
        command += ["--limit", name]
    for key, value in data.items():
        command += ["--data", f"{key}={value}"]
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"deploy to {', '.join(names)} failed ({code}):\n{stderr[-4000:]}")
    return {"wall": wall, "max_rss_mb": usage.ru_maxrss / 1024, "results": json.loads(stdout)}


def main_pid(node: vm.Node) -> str:
    return node.ssh("systemctl show -p MainPID --value containerd").stdout.strip()


def floor(node: vm.Node, data: dict, unit: str) -> float:
    """bench/floor.sh over one fresh SSH connection (no shared master: pyinfra pays a handshake too)."""
    exports = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in {
        "MIRROR": data["artifact_mirror"], "CONTAINERD_VERSION": data["containerd_version"],
        "CONTAINERD_SHA256": data["containerd_sha256"], "RUNC_VERSION": data["runc_version"],
        "RUNC_SHA256": data["runc_sha256"], "UNIT": unit}.items())
    command = ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none", *vm.ssh_options(node.port),
               "root@127.0.0.1", "sh -s"]
    started = time.monotonic()
    result = subprocess.run(command, input=exports + FLOOR_SCRIPT.read_text(), text=True, capture_output=True,
                            timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"bench/floor.sh failed on {node.name}:\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next(line.split(":", 1)[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    pyinfra_version = subprocess.run([sys.executable, "-m", "pyinfra", "--version"], capture_output=True,
                                     text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": f"{os.cpu_count()} ({cpu})",
            "memory": memory, "hypervisor": f"{qemu}, TCG (no KVM), {vm.CPUS} vCPUs and {vm.MEMORY_MB} MiB per VM",
            "nodes": f"Debian 13, containerd and runc from Debian's packages in upstream's release layout",
            "controller": f"Python {platform.python_version()}, {pyinfra_version}"}


def run(max_nodes: int) -> Report:
    release = mirror.release(SUITE)
    report = Report(machine())
    names = [f"bench-{i}" for i in range(1, max_nodes + 1)]
    nodes = {}

    def boot(wanted: list[str]) -> None:
        """Nodes are booted when a measure needs them: idle TCG VMs still take CPU."""
        for started in harness.up(wanted, SUITE):
            # One log line per command a client runs: the count of remote commands.
            started.ssh("echo 'LogLevel VERBOSE' > /etc/ssh/sshd_config.d/bench.conf && systemctl reload ssh")
            nodes[started.name] = started

    with CountingMirror() as counting:
        boot(["bench-floor", names[0]])
        data = {"artifact_mirror": counting.url_for_guests(), "containerd_version": release.containerd_version,
                "containerd_sha256": release.containerd_sha256, "runc_version": release.runc_version,
                "runc_sha256": release.runc_sha256}
        set_bytes = sum(path.stat().st_size for path in (mirror.containerd_tarball_path(release.containerd_version),
                                                         mirror.runc_binary_path(release.runc_version)))

        # 1. First converge against the floor.
        from tasks.configure import unit_text
        floor_seconds = floor(nodes["bench-floor"], data, unit_text("/usr/local/bin"))
        counting.take()
        one = deploy(names[:1], data)
        ratio = one["wall"] / floor_seconds
        report.add("First converge, 1 node", f"{one['wall']:.1f} s vs {floor_seconds:.1f} s by hand: {ratio:.2f}x",
                   f"≤ {FLOORS['first_converge_ratio']}x", ratio <= FLOORS["first_converge_ratio"])

        # 2. The no-op rerun.
        first = nodes[names[0]]
        pid, since = main_pid(first), int(first.ssh("date +%s").stdout)
        time.sleep(1.5)  # the log from the next whole second on holds only the deploy's connection
        noop = deploy(names[:1], data)
        journal = first.ssh(f"journalctl -u ssh --since @{since + 1} -o cat --no-pager").stdout
        commands = remote_commands(journal)
        changes = len(changed_ops(noop["results"], names[0]))
        same_pid = main_pid(first) == pid
        report.add("No-op rerun, 1 node", f"{noop['wall']:.1f} s; {commands} remote commands; {changes} changes; "
                   f"MainPID {'unchanged' if same_pid else 'CHANGED'}",
                   f"0 changes, no restart, ≤ {FLOORS['noop_remote_commands']} commands",
                   changes == 0 and same_pid and commands <= FLOORS["noop_remote_commands"])

        # 3 and 4. Four nodes at once, each fetching, then through the controller's cache.
        harness.down(["bench-floor"])
        boot(names[1:4])
        fan = names[:4]
        deploy(fan[:1], {**data, "containerd_state": "purged"})
        counting.take()
        four = deploy(fan, data)
        served_node = artifact_sets(counting.take(), set_bytes)
        fan_ratio = four["wall"] / one["wall"]
        report.add("First converge, 4 nodes at once", f"{four['wall']:.1f} s: {fan_ratio:.2f}x one node",
                   f"≤ {FLOORS['fanout_ratio']}x (VMs not CPU-bound)", fan_ratio <= FLOORS["fanout_ratio"])
        report.add("Upstream bytes, 4 nodes, artifact_source=node", f"{served_node:.2f} artifact sets")
        deploy(fan, {**data, "containerd_state": "purged"})
        cache = tempfile.mkdtemp(prefix="bench-cache-")
        counting.take()
        # The controller reaches the mirror on its own loopback (the guests' 10.0.2.2).
        cached = deploy(fan, {**data, "artifact_source": "controller", "artifact_cache_dir": cache,
                              "artifact_mirror": f"http://127.0.0.1:{counting.port}"})
        served_cached = artifact_sets(counting.take(), set_bytes)
        shutil.rmtree(cache, ignore_errors=True)
        report.add("Upstream bytes, 4 nodes, artifact_source=controller", f"{served_cached:.2f} artifact sets "
                   f"({cached['wall']:.1f} s)", f"{FLOORS['upstream_artifact_sets']} set for any N",
                   round(served_cached, 2) <= FLOORS["upstream_artifact_sets"])

        # 3 and 5. No-op reruns at 1, 4 and 8 nodes; the controller's memory for each.
        if max_nodes > 4:
            boot(names[4:])
            deploy(names[4:], data)
        noops = {1: noop}
        for count in sorted({4, max_nodes}):
            noops[count] = deploy(names[:count], data)
        for count, result in noops.items():
            report.add(f"No-op rerun, {count} node{'s' if count > 1 else ''} at once",
                       f"{result['wall']:.1f} s ({result['wall'] / noop['wall']:.2f}x one node); "
                       f"controller peak RSS {result['max_rss_mb']:.0f} MiB")
        report.add("Controller peak RSS, first converge", f"1 node {one['max_rss_mb']:.0f} MiB; "
                   f"4 nodes {four['max_rss_mb']:.0f} MiB; 4 through the cache {cached['max_rss_mb']:.0f} MiB")
        busy = os.getloadavg()[0]
        report.notes.append(
            f"{os.cpu_count()} host CPUs run every VM under TCG (load average at the end: {busy:.1f}). A first "
            "converge is CPU-bound inside the guests (gunzip and sha256 of ~110 MB of binaries), so 4 converging "
            "VMs on these CPUs measure the host as much as the deploy. Even a no-op rerun costs each guest CPU "
            "(an SSH handshake and a few Go binary starts under TCG), so the no-op fan-out is CPU-bound here "
            "too; the controller's share of it is not separated yet.")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8, help="the largest fan-out (at least 4)")
    args = parser.parse_args(argv)
    names = [f"bench-{i}" for i in range(1, max(4, args.nodes) + 1)]
    try:
        report = run(max(4, args.nodes))
    finally:
        harness.down(["bench-floor", *names])
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(report.markdown())
    print(f"wrote {OUTPUT.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

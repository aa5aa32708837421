"""Rolling a fleet out in batches: a canary, then batches of a count or a
percentage of the hosts, each its own pyinfra run (deployed and verified completely) before the
next starts. The rollout stops at the first batch whose failures pass the allowance, names the
failed hosts and why, and leaves the later batches untouched.

pyinfra runs each operation on every host of a run before the next operation (`--serial` only
serialises each operation), so one run over the whole fleet would install a release everywhere
before restarting anywhere; batches of separate runs are how a bad release is stopped early.

    python -m containerd_deploy.rollout inventories/prod.py deploy.py --canary 1 --batch 25% [-- --data k=v ...]

Each run drains and uncordons through the restart hooks and rolls a node back on its own
(controller/hooks.py, remote/rollback.py); here a failed host only counts against its batch.
"""

import argparse
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from containerd_deploy.conformance import inventory as inventories
from containerd_deploy.data.values import redact_secrets
from containerd_deploy.deploy.report import said_of_hosts

# What a batch run reports: host -> why it failed (hosts not named succeeded).
BatchRun = Callable[[list[str]], dict[str, str]]


class RolloutError(ValueError):
    """A rollout option that cannot be used; the message says which and the fix."""


def batch_size(spec: str | int, total: int) -> int:
    """Hosts per batch from `spec`: a count ("3") or a percentage of `total` ("25%", rounded up)."""
    text = str(spec).strip()
    if re.fullmatch(r"[0-9]+", text) and int(text) > 0:
        return int(text)
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)%", text)
    if match and 0 < float(match[1]) <= 100:
        return max(1, math.ceil(total * float(match[1]) / 100))
    raise RolloutError(
        f"--batch {spec!r}: give a number of hosts (e.g. 3) or a percentage of them (e.g. 25%)"
    )


def plan(hosts: Sequence[str], batch: str | int, canary: int = 1) -> list[list[str]]:
    """The batches, in inventory order: the first `canary` hosts alone, then the rest in batches
    of `batch` (a percentage counts all hosts, the canary included)."""
    if canary < 0:
        raise RolloutError(f"--canary {canary}: give 0 (no canary) or a number of hosts")
    size = batch_size(batch, len(hosts))
    batches = [list(hosts[:canary])] if canary and hosts else []
    rest = list(hosts[canary:])
    batches += [rest[start : start + size] for start in range(0, len(rest), size)]
    return batches


def past_allowance(failed: int, size: int, max_fail_percent: float) -> bool:
    """True when `failed` of `size` hosts is more than the allowed percentage (0: any failure)."""
    return failed * 100 > max_fail_percent * size


def allowance(percent: float) -> float:
    """The failed hosts a batch may have, in percent of it: from 0 to 100."""
    if not 0 <= percent <= 100:  # NaN too
        raise RolloutError(f"--max-fail-percent {percent:g}: give a percentage from 0 to 100 (e.g. 10)")
    return percent + 0.0  # -0 is 0


def fail_percent(text: str) -> float:
    """`--max-fail-percent` as argparse reads it."""
    try:
        return allowance(float(text))
    except ValueError:  # RolloutError too
        raise argparse.ArgumentTypeError(f"{text!r}: give a percentage from 0 to 100 (e.g. 10)") from None


@dataclass
class Outcome:
    done: list = field(default_factory=list)  # batches run, each a list of hosts
    failed: dict = field(default_factory=dict)  # host -> why, over every batch run
    stopped_at: int | None = None  # index of the batch that stopped the rollout
    untouched: list = field(default_factory=list)  # hosts of the batches never run

    @property
    def ok(self) -> bool:
        return self.stopped_at is None and not self.failed


def roll_out(
    batches: list[list[str]],
    run_batch: BatchRun,
    max_fail_percent: float = 0,
    say: Callable[[str], None] = print,
) -> Outcome:
    """Run each batch after the one before it; stop after the first one past the allowance."""
    max_fail_percent = allowance(max_fail_percent)
    outcome = Outcome()
    for index, hosts in enumerate(batches):
        say(f"rollout: batch {index + 1}/{len(batches)}: {', '.join(hosts)}")
        failed = run_batch(hosts)
        outcome.done.append(hosts)
        outcome.failed.update(failed)
        for host, why in sorted(failed.items()):
            say(f"rollout: {host} failed: {why}")
        if past_allowance(len(failed), len(hosts), max_fail_percent):
            outcome.stopped_at = index
            outcome.untouched = [host for later in batches[index + 1 :] for host in later]
            say(
                f"rollout: stopped after batch {index + 1}: {len(failed)} of {len(hosts)} failed "
                f"(allowed: {max_fail_percent:g}%); not touched: {', '.join(outcome.untouched) or 'none'}"
            )
            break
    return outcome


# pyinfra's progress lines about a host that say nothing of why it failed.
PROGRESS = re.compile(r"(Connected|Ready: .*|Success|No changes|Error: executed \d+ commands?|Skipped)$")


def host_said(host: str, stderr: str) -> str | None:
    """The last line pyinfra printed as `[host] …` that is not progress (e.g. the deploy's own
    error message), or None."""
    said = None
    for line in stderr.splitlines():
        text = line.strip()
        if text.startswith(f"[{host}] "):
            message = text[len(host) + 3 :].strip()
            if message and not PROGRESS.fullmatch(message):
                said = redact_secrets(message)
    return said


def failed_hosts(hosts: list[str], returncode: int, stdout: str, stderr: str) -> dict[str, str]:
    """host -> why, from one pyinfra `--json` run over `hosts`: the run's own report of a failed
    host when it printed one (deploy/report.py), else what pyinfra said."""
    failed = _failed_hosts(hosts, returncode, stdout, stderr)
    reported = said_of_hosts(stderr)
    return {host: redact_secrets(reported.get(host, why)) for host, why in failed.items()}


def _failed_hosts(hosts: list[str], returncode: int, stdout: str, stderr: str) -> dict[str, str]:
    try:
        results = json.loads(stdout)["results"]
    except (ValueError, KeyError, TypeError):
        results = None
    if results is None:
        if returncode == 0:
            return {}
        # No JSON: the run stopped (every host failed, or a refusal at prepare): the whole batch
        # failed, each host with the last thing pyinfra said of it, else pyinfra's last word.
        last = (
            redact_secrets(stderr.strip().splitlines()[-1].strip())
            if stderr.strip()
            else f"pyinfra exited {returncode}"
        )
        return {host: host_said(host, stderr) or last for host in hosts}
    failed: dict[str, str] = {}
    for operation in results.get("operations", []):
        for host in operation.get("error", []):
            said = host_said(host, stderr)
            failed.setdefault(
                host,
                redact_secrets(f"operation failed: {operation.get('name', '?')}")
                + (f" ({said})" if said else ""),
            )
    for host in results.get("failed_hosts", []):
        failed.setdefault(host, "pyinfra marked it failed")
    if returncode and not failed:
        return dict.fromkeys(hosts, f"pyinfra exited {returncode}")
    return failed


def exact_limit(name: str) -> str:
    """A `--limit` pattern that selects the host called `name` and nothing else. pyinfra reads a
    pattern as a group's name first, then as a glob: a host called like a group selected the
    whole group, and `node[1]` selected `node1`. Each character a glob reads (and the first one
    a bracket can hold, so that no group is ever named by the pattern) goes in brackets: it then
    matches only itself."""
    first = next((index for index, char in enumerate(name) if char not in "!]"), None)
    return "".join(
        f"[{char}]" if char in "*?[" or index == first else char for index, char in enumerate(name)
    )


def pyinfra_batches(inventory: str, deploy: str, extra: Sequence[str] = ()) -> BatchRun:
    """Each batch as one pyinfra CLI run limited to exactly its hosts."""

    def run(hosts: list[str]) -> dict[str, str]:
        limits = [arg for host in hosts for arg in ("--limit", exact_limit(host))]
        process = subprocess.run(
            [sys.executable, "-m", "pyinfra", inventory, deploy, "-y", "--json", *limits, *extra],
            capture_output=True,
            text=True,
        )
        return failed_hosts(hosts, process.returncode, process.stdout, process.stderr)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m containerd_deploy.rollout",
        description="Deploy a fleet in batches: a canary, then batches, stopping at the first failed one.",
    )
    parser.add_argument("inventory", help="the pyinfra inventory file, e.g. inventories/prod.py")
    parser.add_argument("deploy", help="the deploy file (or module) pyinfra runs, e.g. deploy.py")
    parser.add_argument(
        "--batch", default="25%", help="hosts per batch: a number, or a percentage (default 25%%)"
    )
    parser.add_argument(
        "--canary", type=int, default=1, help="hosts in the first batch, alone (default 1; 0: none)"
    )
    parser.add_argument(
        "--max-fail-percent",
        type=fail_percent,
        default=0,
        help="failed hosts a batch may have and the rollout go on, in percent of the batch (default 0)",
    )
    parser.add_argument("--limit", default=None, help="only these hosts or groups (comma-separated, globs)")
    args, extra = parser.parse_known_args(argv)
    extra = [arg for arg in extra if arg != "--"]
    try:
        hosts = [name for name, _, _ in inventories.select(inventories.load(args.inventory), args.limit)]
        batches = plan(hosts, args.batch, args.canary)
    except (RolloutError, ValueError) as error:
        parser.error(str(error))
    if not batches:
        parser.error(f"no hosts in {args.inventory} match --limit={args.limit}")
    outcome = roll_out(batches, pyinfra_batches(args.inventory, args.deploy, extra), args.max_fail_percent)
    if outcome.ok:
        print(f"rollout: all {len(hosts)} hosts done in {len(batches)} batches")
    elif outcome.stopped_at is None:
        print(f"rollout: every batch ran; failed within the allowance: {', '.join(sorted(outcome.failed))}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""`make mutation`: after `mutmut run` (the unit tests alone against each mutant of tasks/), the
verdicts per module, written to docs/mutation.md; exits non-zero when a module held to a floor
is below it, or when the run did not check every mutant (the report then says so and counts
what it did not check)."""

import json
import sys
from collections import Counter
from datetime import date
from importlib.metadata import version
from pathlib import Path

from tests.harness.paths import REPO_ROOT

MUTANTS = REPO_ROOT / "mutants" / "tasks"
REPORT = REPO_ROOT / "docs" / "mutation.md"
# The modules whose logic decides what changes on a node and when it restarts.
FLOORS = {
    "node.py": 0.90,
    "service.py": 0.90,
    "operations.py": 0.90,
    "configure.py": 0.90,
    "settings.py": 0.90,
}

# mutmut's exit codes (mutmut/stats.py): a failing test kills; so does a hang (timeout, SIGXCPU).
KILLED = {1, 3, 36, 37, 24, -24, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUTS = {36, 24, -24, 152, 255}


def verdicts(meta: Path) -> Counter:
    counts: Counter = Counter()
    for code in json.loads(meta.read_text())["exit_code_by_key"].values():
        if code is None:
            counts["not checked"] += 1
        elif code in KILLED:
            counts["killed"] += 1
            counts["timeout"] += code in TIMEOUTS
        elif code in SURVIVED:
            counts["survived"] += 1
        elif code in NO_TESTS:
            counts["no tests"] += 1
        else:
            counts["suspicious"] += 1
    return counts


def judged(counts: Counter) -> int:
    return counts["killed"] + counts["survived"] + counts["no tests"] + counts["suspicious"]


def kill_rate(counts: Counter) -> float:
    return counts["killed"] / judged(counts) if judged(counts) else 1.0


def shown_rate(counts: Counter) -> str:
    return f"{kill_rate(counts):.0%}" if judged(counts) else "not run"


def report(by_module: dict[str, Counter]) -> str:
    unchecked = sum(counts["not checked"] for counts in by_module.values())
    lines = [
        "# Mutation testing",
        "",
        *(
            [f"**Incomplete run: {unchecked} mutants not checked yet** (rates are of those checked).", ""]
            if unchecked
            else []
        ),
        f"`make mutation` ({date.today()}, mutmut {version('mutmut')}): every mutant of `tasks/` run against",
        "the unit tests alone (no VM). Killed counts mutants a test failed on, or that hung (timeout);",
        "the kill rate is killed / (killed + survived + no test reached it). A floor is the least",
        "kill rate the module is held to; `make mutation` fails below it.",
        "",
        "| module | mutants | killed | of them timeouts | survived | no tests | not checked | kill rate | floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    total: Counter = Counter()
    for name, counts in sorted(by_module.items()):
        total.update(counts)
        floor = FLOORS.get(name)
        lines.append(
            f"| `{name}` | {sum(counts[k] for k in ('killed', 'survived', 'no tests', 'suspicious'))} "
            f"| {counts['killed']} | {counts['timeout']} | {counts['survived']} | {counts['no tests']} "
            f"| {counts['not checked']} | {shown_rate(counts)} | {f'{floor:.0%}' if floor else ''} |"
        )
    lines.append(
        f"| all | {sum(total[k] for k in ('killed', 'survived', 'no tests', 'suspicious'))} | {total['killed']} "
        f"| {total['timeout']} | {total['survived']} | {total['no tests']} | {total['not checked']} "
        f"| {shown_rate(total)} | |"
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    metas = sorted(MUTANTS.rglob("*.py.meta"))
    if not metas:
        print(
            "no mutmut results under mutants/: run `mutmut run` first (make mutation does)", file=sys.stderr
        )
        return 2
    by_module = {str(meta.relative_to(MUTANTS))[: -len(".meta")]: verdicts(meta) for meta in metas}
    REPORT.write_text(report(by_module))
    print(REPORT.read_text())
    unchecked = sum(counts["not checked"] for counts in by_module.values())
    if unchecked:
        print(f"{unchecked} mutants were not checked: the run stopped early", file=sys.stderr)
        return 2
    below = [
        f"{name}: {kill_rate(by_module[name]):.0%} < {floor:.0%}"
        for name, floor in FLOORS.items()
        if name in by_module and judged(by_module[name]) and kill_rate(by_module[name]) < floor
    ]
    for line in below:
        print(f"below its floor: {line} (see `mutmut results`, `mutmut show <name>`)", file=sys.stderr)
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())

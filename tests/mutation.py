"""Mutation testing of the package (tasks/containerd_deploy) against the unit tests alone (mutmut).

mutmut names a mutant by its file's path, and activates it only when that name is the module's
import name: it runs in a workspace (`.mutation/`, a copy of the tree kept in step) where the
package sits at the top, as `containerd_deploy/`.

`python -m tests.mutation run` (`make mutation`): every mutant, incrementally (a function whose
code is unchanged keeps its verdict).

`python -m tests.mutation report` (`make mutation`, after a whole `mutmut run` and `recheck`,
which runs the mutants no test killed again against today's tests): the
verdicts per module into docs/mutation.md, and the baseline — each function's hash and
the mutants no unit test kills — into tests/mutation_baseline.json.
Fails when a decision module is below its floor, or the run did not check every mutant.

`python -m tests.mutation sample` (in `make test`, a few minutes): mutants of the decision modules
up to a budget of test time — every mutant of a function changed since the baseline first, then
the others in an order drawn from the commit — run against the unit tests. Fails when the changed
functions' mutants are killed below the floor (new logic without a test that checks it), or when
a mutant the baseline saw killed survives (a test lost its grip).
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from importlib.metadata import version
from pathlib import Path

from tests.harness.paths import REPO_ROOT

PACKAGE = "containerd_deploy"
WORKSPACE = REPO_ROOT / ".mutation"
MUTANTS = WORKSPACE / "mutants"


def workspace_entries() -> tuple[str, ...]:
    """What the workspace holds besides the package at its top: the tree as the unit tests read
    it (pyproject's also_copy, which mutmut copies on into mutants/), the tests and pyproject."""
    import tomllib

    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return tuple(
        dict.fromkeys(["tests", "pyproject.toml", *(entry.rstrip("/") for entry in config["also_copy"])])
    )


REPORT = REPO_ROOT / "docs" / "mutation.md"
BASELINE = REPO_ROOT / "tests" / "mutation_baseline.json"
MUTMUT = Path(sys.executable).with_name("mutmut")
FLOOR = 0.90
# The modules whose logic decides what changes on a node, when it restarts, and what a run or
# a rollout reports; each is held to FLOOR.
# mutmut leaves functions under a decorator alone, so the deploy's steps (@deploy) and the
# verify operation are not here: what they decide is plan/'s, held to the floor.
DECISION_MODULES = (
    "deploy/node.py",
    "deploy/reset.py",
    "deploy/report.py",
    "operations/__init__.py",
    "operations/release.py",
    "operations/files.py",
    "operations/service.py",
    "operations/verify.py",
    "plan/run.py",
    "plan/files.py",
    "plan/verdict.py",
    "data/config_toml.py",
    "data/images.py",
    "controller/images.py",
    "operations/images.py",
    "remote/scripts.py",
    "controller/hooks.py",
    "controller/verified.py",
    "controller/read_files.py",
    "data/settings.py",
    "data/registries.py",
    "data/hooks.py",
    "facts/daemon.py",
    "remote/daemon_state.py",
    "remote/container_check.py",
    "remote/lock.py",
    "remote/rollback.py",
    "rollout.py",
    "cloud_init.py",
)

# mutmut's exit codes (mutmut/stats.py): a failing test kills; so does a hang (timeout, SIGXCPU)
# and a mutant the type checker rejects.
KILLED = {1, 3, 36, 37, 24, -24, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUTS = {36, 24, -24, 152, 255}
# mutmut has no generate-only command: a run filtered to this name (no mutant has it) makes
# every mutant and the tests' stats, then stops at its filter.
NO_SUCH_MUTANT = "containerd_deploy.no_such_module.x_generate_only__mutmut_0"


def verdict(code: int | None) -> str:
    if code is None:
        return "not checked"
    if code in KILLED:
        return "killed"
    if code in SURVIVED:
        return "survived"
    return "no tests" if code in NO_TESTS else "suspicious"


def function_of(mutant: str) -> str:
    """`containerd_deploy.rollout.x_main__mutmut_7` -> `containerd_deploy.rollout.x_main` (mutmut's name
    for the function)."""
    return mutant.rsplit("__mutmut_", 1)[0]


@dataclass
class Module:
    """One module's mutmut data: each mutant's exit code, each function's hash."""

    name: str
    codes: dict[str, int | None]
    hashes: dict[str, str]


def modules() -> dict[str, Module]:
    found = {}
    for meta in sorted((MUTANTS / PACKAGE).rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        name = str(meta.relative_to(MUTANTS / PACKAGE))[: -len(".meta")]
        parts = [PACKAGE, *name[: -len(".py")].split("/")]
        dotted = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)  # as mutmut names it
        hashes = {
            f"{dotted}.{function}": digest for function, digest in data["hash_by_function_name"].items()
        }
        found[name] = Module(name, data["exit_code_by_key"], hashes)
    return found


def counts_of(codes) -> Counter:
    counts: Counter = Counter()
    for code in codes:
        counts[verdict(code)] += 1
        counts["timeout"] += code in TIMEOUTS
    return counts


def mutant_count(counts: Counter) -> int:
    return judged(counts) + counts["not checked"]


def judged(counts: Counter) -> int:
    return counts["killed"] + counts["survived"] + counts["no tests"] + counts["suspicious"]


def kill_rate(counts: Counter) -> float:
    return counts["killed"] / judged(counts) if judged(counts) else 1.0


def shown_rate(counts: Counter) -> str:
    if judged(counts):
        return f"{kill_rate(counts):.0%}"
    return "not run" if counts["not checked"] else "no mutants"


# --- report: the whole run ---


def report_text(by_module: dict[str, Counter]) -> str:
    unchecked = sum(counts["not checked"] for counts in by_module.values())
    lines = [
        "# Mutation testing",
        "",
        *(
            [f"**Incomplete run: {unchecked} mutants not checked yet** (rates are of those checked).", ""]
            if unchecked
            else []
        ),
        f"`make mutation` ({date.today()}, mutmut {version('mutmut')}): every mutant of `tasks/containerd_deploy/` run against",
        "the unit tests alone (no VM). Killed counts mutants a test failed on, or that hung (timeout);",
        "the kill rate is killed / (killed + survived + no test reached it). A floor is the least",
        "kill rate the module is held to; `make mutation` fails below it. The mutants no test kills",
        "are listed in `tests/mutation_baseline.json`; `make test` runs a sample (docs/unit-and-mutation-tests.md).",
        "",
        "| module | mutants | killed | of them timeouts | survived | no tests | not checked | kill rate | floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    total: Counter = Counter()
    for name, counts in sorted(by_module.items()):
        total.update(counts)
        floor = f"{FLOOR:.0%}" if name in DECISION_MODULES else ""
        lines.append(
            f"| `{name}` | {mutant_count(counts)} | {counts['killed']} | {counts['timeout']} | {counts['survived']} "
            f"| {counts['no tests']} | {counts['not checked']} | {shown_rate(counts)} | {floor} |"
        )
    lines.append(
        f"| all | {mutant_count(total)} | {total['killed']} | {total['timeout']} | {total['survived']} "
        f"| {total['no tests']} | {total['not checked']} | {shown_rate(total)} | |"
    )
    return "\n".join(lines) + "\n"


def baseline_of(found: dict[str, Module]) -> dict:
    return {
        "functions": {
            function: digest
            for module in found.values()
            for function, digest in sorted(module.hashes.items())
        },
        "not_killed": sorted(
            mutant
            for module in found.values()
            for mutant, code in module.codes.items()
            if verdict(code) in ("survived", "no tests", "suspicious")
        ),
    }


def report() -> int:
    found = modules()
    if not found:
        print("no mutmut results under .mutation/mutants/: run `make mutation` first", file=sys.stderr)
        return 2
    by_module = {name: counts_of(module.codes.values()) for name, module in found.items()}
    REPORT.write_text(report_text(by_module))
    print(REPORT.read_text())
    unchecked = sum(counts["not checked"] for counts in by_module.values())
    if unchecked:
        print(f"{unchecked} mutants were not checked: the run stopped early", file=sys.stderr)
        return 2
    BASELINE.write_text(json.dumps(baseline_of(found), indent=1, sort_keys=True) + "\n")
    below = [
        f"{name}: {kill_rate(by_module[name]):.0%} < {FLOOR:.0%}"
        for name in DECISION_MODULES
        if name in by_module and kill_rate(by_module[name]) < FLOOR
    ]
    for line in below:
        print(
            f"below its floor: {line} (see `cd .mutation && ../.venv/bin/mutmut show <name>`)",
            file=sys.stderr,
        )
    return 1 if below else 0


# --- sample: the stage in `make test` ---


@dataclass
class Sample:
    changed: list[str] = field(default_factory=list)  # mutants of functions changed since the baseline
    unchanged: list[str] = field(default_factory=list)
    estimated_seconds: float = 0.0
    changed_left_out: int = 0  # mutants of changed functions past the budget


def draw(
    found: dict[str, Module], baseline: dict, cost: dict[str, float], budget: float, seed: str
) -> Sample:
    """Mutants of the decision modules up to `budget` seconds of estimated test time: those of
    changed (or new) functions first, then the rest, each part shuffled by `seed`."""
    order = random.Random(seed)
    old = baseline["functions"]
    changed, unchanged = [], []
    missing = [name for name in DECISION_MODULES if name not in found]
    if missing:
        raise SystemExit(f"mutation sample: no mutants of {', '.join(missing)}: moved? (DECISION_MODULES)")
    for name in DECISION_MODULES:
        module = found[name]
        for mutant in sorted(module.codes):
            function = function_of(mutant)
            (unchanged if old.get(function) == module.hashes.get(function) else changed).append(mutant)
    order.shuffle(changed)
    order.shuffle(unchanged)
    sample = Sample()
    for part, mutants in ((sample.changed, changed), (sample.unchanged, unchanged)):
        for mutant in mutants:
            if sample.estimated_seconds + cost[mutant] > budget:
                sample.changed_left_out = len(changed) - len(sample.changed)
                return sample
            sample.estimated_seconds += cost[mutant]
            part.append(mutant)
    return sample


def judge(sample: Sample, codes: dict[str, int | None], baseline: dict) -> list[str]:
    """What fails the stage: the changed functions' mutants killed below FLOOR, and each mutant
    the baseline saw killed that survives now."""
    problems = []
    unchecked = [mutant for mutant in sample.changed + sample.unchanged if codes[mutant] is None]
    if unchecked:
        problems.append(f"{len(unchecked)} sampled mutants were not checked (the run stopped early)")
    changed = counts_of(codes[mutant] for mutant in sample.changed)
    if kill_rate(changed) < FLOOR:
        left = [mutant for mutant in sample.changed if verdict(codes[mutant]) != "killed"]
        problems.append(
            f"mutants of changed functions killed: {changed['killed']} of {judged(changed)} "
            f"({kill_rate(changed):.0%} < {FLOOR:.0%}); not killed: {' '.join(left)}"
        )
    known = set(baseline["not_killed"])
    for mutant in sample.unchanged:
        if verdict(codes[mutant]) in ("survived", "no tests", "suspicious") and mutant not in known:
            problems.append(f"{mutant} was killed at the baseline and is not now: a test lost its grip")
    return problems


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    except OSError:
        return "no-commit"
    return head.stdout.strip() or "no-commit"


def forget(mutants: list[str]) -> None:
    """Clear mutmut's verdicts of `mutants`, so a run that stops early leaves them unchecked
    rather than judged by an older run."""
    wanted = set(mutants)
    for meta in (MUTANTS / PACKAGE).rglob("*.py.meta"):
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        if wanted & set(codes):
            codes.update({mutant: None for mutant in wanted & set(codes)})
            meta.write_text(json.dumps(data))


def sync(source: Path, target: Path) -> None:
    """Make `target` a copy of `source` (a file or a tree), copying only what differs and keeping
    modification times: mutmut remakes a module's mutants only when its source is newer."""
    if source.is_file():
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.is_symlink():
            target.unlink()
        if not target.is_file() or (target.stat().st_mtime, target.stat().st_size) != (
            source.stat().st_mtime,
            source.stat().st_size,
        ):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        return
    if target.is_file() or target.is_symlink():
        target.unlink()
    target.mkdir(parents=True, exist_ok=True)
    wanted = {entry.name for entry in source.iterdir() if entry.name != "__pycache__"}
    for entry in target.iterdir():
        if entry.name not in wanted and entry.name != "__pycache__":
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for name in sorted(wanted):
        sync(source / name, target / name)


def prepare_workspace() -> None:
    """The tree as mutmut needs it: the package at the top, everything the unit tests read beside it."""
    for entry in workspace_entries():
        if (REPO_ROOT / entry).exists():
            sync(REPO_ROOT / entry, WORKSPACE / entry)
    sync(REPO_ROOT / "tasks" / PACKAGE, WORKSPACE / PACKAGE)
    MUTANTS.mkdir(exist_ok=True)
    # mutmut maps tests to functions only for tests it has not seen, and never for a function
    # that moved or was renamed since: today's tests, mapped afresh (the verdicts stay).
    (MUTANTS / "mutmut-stats.json").unlink(missing_ok=True)
    # mutmut copies the rest of the tree into mutants/ over what an older run left: let it copy afresh.
    for entry in workspace_entries():
        stale = MUTANTS / entry
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    # A module or file moved or removed leaves its copy (and a module its verdicts) behind: drop them.
    for mutated in list((MUTANTS / PACKAGE).rglob("*")):
        source = WORKSPACE / PACKAGE / mutated.relative_to(MUTANTS / PACKAGE)
        if mutated.name.endswith((".py.meta", ".py.spans")):
            source = source.with_name(source.name.rsplit(".", 1)[0])
        if mutated.is_file() and "__pycache__" not in mutated.parts and not source.exists():
            mutated.unlink()
    # mutmut copies the package's other files (its data) once and never again: keep them current.
    for path in (WORKSPACE / PACKAGE).rglob("*"):
        if path.is_file() and path.suffix != ".py" and "__pycache__" not in path.parts:
            sync(path, MUTANTS / path.relative_to(WORKSPACE))


# mutmut first runs the tests of the mutants it is given unmutated ("clean tests"). The sample
# runs mutmut just after mutmut's stats run, which ran every test unmutated and stops on any
# failure: there that is a minute of CPU spent again. mutmut (pinned) has no option for it.
WITHOUT_CLEAN_RUN = """\
import sys
import mutmut.__main__ as main
made_by = main.get_mutant_runner
def runner(*args, **kwargs):
    made = made_by(*args, **kwargs)
    made.run_clean_tests = lambda tests: 0
    return made
main.get_mutant_runner = runner
sys.argv[0] = "mutmut"
main.cli()
"""


def mutmut(*args: str, log: Path, clean_run: bool = True) -> subprocess.CompletedProcess:
    """mutmut in a process group of its own, which is killed when it is done: a test it stopped
    at its timeout (a mutant that made a node script loop) leaves that script's processes
    behind, spinning, in its group (found: a session-loop mutant's shell at 90% CPU for 10 min).
    `clean_run=False`: without its unmutated run of the mutants' tests (the stats run just did it)."""
    environment = dict(os.environ, CONTAINERD_DEPLOY_MUTATION="1")
    command = [str(MUTMUT)] if clean_run else [sys.executable, "-c", WITHOUT_CLEAN_RUN]
    with log.open("a") as out:
        process = subprocess.Popen(
            [*command, *args],
            cwd=WORKSPACE,
            env=environment,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        try:
            status = process.wait()
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return subprocess.CompletedProcess(process.args, status)


def run_all() -> int:
    """Every mutant not yet judged for its function's current code."""
    prepare_workspace()
    log = MUTANTS / "run.log"
    log.write_text("")
    result = mutmut("run", "--max-children", str(os.cpu_count() or 2), log=log)
    if result.returncode:
        print(log.read_text()[-4000:], file=sys.stderr)
    return result.returncode


def sample_stage(budget: float) -> int:
    started = time.monotonic()
    prepare_workspace()
    log = MUTANTS / "sample.log"
    log.write_text("")
    mutmut("run", NO_SUCH_MUTANT, log=log)
    if "nothing matches" not in log.read_text():
        print(log.read_text()[-4000:], file=sys.stderr)
        print("mutation sample: mutmut did not make the mutants (its output is above)", file=sys.stderr)
        return 2
    stats = json.loads((MUTANTS / "mutmut-stats.json").read_text())
    found = modules()
    cost = {
        mutant: 0.05  # a fork per mutant
        + sum(
            stats["duration_by_test"].get(test, 0.0)
            for test in stats["tests_by_mangled_function_name"].get(function_of(mutant), ())
        )
        for module in found.values()
        for mutant in module.codes
    }
    baseline = json.loads(BASELINE.read_text())
    seed = commit()
    sample = draw(found, baseline, cost, budget, seed)
    picked = sample.changed + sample.unchanged
    if not picked:  # mutmut given no names runs every mutant it has not checked: hours
        print(f"mutation sample: no mutant fits a budget of {budget:g} s", file=sys.stderr)
        return 2
    forget(picked)
    run = mutmut("run", "--max-children", str(os.cpu_count() or 2), *picked, log=log, clean_run=False)
    if run.returncode:
        print(log.read_text()[-4000:], file=sys.stderr)
        print(
            f"mutation sample: mutmut failed (exit status {run.returncode}); its output is above",
            file=sys.stderr,
        )
        return 2
    codes = {mutant: code for module in modules().values() for mutant, code in module.codes.items()}
    counts = counts_of(codes[mutant] for mutant in picked)
    print(
        f"mutation sample (commit {seed[:12]}, {time.monotonic() - started:.0f} s): {len(picked)} mutants of the "
        f"decision modules ({len(sample.changed)} of functions changed since the baseline"
        + (f", {sample.changed_left_out} more past the budget" if sample.changed_left_out else "")
        + "), "
        f"killed {counts['killed']}, survived {counts['survived']}, no tests {counts['no tests']}; "
        f"log: .mutation/mutants/sample.log"
    )
    problems = judge(sample, codes, baseline)
    for problem in problems:
        print(f"mutation sample: {problem}", file=sys.stderr)
    if problems:
        print(
            "mutation sample: see a mutant with `cd .mutation && ../.venv/bin/mutmut show <name>`; kill it with a test that "
            "checks what it changes. A mutant that cannot change behaviour: make the code plain, or mark "
            "the line `# pragma: no mutate` saying why. A function changed by what it calls or a "
            "constant it reads looks unchanged: `make mutation` takes a new baseline.",
            file=sys.stderr,
        )
    return 1 if problems else 0


def recheck() -> int:
    """mutmut keeps a verdict while the function's code is unchanged, even when tests were added
    since: run every mutant no test killed once more against today's tests."""
    names = [
        mutant
        for module in modules().values()
        for mutant, code in module.codes.items()
        if verdict(code) in ("survived", "no tests", "suspicious")
    ]
    if not names:
        return 0
    prepare_workspace()
    log = MUTANTS / "recheck.log"
    log.write_text("")
    result = mutmut("run", "--max-children", str(os.cpu_count() or 2), *names, log=log)
    if result.returncode:
        print(log.read_text()[-4000:], file=sys.stderr)
    return result.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="every mutant whose function changed since it was judged (incremental)")
    commands.add_parser("recheck", help="run every mutant no test killed again, against today's tests")
    commands.add_parser("report", help="after a whole `mutmut run`: docs/mutation.md and the baseline")
    sample = commands.add_parser("sample", help="a time-boxed sample of the decision modules' mutants")
    sample.add_argument(
        "--budget", type=float, default=400, help="seconds of estimated test time to sample (default 400)"
    )
    args = parser.parse_args(argv)
    if args.command == "sample":
        return sample_stage(args.budget)
    return {"run": run_all, "report": report, "recheck": recheck}[args.command]()


if __name__ == "__main__":
    sys.exit(main())

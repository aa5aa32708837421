"""The mutation stage of `make test` (tests/mutation.py): which mutants it draws within its
budget, and what fails it."""

import pytest

from tests.mutation import DECISION_MODULES, FLOOR, Module, Sample, draw, function_of, judge

OLD = {
    "containerd_deploy.controller.hooks.x_run": "aaa",
    "containerd_deploy.controller.hooks.x_parse": "bbb",
    "containerd_deploy.remote.lock.x_look": "ccc",
}


def found(run_hash: str = "aaa") -> dict[str, Module]:
    hooks = {f"containerd_deploy.controller.hooks.x_run__mutmut_{n}": None for n in range(1, 11)}
    hooks |= {f"containerd_deploy.controller.hooks.x_parse__mutmut_{n}": None for n in range(1, 11)}
    return {
        **{name: Module(name, {}, {}) for name in DECISION_MODULES},
        "controller/hooks.py": Module(
            "controller/hooks.py",
            hooks,
            {
                "containerd_deploy.controller.hooks.x_run": run_hash,
                "containerd_deploy.controller.hooks.x_parse": "bbb",
            },
        ),
        "remote/lock.py": Module(
            "remote/lock.py",
            {"containerd_deploy.remote.lock.x_look__mutmut_1": None},
            {"containerd_deploy.remote.lock.x_look": "ccc"},
        ),
        "data/values.py": Module(
            "data/values.py",
            {"containerd_deploy.data.values.x_q__mutmut_1": None},
            {"containerd_deploy.data.values.x_q": "d"},
        ),
    }


def test_a_mutants_function_is_its_name_before_the_mutant_number():
    assert function_of("containerd_deploy.rollout.x_main__mutmut_17") == "containerd_deploy.rollout.x_main"
    assert (
        function_of("containerd_deploy.controller.hooks.x__tail__mutmut_3")
        == "containerd_deploy.controller.hooks.x__tail"
    )


def test_changed_functions_come_first_and_the_budget_bounds_the_sample():
    nodes = found(run_hash="changed")
    cost = {mutant: 1.0 for module in nodes.values() for mutant in module.codes}
    sample = draw(nodes, {"functions": OLD}, cost, budget=12, seed="abc")
    assert sorted(sample.changed) == sorted(
        f"containerd_deploy.controller.hooks.x_run__mutmut_{n}" for n in range(1, 11)
    )
    assert len(sample.unchanged) == 2 and sample.estimated_seconds == 12 and sample.changed_left_out == 0
    short = draw(nodes, {"functions": OLD}, cost, budget=4, seed="abc")
    assert (len(short.changed), short.changed_left_out, short.unchanged) == (4, 6, [])
    assert not any(mutant.startswith("containerd_deploy.data.values.") for mutant in sample.unchanged), (
        "not a decision module"
    )
    assert draw(nodes, {"functions": OLD}, cost, 12, "abc") == sample, "the same commit draws the same"
    others = {tuple(draw(nodes, {"functions": OLD}, cost, 12, seed).unchanged) for seed in "abcdefgh"}
    assert len(others) > 1, "another commit draws others"
    unchanged = draw(found(), {"functions": OLD}, cost, 100, "abc")
    assert not unchanged.changed and len(unchanged.unchanged) == 21


def test_changed_functions_below_the_floor_fail_the_stage():
    sample = Sample(changed=[f"m__mutmut_{n}" for n in range(10)])
    codes = {mutant: 1 for mutant in sample.changed}
    assert judge(sample, codes, {"not_killed": []}) == []
    codes["m__mutmut_0"] = 0  # 90% killed: at the floor
    assert FLOOR == 0.90 and judge(sample, codes, {"not_killed": []}) == []
    codes["m__mutmut_1"] = 33  # no test reaches it: not killed either
    (problem,) = judge(sample, codes, {"not_killed": ["m__mutmut_0"]})
    assert "killed: 8 of 10 (80% < 90%); not killed: m__mutmut_0 m__mutmut_1" in problem


def test_a_mutant_the_baseline_saw_killed_that_survives_fails_the_stage():
    sample = Sample(unchanged=["a__mutmut_1", "b__mutmut_1", "c__mutmut_1"])
    codes = {"a__mutmut_1": 1, "b__mutmut_1": 0, "c__mutmut_1": 0}
    assert judge(sample, codes, {"not_killed": ["b__mutmut_1"]}) == [
        "c__mutmut_1 was killed at the baseline and is not now: a test lost its grip"
    ]
    codes["c__mutmut_1"] = 1
    assert judge(sample, codes, {"not_killed": ["b__mutmut_1"]}) == []
    codes["c__mutmut_1"] = None
    assert judge(sample, codes, {"not_killed": ["b__mutmut_1"]}) == [
        "1 sampled mutants were not checked (the run stopped early)"
    ]


def test_a_decision_module_the_sample_cannot_find_stops_it():
    nodes = found()
    del nodes["deploy/node.py"]
    with pytest.raises(SystemExit, match="no mutants of deploy/node.py: moved"):
        draw(nodes, {"functions": OLD}, {}, 10, "abc")


def test_the_workspace_is_kept_in_step_with_the_tree(tmp_path):
    """mutmut remakes a module's mutants only when its source is newer: the copy keeps times, and
    drops what the tree no longer has (a directory that became a file too)."""
    import os

    from tests.mutation import sync, workspace_entries

    source, target = tmp_path / "tree", tmp_path / "copy"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "a.py").write_text("a = 1\n")
    os.utime(source / "pkg" / "a.py", (1_000_000, 1_000_000))
    (source / "x").write_text("now a file\n")
    (target / "pkg").mkdir(parents=True)
    (target / "pkg" / "gone.py").write_text("stale\n")
    (target / "x").mkdir()
    (target / "x" / "inner").write_text("stale\n")
    sync(source, target)
    assert sorted(str(path.relative_to(target)) for path in target.rglob("*")) == ["pkg", "pkg/a.py", "x"]
    assert (target / "pkg" / "a.py").stat().st_mtime == 1_000_000 and (
        target / "x"
    ).read_text() == "now a file\n"
    assert {"tests", "pyproject.toml", "tasks", "docs"} <= set(workspace_entries())


def test_the_report_says_which_modules_have_no_mutants_and_which_were_not_run():
    from collections import Counter

    from tests.mutation import report_text

    text = report_text(
        {
            "plan/__init__.py": Counter(),
            "rollout.py": Counter({"not checked": 3}),
            "remote/lock.py": Counter({"killed": 9, "survived": 1}),
        }
    )
    rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines() if line.startswith("| `")}
    assert "| 0 |" in rows["plan/__init__.py"] and "no mutants" in rows["plan/__init__.py"]
    assert rows["rollout.py"].startswith("| `rollout.py` | 3 |") and "not run" in rows["rollout.py"]
    assert "| 10 | 9 |" in rows["remote/lock.py"] and "| 90% | 90% |" in rows["remote/lock.py"]
    assert "Incomplete run: 3 mutants not checked" in text

"""Rolling a fleet out in batches (rollout.py): the plan, the stop at a bad batch, and what
a pyinfra run says failed. The batch runs here are fakes; pyinfra's JSON is as its CLI prints it."""

import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from containerd_deploy import rollout
from containerd_deploy.rollout import (
    Outcome,
    RolloutError,
    batch_size,
    failed_hosts,
    host_said,
    past_allowance,
    plan,
    roll_out,
)

HOSTS = [f"node{n}" for n in range(1, 11)]


@pytest.mark.parametrize(
    "spec, total, size",
    [
        ("3", 10, 3),
        (3, 10, 3),
        ("25%", 10, 3),
        ("10%", 10, 1),
        ("1%", 10, 1),
        ("100%", 7, 7),
        ("12.5%", 8, 1),
        ("50%", 202, 101),
    ],
)
def test_a_batch_is_a_count_or_a_percentage_rounded_up(spec, total, size):
    assert batch_size(spec, total) == size


@pytest.mark.parametrize("spec", ["0", "0%", "101%", "-1", "a", "", "25 %", "1.5", "٣"])
def test_a_batch_that_is_no_number_of_hosts_is_refused(spec):
    with pytest.raises(RolloutError, match=r"give a number of hosts \(e\.g\. 3\) or a percentage of them"):
        batch_size(spec, 10)


def test_the_canary_goes_alone_then_the_rest_in_batches():
    assert plan(HOSTS[:4], 3, canary=1) == [["node1"], ["node2", "node3", "node4"]]
    assert plan(HOSTS, "25%", canary=1) == [
        ["node1"],
        ["node2", "node3", "node4"],
        ["node5", "node6", "node7"],
        ["node8", "node9", "node10"],
    ]
    assert plan(HOSTS[:3], "1", canary=0) == [["node1"], ["node2"], ["node3"]]
    assert plan(HOSTS[:2], 5, canary=3) == [["node1", "node2"]]
    assert plan([], 3) == []
    with pytest.raises(RolloutError, match="--canary -1"):
        plan(HOSTS, 3, canary=-1)


@given(
    hosts=st.lists(st.text(min_size=1, max_size=5), unique=True, max_size=40),
    batch=st.one_of(st.integers(1, 50), st.integers(1, 100).map(lambda n: f"{n}%")),
    canary=st.integers(0, 5),
)
def test_every_host_is_in_exactly_one_batch_in_inventory_order(hosts, batch, canary):
    batches = plan(hosts, batch, canary)
    assert [host for group in batches for host in group] == hosts
    assert all(batches) and all(len(group) <= max(batch_size(batch, len(hosts)), canary) for group in batches)
    if hosts and canary:
        assert batches[0] == hosts[:canary]


def test_the_allowance_is_a_share_of_the_batch():
    assert not past_allowance(0, 3, 0)
    assert past_allowance(1, 3, 0), "by default any failure stops the rollout"
    assert not past_allowance(1, 3, 34) and past_allowance(2, 3, 34)
    assert not past_allowance(3, 3, 100)


def test_an_allowance_out_of_range_is_refused_before_any_batch_runs():
    run, ran = fake_runs({})
    for percent in (-1, 100.5, float("nan")):
        with pytest.raises(RolloutError, match="give a percentage from 0 to 100"):
            roll_out([["node1"]], run, max_fail_percent=percent, say=lambda line: None)
    assert ran == []
    said: list[str] = []
    roll_out([["node1"]], fake_runs({"node1": "down"})[0], max_fail_percent=-0.0, say=said.append)
    assert said[-1].endswith("(allowed: 0%); not touched: none")


@pytest.mark.parametrize("text", ["-1", "100.5", "nan", "ten", ""])
def test_an_allowance_that_is_no_percentage_is_refused_before_any_run(text, capsys):
    with pytest.raises(SystemExit) as stop:
        rollout.main(["inv.py", "deploy.py", "--max-fail-percent", text])
    assert stop.value.code == 2
    assert (
        f"--max-fail-percent: {text!r}: give a percentage from 0 to 100 (e.g. 10)" in capsys.readouterr().err
    )


def fake_runs(failing: dict[str, str]):
    ran: list[list[str]] = []

    def run(hosts: list[str]) -> dict[str, str]:
        ran.append(list(hosts))
        return {host: why for host, why in failing.items() if host in hosts}

    return run, ran


def test_a_failed_canary_stops_the_rollout_and_leaves_every_other_host_untouched():
    run, ran = fake_runs({"node1": "operation failed: Verify containerd"})
    said: list[str] = []
    outcome = roll_out(plan(HOSTS[:4], 3), run, say=said.append)
    assert ran == [["node1"]], "nodes 2-4 were never run"
    assert outcome.stopped_at == 0 and outcome.untouched == ["node2", "node3", "node4"] and not outcome.ok
    assert outcome.failed == {"node1": "operation failed: Verify containerd"}
    assert said == [
        "rollout: batch 1/2: node1",
        "rollout: node1 failed: operation failed: Verify containerd",
        "rollout: stopped after batch 1: 1 of 1 failed (allowed: 0%); not touched: node2, node3, node4",
    ]


def test_a_good_rollout_runs_every_batch_in_order():
    run, ran = fake_runs({})
    said: list[str] = []
    outcome = roll_out(plan(HOSTS[:4], 3), run, say=said.append)
    assert said == ["rollout: batch 1/2: node1", "rollout: batch 2/2: node2, node3, node4"]
    assert ran == [["node1"], ["node2", "node3", "node4"]]
    assert outcome == Outcome(done=ran, failed={}, stopped_at=None, untouched=[]) and outcome.ok


def test_failures_within_the_allowance_go_on_and_are_still_reported():
    run, ran = fake_runs({"node3": "down"})
    outcome = roll_out(plan(HOSTS[:7], 3), run, max_fail_percent=34, say=lambda line: None)
    assert ran == [["node1"], ["node2", "node3", "node4"], ["node5", "node6", "node7"]]
    assert outcome.stopped_at is None and outcome.failed == {"node3": "down"} and not outcome.ok
    # Two of three in the last batch is past 34%: it stops there (nothing after it anyway).
    run, ran = fake_runs({"node2": "down", "node3": "down"})
    outcome = roll_out(plan(HOSTS[:10], 3), run, max_fail_percent=34, say=lambda line: None)
    assert ran == [["node1"], ["node2", "node3", "node4"]] and outcome.stopped_at == 1
    assert outcome.untouched == HOSTS[4:10]
    # Stopped at the last batch: nothing left untouched, and it says so.
    run, ran = fake_runs({"node2": "down"})
    said: list[str] = []
    roll_out([["node1"], ["node2"]], run, say=said.append)
    assert said[-1] == "rollout: stopped after batch 2: 1 of 1 failed (allowed: 0%); not touched: none"


def json_run(operations: list[dict], failed: list[str]) -> str:
    return json.dumps(
        {"plan": [], "results": {"operations": operations, "totals": {}, "failed_hosts": failed}}
    )


def test_what_failed_is_read_from_pyinfras_json():
    ops = [
        {
            "name": "containerd node | Take the node's run lock",
            "success": ["a", "b"],
            "error": [],
            "no_change": [],
        },
        {
            "name": "containerd node | Run containerd | Enable, start and check containerd",
            "success": ["a"],
            "error": ["b"],
        },
        {
            "name": "containerd node | Verify containerd (containerd_verify)",
            "error": ["b"],
        },
    ]
    assert failed_hosts(["a", "b"], 1, json_run(ops, ["b"]), "") == {
        "b": "operation failed: containerd node | Run containerd | Enable, start and check containerd"
    }
    assert failed_hosts(["a", "b"], 0, json_run(ops[:1], []), "") == {}
    assert failed_hosts(["a"], 1, json_run([], ["a"]), "") == {"a": "pyinfra marked it failed"}
    assert failed_hosts(["a", "b"], 1, json_run([], []), "") == {
        "a": "pyinfra exited 1",
        "b": "pyinfra exited 1",
    }


def test_parts_pyinfras_json_leaves_out_are_nothing_failed():
    """pyinfra leaves out an empty list and an operation without a name; that is no failure."""
    assert failed_hosts(["a"], 0, json.dumps({"results": {}}), "") == {}
    assert failed_hosts(["a"], 0, json.dumps({"results": {"operations": [{"name": "x"}]}}), "") == {}
    assert failed_hosts(["a"], 1, json.dumps({"results": {"operations": [{"error": ["a"]}]}}), "") == {
        "a": "operation failed: ?"
    }


def test_a_failed_operation_says_what_the_deploy_said_of_the_host():
    stderr = "    [b] Connected\n    [b] containerd-deploy: ctr version did not answer within 60s\n    [b] Error: executed 3 commands\n"
    ops = [{"name": "Run containerd", "error": ["b"]}]
    assert failed_hosts(["a", "b"], 1, json_run(ops, []), stderr) == {
        "b": "operation failed: Run containerd (containerd-deploy: ctr version did not answer within 60s)"
    }


def test_a_host_pyinfra_said_nothing_of_has_said_nothing():
    assert host_said("a", "") is None
    assert host_said("a", "    [a] Connected\n    [a] Success\n    [ab] other host\n") is None


def test_a_run_stopped_before_its_json_fails_the_whole_batch_with_pyinfras_last_word():
    stderr = "--> Preparing operation files...\n--> node2: data key 'containerd_version' is 'x'. Fix: …\n"
    assert failed_hosts(["node2", "node3"], 1, "", stderr) == {
        "node2": "--> node2: data key 'containerd_version' is 'x'. Fix: …",
        "node3": "--> node2: data key 'containerd_version' is 'x'. Fix: …",
    }
    assert failed_hosts(["a"], 2, "not json", "") == {"a": "pyinfra exited 2"}
    assert failed_hosts(["a"], 0, "", "") == {}


def test_the_cli_runs_pyinfra_once_per_batch_with_its_hosts(monkeypatch, capsys):
    import subprocess

    from containerd_deploy import rollout

    monkeypatch.setattr(
        rollout.inventories, "load", lambda path: [(name, ["workers"], {}) for name in HOSTS[:4]]
    )
    commands = []

    def fake_run(command, **kwargs):
        assert kwargs == {"capture_output": True, "text": True}, (
            "pyinfra's JSON and messages are read as text"
        )
        commands.append(command)
        failing = "[n]ode1" in command
        stdout = json_run([{"name": "x", "error": ["node1"] if failing else []}], [])
        return subprocess.CompletedProcess(command, 1 if failing else 0, stdout, "")

    monkeypatch.setattr(rollout.subprocess, "run", fake_run)
    assert rollout.main(["inv.py", "deploy.py", "--batch", "3", "--", "--data", "k=v"]) == 1
    assert len(commands) == 1, "the failed canary stopped the rollout"
    assert commands[0] == [
        sys.executable,
        "-m",
        "pyinfra",
        "inv.py",
        "deploy.py",
        "-y",
        "--json",
        "--limit",
        "[n]ode1",
        "--data",
        "k=v",
    ]
    assert "not touched: node2, node3, node4" in capsys.readouterr().out

    commands.clear()
    monkeypatch.setattr(rollout.inventories, "load", lambda path: [(name, [], {}) for name in HOSTS[1:4]])
    assert rollout.main(["inv.py", "deploy.py", "--batch", "50%", "--canary", "1"]) == 0
    assert [command[command.index("--json") + 1 :] for command in commands] == [
        ["--limit", "[n]ode2"],
        ["--limit", "[n]ode3", "--limit", "[n]ode4"],
    ]
    assert "rollout: all 3 hosts done in 2 batches" in capsys.readouterr().out


def fake_fleet(monkeypatch, hosts: list[str], outcome):
    """The inventory `inv.py` with `hosts`, each pyinfra run answered by `outcome(hosts of the
    run)` -> (exit status, stdout, stderr); returns the hosts each run's --limit selects."""
    import fnmatch
    import subprocess

    def load(path):
        assert path == "inv.py"
        return [(name, ["workers"], {}) for name in hosts]

    monkeypatch.setattr(rollout.inventories, "load", load)
    limited: list[list[str]] = []

    def fake_run(command, **kwargs):
        patterns = [command[i + 1] for i, arg in enumerate(command) if arg == "--limit"]
        run_hosts = [name for pattern in patterns for name in hosts if fnmatch.fnmatchcase(name, pattern)]
        assert len(run_hosts) == len(patterns), "each --limit selects one host"
        limited.append(run_hosts)
        return subprocess.CompletedProcess(command, *outcome(run_hosts))

    monkeypatch.setattr(rollout.subprocess, "run", fake_run)
    return limited


def test_by_default_a_canary_then_a_quarter_of_the_fleet_per_batch_and_no_failure_allowed(
    monkeypatch, capsys
):
    limited = fake_fleet(monkeypatch, HOSTS[:5], lambda hosts: (0, json_run([], []), ""))
    assert rollout.main(["inv.py", "deploy.py"]) == 0
    assert limited == [["node1"], ["node2", "node3"], ["node4", "node5"]]
    # 1 failed host of a batch of 101 is past the default allowance (0%), not only of 1%.
    fleet = [f"n{i}" for i in range(101)]
    limited = fake_fleet(
        monkeypatch, fleet, lambda hosts: (1, json_run([{"name": "x", "error": ["n50"]}], []), "")
    )
    assert rollout.main(["inv.py", "deploy.py", "--canary", "0", "--batch", "100%"]) == 1
    assert "rollout: stopped after batch 1: 1 of 101 failed (allowed: 0%)" in capsys.readouterr().out


def test_the_cli_passes_limit_canary_and_allowance_on(monkeypatch, capsys):
    failing = {"node3"}

    def outcome(hosts):
        bad = [host for host in hosts if host in failing]
        return (1 if bad else 0), json_run([{"name": "x", "error": bad}], []), ""

    limited = fake_fleet(monkeypatch, HOSTS[:6], outcome)
    assert rollout.main(["inv.py", "deploy.py", "--limit", "node2,node3,node4,node5", "--canary", "0"]) == 1
    assert limited == [["node2"], ["node3"]], "no canary; a failure stops it by default"
    capsys.readouterr()
    limited.clear()
    argv = ["inv.py", "deploy.py", "--canary", "2", "--batch", "2", "--max-fail-percent", "50"]
    assert rollout.main(argv) == 1
    assert limited == [["node1", "node2"], ["node3", "node4"], ["node5", "node6"]]
    assert "rollout: every batch ran; failed within the allowance: node3" in capsys.readouterr().out


def test_a_batch_run_that_stopped_without_its_json_fails_its_hosts(monkeypatch, capsys):
    fake_fleet(monkeypatch, HOSTS[:2], lambda hosts: (1, "", "--> pyinfra error: boom\n"))
    assert rollout.main(["inv.py", "deploy.py", "--batch", "1"]) == 1
    assert "rollout: node1 failed: --> pyinfra error: boom" in capsys.readouterr().out


def test_a_limit_that_matches_no_host_is_refused(monkeypatch, capsys):
    fake_fleet(monkeypatch, HOSTS[:2], lambda hosts: (0, "", ""))
    with pytest.raises(SystemExit) as stop:
        rollout.main(["inv.py", "deploy.py", "--limit", "web*"])
    assert stop.value.code == 2
    assert "no hosts in inv.py match --limit=web*" in capsys.readouterr().err


def test_a_host_that_failed_the_run_is_named_with_what_the_deploy_said_of_it():
    """Regression (tried on two VMs): a canary whose download failed was reported as "pyinfra
    error: No hosts remaining!"; pyinfra prints no JSON when every host of a run failed."""
    stderr = """--> Starting operation: containerd node | Fetch release files | Fetch and verify release files
    [ro1] curl: (22) The requested URL returned error: 404
    [ro1] containerd-deploy: could not download http://10.0.2.2:33937/containerd-1.7.99-linux-amd64.tar.gz; nothing was installed
    [ro1] Error: executed 0 commands

--> Disconnecting from hosts...
--> pyinfra error: No hosts remaining!
"""
    assert failed_hosts(["ro1", "ro10"], 1, "", stderr) == {
        "ro1": "containerd-deploy: could not download http://10.0.2.2:33937/containerd-1.7.99-linux-amd64.tar.gz; "
        "nothing was installed",
        "ro10": "--> pyinfra error: No hosts remaining!",
    }


# Names a glob or pyinfra's --limit reads as more than themselves (glob characters, a group's
# name, a leading ! or ], brackets inside, spaces, non-ASCII), beside plain ones.
TRICKY_NAMES = [
    "node1",
    "node[1]",
    "node?",
    "node*",
    "workers",
    "[!x]",
    "!node",
    "!web",
    "]node",
    "n]o[de",
    "no de",
    "nœud-1",
    "a[b-c]d",
    "x\\y",
    "-x",
    "node1.example.com",
]


def test_a_batch_selects_its_hosts_by_exact_name_as_pyinfra_reads_a_limit():
    """Regression (#26): pyinfra reads a --limit as a group's name first, then as a glob, so a
    host called like a group selected the whole group, and `node[1]` selected `node1`. Each
    host's pattern, read by pyinfra's own --limit code (in a process of its own: importing
    pyinfra's CLI takes over the process's signals and streams), selects that host alone."""
    import json
    import subprocess

    program = """
import json, sys
from pyinfra.api import Inventory
from pyinfra_cli.cli import _get_inventory_pattern_matches
names, patterns = json.load(sys.stdin)
inventory = Inventory((names, {}), workers=(["node1"], {}), **{"!web": (["node1"], {})})
print(json.dumps([sorted(h.name for h in _get_inventory_pattern_matches(inventory, [p], "--limit")) for p in patterns]))
"""
    patterns = [rollout.exact_limit(name) for name in TRICKY_NAMES]
    answer = subprocess.run(
        [sys.executable, "-c", program],
        input=json.dumps([TRICKY_NAMES, patterns]),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(answer.stdout) == [[name] for name in TRICKY_NAMES]


def test_a_failed_hosts_reason_is_its_row_of_the_runs_report_when_the_run_printed_one():
    from containerd_deploy.deploy.report import said_of_hosts

    stderr = (
        "    [b] Error: executed 1 commands\n"
        "--> containerd-deploy report (1 unchanged, 1 rolled back):\n"
        "    a  unchanged    verify passed: ok\n"
        "    b  rolled back  containerd 1.7.24 answers again (pid 7); Verify containerd: - CRI not loaded\n"
    )
    assert said_of_hosts(stderr) == {
        "a": "unchanged verify passed: ok",
        "b": "rolled back containerd 1.7.24 answers again (pid 7); Verify containerd: - CRI not loaded",
    }
    ops = [{"name": "containerd node | Verify containerd", "error": ["b"], "success": ["a"]}]
    assert failed_hosts(["a", "b"], 1, json_run(ops, ["b"]), stderr) == {
        "b": "rolled back containerd 1.7.24 answers again (pid 7); Verify containerd: - CRI not loaded"
    }
    assert said_of_hosts("no report here") == {}

"""Rolling a fleet out in batches (tasks/rollout.py): the plan, the stop at a bad batch, and what
a pyinfra run says failed. The batch runs here are fakes; pyinfra's JSON is as its CLI prints it."""

import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.rollout import Outcome, RolloutError, batch_size, failed_hosts, past_allowance, plan, roll_out

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
    outcome = roll_out(plan(HOSTS[:4], 3), run, say=lambda line: None)
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
            "name": "containerd node | Verify containerd | Verify containerd (containerd_verify)",
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


def test_a_run_stopped_before_its_json_fails_the_whole_batch_with_pyinfras_last_word():
    stderr = "--> Preparing operation files...\n--> pyinfra error: node2: data key 'containerd_version' is 'x'. Fix: …\n"
    assert failed_hosts(["node2", "node3"], 1, "", stderr) == {
        "node2": "--> pyinfra error: node2: data key 'containerd_version' is 'x'. Fix: …",
        "node3": "--> pyinfra error: node2: data key 'containerd_version' is 'x'. Fix: …",
    }
    assert failed_hosts(["a"], 2, "not json", "") == {"a": "pyinfra exited 2"}
    assert failed_hosts(["a"], 0, "", "") == {}


def test_the_cli_runs_pyinfra_once_per_batch_with_its_hosts(monkeypatch, capsys):
    import subprocess

    from tasks import rollout

    monkeypatch.setattr(
        rollout.inventories, "load", lambda path: [(name, ["workers"], {}) for name in HOSTS[:4]]
    )
    commands = []

    def fake_run(command, **kwargs):
        assert kwargs == {"capture_output": True, "text": True}, (
            "pyinfra's JSON and messages are read as text"
        )
        commands.append(command)
        failing = "node1" in command
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
        "node1",
        "--data",
        "k=v",
    ]
    assert "not touched: node2, node3, node4" in capsys.readouterr().out

    commands.clear()
    monkeypatch.setattr(rollout.inventories, "load", lambda path: [(name, [], {}) for name in HOSTS[1:4]])
    assert rollout.main(["inv.py", "deploy.py", "--batch", "50%", "--canary", "1"]) == 0
    assert [command[command.index("--json") + 1 :] for command in commands] == [
        ["--limit", "node2"],
        ["--limit", "node3", "--limit", "node4"],
    ]
    assert "rollout: all 3 hosts done in 2 batches" in capsys.readouterr().out


def test_a_host_that_failed_the_run_is_named_with_what_the_deploy_said_of_it():
    """Regression (tried on two VMs): a canary whose download failed was reported as "pyinfra
    error: No hosts remaining!"; pyinfra prints no JSON when every host of a run failed."""
    stderr = """--> Starting operation: containerd node | Install release files | Fetch and verify release files
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

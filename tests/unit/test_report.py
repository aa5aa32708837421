"""The end-of-run report (deploy/report.py): each host's row from the deploy's plan and
pyinfra's results, as the run left them — prepared by the real deploy on a fake node, then each
operation completed as a real run would have completed it."""

import json
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pyinfra.api.state import StateStage
from pyinfra.connectors.util import CommandOutput, OutputLine
from pyinfra.context import ctx_host, ctx_state

from containerd_deploy.controller import run_record
from containerd_deploy.deploy import report
from containerd_deploy.remote.rollback import ROLLED_BACK

from .flow import converged, drifted, prepare, settings_for

DRIFT = {"containerd_max_container_log_line_size": 32768, "containerd_verify": True}
CONFIG = "/etc/containerd/config.toml"


def prepared(monkeypatch, node=None, data=None) -> tuple:
    run: dict = {}
    prepare(monkeypatch, node or converged(settings_for()), DRIFT if data is None else data, run=run)
    return run["state"], run["host"]


def output(stdout=(), stderr=()) -> CommandOutput:
    return CommandOutput(
        [OutputLine("stdout", line) for line in stdout] + [OutputLine("stderr", line) for line in stderr]
    )


def complete(state, host, fail_at: str = "", stderr=(), stop_at: str = "", said: dict | None = None) -> None:
    """Complete each operation as a run does: each with its commands, until `fail_at` fails
    (saying `stderr`) or `stop_at` (the run was stopped there); `said`: an operation's name ->
    the lines it printed."""
    state.current_stage = StateStage.Execute
    for op_hash in state.get_op_order():
        name = report._op_name(state, op_hash)
        if stop_at and name.startswith(stop_at):
            return
        data = state.get_op_data_for_host(host, op_hash)
        with ctx_state.use(state), ctx_host.use(host):
            commands = list(data.command_generator())
        failed = bool(fail_at) and name.startswith(fail_at)
        printed = next((lines for prefix, lines in (said or {}).items() if name.startswith(prefix)), ())
        data.operation_meta.set_complete(
            not failed,
            commands or ["x"] if failed else commands,
            output(stdout=printed, stderr=stderr if failed else ()),
        )
        if failed:
            return
    state.current_stage = StateStage.Disconnect


def row_of(state, host, interrupted=False) -> dict:
    run = run_record.run_of(state)
    run.interrupted = interrupted
    return report.outcome(state, host, run)


def test_a_restarted_node_says_from_which_version_into_which_and_the_container_it_ran(monkeypatch):
    state, host = prepared(monkeypatch)
    complete(state, host)
    run_record.host_run(host).verify, run_record.host_run(host).container = "a container ran from pause", True
    row = row_of(state, host)
    assert row["status"] == "restarted"
    assert row["detail"] == f"containerd 2.2.1 ({CONFIG} changed)"
    assert row["verify"] == {"result": "passed", "container": True, "note": "a container ran from pause"}
    assert f"write {CONFIG}" in row["changes"] and not any(
        line.startswith("verify") for line in row["changes"]
    )


def test_a_node_that_could_not_pull_the_sandbox_image_is_a_warning_in_one_line(monkeypatch, caplog):
    from containerd_deploy.remote.container_check import NOT_PULLED

    state, host = prepared(monkeypatch)
    no_route = (
        f"{NOT_PULLED} registry.k8s.io/pause:3.10 could not be pulled through the node's registries (x)"
    )
    # the container check only runs at execution (the prepared run has none): it printed this
    complete(state, host, said={"Verify containerd": ["noise", no_route]})
    (verify,) = [
        op for op in state.get_op_order() if report._op_name(state, op).startswith("Verify containerd")
    ]
    state.ops[host][verify].operation_meta._commands = ["check"]
    run_record.host_run(host).verify, run_record.host_run(host).container = "a container ran from pause", True
    row = row_of(state, host)
    assert row["verify"] == {"result": "passed", "container": False, "note": no_route, "warning": True}
    with caplog.at_level("INFO"):
        report.finish(state)
    [line] = [record for record in caplog.records if record.getMessage().startswith("node1 ")]
    assert line.levelname == "WARNING" and line.getMessage().endswith(f"verify passed: {no_route}")


def test_a_warning_of_the_verify_step_is_a_warning_of_the_report_after_what_the_step_said(
    monkeypatch, caplog
):
    state, host = prepared(monkeypatch)
    complete(state, host)
    said = run_record.host_run(host)
    said.verify, said.container = "a container ran from pause", True
    said.warnings = ["AppArmor: x was installed after containerd started"]
    row = row_of(state, host)
    assert row["verify"] == {
        "result": "passed",
        "container": True,
        "note": "a container ran from pause; AppArmor: x was installed after containerd started",
        "warning": True,
    }
    with caplog.at_level("INFO"):
        report.finish(state)
    [line] = [record for record in caplog.records if record.getMessage().startswith("node1 ")]
    assert line.levelname == "WARNING"


def test_where_the_verify_container_ran_is_said_after_what_it_ran_from(monkeypatch):
    state, host = prepared(monkeypatch)
    complete(state, host, said={"Verify containerd": ["a container ran in /system.slice/x.scope"]})
    (verify,) = [
        op for op in state.get_op_order() if report._op_name(state, op).startswith("Verify containerd")
    ]
    state.ops[host][verify].operation_meta._commands = ["check"]
    run_record.host_run(host).verify, run_record.host_run(host).container = "a container ran from pause", True
    assert row_of(state, host)["verify"] == {
        "result": "passed",
        "container": True,
        "note": "a container ran from pause in /system.slice/x.scope",
    }


def test_an_upgrade_says_old_and_new_versions(monkeypatch):
    settings = settings_for()
    node = converged(settings)
    old = node.manifests["containerd"]
    node = drifted(
        node,
        manifests={
            **node.manifests,
            "containerd": type(old)(
                {**old.fields, "version": "1.7.24", "sha256": "0" * 64}, old.files, old.actual
            ),
        },
        ctr_server="1.7.24",
        ctr_client="1.7.24",
    )
    state, host = prepared(monkeypatch, node, {"containerd_verify": True})
    complete(state, host)
    assert row_of(state, host)["detail"] == "containerd 1.7.24 → 2.2.1 (containerd 2.2.1 installed)"


def test_an_unchanged_node_is_unchanged_and_says_why_no_container_ran(monkeypatch):
    state, host = prepared(monkeypatch, data={"containerd_verify": True})
    complete(state, host)
    run_record.host_run(host).verify = "no container run: this run changed nothing"
    row = row_of(state, host)
    assert (row["status"], row["detail"], row["changes"]) == ("unchanged", "", ["no change"])
    assert report.verify_said(row["verify"]) == "verify passed: no container run: this run changed nothing"


def test_a_change_without_a_restart_says_what_changed(monkeypatch):
    mirror = {"containerd_registries": {"docker.io": {"mirrors": [{"host": "https://m.internal"}]}}}
    state, host = prepared(monkeypatch, data=mirror)
    complete(state, host)
    row = row_of(state, host)
    assert row["status"] == "changed"
    assert row["detail"] == ("write /etc/containerd/certs.d/docker.io/hosts.toml; no restart")


def test_a_failed_verify_that_rolled_back_says_so_and_why(monkeypatch):
    state, host = prepared(monkeypatch)
    said = [
        "containerd-deploy: node1 is not a conformant containerd node:",
        "  - CRI plugin not loaded",
        f"{ROLLED_BACK} containerd 2.2.1 answers again (pid 42); running containers were left running",
    ]
    complete(state, host, fail_at="Verify containerd", stderr=said)
    row = row_of(state, host)
    assert row["status"] == "rolled back"
    assert row["detail"] == (
        "containerd 2.2.1 answers again (pid 42); running containers were left running; "
        "Verify containerd (containerd_verify): - CRI plugin not loaded"
    )
    assert row["verify"] == {"result": "failed"}
    assert row["versions"] == {}  # not what the run meant to leave: it did not


def test_a_failed_operation_is_named_with_its_last_words(monkeypatch):
    state, host = prepared(monkeypatch)
    complete(state, host, fail_at="Enable, start", stderr=["some noise", "containerd did not answer in 60s"])
    row = row_of(state, host)
    assert (row["status"], row["detail"]) == (
        "failed",
        "Enable, start and check containerd: containerd did not answer in 60s",
    )
    assert row["verify"] == {"result": "not reached"}
    assert row["versions"] == {}


def test_a_run_stopped_by_ctrl_c_names_where_and_what_changed_before(monkeypatch):
    state, host = prepared(monkeypatch)
    complete(state, host, stop_at="Enable, start")
    row = row_of(state, host, interrupted=True)
    assert row["status"] == "interrupted"
    assert row["detail"].startswith(
        "at Enable, start and check containerd; changed before: Take the node's run lock"
    )
    assert f"Write {CONFIG}" in row["detail"]


def test_a_host_the_run_stopped_for_another_hosts_failure_is_stopped_not_unchanged(monkeypatch):
    """pyinfra stops every host when one fails past --fail-percent, or when the operator answers
    no to "continue?": what the others had done by then is said."""
    state, host = prepared(monkeypatch)
    complete(state, host, stop_at="Verify containerd")
    row = row_of(state, host)
    assert row["status"] == "stopped"
    assert row["detail"].startswith(
        "at Verify containerd (containerd_verify) (the run stopped: another host failed past its allowance); "
        "changed before: Take the node's run lock"
    )
    assert "Enable, start and check containerd" in row["detail"]


def test_a_dry_run_says_what_would_change(monkeypatch):
    state, host = prepared(monkeypatch)
    row = row_of(state, host)
    assert row["status"] == "would change" and row["detail"].startswith(f"write {CONFIG}; keep the running")
    state, host = prepared(monkeypatch, data={})
    assert row_of(state, host)["status"] == "no change"


def test_refused_unreachable_and_unplanned_hosts_have_rows_too(monkeypatch):
    state, host = prepared(monkeypatch)
    run_record.host_run(host).refused = "node1: data key 'x' is bad. Fix: y"
    assert (row_of(state, host)["status"], row_of(state, host)["detail"]) == (
        "refused",
        "data key 'x' is bad. Fix: y",
    )
    run_record.run_of(state).hosts["node1"].refused = ""
    run_record.run_of(state).hosts["node2"] = run_record.HostRun(refused="node2: refused")
    assert (row_of(state, host)["status"], row_of(state, host)["detail"]) == (
        "not run",
        "the run stopped before any change: node2 refused",
    )
    run_record.run_of(state).hosts.clear()
    assert row_of(state, host)["status"] == "not run"
    state.activated_hosts.discard(host)
    assert (row_of(state, host)["status"], row_of(state, host)["detail"]) == (
        "unreachable",
        "could not connect (pyinfra says why at the top of the run)",
    )


def test_every_inventory_host_is_in_the_report_in_order_and_the_table_lines_up():
    from pyinfra.api import Config, Inventory, State

    inventory = Inventory(([("db-1", {}), ("web-10", {}), ("web-2", {})], {}))
    state = State(inventory, Config())
    state.activate_host(inventory.get_host("web-10"))
    rows = report.outcomes(state)
    assert [(row["host"], row["status"]) for row in rows] == [
        ("db-1", "unreachable"),
        ("web-10", "not run"),
        ("web-2", "unreachable"),
    ]
    rows[1].update(
        status="restarted", detail="containerd 1.7.24 → 2.1.9 (x)", verify={"result": "passed", "note": "ok"}
    )
    assert report.table(rows) == [
        "db-1    unreachable  could not connect (pyinfra says why at the top of the run)",
        "web-10  restarted    containerd 1.7.24 → 2.1.9 (x); verify passed: ok",
        "web-2   unreachable  could not connect (pyinfra says why at the top of the run)",
    ]
    assert report.summary(rows) == "2 unreachable, 1 restarted"


def test_the_report_is_written_whole_as_json_to_each_file_named(monkeypatch, tmp_path, caplog):
    state, host = prepared(monkeypatch)
    complete(state, host)
    target = tmp_path / "reports" / "run.json"
    run_record.host_run(host).report_file = str(target)
    with caplog.at_level("INFO"):
        report.finish(state)
    written = json.loads(target.read_text())
    assert written["interrupted"] is False
    assert [(row["host"], row["status"]) for row in written["hosts"]] == [("node1", "restarted")]
    # What the node runs now (the fleet's view of a pull-mode node's last run), and when.
    settings = settings_for(DRIFT)
    assert written["hosts"][0]["versions"] == {
        "containerd": str(settings.containerd_version),
        "runc": str(settings.runc_version),
    }
    finished = datetime.fromisoformat(written["finished"])
    assert finished.tzinfo is not None and abs(datetime.now(timezone.utc) - finished) < timedelta(minutes=1)
    assert sorted(path.name for path in target.parent.iterdir()) == ["run.json"]  # no temp file left
    assert "--> containerd-deploy report (1 restarted):" in caplog.text
    assert f"node1  restarted  containerd 2.2.1 ({CONFIG} changed)" in caplog.text


def test_an_unwritable_report_file_is_said_and_the_run_report_still_printed(monkeypatch, tmp_path, caplog):
    state, host = prepared(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("")
    run_record.host_run(host).report_file = str(blocker / "run.json")  # a file where a directory should be
    with caplog.at_level("INFO"):
        report.finish(state)
    assert f"could not write the report to {blocker / 'run.json'}" in caplog.text
    assert "node1  would change" in caplog.text


def test_under_the_cli_the_report_is_printed_at_exit_and_ctrl_c_exits_130(monkeypatch):
    import pyinfra
    from pyinfra.api import Config, Inventory, State

    state = State(Inventory((["n"], {})), Config())
    registered, handlers = [], {}
    monkeypatch.setattr(
        report.atexit, "register", lambda function, *args: registered.append((function, args))
    )
    monkeypatch.setattr(report.signal, "signal", lambda number, handler: handlers.update({number: handler}))
    monkeypatch.setattr(pyinfra, "is_cli", False)
    report.report_at_exit(state)
    assert registered == [] and handlers == {}, "nothing under the API"
    monkeypatch.setattr(pyinfra, "is_cli", True)
    report.report_at_exit(state)
    report.report_at_exit(state)  # once per run
    assert registered == [(report.finish, (state,))]
    with pytest.raises(SystemExit) as stop:
        handlers[signal.SIGINT](signal.SIGINT, None)
    assert stop.value.code == 130 and run_record.run_of(state).interrupted


def test_a_refused_run_writes_its_report_too_not_leaving_the_last_runs(monkeypatch, tmp_path):
    from containerd_deploy.data.values import DataError

    from .flow import fresh

    target = tmp_path / "report.json"
    target.write_text('{"hosts": [{"host": "node1", "status": "unchanged"}]}')  # the last run's
    run: dict = {}
    with pytest.raises(DataError, match="containerd_verison"):
        prepare(
            monkeypatch, fresh(), {"containerd_report": str(target), "containerd_verison": "1.7.24"}, run=run
        )
    report.finish(run["state"])
    [row] = json.loads(target.read_text())["hosts"]
    assert (row["host"], row["status"]) == ("node1", "refused")
    assert row["detail"].startswith("data key 'containerd_verison' is not a data key of this deploy")


def test_each_row_has_exactly_its_fields(monkeypatch):
    state, host = prepared(monkeypatch, data={"containerd_verify": True})
    assert row_of(state, host) == {
        "host": "node1",
        "status": "no change",
        "detail": "",
        "changes": ["no change"],
        "verify": None,
        "versions": {},  # the run only planned: what it would leave is not what the node runs
    }
    run_record.run_of(state).hosts.clear()
    assert row_of(state, host) == {
        "host": "node1",
        "status": "not run",
        "detail": "the run stopped before this host was planned",
        "changes": [],
        "verify": None,
        "versions": {},
    }
    run_record.run_of(state).hosts.update(
        a=run_record.HostRun(refused="a: x"), b=run_record.HostRun(refused="b: y")
    )
    assert row_of(state, host)["detail"] == "the run stopped before any change: a, b refused"


def test_a_failure_names_its_first_three_problems_else_its_last_line_else_what_was_recorded(monkeypatch):
    state, host = prepared(monkeypatch)
    problems = ["header", "  - one", "  - two", "  - three", "  - four", "tail"]
    complete(state, host, fail_at="Enable, start", stderr=problems)
    assert row_of(state, host)["detail"] == "Enable, start and check containerd: - one; - two; - three"
    state, host = prepared(monkeypatch)
    complete(state, host, fail_at="Enable, start", stderr=["first", "second", "last"])
    assert row_of(state, host)["detail"] == "Enable, start and check containerd: last"
    state, host = prepared(monkeypatch)
    complete(state, host, fail_at="Enable, start", stderr=[])
    assert row_of(state, host)["detail"] == "Enable, start and check containerd: no output"
    run_record.host_run(
        host
    ).failure = "node1: data key 'containerd_restart_hook_before': kubectl drain failed"
    assert row_of(state, host)["detail"] == (
        "Enable, start and check containerd: node1: data key 'containerd_restart_hook_before': kubectl drain failed"
    )


def test_a_failure_after_the_verify_step_passed_says_it_passed(monkeypatch):
    data = {**DRIFT, "containerd_restart_hook_after": ["false"]}
    state, host = prepared(monkeypatch, data=data)
    complete(state, host, fail_at="Run containerd_restart_hook_after", stderr=["drain failed"])
    row = row_of(state, host)
    assert (row["status"], row["verify"]) == ("failed", {"result": "passed"})
    assert row["detail"] == "Run containerd_restart_hook_after on the controller: drain failed"


def test_an_operation_a_host_does_not_have_is_passed_over(monkeypatch):
    """Hosts of one run may have different operations (a hook only where it is set)."""
    state, host = prepared(monkeypatch)
    complete(state, host, fail_at="Verify containerd", stderr=["  - CRI plugin not loaded"])
    del state.ops[host][state.get_op_order()[0]]  # the run lock's: as if this host had none
    assert row_of(state, host)["status"] == "failed"


def test_only_the_verify_steps_own_words_change_what_the_report_says_of_it(monkeypatch):
    state, host = prepared(monkeypatch)
    complete(state, host, said={"Verify containerd": ["some other line"]})
    (verify,) = [
        op
        for op in state.get_op_order()
        if report._op_name(state, op) == "Verify containerd (containerd_verify)"
    ]
    state.ops[host][verify].operation_meta._commands = ["check"]
    run_record.host_run(host).verify = "a container ran from pause"
    assert row_of(state, host)["verify"]["note"] == "a container ran from pause"


def test_the_table_and_its_words(caplog):
    assert report.table([]) == []
    rows = [
        {"host": "n1", "status": "unchanged", "detail": "", "verify": None},
        {"host": "node-22", "status": "failed", "detail": "x: y", "verify": {"result": "failed"}},
        {"host": "n3", "status": "changed", "detail": "write a", "verify": {"result": "passed"}},
    ]
    assert report.table(rows) == [
        "n1       unchanged",
        "node-22  failed     x: y; verify failed",
        "n3       changed    write a; verify passed:",
    ]
    assert report.said_of_hosts("--> containerd-deploy report (old):\n    a  old\n" * 2 + "x") == {"a": "old"}
    output = "--> containerd-deploy report (1 x):\n    a\n    b  failed  why\n"
    assert report.said_of_hosts(output) == {"b": "failed why"}


def test_each_row_is_logged_at_the_level_of_its_news(monkeypatch, caplog):
    state, host = prepared(monkeypatch)
    complete(state, host)
    with caplog.at_level("INFO"):
        report.finish(state)
    [restarted] = [record for record in caplog.records if record.getMessage().startswith("node1 ")]
    assert restarted.levelname == "INFO"
    state, host = prepared(monkeypatch)
    complete(state, host, fail_at="Enable, start", stderr=["no"])
    caplog.clear()
    with caplog.at_level("INFO"):
        report.finish(state)
    [failed] = [record for record in caplog.records if record.getMessage().startswith("node1 ")]
    assert failed.levelname == "ERROR"


def test_the_json_is_put_in_place_whole_through_a_hidden_file_beside_it(monkeypatch, tmp_path):
    target = tmp_path / "a" / "b" / "run.json"
    renamed = []
    real_replace = report.os.replace

    def replace(source, destination):
        renamed.append(Path(source))
        real_replace(source, destination)

    monkeypatch.setattr(report.os, "replace", replace)
    rows = [{"host": "n", "status": "unchanged"}]
    report.write_json(str(target), rows, False)
    report.write_json(str(target), rows, True)  # again, into the directory it made
    written = target.read_text()
    assert written.startswith('{\n "finished": "') and written.endswith(
        '",\n "hosts": [\n  {\n   "host": "n",\n   "status": "unchanged"\n  }\n ],\n "interrupted": true\n}\n'
    )
    assert all(source.parent == target.parent and source.name.startswith(".run.json.") for source in renamed)

    def fail(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.os, "replace", fail)
    with pytest.raises(OSError):
        report.write_json(str(target), rows, False)
    assert sorted(path.name for path in target.parent.iterdir()) == ["run.json"], "no temp file left"


def test_ctrl_c_says_so(monkeypatch, caplog):
    import pyinfra
    from pyinfra.api import Config, Inventory, State

    handlers = {}
    monkeypatch.setattr(report.atexit, "register", lambda *args: None)
    monkeypatch.setattr(report.signal, "signal", lambda number, handler: handlers.update({number: handler}))
    monkeypatch.setattr(pyinfra, "is_cli", True)
    report.report_at_exit(State(Inventory((["n"], {})), Config()))
    with caplog.at_level("INFO"), pytest.raises(SystemExit):
        handlers[signal.SIGINT](signal.SIGINT, None)
    assert "--> Interrupted (Ctrl-C): a node may be left halfway; a rerun converges it" in caplog.text


def test_a_run_limited_to_some_hosts_reports_those():
    from pyinfra.api import Config, Inventory, State

    inventory = Inventory(([("a", {}), ("b", {})], {}))
    state = State(inventory, Config(), initial_limit=[inventory.get_host("b")])
    assert [row["host"] for row in report.outcomes(state)] == ["b"]

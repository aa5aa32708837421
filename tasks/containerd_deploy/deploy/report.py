"""The end of a run, on the controller: every host of the inventory in one table — unchanged,
changed (what), restarted (from which version into which), rolled back, failed (why), refused,
unreachable, interrupted — with the verify step's result and whether a container ran; the same
as JSON in each file `containerd_report` names. pyinfra's own summary counts operations, and a
host it could not reach is one line at the top of the run: in a fleet it scrolls away.

The deploy tells this module what pyinfra does not know (each host's plan, a refusal, what the
verify step said); the rest is pyinfra's results, read when the run ends. Under pyinfra's CLI the
report is printed as the process exits (after pyinfra's own results, Ctrl-C included), and Ctrl-C
exits 130, not 0: a run stopped halfway is not a success.
"""

import atexit
import json
import os
import signal
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from pyinfra import logger
from pyinfra.api.state import StateStage

from containerd_deploy.controller.run_record import HostRun, Run, run_of
from containerd_deploy.data.values import redact_secrets
from containerd_deploy.deploy.verify import VERIFY_OPERATION
from containerd_deploy.remote.container_check import CONTAINER_RAN, NOT_PULLED
from containerd_deploy.remote.rollback import ROLLED_BACK

INTERRUPTED_EXIT = 130  # as a shell reports a command stopped by SIGINT


def report_at_exit(state) -> None:
    """Under pyinfra's CLI: print the report when the process exits, and make Ctrl-C exit 130
    (pyinfra's own handler exits 0). Once per run; nothing under the API (a caller's own
    program decides what to print and how to exit)."""
    import pyinfra

    run = run_of(state)
    if not pyinfra.is_cli or run.reported:
        return
    run.reported = True
    atexit.register(finish, state)

    def interrupted(signum, frame):
        run.interrupted = True
        logger.error("--> Interrupted (Ctrl-C): a node may be left halfway; a rerun converges it")
        sys.exit(INTERRUPTED_EXIT)

    signal.signal(signal.SIGINT, interrupted)


# --- what each host's run came to ---


def _op_name(state, op_hash) -> str:
    names = sorted(state.op_meta[op_hash].names)
    return names[0].rsplit(" | ", 1)[-1] if names else "an operation"


def _why_failed(meta, record: HostRun) -> str:
    """The problems a failed operation named, else its last line (or what the deploy recorded of
    an operation run on the controller, whose output pyinfra does not keep)."""
    lines = [line.strip() for line in (meta.stderr_lines or meta.stdout_lines) if line.strip()]
    problems = [line for line in lines if line.startswith("- ")]
    said = "; ".join(problems[:3]) if problems else lines[-1] if lines else record.failure or "no output"
    return redact_secrets(said)


def outcome(state, host, run: Run) -> dict:
    """One host's row: host, status, detail, changes, verify (result, container, note)."""
    row: dict = {"host": host.name, "status": "", "detail": "", "changes": [], "verify": None, "versions": {}}
    record = run.hosts.get(host.name)
    refused = sorted(name for name, other in run.hosts.items() if other.refused)
    if host not in state.activated_hosts:
        row.update(status="unreachable", detail="could not connect (pyinfra says why at the top of the run)")
        return row
    if record is not None and record.refused:
        row.update(status="refused", detail=record.refused.removeprefix(f"{host.name}: "))
        return row
    if refused:  # a refusal stops the whole run before any host is changed
        row.update(
            status="not run", detail=f"the run stopped before any change: {', '.join(refused)} refused"
        )
        return row
    if record is None:
        row.update(status="not run", detail="the run stopped before this host was planned")
        return row
    row["changes"] = [line for line in record.plan if not line.startswith("verify ")]
    executed = state.current_stage >= StateStage.Execute
    if not executed:
        row.update(
            status="would change" if record.changes else "no change",
            detail="; ".join(row["changes"]) if record.changes else "",
        )
        return row
    changed: list = []  # operations that changed the node, before the one the run stopped at
    verified = False  # the verify step passed (a later operation may still fail)
    for op_hash in state.get_op_order():
        data = state.ops[host].get(op_hash)
        if data is None:
            continue
        meta = data.operation_meta
        if not meta.is_complete():
            done = [_op_name(state, done) for done in changed]
            row.update(
                status="interrupted" if run.interrupted else "stopped",
                detail=f"at {_op_name(state, op_hash)}"
                + ("" if run.interrupted else " (the run stopped: another host failed past its allowance)")
                + (f"; changed before: {', '.join(done)}" if done else ""),
            )
            return row
        if meta.did_succeed() and meta.did_change():
            changed.append(op_hash)
        verified = verified or (meta.did_succeed() and _op_name(state, op_hash) == VERIFY_OPERATION)
        if meta.did_error():
            rolled_back = [line for line in meta.stderr_lines if ROLLED_BACK in line]
            if rolled_back:
                row.update(
                    status="rolled back",
                    detail=redact_secrets(rolled_back[-1].split(ROLLED_BACK, 1)[1].strip())
                    + f"; {_op_name(state, op_hash)}: {_why_failed(meta, record)}",
                )
            else:
                row.update(status="failed", detail=f"{_op_name(state, op_hash)}: {_why_failed(meta, record)}")
            failed_verify = _op_name(state, op_hash) == VERIFY_OPERATION
            row["verify"] = {"result": "failed" if failed_verify else "passed" if verified else "not reached"}
            return row
    row["versions"] = record.versions  # every operation succeeded: what the node runs now
    if not record.changes:
        row["status"] = "unchanged"
    elif record.restart:
        row.update(status="restarted", detail=record.restart)
    else:  # each change without its reasons: the JSON's "changes" has them whole
        row.update(status="changed", detail="; ".join(line.split(" (", 1)[0] for line in row["changes"]))
    if record.verify:
        row["verify"] = {"result": "passed", "container": record.container, "note": record.verify}
        said = _verify_output(state, host)
        if said.startswith(NOT_PULLED):  # the container check could not pull the image: a warning
            row["verify"].update(container=False, note=said, warning=True)
        elif said:  # where it ran ("a container ran in <scope>"), after what it ran from
            row["verify"]["note"] = record.verify + said.removeprefix(CONTAINER_RAN)
        if record.warnings:  # the node works, less safely than it should
            row["verify"].update(warning=True, note="; ".join([row["verify"]["note"], *record.warnings]))
    return row


def _verify_output(state, host) -> str:
    """What the verify step's container check printed last, when it ran one."""
    for op_hash in state.get_op_order():
        data = state.ops[host].get(op_hash)
        if data is None or _op_name(state, op_hash) != VERIFY_OPERATION:
            continue
        meta = data.operation_meta
        if meta.is_complete() and meta.did_change():
            lines = [line.strip() for line in meta.stdout_lines if line.strip()]
            found = [line for line in lines if line.startswith((CONTAINER_RAN, NOT_PULLED))]
            return redact_secrets(found[-1]) if found else ""
    return ""


def outcomes(state) -> list[dict]:
    """Every host of the inventory this run was limited to, in inventory order."""
    run = run_of(state)
    return [outcome(state, host, run) for host in state.inventory if state.is_host_in_limit(host)]


# --- printed and written ---

BAD = {"failed", "refused", "unreachable", "interrupted", "stopped", "rolled back", "not run"}


def verify_said(verify: dict | None) -> str:
    if not verify:
        return ""
    if verify["result"] != "passed":
        return f"verify {verify['result']}"
    return f"verify passed: {verify.get('note', '')}"


def table(rows: list[dict]) -> list[str]:
    """The report as lines: one per host, its status, what happened, the verify step's word."""
    width = max((len(row["host"]) for row in rows), default=0)
    status_width = max((len(row["status"]) for row in rows), default=0)
    lines = []
    for row in rows:
        said = "; ".join(part for part in (row["detail"], verify_said(row["verify"])) if part)
        lines.append(f"{row['host']:<{width}}  {row['status']:<{status_width}}  {said}".rstrip())
    return lines


def summary(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return ", ".join(f"{count} {status}" for status, count in counts.items())


def write_json(path: str, rows: list[dict], interrupted: bool) -> None:
    """The report as JSON, put in place whole (a reader never sees half of it)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = json.dumps({"finished": finished, "hosts": rows, "interrupted": interrupted}, indent=1) + "\n"
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


REPORT_HEADER = "--> containerd-deploy report ("


def said_of_hosts(output: str) -> dict[str, str]:
    """host -> its row of the report a run printed (status and what happened), from its stderr."""
    if REPORT_HEADER not in output:
        return {}
    rows = {}
    for line in output.rsplit(REPORT_HEADER, 1)[1].splitlines()[1:]:
        host, _, rest = line.strip().partition(" ")
        if host and rest.strip():
            rows[host] = " ".join(rest.split())
    return rows


def finish(state) -> None:
    """Print the report; write it to each `containerd_report` file."""
    run = run_of(state)
    rows = outcomes(state)
    if not rows:
        return
    logger.info(f"{REPORT_HEADER}{summary(rows)}):")
    for row, line in zip(rows, table(rows), strict=True):
        warned = bool(row["verify"] and row["verify"].get("warning"))
        (logger.error if row["status"] in BAD else logger.warning if warned else logger.info)(line)
    for path in sorted({record.report_file for record in run.hosts.values() if record.report_file}):
        try:
            write_json(path, rows, run.interrupted)
        except OSError as error:
            logger.error(f"--> could not write the report to {path}: {error.strerror}")

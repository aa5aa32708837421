"""What a run tells the operator when it ends: every host of the inventory in one report (as a
table, and as JSON in the file `containerd_report` names) — the host it could not reach included,
which fails the run while the others converge; a restart says into what and why; Ctrl-C exits
non-zero, the report says where the run stopped, and the rerun converges."""

import json
import re
import signal
import socket
import subprocess
import time

import pytest

from tests.harness import __main__ as harness
from tests.harness.paths import REPO_ROOT

from .helpers import DEPLOY, OwnNode, main_pid, module_kind, pyinfra

pytestmark = [
    pytest.mark.xdist_group("report"),
    pytest.mark.machine("what a run reports of each host is the deploy's logic"),
]
NAME, LOST = "report-1", "lost-1"
CHANGE = {"containerd_max_container_log_line_size": 32768}


@pytest.fixture(scope="module")
def node(request):
    (started,) = harness.up([NAME], "trixie", kind=module_kind(request))
    yield OwnNode(NAME, started)
    harness.down([NAME])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fleet_inventory(tmp_path) -> str:
    """The node, and a host nothing answers for (a closed port on this machine)."""
    path = tmp_path / "fleet.py"
    path.write_text(
        "import runpy\n"
        f"_local = runpy.run_path({str(REPO_ROOT / 'inventories' / 'local.py')!r})['local_nodes']\n"
        f"fleet = [node for node in _local if node[0] == {NAME!r}]\n"
        f"fleet.append(({LOST!r}, {{'ssh_hostname': '127.0.0.1', 'ssh_port': {closed_port()}, "
        "'ssh_connect_retries': 0}))\n"
    )
    return str(path)


def report_lines(stderr: str) -> dict[str, str]:
    """host -> its line of the report pyinfra's run ended with."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", stderr)
    assert "--> containerd-deploy report (" in text, text[-3000:]
    lines = text.split("--> containerd-deploy report (", 1)[1].splitlines()[1:]
    return {line.split()[0]: " ".join(line.split()[1:]) for line in lines if line.strip()}


def test_the_report_has_every_host_the_unreachable_one_too_and_the_json_says_the_same(node, tmp_path):
    report_file = tmp_path / "reports" / "first.json"
    process = subprocess.run(
        [
            *DEPLOY[:3],
            fleet_inventory(tmp_path),
            DEPLOY[4],
            "-y",
            "--data",
            f"containerd_report={report_file}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 1, "an unreachable host fails the run\n" + process.stderr[-4000:]
    said = report_lines(process.stderr)
    assert said[LOST] == "unreachable could not connect (pyinfra says why at the top of the run)"
    assert said[NAME].startswith("changed install containerd "), said
    assert "start containerd" in said[NAME] and "verify passed:" in said[NAME], said
    written = json.loads(report_file.read_text())
    assert [(row["host"], row["status"]) for row in written["hosts"]] == [
        (NAME, "changed"),
        (LOST, "unreachable"),
    ]
    assert written["hosts"][0]["verify"]["result"] == "passed" and written["interrupted"] is False
    assert main_pid(node) > 0, "the reachable node converged"


def test_a_restart_says_into_what_and_why_and_a_rerun_says_unchanged(node):
    pid = main_pid(node)
    process, _ = pyinfra(NAME, data=CHANGE)
    assert process.returncode == 0, process.stderr[-4000:]
    version = node.data()["containerd_version"]
    said = report_lines(process.stderr)[NAME]
    assert said.startswith(
        f"restarted containerd {version} (/etc/containerd/config.toml changed); verify passed: "
    )
    assert main_pid(node) != pid
    again, _ = pyinfra(NAME, data=CHANGE)
    assert again.returncode == 0, again.stderr[-4000:]
    assert report_lines(again.stderr)[NAME].startswith("unchanged verify passed: "), again.stderr[-2000:]


def test_ctrl_c_exits_non_zero_the_report_says_where_and_the_rerun_converges(node, tmp_path):
    pid = main_pid(node)
    started = tmp_path / "hook-started"
    data = {
        "containerd_max_container_log_line_size": 65536,
        "containerd_restart_hook_before": ["sh", "-c", f"touch {started}; sleep 120"],
    }
    command = [*DEPLOY, "-y", "--limit", NAME]
    for key, value in data.items():
        command += ["--data", f"{key}={json.dumps(value) if not isinstance(value, int) else value}"]
    run = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not started.exists():
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before its hook"
            time.sleep(0.2)
        run.send_signal(signal.SIGINT)  # as Ctrl-C in a terminal does
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, stderr[-4000:]
    assert "Interrupted (Ctrl-C)" in stderr
    assert report_lines(stderr)[NAME].startswith("interrupted at Run containerd_restart_hook_before"), stderr[
        -2000:
    ]
    assert main_pid(node) == pid, "stopped before the restart"
    rerun, _ = pyinfra(NAME, data={"containerd_max_container_log_line_size": 65536})
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert report_lines(rerun.stderr)[NAME].startswith("restarted "), rerun.stderr[-2000:]

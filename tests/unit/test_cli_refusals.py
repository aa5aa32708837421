"""What an operator sees of a refusal through pyinfra's own command line: the host and the
problem first, then the fix, no source location, a non-zero exit, and no host asked anything.
Run against `@local`, which the data check stops before any fact or command runs."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pyinfra_local(*data: str) -> subprocess.CompletedProcess:
    args = [arg for item in data for arg in ("--data", item)]
    environment = {**os.environ, "NO_COLOR": "1", "PYINFRA_PROGRESS": "off"}
    return subprocess.run(
        [sys.executable, "-m", "pyinfra", "@local", "deploy.py", "-y", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )


def test_a_misspelled_key_stops_the_run_with_the_key_it_meant_and_no_source_location():
    run = pyinfra_local("containerd_verison=1.7.24")
    assert run.returncode == 1, run.stderr
    assert (
        "--> @local: data key 'containerd_verison' is not a data key of this deploy (set in --data). "
        "Fix: did you mean containerd_version?"
    ) in run.stderr
    assert "error in" not in run.stderr and "settings.py" not in run.stderr
    assert "Beginning operation run" not in run.stderr


def test_a_checksum_for_another_version_stops_the_run_before_any_download():
    run = pyinfra_local("containerd_version=1.7.99", 'containerd_sha256={"1.6.20": "' + "c" * 64 + '"}')
    assert run.returncode == 1, run.stderr
    assert "--> @local: data key 'containerd_sha256' gives no checksum for containerd 1.7.99" in run.stderr
    assert "error in" not in run.stderr

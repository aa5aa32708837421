"""What an operator sees of a refusal through pyinfra's own command line: the host and the
problem first, then the fix, no source location, a non-zero exit, and no host asked anything.
Run against `@local`, which the data check stops before any fact or command runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.other_process


def pyinfra_local(*data: str) -> subprocess.CompletedProcess:
    args = [arg for item in data for arg in ("--data", item)]
    environment = {**os.environ, "NO_COLOR": "1", "PYINFRA_PROGRESS": "off"}
    return subprocess.run(
        # --dry: were the refusal ever to miss (a mutant, a regression), nothing would run here
        [sys.executable, "-m", "pyinfra", "@local", "deploy.py", "--dry", "-y", *args],
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


def test_importing_the_package_never_patches_the_process_for_gevent():
    """Regression: the refusal's class imported pyinfra's CLI package, whose import patches the
    whole process (threads included) for gevent: pytest-xdist's workers then hung."""
    code = (
        "import importlib, pkgutil, containerd_deploy\n"
        "for module in pkgutil.walk_packages(containerd_deploy.__path__, 'containerd_deploy.'):\n"
        "    if '.conformance.test_' not in module.name and not module.name.endswith('__main__'):\n"
        "        importlib.import_module(module.name)\n"
        "from gevent import monkey\n"
        "print(monkey.is_module_patched('threading'))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.stdout.strip() == "False", run.stdout + run.stderr

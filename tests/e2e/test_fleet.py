"""A fleet in one run: two nodes deployed at once, then checked at once from the inventory."""

import json
import re
import subprocess
import sys

import pytest

from tests.harness import __main__ as harness
from tests.harness.paths import REPO_ROOT

from .helpers import DEPLOY, changed_ops

pytestmark = pytest.mark.xdist_group("fleet")
NAMES = ["fleet-a", "fleet-b"]


@pytest.fixture(scope="module")
def fleet():
    nodes = harness.up(NAMES, "bookworm")
    yield nodes
    harness.down(NAMES)


def test_two_nodes_deploy_in_one_run_and_pass_conformance_from_the_inventory(fleet):
    deploy = subprocess.run(
        [
            *DEPLOY,
            "-y",
            "--json",
            *[arg for name in NAMES for arg in ("--limit", name)],
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert deploy.returncode == 0, deploy.stderr[-4000:]
    results = json.loads(deploy.stdout)
    for name in NAMES:
        assert any("Install containerd" in op for op in changed_ops(results, name)), (
            f"{name} was not deployed"
        )

    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tasks/conformance",
            "--inventory=inventories/local.py",
            f"--limit={','.join(NAMES)}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert check.returncode == 0, check.stdout[-5000:]
    passed = re.search(r"(\d+) passed", check.stdout)
    assert passed and int(passed.group(1)) >= 2 * 16, check.stdout[-2000:]

import os

import pytest
from hypothesis import settings

from . import rootless

# Under mutation testing (tests/mutation.py) a property draws the same examples every run, with
# no deadline and no example database: a mutant one run kills, every run kills.
if os.environ.get("CONTAINERD_DEPLOY_MUTATION") == "1":
    settings.register_profile("mutation", derandomize=True, deadline=None, database=None)
    settings.load_profile("mutation")


def pytest_configure(config):
    rootless.install()


def pytest_unconfigure(config):
    rootless.uninstall()


@pytest.fixture(autouse=True)
def _no_chown_recorded_yet():
    rootless.forget()


@pytest.fixture(autouse=True)
def _verified_daemons_recorded_apart(tmp_path, monkeypatch):
    """The controller's records of full verify checks go to the test's own directory."""
    from containerd_deploy.controller import verified

    monkeypatch.setattr(verified, "RECORD_DIR", str(tmp_path / "verified"))


@pytest.fixture(autouse=True)
def _read_files_recorded_apart(tmp_path, monkeypatch):
    """What the controller keeps of the files it read goes to the test's own directory."""
    from containerd_deploy.controller import read_files

    monkeypatch.setattr(read_files, "RECORD_DIR", str(tmp_path / "read"))

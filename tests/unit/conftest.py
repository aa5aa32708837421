import pytest

from . import rootless


def pytest_configure(config):
    rootless.install()


def pytest_unconfigure(config):
    rootless.uninstall()


@pytest.fixture(autouse=True)
def _no_chown_recorded_yet():
    rootless.forget()

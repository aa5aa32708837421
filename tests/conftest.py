"""Options of the conformance suite (here so `pytest tests/...` of any subfolder knows them)."""

import pytest

from tasks.settings import DEFAULTS


def pytest_addoption(parser):
    group = parser.getgroup("containerd-deploy conformance")
    group.addoption("--containerd-bin-dir", default=DEFAULTS["containerd_bin_dir"],
                    help="where the node's containerd binaries are (default: %(default)s)")
    group.addoption("--runc-path", default=DEFAULTS["runc_path"], help="the node's runc (default: %(default)s)")
    group.addoption("--config-path", default=DEFAULTS["containerd_config_path"],
                    help="the node's config.toml (default: %(default)s)")
    group.addoption("--unit-path", default=DEFAULTS["containerd_unit_path"],
                    help="the node's containerd unit file (default: %(default)s)")
    group.addoption("--expect-containerd-version", default=None,
                    help="the containerd version the node must run (default: what the deploy recorded)")
    group.addoption("--expect-runc-version", default=None,
                    help="the runc version the node must have (default: what the deploy recorded)")
    group.addoption("--expect-runtime-handlers", default="",
                    help="comma-separated CRI runtime handlers the node must offer, e.g. runc,crun")


def pytest_collection_modifyitems(config, items):
    conformance = [item for item in items if "conformance" in item.nodeid.split("/")]
    if conformance and not config.getoption("hosts", None):
        raise pytest.UsageError(
            "the conformance suite checks nodes over SSH: give them with "
            "--hosts=ssh://root@node1,ssh://root@node2 (see README, Conformance)"
        )

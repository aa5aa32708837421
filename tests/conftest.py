"""Options of the conformance suite (here so `pytest tests/...` of any subfolder knows them)."""

import os
import shutil
import tempfile

import pytest

from tasks.settings import DEFAULTS


def pytest_addoption(parser):
    group = parser.getgroup("containerd-deploy conformance")
    group.addoption(
        "--containerd-bin-dir",
        default=DEFAULTS["containerd_bin_dir"],
        help="where the node's containerd binaries are (default: %(default)s)",
    )
    group.addoption(
        "--runc-path", default=DEFAULTS["runc_path"], help="the node's runc (default: %(default)s)"
    )
    group.addoption(
        "--config-path",
        default=DEFAULTS["containerd_config_path"],
        help="the node's config.toml (default: %(default)s)",
    )
    group.addoption(
        "--unit-path",
        default=DEFAULTS["containerd_unit_path"],
        help="the node's containerd unit file (default: %(default)s)",
    )
    group.addoption(
        "--expect-containerd-version",
        default=None,
        help="the containerd version the node must run (default: what the deploy recorded)",
    )
    group.addoption(
        "--expect-runc-version",
        default=None,
        help="the runc version the node must have (default: what the deploy recorded)",
    )
    group.addoption(
        "--expect-runtime-handlers",
        default="",
        help="comma-separated CRI runtime handlers the node must offer, e.g. runc,crun",
    )
    group.addoption(
        "--pull-image",
        action="append",
        default=[],
        metavar="REF",
        help="pull REF through the node's configured registries via the CRI, as a kubelet would, "
        "and report time and bytes (repeatable; off by default)",
    )
    group.addoption(
        "--serve-port",
        type=int,
        default=None,
        metavar="PORT",
        help="with --pull-image: run each pulled image in a host-network pod and GET "
        "http://127.0.0.1:PORT/ on the node (e.g. 80 for nginx)",
    )

    group.addoption(
        "--inventory",
        default=None,
        help="check the hosts of a pyinfra inventory (with its SSH data), instead of --hosts",
    )
    group.addoption(
        "--limit",
        default=None,
        help="with --inventory: only these hosts or groups (comma-separated, globs allowed)",
    )
    group.addoption(
        "--accept-new-host-keys",
        action="store_true",
        default=False,
        help="accept and record host keys not yet in known_hosts (default: refuse them)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "slowest_group: the e2e group to hand to an xdist worker first")
    inventory_path = config.getoption("inventory", None)
    accept_new = config.getoption("accept_new_host_keys", False)
    if not inventory_path and not accept_new:
        return
    from tests.conformance import inventory

    if inventory_path:
        try:
            hosts = inventory.select(inventory.load(inventory_path), config.getoption("limit"))
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None
        if not hosts:
            raise pytest.UsageError(f"no hosts in {inventory_path} match --limit={config.getoption('limit')}")
    # Private to this run (0700, unguessable): its SSH config and connection sockets.
    directory = tempfile.mkdtemp(prefix="conformance-ssh-")
    if inventory_path:
        text = inventory.ssh_config(hosts, directory, accept_new)
        config.option.hosts = ",".join(inventory.host_specs(hosts))
    else:
        text = inventory.accept_new_wrapper(config.option.ssh_config)
    config.option.ssh_config = os.path.join(directory, "ssh_config")
    with open(config.option.ssh_config, "w") as handle:
        handle.write(text)
    config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))


def pytest_collection_modifyitems(config, items):
    conformance = [item for item in items if "conformance" in item.nodeid.split("/")]
    if conformance and not config.getoption("hosts", None):
        raise pytest.UsageError(
            "the conformance suite checks nodes over SSH: give them with "
            "--hosts=ssh://root@node1,ssh://root@node2 or --inventory=inventories/prod.py (see README, Conformance)"
        )

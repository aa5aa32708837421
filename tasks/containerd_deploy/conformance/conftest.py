"""The conformance suite's options and fixtures: which nodes, where things are on them, and
what was deployed. Loaded whenever the suite's folder is collected: `python -m containerd_deploy.conformance`
from a clone, `python -m containerd_deploy.conformance` from the installed package."""

import os
import posixpath
import shutil
import tempfile
from pathlib import Path

import pytest

from containerd_deploy.data.settings import DEFAULTS
from containerd_deploy.remote.manifest import Manifest, manifest_path, read_manifest

from . import inventory
from .cri import CRI, Forward, ForwardError


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
        "--pull-policy",
        choices=("Always", "IfNotPresent"),
        default="Always",
        help="with --pull-image: a kubelet's imagePullPolicy: Always pulls through the registries; "
        "IfNotPresent uses an image the node has (e.g. one the deploy brought from the controller to "
        "a node with no route to a registry) and pulls only a missing one (default: %(default)s)",
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
        "--busybox",
        action="append",
        default=[],
        metavar="ARCH=PATH",
        help="a static busybox for nodes of another arch than this machine's (the test image is built "
        "from it), e.g. arm64=/srv/busybox.arm64; this machine's arch uses /bin/busybox",
    )
    group.addoption(
        "--accept-new-host-keys",
        action="store_true",
        default=False,
        help="accept and record host keys not yet in known_hosts (default: refuse them)",
    )


def pytest_configure(config):
    inventory_path = config.getoption("inventory", None)
    accept_new = config.getoption("accept_new_host_keys", False)
    if not inventory_path and not accept_new:
        return
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
    if items and not config.getoption("hosts", None):
        raise pytest.UsageError(
            "the conformance suite checks nodes over SSH: give them with "
            "--hosts=ssh://root@node1,ssh://root@node2 or --inventory=inventories/prod.py (see docs/conformance.md)"
        )
    if config.option.collectonly or hasattr(config, "workerinput"):
        return  # nothing runs; or an xdist worker, whose findings its controller would not print
    lost = unreachable_hosts(items)
    if not lost:
        return
    config.stash[UNREACHABLE] = [
        f"{name}: could not connect over SSH ({why}). Fix: start the host or correct its address, user, "
        "port or key (--hosts / the inventory's SSH data); a new host key needs --accept-new-host-keys"
        for name, why in sorted(lost.items())
    ]
    if config.option.verbose > 0:
        return  # each of its tests runs, and fails with pytest's own account
    dropped = [item for item in items if node_of(item) in lost]
    config.hook.pytest_deselected(items=dropped)
    items[:] = [item for item in items if node_of(item) not in lost]


UNREACHABLE = pytest.StashKey[list]()  # one line per host the suite could not reach


def node_of(item) -> str | None:
    """The pytest id of the host a test checks (testinfra's parameter), if it checks one."""
    callspec = getattr(item, "callspec", None)
    host = callspec.params.get("_testinfra_host") if callspec else None
    return host.backend.get_pytest_id() if host is not None else None


def unreachable_hosts(items) -> dict[str, str]:
    """pytest id -> why, of each host that does not answer one command over SSH (ssh's own
    failure is exit status 255; a backend that raises says why in its exception)."""
    hosts = {}
    for item in items:
        host = item.callspec.params.get("_testinfra_host") if hasattr(item, "callspec") else None
        if host is not None:
            hosts[host.backend.get_pytest_id()] = host
    lost = {}
    for name, host in hosts.items():
        try:
            result = host.run("true")
        except Exception as error:  # noqa: BLE001 - any failure to connect is the same finding
            # testinfra's ssh backend raises with ssh's result when ssh itself failed
            said = getattr(error.args[0], "stderr", None) if error.args else None
            lost[name] = last_line(said if isinstance(said, str) else str(error)) or type(error).__name__
            continue
        if result.rc == 255:
            lost[name] = last_line(result.stderr) or "ssh exited 255"
    return lost


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def busybox_paths(values: list[str]) -> dict:
    """--busybox ARCH=PATH options as arch -> Path."""
    paths = {}
    for value in values:
        arch, _, path = value.partition("=")
        if arch not in ("amd64", "arm64") or not path:
            raise pytest.UsageError(f"--busybox {value!r}: give ARCH=PATH with ARCH amd64 or arm64")
        paths[arch] = Path(path)
    return paths


class Layout:
    def __init__(self, config):
        self.bin_dir = config.getoption("containerd_bin_dir")
        self.runc = config.getoption("runc_path")
        self.config = config.getoption("config_path")
        self.unit_path = config.getoption("unit_path")
        self.unit = posixpath.basename(self.unit_path)
        self.ctr = f"{self.bin_dir}/ctr"
        self.containerd = f"{self.bin_dir}/containerd"
        self.expect_containerd = config.getoption("expect_containerd_version")
        self.expect_runc = config.getoption("expect_runc_version")
        self.expect_handlers = [
            name for name in config.getoption("expect_runtime_handlers").split(",") if name
        ]
        self.busybox = busybox_paths(config.getoption("busybox"))


@pytest.fixture(scope="session")
def layout(request):
    return Layout(request.config)


def recorded_version(host, component: str) -> str | None:
    """The version the deploy recorded in its manifest on the node (its default state directory)."""
    file = host.file(manifest_path(DEFAULTS["containerd_deploy_state_dir"], component))
    if not file.exists:
        return None
    recorded = Manifest()
    read_manifest(file.content_string.splitlines(), recorded)
    return recorded.fields.get("version")


@pytest.fixture
def expected_versions(host, layout):
    containerd = layout.expect_containerd or recorded_version(host, "containerd")
    runc = layout.expect_runc or recorded_version(host, "runc")
    if not containerd or not runc:
        pytest.fail(
            "no expected versions: pass --expect-containerd-version/--expect-runc-version, or deploy "
            "with containerd-deploy (it records them in /var/lib/containerd-deploy/*.manifest)"
        )
    return containerd, runc


@pytest.fixture(scope="module")
def cri(host):
    try:
        forward = Forward(host)
    except ForwardError as error:
        pytest.fail(str(error))
    client = CRI(forward.path)
    yield client
    client.close()
    forward.close()


PULLS = pytest.StashKey[list]()  # one line per --pull-image, printed at the end of the run


def pytest_terminal_summary(terminalreporter, config):
    for line in config.stash.get(PULLS, []):
        terminalreporter.write_line(line)
    for line in config.stash.get(UNREACHABLE, []):
        terminalreporter.write_line(line, red=True)


def pytest_sessionfinish(session, exitstatus):
    # A host the suite could not check fails the run, even when every other host passed.
    if session.config.stash.get(UNREACHABLE, []) and exitstatus in (
        pytest.ExitCode.OK,
        pytest.ExitCode.NO_TESTS_COLLECTED,
    ):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

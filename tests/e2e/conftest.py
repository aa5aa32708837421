"""The e2e nodes. Every test says which kind of node it needs, and why, with a marker:

- `@pytest.mark.machine("why")`: a systemd-nspawn machine (tests/harness/nspawn.py): the node's
  image, systemd as PID 1, its own sshd, run natively on this machine's kernel. For what the
  deploy decides on a node: config edits, upgrades, runs cut short, refusals, rollouts.
  Containers and CRI pods run there (with containerd_restrict_oom_score_adj: this machine's
  sandbox lacks CAP_SYS_RESOURCE).
- `@pytest.mark.vm("why")`: a qemu VM: where the kernel or the boot is the subject (cgroup v1,
  arm64), for the full CRI conformance of each generation (a kernel of its own, containerd's
  default oom_score_adj), and a node that must not reach what this machine reaches.

A test module's `pytestmark` or the test itself carries it; collection fails without one.
`make check` runs the machine tests only. docs/testing.md lists every test with its kind.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import __main__ as harness
from tests.harness import vm

from .helpers import KIND_MARKERS, node_kind, pyinfra


@dataclass(frozen=True)
class Generation:
    """A node image and the containerd/runc release it gets (both from Debian's packages)."""

    image: str  # Debian suite of the node's image
    release: str  # Debian suite whose containerd and runc are repackaged into the mirror
    label: str
    vm_kernel_args: tuple = ()  # the kernel command line of its VM


# The oldest generation's VM boots cgroup v1: its conformance there is the cgroup v1 proof on a
# kernel of the node's own, with no VM of its own for it. Its generation on cgroup v2 is the
# fleet's arm64 node (Debian 12, containerd 1.6, booted as Debian boots: test_fleet checks it).
# (Machines have this machine's cgroups: hybrid v1 here and on CI.)
CGROUP_V1 = ("systemd.unified_cgroup_hierarchy=0",)
MATRIX = [
    Generation("bookworm", "bookworm", "debian12-containerd1.6", vm_kernel_args=CGROUP_V1),
    Generation("trixie", "trixie", "debian13-containerd1.7"),
    # sid's runc needs glibc 2.38: a Debian 13 guest.
    Generation("trixie", "sid", "debian13-containerd2.1"),
]


@dataclass(frozen=True)
class MatrixNode:
    """One generation on one kind of node: each its own xdist group, booted once for its tests."""

    generation: Generation
    kind: str

    @property
    def group(self) -> str:
        return f"{self.generation.label}-{self.kind}"

    @property
    def node_name(self) -> str:
        return f"e2e-{self.group}"


@dataclass
class TestNode:
    name: str
    vm: vm.Node
    generation: Generation


def pytest_addoption(parser):
    parser.addoption(
        "--node-kind",
        choices=sorted(KIND_MARKERS),
        default=None,
        help="run only the tests on this kind of node (make check: machine)",
    )


def pytest_configure(config):
    for marker in KIND_MARKERS.values():
        config.addinivalue_line(
            "markers", f"{marker}(why): the test's node is a {marker}, for the reason given"
        )
    config.addinivalue_line("markers", "generations(*labels): run on these generations of the matrix only")
    config.addinivalue_line("markers", "slowest_group: schedule this test's xdist group first")


def pytest_generate_tests(metafunc):
    # The matrix's node (not a module's own `node`), of the kind the test is marked for, on every
    # generation (the same list for every test, so a serial run keeps each node for all its
    # tests); a `generations` marker deselects the others at collection.
    definitions = metafunc.definition._fixtureinfo.name2fixturedefs.get("node", ())
    if not definitions or definitions[-1].func.__module__ != __name__:
        return
    kind = node_kind(metafunc.definition)
    params = [MatrixNode(generation, kind) for generation in MATRIX]
    ids = [param.generation.label for param in params]
    metafunc.parametrize("node", params, ids=ids, indirect=True, scope="session")


def _deselected(config, item) -> bool:
    """Not on the node kind --node-kind asks for, or not on a generation its marker names."""
    wanted = config.getoption("--node-kind")
    if wanted and node_kind(item) != wanted:
        return True
    only = item.get_closest_marker("generations")
    callspec = getattr(item, "callspec", None)
    matrix = callspec.params.get("node") if callspec else None
    return bool(only and isinstance(matrix, MatrixNode) and matrix.generation.label not in only.args)


@pytest.fixture(scope="session")
def node(request):
    matrix: MatrixNode = request.param
    generation = matrix.generation
    kernel_args = generation.vm_kernel_args if matrix.kind == vm.VM else ()
    (started,) = harness.up(
        [matrix.node_name], generation.image, generation.release, kernel_args=kernel_args, kind=matrix.kind
    )
    yield TestNode(matrix.node_name, started, generation)
    harness.down([matrix.node_name])


@pytest.fixture(scope="session")
def first_deploy(node):
    """The node's first deploy with default data (every later test starts from it, and returns to it)."""
    process, results = pyinfra(node.name)
    assert process.returncode == 0, f"first deploy failed:\n{process.stderr[-4000:]}"
    return results


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    outside = [item for item in items if here not in item.path.parents]  # another suite in one run
    items[:] = [item for item in items if here in item.path.parents]
    deselected = [item for item in items if _deselected(config, item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]
    for item in items:
        kind = node_kind(item)
        callspec = getattr(item, "callspec", None)
        if callspec and isinstance(callspec.params.get("node"), MatrixNode):
            # One xdist worker per matrix entry (--dist loadgroup): its node boots once for all its tests.
            item.add_marker(pytest.mark.xdist_group(callspec.params["node"].group))
        group = item.get_closest_marker("xdist_group")
        item.user_properties.append(("group", group.args[0] if group else item.nodeid))
        item.user_properties.append(("kind", kind))
    # xdist hands groups to workers in collection order: the longest (the arm64 fleet, the runs
    # cut short) go first, so they run beside the others instead of after them.
    items.sort(key=lambda item: 0 if item.get_closest_marker("slowest_group") else 1)
    items[:0] = outside


def pytest_sessionfinish(session):
    # Each xdist worker, when done: the last one to finish finds no node running and stops it.
    harness.stop_mirror_if_idle()


@pytest.hookimpl(trylast=True)  # after pytest's own --durations list
def pytest_terminal_summary(terminalreporter):
    """Each group's time (setup, call and teardown of its tests, from pytest's own reports), so a
    run shows where its minutes went."""
    groups: dict[tuple[str, str], float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            properties = dict(getattr(report, "user_properties", ()) or ())
            if "group" in properties and isinstance(getattr(report, "duration", None), float):
                key = (properties["group"], properties["kind"])
                groups[key] = groups.get(key, 0.0) + report.duration
    if not groups:
        return
    terminalreporter.write_sep("=", "e2e time per group (worker seconds)")
    for (group, kind), seconds in sorted(groups.items(), key=lambda entry: -entry[1]):
        terminalreporter.write_line(f"{seconds:8.1f} s  {kind:<8} {group}")
    for kind in sorted({kind for _, kind in groups}):
        total = sum(seconds for (_, k), seconds in groups.items() if k == kind)
        terminalreporter.write_line(f"{total:8.1f} s  {kind:<8} all {kind} groups")

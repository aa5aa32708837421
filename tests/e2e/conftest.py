"""The VM matrix: each entry is a real node of its own, tested on its own xdist worker."""

from dataclasses import dataclass

import pytest

from tests.harness import __main__ as harness
from tests.harness import vm

from .helpers import pyinfra


@dataclass(frozen=True)
class Generation:
    """A node image and the containerd/runc release it gets (both from Debian's packages)."""

    image: str  # Debian suite of the node's image
    release: str  # Debian suite whose containerd and runc are repackaged into the mirror
    label: str

    @property
    def node_name(self) -> str:
        return f"e2e-{self.label}"


MATRIX = [
    Generation("bookworm", "bookworm", "debian12-containerd1.6"),
    Generation("trixie", "trixie", "debian13-containerd1.7"),
    # sid's runc needs glibc 2.38: a Debian 13 guest.
    Generation("trixie", "sid", "debian13-containerd2.1"),
]


@dataclass
class TestNode:
    name: str
    vm: vm.Node
    generation: Generation


@pytest.fixture(scope="session", params=MATRIX, ids=[generation.label for generation in MATRIX])
def node(request):
    generation = request.param
    (started,) = harness.up([generation.node_name], generation.image, generation.release)
    yield TestNode(generation.node_name, started, generation)
    harness.down([generation.node_name])


@pytest.fixture(scope="session")
def first_deploy(node):
    """The node's first deploy with default data (every later test starts from it, and returns to it)."""
    process, results = pyinfra(node.name)
    assert process.returncode == 0, f"first deploy failed:\n{process.stderr[-4000:]}"
    return results


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    # One xdist worker per matrix entry (--dist loadgroup): its node boots once for all its tests.
    kept, deselected = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec and "node" in callspec.params:
            label = callspec.params["node"].label
            only = item.get_closest_marker("generations")
            if only and label not in only.args:
                deselected.append(item)
                continue
            item.add_marker(pytest.mark.xdist_group(label))
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
    # xdist hands groups to workers in collection order: the longest (runs cut short at ten
    # points) goes first, so it runs beside the others instead of after them.
    items.sort(key=lambda item: 0 if item.get_closest_marker("slowest_group") else 1)


def pytest_sessionfinish(session):
    # Each xdist worker, when done: the last one to finish finds no node running and stops it.
    harness.stop_mirror_if_idle()

"""Fixtures of the conformance suite: where things are on the node, and what was deployed."""

import posixpath

import pytest

from .cri import CRI, Forward, ForwardError


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


@pytest.fixture(scope="session")
def layout(request):
    return Layout(request.config)


def recorded_version(host, component: str) -> str | None:
    """The version the deploy recorded in its manifest on the node."""
    manifest = host.file(f"/var/lib/containerd-deploy/{component}.manifest")
    if not manifest.exists:
        return None
    for line in manifest.content_string.splitlines():
        if line.startswith("version "):
            return line.split(" ", 1)[1].strip()
    return None


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

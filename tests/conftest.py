import os
from pathlib import Path

# The unit tests run the node scripts in directories under tmp_path, and the scripts refuse a
# directory any user could change (/tmp is one, sticky or not; so is a group-writable ~/.cache
# under umask 002): tests keep theirs in a 0700 directory of the user's home.
if "PYTEST_DEBUG_TEMPROOT" not in os.environ:
    _TEMPROOT = Path.home() / ".containerd-deploy-tests"
    _TEMPROOT.mkdir(mode=0o700, exist_ok=True)
    _TEMPROOT.chmod(0o700)
    os.environ["PYTEST_DEBUG_TEMPROOT"] = str(_TEMPROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "slowest_group: the e2e group to hand to an xdist worker first")
    config.addinivalue_line("markers", "generations(*labels): run a matrix test on these generations only")
    config.addinivalue_line(
        "markers",
        "other_process: what the test checks runs in a child process, where mutmut sees no function reached "
        "(so it never runs the test against a mutant, and its stats run leaves it out)",
    )

import os
from pathlib import Path

# The unit tests run the node scripts in directories under tmp_path, and the scripts refuse a
# directory any user could change (/tmp is one, sticky or not): tests keep theirs under the
# user's own cache, a chain only this user (or root) can write.
if "PYTEST_DEBUG_TEMPROOT" not in os.environ:
    _TEMPROOT = Path.home() / ".cache" / "containerd-deploy-tests"
    _TEMPROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ["PYTEST_DEBUG_TEMPROOT"] = str(_TEMPROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "slowest_group: the e2e group to hand to an xdist worker first")
    config.addinivalue_line("markers", "generations(*labels): run a matrix test on these generations only")

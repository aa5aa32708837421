"""`python -m containerd_deploy.conformance --hosts=ssh://root@node1 [pytest options]`: the
conformance suite of the installed package, without a clone (from a clone: `python -m containerd_deploy.conformance`)."""

import sys
from pathlib import Path

import pytest


def main() -> int:
    # No cache: it would be written into the installed package's folder.
    return int(pytest.main([str(Path(__file__).parent), "-p", "no:cacheprovider", *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())

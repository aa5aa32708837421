"""Where the test harness keeps what it builds, outside the repository."""

import hashlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    root = Path(base) / "containerd-deploy"
    root.mkdir(parents=True, exist_ok=True)
    return root


def run_root() -> Path:
    """Per-checkout state of running nodes and mirrors (pid files, overlays, logs)."""
    root = REPO_ROOT / ".nodes"
    root.mkdir(parents=True, exist_ok=True)
    return root


def digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            part = part.read_bytes()
        if isinstance(part, str):
            part = part.encode()
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def debian_mirror_uri() -> str:
    """The Debian archive this machine's apt already uses, so tests reach no other host."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for path in candidates:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if uri.rstrip("/").endswith("/debian"):
                        return uri
            elif line.startswith("deb ") and "/debian" in line:
                for word in line.split()[1:]:
                    if word.rstrip("/").endswith("/debian"):
                        return word
    raise RuntimeError(
        "no Debian archive found in this machine's apt sources; the test harness builds its "
        "node image and mirror from Debian's packages"
    )

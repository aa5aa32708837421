"""pyinfra and this deploy on a test node itself, for `pyinfra @local deploy.py` (a machine that
provisions itself, as from cloud-init).

The node reaches no package index: the controller downloads the wheels of the versions it runs
itself (for the node's Python, the image's python3) once into the cache, and copies them and
the deploy's files to the node over SSH.
"""

import fcntl
import io
import subprocess
import sys
import tarfile
from pathlib import Path

from .paths import REPO_ROOT, cache_root, digest

DEPLOY_FILES = ("deploy.py", "tasks", "files")
VENV = "/opt/pyinfra"
CHECKOUT = "/opt/containerd-deploy"


def _pins() -> str:
    """The controller's own versions of everything pyinfra needs (so the node runs the same)."""
    return subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                          capture_output=True, text=True).stdout


def wheels(python_tag: str = "cp311") -> Path:
    """A directory of wheels for pyinfra, tomlkit and packaging at the controller's versions."""
    pins = _pins()
    directory = cache_root() / f"node-wheels-{python_tag}-{digest(pins)}"
    with open(cache_root() / ".node-wheels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (directory / "ready").exists():
            return directory
        constraints = cache_root() / f".constraints-{digest(pins)}.txt"
        constraints.write_text(pins)
        wanted = [line for line in pins.splitlines()
                  if line.split("==")[0].lower() in ("pyinfra", "tomlkit", "packaging")]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--dest", str(directory),
                        "--python-version", python_tag[2:], "--platform", "manylinux_2_34_x86_64",
                        "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
                        "--platform", "manylinux1_x86_64", "-c", str(constraints), *wanted], check=True)
        (directory / "ready").write_text("")
    return directory


def _tar(paths: dict[str, Path]) -> bytes:
    """A tarball of `paths` (name in the archive -> local path), without caches."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, path in paths.items():
            tar.add(path, arcname=name, filter=lambda info: None if "__pycache__" in info.name else info)
    return buffer.getvalue()


def install(node) -> None:
    """pyinfra in a venv at VENV, and the deploy's files at CHECKOUT, on `node` (a vm.Node)."""
    found = wheels()
    archive = _tar({"wheels": found, **{f"deploy/{name}": REPO_ROOT / name for name in DEPLOY_FILES}})
    script = (f"set -e; rm -rf /opt/node-setup {CHECKOUT}; mkdir -p /opt/node-setup; tar -xf - -C /opt/node-setup; "
              f"mv /opt/node-setup/deploy {CHECKOUT}; "
              f"[ -x {VENV}/bin/pyinfra ] || {{ python3 -m venv {VENV} && {VENV}/bin/pip install -q --no-index "
              f"--find-links /opt/node-setup/wheels pyinfra tomlkit packaging; }}; rm -rf /opt/node-setup")
    subprocess.run(node.ssh_command(script), input=archive, check=True, capture_output=True, timeout=900)

"""pyinfra and this deploy, installed as a package, on a test node itself: a machine that
provisions itself (as from cloud-init) with a deploy file of its operator's own.

The node reaches no package index: the controller builds this tree's wheel (containerd-deploy,
importable as `containerd_deploy`), downloads the wheels of the versions it runs itself (for
the node's Python, the image's python3) once into the cache, and copies them over SSH; the node
pip-installs the package with its conformance extra into a fresh venv, as a user would from an
index. The conformance suite builds its test image from busybox-static's /bin/busybox: the
controller's is copied too (the operator's `apt install busybox-static`).
"""

import fcntl
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from .paths import REPO_ROOT, cache_root, digest

PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "tasks")  # what the wheel is built from
VENV = "/opt/pyinfra"
SITE = "/root/site"  # the operator's own deploy files, outside any checkout
USER_DEPLOY = """\
from containerd_deploy import containerd_node

containerd_node()
"""


def _pins() -> str:
    """The controller's own versions of everything pyinfra needs (so the node runs the same)."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def _wanted() -> tuple[str, ...]:
    """The package's dependencies and its conformance extra's, as pyproject.toml names them."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["conformance"]
    return tuple(Requirement(requirement).name.lower() for requirement in requirements)


# At the controller's versions (pip freeze), downloaded for the node's Python.
WANTED = _wanted()


def wheels(python_tag: str = "cp311") -> Path:
    """A directory of wheels for what the package needs, at the controller's versions."""
    pins = _pins()
    directory = cache_root() / f"node-wheels-{python_tag}-{digest(pins + ' '.join(WANTED))}"
    with open(cache_root() / ".node-wheels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (directory / "ready").exists():
            return directory
        constraints = cache_root() / f".constraints-{digest(pins)}.txt"
        constraints.write_text(pins)
        wanted = [line for line in pins.splitlines() if line.split("==")[0].lower() in WANTED]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--only-binary=:all:",
                "--dest",
                str(directory),
                "--python-version",
                python_tag[2:],
                "--platform",
                "manylinux_2_34_x86_64",
                "--platform",
                "manylinux_2_28_x86_64",
                "--platform",
                "manylinux2014_x86_64",
                "--platform",
                "manylinux1_x86_64",
                "-c",
                str(constraints),
                *wanted,
            ],
            check=True,
        )
        (directory / "ready").write_text("")
    return directory


def build_wheel(into: Path) -> Path:
    """This tree's wheel, built from a copy of what it is made of (no build/ left in the tree)."""
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "src"
        for name in PACKAGE_FILES:
            path = REPO_ROOT / name
            if path.is_dir():
                # What a build or an editable install left in the tree is not the tree.
                ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
                shutil.copytree(path, source / name, ignore=ignore)
            else:
                source.mkdir(exist_ok=True)
                shutil.copy(path, source / name)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(into), str(source)],
            check=True,
            capture_output=True,
        )
    (wheel,) = into.glob("containerd_deploy-*.whl")
    return wheel


def _tar(paths: dict[str, Path]) -> bytes:
    """A tarball of `paths` (name in the archive -> local path), without caches."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, path in paths.items():
            tar.add(path, arcname=name, filter=lambda info: None if "__pycache__" in info.name else info)
    return buffer.getvalue()


def install(node) -> None:
    """The containerd-deploy wheel (with pyinfra and its dependencies) in a fresh venv at VENV,
    and an operator's deploy file at SITE/deploy.py that imports it, on `node` (a vm.Node)."""
    with tempfile.TemporaryDirectory() as work:
        package = build_wheel(Path(work))
        archive = _tar(
            {
                "wheels": wheels(),
                f"package/{package.name}": package,
                "busybox": Path("/bin/busybox").resolve(),
            }
        )
    script = (
        f"set -e; rm -rf /opt/node-setup {VENV} {SITE}; mkdir -p /opt/node-setup {SITE}; "
        f"tar -xf - -C /opt/node-setup; python3 -m venv {VENV}; "
        # --no-compile: byte-compiling every module of every wheel is most of an install under
        # TCG (221 s -> 148 s); what a run imports is compiled when first imported (+12 s).
        f"{VENV}/bin/pip install -q --no-compile --no-index --find-links /opt/node-setup/wheels "
        '"$(echo /opt/node-setup/package/*.whl)[conformance]"; '
        "install -m 0755 /opt/node-setup/busybox /bin/busybox; "
        f"rm -rf /opt/node-setup; cat > {SITE}/deploy.py <<'CONTAINERD_DEPLOY_EOF'\n{USER_DEPLOY}CONTAINERD_DEPLOY_EOF"
    )
    subprocess.run(node.ssh_command(script), input=archive, check=True, capture_output=True, timeout=900)

"""pyinfra and this deploy, installed as a package, on a test node itself: a machine that
provisions itself with cloud-init from a NoCloud seed, and then runs deploy files of its
operator's own.

The node reaches no package index: the controller builds this tree's wheel (containerd-deploy,
importable as `containerd_deploy`) and downloads the wheels of the versions it runs itself (for
the node's Python, the image's python3) and pip's once into the cache: the wheelhouse the
user-data (`python -m containerd_deploy.cloud_init`) pins and the node installs from, over HTTP
from this machine. The harness is the node's cloud: the image's cloud.cfg.d (harness.image)
says what cloud-init leaves as the harness made it.
"""

import fcntl
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

from .paths import REPO_ROOT, cache_root, digest

PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "tasks")  # what the wheel is built from
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
    pip = f"pip=={version('pip')}"  # the wheelhouse's pip installs the rest on the node
    directory = cache_root() / f"node-wheels-{python_tag}-{digest(pins + ' '.join(WANTED) + pip)}"
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
                pip,
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


def wheelhouse(into: Path) -> Path:
    """A directory of every wheel a node installs: this tree's, what it needs, and pip."""
    shutil.rmtree(into, ignore_errors=True)  # (what a run cut short left: pip takes one version of each)
    into.mkdir(parents=True)
    for wheel in wheels().glob("*.whl"):
        shutil.copy(wheel, into)
    build_wheel(into)
    return into


def nocloud_seed(name: str, user_data: str, writable: list[Path]) -> dict[str, str]:
    """Files that make a machine's first boot a NoCloud one with `user_data` (path -> text). Its
    cgroup hierarchies `writable` are made so before cloud-init's final stage (its runcmd runs
    containers), as the harness makes them once the machine answers."""
    remount = " && ".join(f"mount -o remount,rw,bind {shlex.quote(str(path))}" for path in writable)
    return {
        "/var/lib/cloud/seed/nocloud/user-data": user_data,
        "/var/lib/cloud/seed/nocloud/meta-data": f"instance-id: {name}\nlocal-hostname: {name}\n",
        "/etc/systemd/system/cloud-final.service.d/harness-cgroups.conf": (
            f"[Service]\nExecStartPre=/bin/sh -c {shlex.quote(remount or 'true')}\n"
        ),
    }

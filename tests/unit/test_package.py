"""The installable package: its shipped files are found the same way from a clone and from the
wheel, its import name exports the deploy, and its dependency ranges admit the pinned versions
the tests prove."""

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import containerd_deploy
from tests.harness.paths import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "tasks" / "containerd_deploy"


def test_shipped_files_are_found_through_the_package():
    for name in ("checksums.toml", "containerd.service"):
        assert containerd_deploy.resource(name).read_bytes() == (PACKAGE_DIR / "files" / name).read_bytes()


def test_the_package_exports_the_deploy_lazily():
    from containerd_deploy.deploy.node import containerd_node

    assert containerd_deploy.containerd_node is containerd_node
    assert containerd_deploy.__all__ == ["containerd_node"]
    with pytest.raises(AttributeError):
        containerd_deploy.no_such_thing  # noqa: B018 - the attribute access is the test


def test_dependency_ranges_admit_the_pinned_test_versions():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.lower()] = version
    for dependency in project["dependencies"] + project["optional-dependencies"]["conformance"]:
        requirement = Requirement(dependency)
        assert requirement.name.lower() in pins, f"{requirement.name} is not pinned in requirements.txt"
        assert requirement.specifier.contains(pins[requirement.name.lower()]), (
            f"requirements.txt pins {requirement.name}=={pins[requirement.name.lower()]}, outside {requirement.specifier}"
        )


@pytest.mark.other_process
def test_the_wheel_is_built_from_the_tree_as_it_is_laid_out(tmp_path):
    """One name: the wheel holds exactly the package as the tree lays it out (tasks/containerd_deploy,
    its files inside it, no link; nothing an earlier build left), and the clone's venv imports the
    same folder (editable)."""
    import zipfile

    from tests.harness.on_node import build_wheel

    tool = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["packages"]["find"] == {"where": ["tasks"], "include": ["containerd_deploy*"]}
    assert not any(path.is_symlink() for path in (REPO_ROOT / "tasks").rglob("*")), "no links in the package"
    assert Path(containerd_deploy.__file__).parent == PACKAGE_DIR, "the venv imports the tree itself"
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    packaged = {name for name in names if name.startswith("containerd_deploy/")}
    tree = {
        str(path.relative_to(PACKAGE_DIR.parent))
        for path in PACKAGE_DIR.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".pyc")
    }
    assert packaged == tree, (sorted(packaged - tree), sorted(tree - packaged))


@pytest.mark.other_process
def test_the_registries_module_does_not_import_the_settings_it_is_part_of():
    """No import cycle: settings parses containerd_registries with registries, which needs only
    the shared value checks."""
    import subprocess
    import sys

    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, containerd_deploy.data.registries; print('containerd_deploy.data.settings' in sys.modules)",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found == "False"

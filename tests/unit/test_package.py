"""The installable package: its shipped files are found the same way from a clone and from the
wheel, its import name exports the deploy, and its dependency ranges admit the pinned versions
the tests prove."""

import tomllib

import pytest
from packaging.requirements import Requirement

import tasks
from tests.harness.paths import REPO_ROOT


def test_shipped_files_are_found_through_the_package():
    for name in ("checksums.toml", "containerd.service"):
        assert tasks.resource(name).read_bytes() == (REPO_ROOT / "files" / name).read_bytes()


def test_the_package_exports_the_deploy_lazily():
    from tasks.node import containerd_node

    assert tasks.containerd_node is containerd_node
    assert tasks.__all__ == ["containerd_node"]
    with pytest.raises(AttributeError):
        tasks.no_such_thing  # noqa: B018 - the attribute access is the test


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


def test_the_wheel_is_built_from_the_tree_as_it_is_laid_out():
    tool = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == {"containerd_deploy": "tasks"}
    assert (REPO_ROOT / "tasks" / "files").resolve() == (REPO_ROOT / "files").resolve()


def test_the_registries_module_does_not_import_the_settings_it_is_part_of():
    """No import cycle: settings parses containerd_registries with registries, which needs only
    the shared value checks."""
    import subprocess
    import sys

    found = subprocess.run(
        [sys.executable, "-c", "import sys, tasks.registries; print('tasks.settings' in sys.modules)"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found == "False"

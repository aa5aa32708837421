import re
from pathlib import Path

from containerd_deploy.data.settings import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def test_the_readme_data_table_is_the_one_generated_from_the_keys():
    from containerd_deploy.data.settings import data_table

    section = (DOCS / "data.md").read_text()
    table = "".join(line + "\n" for line in section.splitlines() if line.startswith("| "))
    assert table == data_table(), (
        "docs/data.md's table is stale: paste `python -m containerd_deploy.data.settings` over it"
    )
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [re.match(r"\| `([a-z_0-9]+)`", row).group(1) for row in rows] == list(DEFAULTS)


def test_every_key_is_a_settings_field_and_every_field_a_key():
    import dataclasses

    from containerd_deploy.data.settings import KEYS, Settings

    assert sorted(field.name for field in dataclasses.fields(Settings)) == sorted(["host", *KEYS])


def test_the_readme_lists_exactly_the_pinned_versions():
    from containerd_deploy.data.artifacts import pinned_checksums

    section = (
        (DOCS / "artifacts.md")
        .read_text()
        .split("Checksums are never fetched", 1)[1]
        .split("Any other version", 1)[0]
    )
    names = {"containerd": "containerd", "runc": "runc", "cni_plugins": "CNI plugins", "crictl": "crictl"}
    for component, versions in pinned_checksums().items():
        listed = re.search(rf"{names[component]} ([0-9., ]+)", section.replace("\n", " ")).group(1)
        assert sorted(v for v in re.split(r"[, ]+", listed.strip(" ,")) if v) == sorted(versions), component


def test_the_readme_is_a_front_door_naming_only_declared_keys_and_docs_that_exist():
    from containerd_deploy.data.settings import KEYS

    text = README.read_text()
    assert len(text.splitlines()) <= 200
    named = set(re.findall(r"`((?:containerd|runc|cni_plugins|crictl|artifact)_[a-z0-9_]+)", text))
    assert named and named - {"containerd_deploy"} <= set(KEYS), sorted(named - set(KEYS))
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), link
    for page in DOCS.glob("*.md"):
        for link in re.findall(r"\]\(([a-z0-9-]+\.md)", page.read_text()):
            assert (DOCS / link).is_file(), f"{page.name} links to {link}"


def test_every_import_the_docs_show_works():
    """One package name: each `from containerd_deploy… import …` in the README and docs/ imports."""
    import importlib

    shown = [
        (page.name, match.groups())
        for page in [README, *DOCS.glob("*.md")]
        for match in re.finditer(
            r"^\s*from (containerd_deploy[\w.]*) import ([\w, ]+)$", page.read_text(), re.M
        )
    ]
    assert len(shown) >= 3
    for page, (module, names) in shown:
        imported = importlib.import_module(module)
        for name in names.split(","):
            assert hasattr(imported, name.strip()), f"{page}: {module} has no {name.strip()}"


def test_each_claim_of_the_threat_model_names_tests_that_exist():
    """The threat model states only what a named test proves: one line per claim, each with
    `file.py::test_name` entries, each a test function of that file."""
    text = (DOCS / "threat-model.md").read_text()
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith(("| claim", "| ---"))
    ]
    assert len(rows) >= 25, rows
    for row in rows:
        named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", row)
        assert named, f"a claim without a test: {row}"
        for file, test in named:
            paths = list((ROOT / "tests").glob(f"*/{file}"))  # unit/ or e2e/
            assert any(re.search(rf"^def {test}\(", path.read_text(), re.M) for path in paths), (
                f"{file}::{test} does not exist"
            )

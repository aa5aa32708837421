import re
from pathlib import Path

from tasks.settings import DEFAULTS

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_data_key_has_one_row_in_the_readme_data_table():
    table = README.read_text().split("### Data", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    documented = [key for row in rows for key in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])]
    assert sorted(documented) == sorted(DEFAULTS), "README rows and tasks/settings.py DEFAULTS differ"
    assert len(documented) == len(set(documented))


def test_the_readme_lists_exactly_the_pinned_versions():
    from tasks.artifacts import pinned_checksums

    section = README.read_text().split("Checksums are never fetched", 1)[1].split("Any other version", 1)[0]
    names = {"containerd": "containerd", "runc": "runc", "cni_plugins": "CNI plugins", "crictl": "crictl"}
    for component, versions in pinned_checksums().items():
        listed = re.search(rf"{names[component]} ([0-9., ]+)", section.replace("\n", " ")).group(1)
        assert sorted(v for v in re.split(r"[, ]+", listed.strip(" ,")) if v) == sorted(versions), component

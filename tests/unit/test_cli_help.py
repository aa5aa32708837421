"""What each command line tool says of itself (`--help`), word for word: the options, their
defaults and what they do, as an operator reads them. The text is in golden/cli-help.txt; after
a deliberate change rewrite it with `UPDATE_GOLDEN=1 pytest tests/unit/test_cli_help.py` and
review its diff."""

import os
from pathlib import Path

import pytest

from containerd_deploy import cloud_init, rollout, update_checksums

GOLDEN = Path(__file__).parent / "golden" / "cli-help.txt"
TOOLS = {"rollout": rollout.main, "update_checksums": update_checksums.main, "cloud_init": cloud_init.main}


def help_text(main, monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal's width
    monkeypatch.setenv("NO_COLOR", "1")  # and colours its help on newer Pythons
    for name in ("FORCE_COLOR", "PYTHON_COLORS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_each_tools_help_is_what_the_golden_file_says(monkeypatch, capsys):
    text = "".join(f"== {name}\n{help_text(main, monkeypatch, capsys)}" for name, main in TOOLS.items())
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "the help changed: review it, then UPDATE_GOLDEN=1 (see the docstring)"

"""The node-side scripts' readers that start no program (remote/shell.py reader_lines), run in sh."""

import os
import shutil
import subprocess

import pytest

from containerd_deploy.remote.shell import reader_lines


def sh(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", "-c", "\n".join([*reader_lines(), script]), "sh", *args], capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "content",
    [
        "7\n",
        "7",
        "",
        "two\nlines\n",
        "  leading and trailing  \n",
        "back\\slash \\n kept\n",
        "last\nno newline",
    ],
)
def test_text_of_prints_a_file_as_cat_does(tmp_path, content):
    path = tmp_path / "file"
    path.write_text(content)
    done = sh('text_of "$1"', str(path))
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == (content if content.endswith("\n") or not content else content + "\n")
    assert sh('[ "$(text_of "$1")" = "$(cat "$1")" ]', str(path)).returncode == 0


def test_text_of_a_file_it_cannot_read_fails_quietly(tmp_path):
    done = sh('text_of "$1" || echo "none"', str(tmp_path / "absent"))
    assert (done.stdout, done.stderr) == ("none\n", "")


def test_parent_of_reads_past_a_command_name_holding_parentheses_and_spaces(tmp_path):
    odd = tmp_path / "a) b (c) d"
    shutil.copy("/bin/sleep", odd)
    child = subprocess.Popen([str(odd), "30"])
    try:
        assert sh('parent_of "$1" && echo "$parent"', str(child.pid)).stdout == f"{os.getpid()}\n"
    finally:
        child.kill()
        child.wait()
    assert sh('parent=1; parent_of 999999999 || echo "none $parent"').stdout == "none \n"


def test_text_of_a_directory_says_nothing(tmp_path):
    done = sh('text_of "$1"', str(tmp_path))
    assert (done.stdout, done.stderr) == ("", "")

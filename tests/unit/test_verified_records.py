"""The controller's records of full verify checks (controller/verified.py)."""

import json
import os
import stat
from pathlib import Path

from containerd_deploy.controller import cache, verified
from containerd_deploy.controller.verified import VerifiedDaemon

RECORD = VerifiedDaemon(
    (582, 1000.25, "/usr/local/bin/containerd"), "digest", 5000.5, ("CRI plugins loaded",), True
)


def records() -> Path:
    return Path(verified.RECORD_DIR)


def test_a_record_reads_back_as_written_one_private_file_per_host():
    names = ["node1", "@local", "root@10.0.0.1:2222", "../../etc/passwd", "a/b"]
    for index, name in enumerate(names):
        assert verified.write(
            name, VerifiedDaemon(RECORD.identity, f"digest {index}", RECORD.at, RECORD.checked, True)
        )
    assert [verified.read(name).expected for name in names] == [
        f"digest {index}" for index in range(len(names))
    ]
    assert verified.read("node1") == VerifiedDaemon(
        RECORD.identity, "digest 0", RECORD.at, RECORD.checked, True
    )
    assert verified.read("node2") is None
    files = sorted(records().iterdir())
    assert len(files) == len(names), "one file per host, all in the directory: " + str(files)
    assert stat.S_IMODE(records().stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in files} == {0o600}
    assert {path.suffix for path in files} == {".json"}
    verified.write("node1", RECORD)
    assert verified.read("node1") == RECORD, "rewritten whole"
    assert not [path for path in records().iterdir() if path.name.startswith(".")], "no partial file left"


def test_a_record_that_cannot_be_read_is_none():
    verified.write("node1", RECORD)
    [path] = records().iterdir()
    good = json.loads(path.read_text())
    for broken in [
        json.dumps({**good, "at": 10**400}),  # too large for a float
        "[" * 100000 + "]" * 100000,  # too deep for the parser
        "{",
        "[]",
        json.dumps({**good, "at": "soon"}),
        json.dumps({k: good[k] for k in ("identity", "at")}),
    ]:
        path.write_text(broken)
        assert verified.read("node1") is None, broken[:80]
    path.write_text(json.dumps({**good, "image_present": "yes"}))
    assert verified.read("node1").image_present is False, "only true is true"


def test_a_directory_another_user_could_write_is_neither_read_nor_written():
    verified.write("node1", RECORD)
    os.chmod(records(), 0o777)
    assert verified.read("node1") is None, "a record anyone could have written is not used"
    assert verified.write("node2", RECORD) is False
    assert not any(path.name.endswith(".json") and verified.read("node2") for path in records().iterdir())


def test_a_link_planted_at_a_record_is_replaced_not_written_through(tmp_path):
    verified.write("node1", RECORD)
    [path] = records().iterdir()
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    path.unlink()
    path.symlink_to(target)
    assert verified.write("node1", RECORD)
    assert target.read_text() == "untouched" and not path.is_symlink()


def test_a_record_directory_that_cannot_be_made_is_no_record(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(verified, "RECORD_DIR", str(blocker / "verified"))
    assert verified.write("node1", RECORD) is False
    assert verified.read("node1") is None


def test_a_record_directory_it_may_not_even_look_into_is_no_record(monkeypatch):
    def refused(directory):
        raise PermissionError(13, "Permission denied", str(directory))

    monkeypatch.setattr(cache, "untrusted_cache", refused)
    assert verified.read("node1") is None
    assert verified.write("node1", RECORD) is False


def test_a_link_planted_at_the_partial_name_is_never_written_through(tmp_path):
    verified.write("node1", RECORD)
    [path] = records().iterdir()
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.symlink_to(target)
    assert verified.write("node1", RECORD) is False
    assert target.read_text() == "untouched" and not partial.exists() and not partial.is_symlink()
    assert verified.read("node1") == RECORD


def test_a_record_that_cannot_be_written_is_no_record_and_no_error(monkeypatch):
    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(verified.os, "open", refused)
    assert verified.write("node1", RECORD) is False
    assert verified.read("node1") is None

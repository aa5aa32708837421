"""What the deploy makes of each data key's value, word for word: for every key and a fixed set
of values (good, bad, odd), the parsed value or the refusal (which names the host, the key and
the fix, and never shows a proxy's password). The answers are in golden/data.txt, one line per
key and value, where a reviewer reads them side by side; after a deliberate change rewrite it
with `UPDATE_GOLDEN=1 pytest tests/unit/test_data_messages.py` and review its diff."""

import os
from pathlib import Path

from containerd_deploy.data.settings import KEYS, resolve
from containerd_deploy.data.values import DataError

GOLDEN = Path(__file__).parent / "golden" / "data.txt"

# Every key gets every value: each kind of value some key takes, and what no key should.
VALUES = [
    None,
    "",
    True,
    0,
    -1,
    30,
    "infinity",
    "2048:1024",
    "1.7.24",
    "v2.1.9",
    "9.9.9",
    "a" * 64,
    "remove",
    "/opt/a b/bin",
    "/opt/../etc",
    "relative/path",
    "~/.cache/containerd-deploy",
    "https://mirror.internal/{version}/{arch}",
    "file:///srv/mirror",
    "http://user:s3cret@proxy.internal:3128",
    "socks5://proxy.internal:1080",
    "localhost,.svc,10.0.0.0/8",
    "line\nbreak",
    ["containerd", "runc"],
    [{"name": "crun", "binary_name": "/usr/bin/crun"}],
    {
        "docker.io": {
            "mirrors": [{"host": "https://mirror.internal", "headers": {"Authorization": "Basic s3cret"}}]
        }
    },
    {"amd64": "b" * 64, "arm64": "c" * 64},
]


def answer(key: str, value) -> str:
    try:
        parsed = getattr(resolve("node1", {key: value}), key)
    except DataError as error:
        return f"refused: {error}"
    return f"-> {parsed!r}"


def golden_text() -> str:
    return "".join(f"{key} = {value!r} {answer(key, value)}\n" for key in KEYS for value in VALUES)


def test_every_key_and_value_gives_what_the_golden_file_says():
    text = golden_text()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    expected = GOLDEN.read_text()
    if text != expected:  # the first differing line, not a 400-line diff
        for got, want in zip(text.splitlines(), expected.splitlines(), strict=False):
            assert got == want, "an answer changed: review it, then UPDATE_GOLDEN=1 (see the docstring)"
    assert text == expected


def test_a_refusal_names_the_host_and_the_key_and_never_a_secret():
    """Regression: a value with a password given to the wrong key (a proxy URL as
    containerd_state, registries with an Authorization header as containerd_runtimes) was
    quoted whole in the refusal."""
    for key in KEYS:
        for value in VALUES:
            said = answer(key, value)
            if said.startswith("refused: "):
                message = said.removeprefix("refused: ")
                assert message.startswith(f"node1: data key '{key}'") and ". Fix: " in message, message
                assert "s3cret" not in message, message

"""The table updater, against a file:// mirror laid out as upstream publishes checksums."""

import hashlib
import tomllib

from containerd_deploy.controller.cache import digest_in
from containerd_deploy.data.artifacts import pinned_checksums
from containerd_deploy.update_checksums import header_of, main, render_table


def test_digest_in_each_published_format():
    digest = "ab" * 32
    assert (
        digest_in(f"{digest}  containerd-2.2.2-linux-amd64.tar.gz\n", "containerd-2.2.2-linux-amd64.tar.gz")
        == digest
    )
    assert digest_in(f"{'cd' * 32} *runc.arm64\n{digest} *runc.amd64\n", "runc.amd64") == digest
    assert digest_in(f"{digest}\n", "crictl-v1.35.0-linux-amd64.tar.gz") == digest
    assert digest_in("not a checksum file\n", "runc.amd64") is None


def test_rendering_the_table_keeps_every_value_and_orders_versions():
    table = pinned_checksums()
    text = render_table(table, "# header\n")
    assert tomllib.loads(text) == table
    assert (
        text.index('[containerd."2.2.1"]')
        < text.index('[containerd."1.7.30"]')
        < text.index('[containerd."1.7.11"]')
    )
    assert (
        text.index("[containerd.")
        < text.index("[runc.")
        < text.index("[cni_plugins.")
        < text.index("[crictl.")
    )


def test_adding_a_release_from_a_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    digests = {}
    for arch in ("amd64", "arm64"):
        directory = mirror / "opencontainers/runc/releases/download/v1.3.9"
        directory.mkdir(parents=True, exist_ok=True)
        digests[arch] = hashlib.sha256(arch.encode()).hexdigest()
    (directory / "runc.sha256sum").write_text(
        "".join(f"{digests[a]}  runc.{a}\n" for a in ("amd64", "arm64"))
    )
    table_file = tmp_path / "checksums.toml"
    original = '# kept\n\n[runc."1.1.11"]\namd64 = "' + "1" * 64 + '"\narm64 = "' + "2" * 64 + '"\n'
    table_file.write_text(original)
    assert main(["runc", "1.3.9", "--mirror", f"file://{mirror}", "--file", str(table_file)]) == 0
    text = table_file.read_text()
    assert header_of(text) == "# kept\n"
    table = tomllib.loads(text)
    assert table["runc"]["1.3.9"] == digests and table["runc"]["1.1.11"]["amd64"] == "1" * 64
    assert text.index('"1.3.9"') < text.index('"1.1.11"')

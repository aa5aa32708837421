"""Add a release's upstream sha256 values to files/checksums.toml (stdlib + packaging).

    python -m tasks.update_checksums containerd 2.2.2
    python -m tasks.update_checksums runc 1.3.5 --mirror http://mirror.internal:8080

For each arch it reads the checksum file the release publishes next to the artifact
(`<file>.sha256sum`, `<file>.sha256`, or runc's `runc.sha256sum`), takes the line for the
artifact's file name, and rewrites the table: components in their install order, newest
versions first. Run it where the upstream (or mirror) URLs are reachable; review the diff
before committing, like any change to what nodes will trust.
"""

import argparse
import re
import sys
import tomllib
import urllib.request
from pathlib import Path

from packaging.version import Version

from .artifacts import CHECKSUMS_FILE, COMPONENTS
from .settings import DEFAULTS

ARCHES = ("amd64", "arm64")
HEX = re.compile(r"^[0-9a-f]{64}$")


def sum_file_urls(url: str) -> list[str]:
    directory = url.rsplit("/", 1)[0]
    return [f"{url}.sha256sum", f"{url}.sha256", f"{directory}/runc.sha256sum", f"{directory}/sha256sums.txt"]


def digest_in(text: str, filename: str) -> str | None:
    """The sha256 for `filename` in a checksum file (`<hex>  <name>`, `<hex> *<name>`, or a lone hex)."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    for fields in lines:
        if (
            len(fields) >= 2
            and fields[1].lstrip("*").rsplit("/", 1)[-1] == filename
            and HEX.match(fields[0].lower())
        ):
            return fields[0].lower()
    if len(lines) == 1 and len(lines[0]) == 1 and HEX.match(lines[0][0].lower()):
        return lines[0][0].lower()
    return None


class ChecksumLookupError(RuntimeError):
    """No published sha256 could be read for a URL; the message lists what was tried."""


def fetch_digest(url: str, timeout: float = 30) -> str:
    filename = url.rsplit("/", 1)[-1]
    tried = []
    for sums in sum_file_urls(url):
        try:
            with urllib.request.urlopen(sums, timeout=timeout) as response:
                text = response.read(1 << 20).decode(errors="replace")
        except (OSError, ValueError) as error:
            tried.append(f"{sums} ({error})")
            continue
        digest = digest_in(text, filename)
        if digest:
            return digest
        tried.append(f"{sums} (no line for {filename})")
    raise ChecksumLookupError(f"no published sha256 for {url}; tried: " + "; ".join(tried))


def render_table(table: dict, header: str) -> str:
    out = [header.rstrip("\n"), ""]
    for component in [name for name in COMPONENTS if name in table] + sorted(set(table) - set(COMPONENTS)):
        for version in sorted(table[component], key=Version, reverse=True):
            out.append(f'[{component}."{version}"]')
            for arch, digest in sorted(table[component][version].items()):
                out.append(f'{arch} = "{digest}"')
            out.append("")
    return "\n".join(out)


def header_of(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.update_checksums", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("component", choices=list(COMPONENTS))
    parser.add_argument("version", type=Version)
    parser.add_argument(
        "--mirror", default=DEFAULTS["artifact_mirror"], help="base URL with upstream's layout"
    )
    parser.add_argument("--file", type=Path, default=CHECKSUMS_FILE)
    parser.add_argument("--dry-run", action="store_true", help="print the values, do not write")
    args = parser.parse_args(argv)
    template = DEFAULTS[f"{args.component}_download_url"]
    version = str(args.version)
    try:
        found = {
            arch: fetch_digest(template.format(mirror=args.mirror.rstrip("/"), version=version, arch=arch))
            for arch in ARCHES
        }
    except ChecksumLookupError as error:
        raise SystemExit(str(error)) from None
    for arch, digest in found.items():
        print(f"{args.component} {version} {arch} {digest}")
    if args.dry_run:
        return 0
    text = args.file.read_text()
    table = tomllib.loads(text)
    table.setdefault(args.component, {})[version] = found
    args.file.write_text(render_table(table, header_of(text)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

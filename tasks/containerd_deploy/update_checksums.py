"""Add a release's upstream sha256 values to the package's files/checksums.toml.

    python -m containerd_deploy.update_checksums containerd 2.2.2
    python -m containerd_deploy.update_checksums runc 1.3.5 --mirror http://mirror.internal:8080

For each arch it reads the checksum file the release publishes next to the artifact
(`<file>.sha256sum`, `<file>.sha256`, or runc's `runc.sha256sum`), takes the line for the
artifact's file name, and rewrites the table: components in their install order, newest
versions first. Run it where the upstream (or mirror) URLs are reachable; review the diff
before committing, like any change to what nodes will trust.
"""

import argparse
import sys
import tomllib
from pathlib import Path

from packaging.version import Version

from containerd_deploy.controller.cache import ChecksumLookupError, fetch_digest
from containerd_deploy.data.artifacts import CHECKSUMS_FILE, COMPONENTS
from containerd_deploy.data.settings import DEFAULTS

ARCHES = ("amd64", "arm64")


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
        prog="python -m containerd_deploy.update_checksums", description=__doc__.split("\n\n")[0]
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

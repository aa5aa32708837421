"""Nodes that provision themselves, with no controller in the loop: the cloud-init user-data that
makes a node converge itself at first boot and, in pull mode, on a schedule after.

    python -m containerd_deploy.cloud_init --data group_data/all.py --wheels wheelhouse/ \\
        --wheels-url https://wheels.example.internal/containerd-deploy/ [--pull-every 1h] > user-data

At first boot (cloud-init's runcmd, as root) the node:
- makes a venv of its own (`python3 -m venv --without-pip`: Debian's cloud images have no
  ensurepip) and installs this package with pip from the operator's wheelhouse, every wheel
  checked by the sha256 the user-data pins (pip itself, fetched from the wheelhouse first, is
  checked the same way before it runs);
- converges with `pyinfra -y @local containerd_deploy.containerd_node` from its data file, a
  pyinfra group data file like the operator's own `group_data/all.py`, through a oneshot systemd
  service: the run logs to the journal, takes the node's run lock like any run, and leaves the
  end-of-run report (status, what changed, the versions, the verify step's result) in a status
  file.
- With `--pull-every`, a systemd timer starts the same service again on that schedule, each
  node after a random delay so a fleet does not converge at once: edit the data file and the
  next firing converges the node to it; a firing with nothing to do changes nothing.

The data file is checked here, as a run checks it, before any node boots with it. User-data is
readable by whoever can read the instance's metadata: a data file carrying credentials
(containerd_registries headers) is said so on stderr.
"""

import argparse
import ast
import base64
import json
import os
import re
import shlex
import sys
from collections import defaultdict
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from containerd_deploy.controller.cache import sha256_of
from containerd_deploy.data import registries
from containerd_deploy.data.settings import Settings, has_credentials, resolve
from containerd_deploy.data.values import DataError

PACKAGE = "containerd-deploy"
VENV = "/opt/containerd-deploy"  # the package and pyinfra, in a venv of their own
SITE = "/etc/containerd-deploy"  # the service's working directory: pyinfra reads group_data/ there
DATA_FILE = f"{SITE}/group_data/all.py"
REQUIREMENTS = f"{SITE}/requirements.txt"  # every wheel, pinned by its sha256
STATUS_FILE = "/var/log/containerd-deploy/last-run.json"  # containerd_report of each run
SERVICE = "containerd-deploy-converge"
UNITS_DIR = "/etc/systemd/system"
INSTALL_TIMEOUT = 900  # seconds for one download of pip's wheel
# A systemd time span as systemd.time(7) writes one: numbers with units ("1h", "1h 30min").
TIME_SPAN = re.compile(
    r"[0-9]+ *(?:us|ms|s|sec|m|min|h|hr|d|w|M|y)(?: *[0-9]+ *(?:us|ms|s|sec|m|min|h|hr|d|w|M|y))*"
)
PROXY_KEYS = ("containerd_http_proxy", "containerd_https_proxy")
# What the node's own run (@local: the node is its controller) does with what the controller
# does for a push run.
ON_THE_NODE = {
    "containerd_images": "the node fetches them itself, with skopeo, which it then needs",
    "containerd_image_archives": "the archives are read on the node, at the paths given",
    "containerd_restart_hook_before": "the hook runs on the node, for host @local",
    "containerd_restart_hook_after": "the hook runs on the node, for host @local",
}


class UserDataError(ValueError):
    """An option or file the user-data cannot be made from; the message says which and the fix."""


def read_data(path: Path) -> dict:
    """The data a pyinfra run reads from `path`, a group data file, as pyinfra's CLI reads
    group_data/*.py (pyinfra_cli.inventory, not imported: importing pyinfra's CLI patches this
    process for gevent): the names it sets, not the ones its import statements bind, nor
    dunder names; `__all__`, when it sets one, names them."""
    if path.suffix != ".py" or not path.is_file():
        raise UserDataError(
            f"--data {path}: give a pyinfra group data file (a .py file of NAME = value lines)"
        )
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, ValueError) as error:
        raise UserDataError(f"--data {path}: cannot be read as Python ({error})") from None
    names: dict = {"__file__": str(path)}
    try:
        exec(compile(tree, str(path), "exec"), names)
    except Exception as error:  # what a run would stop at too
        raise UserDataError(f"--data {path}: stops with {type(error).__name__}: {error}") from None
    imported = {  # (`import a.b` binds a; a from-import's names have no dots)
        alias.asname or alias.name.split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    keys = names["__all__"] if "__all__" in names else [key for key in names if key not in imported]
    return {key: value for key, value in names.items() if key in keys and not key.startswith("__")}


def check_data(path: Path, data: dict) -> Settings:
    """Refuse data a run would refuse, naming the key and the fix, before any node boots with it."""
    try:
        return resolve(str(path), data, {key: str(path) for key in data})
    except DataError as error:
        raise UserDataError(str(error)) from None


def credentials_in(settings: Settings) -> list[str]:
    """The keys that carry credentials: user-data is no place to keep a secret."""
    found = [key for key in PROXY_KEYS if has_credentials(getattr(settings, key))]
    if any(registries.has_credentials(spec) for spec in settings.containerd_registries.values()):
        found.insert(0, "containerd_registries")
    return found


def wheel_pins(directory: Path) -> tuple[str, dict[str, str]]:
    """(requirements.txt pinning every wheel in `directory` by name, version and sha256; name ->
    (file, sha256) of pip's wheel). One version of each project; pip and this package must be there."""
    wheels = sorted(directory.glob("*.whl"))
    versions: dict[str, set[str]] = defaultdict(set)
    hashes: dict[tuple[str, str], list[str]] = defaultdict(list)
    pip = {}
    for wheel in wheels:
        try:
            name, version, _, _ = parse_wheel_filename(wheel.name)
        except InvalidWheelFilename:
            raise UserDataError(f"--wheels {directory}: {wheel.name} is not a wheel's file name") from None
        digest = sha256_of(wheel)
        versions[name].add(str(version))
        hashes[(name, str(version))].append(digest)
        if name == "pip":
            pip = {"file": wheel.name, "sha256": digest}
    several = sorted(name for name, found in versions.items() if len(found) > 1)
    if several:
        raise UserDataError(
            f"--wheels {directory}: has more than one version of {', '.join(several)}; keep one of each "
            "(pip installs every wheel the user-data pins)"
        )
    for needed in ("pip", canonicalize_name(PACKAGE)):
        if needed not in versions:
            raise UserDataError(
                f"--wheels {directory}: has no {needed} wheel. Fix: make the wheelhouse with "
                f"`pip wheel --wheel-dir {directory} {PACKAGE} pip` (docs/self-provisioning.md)"
            )
    lines = [
        f"{name}=={version} "
        + " ".join(f"--hash=sha256:{digest}" for digest in sorted(hashes[(name, version)]))
        for name, found in sorted(versions.items())
        for version in found
    ]
    return "".join(line + "\n" for line in lines), pip


def service_unit() -> str:
    return f"""\
# Made by containerd-deploy's user-data (python -m containerd_deploy.cloud_init).
[Unit]
Description=Converge containerd on this node from {DATA_FILE} (containerd-deploy)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
WorkingDirectory={SITE}
Environment=PYINFRA_PROGRESS=off NO_COLOR=1
ExecStart={VENV}/bin/pyinfra -y @local containerd_deploy.containerd_node --data containerd_report={STATUS_FILE}
TimeoutStartSec=1h
KillMode=mixed
"""


def timer_unit(every: str, delay: str) -> str:
    return f"""\
# Made by containerd-deploy's user-data (python -m containerd_deploy.cloud_init).
[Unit]
Description=Converge containerd on this node every {every} (containerd-deploy pull mode)

[Timer]
OnActiveSec={every}
OnUnitInactiveSec={every}
RandomizedDelaySec={delay}

[Install]
WantedBy=timers.target
"""


# Runs as root under the venv's Python: fetch pip's wheel from the wheelhouse into a directory
# of its own, check its sha256, then let that pip install every pinned wheel.
BOOTSTRAP = """\
import hashlib, os, shutil, ssl, subprocess, sys, tempfile, urllib.parse, urllib.request
url, name, sha256, requirements, timeout = sys.argv[1:]
# Every wheel is checked by its sha256: a wheelhouse over plain http is trusted for that alone;
# over https, pip (before 24.2, with CAs of its own) is given the system's, as urllib uses.
ca = ssl.get_default_verify_paths().openssl_cafile
trust = (["--trusted-host", urllib.parse.urlsplit(url).netloc] if url.startswith("http:")
         else ["--cert", ca] if os.path.isfile(ca) else [])
with tempfile.TemporaryDirectory() as work:
    wheel = f"{work}/{name}"
    with urllib.request.urlopen(f"{url.rstrip('/')}/{name}", timeout=float(timeout)) as got, open(wheel, "wb") as out:
        shutil.copyfileobj(got, out)
    digest = hashlib.sha256()
    with open(wheel, "rb") as got:
        for block in iter(lambda: got.read(1 << 20), b""):
            digest.update(block)
    found = digest.hexdigest()
    if found != sha256:
        sys.exit(f"containerd-deploy: {name} from {url} has sha256 {found}, not {sha256}: not installed")
    subprocess.run([sys.executable, f"{wheel}/pip", "install", "--quiet", "--no-input", "--no-cache-dir",
                    "--disable-pip-version-check", "--no-index", "--find-links", url, "--only-binary=:all:",
                    "--require-hashes", "--requirement", requirements, *trust], check=True)
"""


def first_boot_script(wheels_url: str, pip: dict, pull: bool) -> str:
    """The shell script cloud-init's runcmd runs once, as root."""
    bootstrap = shlex.join(
        [
            f"{VENV}/bin/python",
            "-c",
            BOOTSTRAP,
            wheels_url,
            pip["file"],
            pip["sha256"],
            REQUIREMENTS,
            str(INSTALL_TIMEOUT),
        ]
    )
    lines = [
        "set -eu",
        f"python3 -m venv --clear --without-pip {VENV}",
        bootstrap,
        "systemctl daemon-reload",
        # The first converge; `journalctl -u SERVICE` says how it went. Pull mode goes on
        # whatever it came to (the next run tries again), and a failure fails cloud-init's run.
        f"status=0; systemctl start {SERVICE}.service || status=$?",
    ]
    if pull:
        lines.append(f"systemctl enable --now {SERVICE}.timer")
    lines.append('exit "$status"')
    return "\n".join(lines) + "\n"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def user_data(data_text: str, requirements: str, pip: dict, wheels_url: str, every: str, delay: str) -> str:
    """The #cloud-config document (JSON, which cloud-init reads as the YAML it is)."""
    files = [  # the operator's own text as base64: any character survives the YAML
        {
            "path": DATA_FILE,
            "owner": "root:root",
            "permissions": "0600",
            "encoding": "b64",
            "content": _b64(data_text),
        },
        {"path": REQUIREMENTS, "owner": "root:root", "permissions": "0600", "content": requirements},
        {
            "path": f"{UNITS_DIR}/{SERVICE}.service",
            "owner": "root:root",
            "permissions": "0644",
            "content": service_unit(),
        },
    ]
    if every:
        files.append(
            {
                "path": f"{UNITS_DIR}/{SERVICE}.timer",
                "owner": "root:root",
                "permissions": "0644",
                "content": timer_unit(every, delay),
            }
        )
    document = {
        # Before write_files (cloud-init makes a file's directories 0755, and writes it before
        # its chmod): the data's directories root's alone.
        "bootcmd": [["install", "-d", "-m", "0700", SITE, os.path.dirname(DATA_FILE)]],
        "write_files": files,
        "runcmd": [["sh", "-c", first_boot_script(wheels_url, pip, bool(every))]],
    }
    return "#cloud-config\n" + json.dumps(document, indent=1) + "\n"


def _time_span(option: str, value: str) -> str:
    if not TIME_SPAN.fullmatch(value.strip()) or not re.search("[1-9]", value):
        raise UserDataError(
            f"{option} {value!r}: give a systemd time span of more than nothing, e.g. 1h, 30min or 1h 30min"
        )
    return value.strip()


def _wheels_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", value):
        raise UserDataError(
            f"--wheels-url {value!r}: give the http(s):// URL the nodes fetch the wheelhouse from "
            "(a directory of the wheels, as pip's --find-links reads it), without credentials"
        )
    return value


def make(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(the user-data, warnings)."""
    data_path = Path(args.data)
    settings = check_data(data_path, read_data(data_path))
    every = _time_span("--pull-every", args.pull_every) if args.pull_every else ""
    delay = _time_span("--pull-delay", args.pull_delay)
    if not Path(args.wheels).is_dir():
        raise UserDataError(f"--wheels {args.wheels}: give the local directory of the wheelhouse")
    requirements, pip = wheel_pins(Path(args.wheels))
    text = user_data(
        data_path.read_text(encoding="utf-8"), requirements, pip, _wheels_url(args.wheels_url), every, delay
    )
    warnings = [
        f"{data_path} sets {key}: the node's own run is its controller: {why}"
        for key, why in ON_THE_NODE.items()
        if getattr(settings, key)
    ]
    warnings += [
        f"{data_path} sets {key}: the user-data carries it, and user-data is readable by whoever can "
        "read the instance's metadata; keep credentials out of it where the metadata service is open "
        "to the node's users or containers"
        for key in credentials_in(settings)
    ]
    return text, warnings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m containerd_deploy.cloud_init", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--data", required=True, help="the node's pyinfra group data file (e.g. group_data/all.py)"
    )
    parser.add_argument(
        "--wheels", required=True, help="the wheelhouse, a local directory: every wheel is pinned by sha256"
    )
    parser.add_argument(
        "--wheels-url", required=True, help="where the nodes fetch the wheelhouse (pip --find-links)"
    )
    parser.add_argument(
        "--pull-every", default="", help="pull mode: converge again on this schedule (e.g. 1h)"
    )
    parser.add_argument(
        "--pull-delay",
        default="15min",
        help="pull mode: each node waits a random time up to this (default 15min)",
    )
    parser.add_argument("--output", "-o", default="-", help="where to write the user-data (default: stdout)")
    args = parser.parse_args(argv)
    try:
        text, warnings = make(args)
    except UserDataError as error:
        print(f"containerd_deploy.cloud_init: {error}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"containerd_deploy.cloud_init: warning: {warning}", file=sys.stderr)
    if args.output == "-":
        sys.stdout.write(text)
    else:  # it holds the node's data: this user's alone
        handle = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(handle, 0o600)  # (an existing file keeps its mode through open)
        with open(handle, "w") as out:
            out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

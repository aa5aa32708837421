"""The user-data of nodes that provision themselves (containerd_deploy.cloud_init): the data is
checked as a run checks it before any node boots with it; every wheel is pinned by its sha256,
pip's own too, checked before it runs; the units and the first-boot script are what cloud-init
and systemd are given."""

import base64
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from containerd_deploy import cloud_init

PIP_MAIN = """\
import json, os, sys
with open(os.environ["PIP_RAN"], "w") as out:
    json.dump(sys.argv[1:], out)
"""


def wheel(directory: Path, name: str, content: bytes = b"") -> str:
    """A file named as a wheel is (its content need not be one); its sha256."""
    path = directory / name
    path.write_bytes(content or name.encode())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_pip(directory: Path, version: str = "24.0") -> str:
    """A wheel of a `pip` package whose __main__ records its arguments in $PIP_RAN."""
    path = directory / f"pip-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("pip/__init__.py", "")
        archive.writestr("pip/__main__.py", PIP_MAIN)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wheelhouse(tmp_path: Path) -> tuple[Path, dict]:
    directory = tmp_path / "wheels"
    directory.mkdir()
    digests = {
        "containerd-deploy": wheel(directory, "containerd_deploy-0.9.0-py3-none-any.whl"),
        "gevent-amd64": wheel(directory, "gevent-26.9.0-cp311-cp311-manylinux_2_28_x86_64.whl"),
        "gevent-arm64": wheel(directory, "gevent-26.9.0-cp311-cp311-manylinux_2_28_aarch64.whl"),
        "pip": fake_pip(directory),
    }
    return directory, digests


def data_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "all.py"
    path.write_text(text)
    return path


def generate(*arguments: str, capsys) -> tuple[int, str, str]:
    """`python -m containerd_deploy.cloud_init ARGUMENTS`, in this process: (status, stdout, stderr)."""
    status = cloud_init.main(list(arguments))
    said = capsys.readouterr()
    return status, said.out, said.err


def make(
    tmp_path: Path, capsys, data: str = 'containerd_version = "2.1.9"\n', *extra: str
) -> tuple[int, str, str]:
    directory, _ = wheelhouse(tmp_path)
    out = tmp_path / "user-data"
    arguments = ["--data", str(data_file(tmp_path, data)), "--wheels", str(directory)]
    arguments += ["--wheels-url", "http://10.0.2.2:8080/wheels/", "-o", str(out), *extra]
    status, _, stderr = generate(*arguments, capsys=capsys)
    return status, out.read_text() if out.exists() else "", stderr


def document(text: str) -> dict:
    header, _, body = text.partition("\n")
    assert header == "#cloud-config"
    return json.loads(body)


def test_the_requirements_pin_each_project_once_with_every_wheels_sha256(tmp_path):
    directory, digests = wheelhouse(tmp_path)
    requirements, pip = cloud_init.wheel_pins(directory)
    gevent = sorted([digests["gevent-amd64"], digests["gevent-arm64"]])
    assert requirements.splitlines() == [
        f"containerd-deploy==0.9.0 --hash=sha256:{digests['containerd-deploy']}",
        f"gevent==26.9.0 --hash=sha256:{gevent[0]} --hash=sha256:{gevent[1]}",
        f"pip==24.0 --hash=sha256:{digests['pip']}",
    ]
    assert pip == {"file": "pip-24.0-py3-none-any.whl", "sha256": digests["pip"]}


@pytest.mark.parametrize(
    "names, said",
    [
        (
            [
                "containerd_deploy-0.9.0-py3-none-any.whl",
                "pip-24.0-py3-none-any.whl",
                "pip-23.0-py3-none-any.whl",
            ],
            "has more than one version of pip; keep one of each (pip installs every wheel the user-data pins)",
        ),
        (
            [
                "containerd_deploy-0.9.0-py3-none-any.whl",
                "containerd_deploy-0.9.1-py3-none-any.whl",
                "pip-24.0-py3-none-any.whl",
                "pip-23.0-py3-none-any.whl",
            ],
            "has more than one version of containerd-deploy, pip; keep one of each",
        ),
        (
            ["containerd_deploy-0.9.0-py3-none-any.whl"],
            "has no pip wheel. Fix: make the wheelhouse with `pip wheel --wheel-dir {tmp_path} containerd-deploy "
            "pip` (docs/self-provisioning.md)",
        ),
        (["pip-24.0-py3-none-any.whl"], "has no containerd-deploy wheel"),
        (
            ["pip-24.0-py3-none-any.whl", "containerd_deploy.whl"],
            "containerd_deploy.whl is not a wheel's file name",
        ),
    ],
)
def test_a_wheelhouse_pip_could_not_install_exactly_is_refused(tmp_path, names, said):
    for name in names:
        wheel(tmp_path, name)
    with pytest.raises(cloud_init.UserDataError, match="^--wheels ") as refused:
        cloud_init.wheel_pins(tmp_path)
    assert said.format(tmp_path=tmp_path) in str(refused.value)


def test_the_user_data_writes_the_data_the_pins_and_the_units_and_runs_the_first_boot(tmp_path, capsys):
    data = '# the fleet\'s own comment\ncontainerd_version = "2.1.9"\n'
    status, text, stderr = make(tmp_path, capsys, data, "--pull-every", "1h 30min", "--pull-delay", "10min")
    assert status == 0, stderr
    assert stderr == ""
    assert (tmp_path / "user-data").stat().st_mode & 0o777 == 0o600  # it holds the node's data
    parsed = document(text)
    files = {entry["path"]: entry for entry in parsed["write_files"]}
    assert list(files) == [
        cloud_init.DATA_FILE,
        cloud_init.REQUIREMENTS,
        f"/etc/systemd/system/{cloud_init.SERVICE}.service",
        f"/etc/systemd/system/{cloud_init.SERVICE}.timer",
    ]
    assert (
        base64.b64decode(files[cloud_init.DATA_FILE]["content"]).decode() == data
    )  # as written, comments and all
    assert parsed["bootcmd"] == [
        ["install", "-d", "-m", "0700", cloud_init.SITE, f"{cloud_init.SITE}/group_data"]
    ]
    assert {files[path]["permissions"] for path in (cloud_init.DATA_FILE, cloud_init.REQUIREMENTS)} == {
        "0600"
    }
    assert all(entry["owner"] == "root:root" for entry in files.values())
    requirements, _ = cloud_init.wheel_pins(tmp_path / "wheels")
    assert files[cloud_init.REQUIREMENTS]["content"] == requirements
    timer = files[f"/etc/systemd/system/{cloud_init.SERVICE}.timer"]["content"]
    assert "OnUnitInactiveSec=1h 30min\n" in timer and "RandomizedDelaySec=10min\n" in timer
    [[shell, flag, script]] = parsed["runcmd"]
    assert (shell, flag) == ("sh", "-c")
    assert script.splitlines()[-3:] == [
        f"status=0; systemctl start {cloud_init.SERVICE}.service || status=$?",
        f"systemctl enable --now {cloud_init.SERVICE}.timer",
        'exit "$status"',
    ]


GOLDEN = Path(__file__).parent / "golden" / "user-data.txt"


def test_the_user_data_is_what_the_golden_file_says(tmp_path):
    """Word for word (the units, the first-boot script, each file's owner and mode, the layout an
    operator reads); after a deliberate change, `UPDATE_GOLDEN=1 pytest tests/unit/test_cloud_init.py`
    rewrites it: review its diff."""
    directory = tmp_path / "wheels"
    directory.mkdir()
    for name in ("containerd_deploy-0.9.0-py3-none-any.whl", "pip-24.0-py3-none-any.whl"):
        wheel(directory, name)
    requirements, pip = cloud_init.wheel_pins(directory)
    text = cloud_init.user_data(
        'containerd_version = "2.1.9"\n', requirements, pip, "https://w.internal/wheels/", "1h", "15min"
    )
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), (
        "the user-data changed: review it, then UPDATE_GOLDEN=1 (see the docstring)"
    )


def test_without_a_schedule_there_is_no_timer(tmp_path, capsys):
    status, text, stderr = make(tmp_path, capsys)
    assert status == 0, stderr
    parsed = document(text)
    assert not any(entry["path"].endswith(".timer") for entry in parsed["write_files"])
    assert ".timer" not in parsed["runcmd"][0][2]


def test_the_service_converges_from_the_data_file_and_leaves_the_report_as_the_status_file():
    unit = cloud_init.service_unit()
    assert f"WorkingDirectory={cloud_init.SITE}\n" in unit  # pyinfra reads group_data/ there
    assert cloud_init.DATA_FILE == f"{cloud_init.SITE}/group_data/all.py"
    assert (
        f"ExecStart={cloud_init.VENV}/bin/pyinfra -y @local containerd_deploy.containerd_node "
        f"--data containerd_report={cloud_init.STATUS_FILE}\n"
    ) in unit
    assert "Type=oneshot\n" in unit and "After=network-online.target\n" in unit


@pytest.mark.parametrize(
    "data, said",
    [
        (
            'containerd_verison = "2.1.9"\n',
            "{path}: data key 'containerd_verison' is not a data key of this deploy (set in {path}). "
            "Fix: did you mean containerd_version?",
        ),
        (
            'containerd_version = "2.1.9"\ncontainerd_verify = "maybe"\n',
            "{path}: data key 'containerd_verify' is 'maybe', not true or false",
        ),
        # A checksum beside no version: the default version's, which the file did not give.
        (
            f'containerd_sha256 = "{"a" * 64}"\n',
            "{path}: data key 'containerd_sha256' is set in {path}, but containerd_version (",
        ),
        (
            "containerd_version = (\n",
            "--data {path}: cannot be read as Python ('(' was never closed (all.py, line 1))",
        ),
    ],
)
def test_data_a_run_would_refuse_is_refused_before_any_node_boots_with_it(tmp_path, capsys, data, said):
    status, text, stderr = make(tmp_path, capsys, data)
    assert status == 2 and text == ""
    assert stderr.startswith("containerd_deploy.cloud_init: " + said.format(path=tmp_path / "all.py")), stderr


def test_imported_names_are_not_data_keys(tmp_path):
    """As pyinfra reads group_data: `import os` is no data key (nor a misspelled one)."""
    path = data_file(
        tmp_path,
        'import os.path\nfrom pathlib import Path as P\ncontainerd_version = "2.1.9"\n__doc__ = "x"\n',
    )
    assert cloud_init.read_data(path) == {"containerd_version": "2.1.9"}
    # As pyinfra runs it: __file__ is the file's path.
    path.write_text("containerd_report = __file__ + '.json'\n")
    assert cloud_init.read_data(path) == {"containerd_report": f"{path}.json"}
    # __all__, when the file sets it, names the data.
    path.write_text('__all__ = ["containerd_verify"]\ncontainerd_verify = False\n_mine = 1\n')
    assert cloud_init.read_data(path) == {"containerd_verify": False}


@pytest.mark.parametrize(
    "name, text, said",
    [
        ("all.py", "containerd_version = missing\n", "stops with NameError: name 'missing' is not defined"),
        ("all.yaml", "containerd_version: 2.1.9\n", "give a pyinfra group data file"),
    ],
)
def test_a_data_file_pyinfra_could_not_read_is_refused(tmp_path, name, text, said):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(cloud_init.UserDataError, match=f"^--data {re.escape(str(path))}: ") as refused:
        cloud_init.read_data(path)
    assert said.format(tmp_path=tmp_path) in str(refused.value)


@pytest.mark.parametrize(
    "data, keys",
    [
        (
            "containerd_registries = {'docker.io': {'mirrors': [{'host': 'https://m.internal', "
            "'headers': {'Authorization': 'Basic c2VjcmV0'}}]}}\n",
            ["containerd_registries"],
        ),
        ("containerd_https_proxy = 'http://user:pw@proxy.internal:3128'\n", ["containerd_https_proxy"]),
        ("containerd_registries = {'docker.io': {'mirrors': [{'host': 'https://m.internal'}]}}\n", []),
        ("containerd_https_proxy = 'http://proxy.internal:3128'\n", []),
    ],
)
def test_credentials_in_the_data_are_said_and_never_shown(tmp_path, capsys, data, keys):
    status, _, stderr = make(tmp_path, capsys, data)
    assert status == 0
    warned = [line for line in stderr.splitlines() if "warning:" in line]
    assert [key for key in keys if any(f"sets {key}:" in line for line in warned)] == keys
    assert len(warned) == len(keys)
    assert "c2VjcmV0" not in stderr and "pw@" not in stderr


@pytest.mark.parametrize(
    "option, value, said",
    [
        ("--pull-every", "hourly", "--pull-every 'hourly': give a systemd time span"),
        ("--pull-every", "1\nh", "--pull-every '1\\nh': give a systemd time span"),
        ("--pull-every", "0h 0min", "--pull-every '0h 0min': give a systemd time span of more than nothing"),
        ("--pull-delay", "5 parsecs", "--pull-delay '5 parsecs': give a systemd time span"),
        ("--wheels-url", "ftp://w.internal/", "--wheels-url 'ftp://w.internal/': give the http(s):// URL"),
        ("--wheels-url", "https://u:p@w.internal/", "without credentials"),
    ],
)
def test_options_systemd_or_pip_could_not_use_are_refused(tmp_path, capsys, option, value, said):
    directory, _ = wheelhouse(tmp_path)
    arguments = {"--data": str(data_file(tmp_path, "")), "--wheels": str(directory)}
    arguments |= {"--wheels-url": "http://w.internal/", "--pull-every": "1h", option: value}
    status, out, stderr = generate(*[part for pair in arguments.items() for part in pair], capsys=capsys)
    assert status == 2 and out == ""
    assert stderr.startswith(f"containerd_deploy.cloud_init: {option} ") and said in stderr


def test_a_wheelhouse_that_is_no_directory_is_refused(tmp_path, capsys):
    arguments = ["--data", str(data_file(tmp_path, "")), "--wheels", str(tmp_path / "none")]
    status, out, stderr = generate(*arguments, "--wheels-url", "http://w.internal/", capsys=capsys)
    assert (status, out) == (2, "")
    assert f"--wheels {tmp_path / 'none'}: give the local directory of the wheelhouse" in stderr


def test_the_user_data_file_is_this_users_alone_even_over_an_existing_one(tmp_path, capsys):
    (tmp_path / "user-data").write_text("old")
    (tmp_path / "user-data").chmod(0o644)
    status, text, _ = make(tmp_path, capsys)
    assert status == 0 and text.startswith("#cloud-config\n")
    assert (tmp_path / "user-data").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "data, said",
    [
        (
            "containerd_images = ['registry.k8s.io/pause:3.10@sha256:" + "a" * 64 + "']\n",
            "containerd_images: the node's own run is its controller: the node fetches them itself, with skopeo, "
            "which it then needs",
        ),
        (
            "containerd_restart_hook_before = ['/usr/local/bin/drain', '{host}']\n",
            "containerd_restart_hook_before: the node's own run is its controller: the hook runs on the node, "
            "for host @local",
        ),
        (
            "containerd_restart_hook_after = ['/usr/local/bin/uncordon', '{host}']\n",
            "containerd_restart_hook_after: the node's own run is its controller: the hook runs on the node, "
            "for host @local",
        ),
        (
            "containerd_image_archives = [{'path': '/srv/images.tar', 'sha256': '" + "a" * 64 + "'}]\n",
            "containerd_image_archives: the node's own run is its controller: the archives are read on the node, "
            "at the paths given",
        ),
    ],
)
def test_what_the_controller_does_in_a_push_run_is_said_to_happen_on_the_node(tmp_path, capsys, data, said):
    status, _, stderr = make(tmp_path, capsys, data)
    assert status == 0
    assert [line for line in stderr.splitlines() if said in line], stderr


def test_the_user_data_goes_to_stdout_unless_a_file_is_named(tmp_path, capsys):
    directory, _ = wheelhouse(tmp_path)
    arguments = [
        "--data",
        str(data_file(tmp_path, "")),
        "--wheels",
        str(directory),
        "--wheels-url",
        "http://w/",
    ]
    status, out, stderr = generate(*arguments, capsys=capsys)
    assert status == 0 and stderr == ""
    assert document(out)["write_files"][0]["path"] == cloud_init.DATA_FILE


def test_the_first_boot_script_is_plain_posix_shell():
    script = cloud_init.first_boot_script(
        "http://w.internal/", {"file": "pip-24.0-py3-none-any.whl", "sha256": "a" * 64}, True
    )
    subprocess.run(["shellcheck", "-s", "sh", "-"], input=script, text=True, check=True)


class _Wheelhouse(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """A wheelhouse served over HTTP on loopback, as the nodes fetch it."""
    directory, digests = wheelhouse(tmp_path)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *args: _Wheelhouse(*args, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", digests
    server.shutdown()


def bootstrap(url: str, sha256: str, ran: Path) -> subprocess.CompletedProcess:
    arguments = [url, "pip-24.0-py3-none-any.whl", sha256, "/etc/containerd-deploy/requirements.txt", "30"]
    return subprocess.run(
        [sys.executable, "-c", cloud_init.BOOTSTRAP, *arguments],
        capture_output=True,
        text=True,
        env={"PIP_RAN": str(ran), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


@pytest.mark.other_process
def test_pip_runs_from_its_checked_wheel_and_installs_only_pinned_wheels_from_the_wheelhouse(
    served, tmp_path
):
    url, digests = served
    ran = tmp_path / "ran.json"
    process = bootstrap(url, digests["pip"], ran)
    assert process.returncode == 0, process.stderr
    arguments = json.loads(ran.read_text())
    assert arguments[0] == "install"
    for flag in ("--no-index", "--require-hashes", "--only-binary=:all:", "--no-cache-dir"):
        assert flag in arguments
    assert arguments[arguments.index("--find-links") + 1] == url
    assert arguments[arguments.index("--requirement") + 1] == "/etc/containerd-deploy/requirements.txt"
    # Over plain http pip takes the wheelhouse only when told to trust it: each wheel is pinned.
    assert arguments[arguments.index("--trusted-host") + 1] == url.split("/")[2]


@pytest.mark.other_process
def test_a_pip_wheel_that_is_not_the_one_pinned_never_runs(served, tmp_path):
    url, _ = served
    ran = tmp_path / "ran.json"
    process = bootstrap(url, "b" * 64, ran)
    assert process.returncode == 1
    assert f"pip-24.0-py3-none-any.whl from {url} has sha256 " in process.stderr
    assert f"not {'b' * 64}: not installed" in process.stderr
    assert not ran.exists()

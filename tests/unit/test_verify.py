"""The verify step's judgement of a node, and the fact it reads (output captured from real VMs)."""

import base64
import dataclasses
import re
from pathlib import Path

import pytest
from packaging.version import Version

from containerd_deploy.data.config_toml import Knobs, Runtime, render
from containerd_deploy.facts.daemon import parse_daemon_state
from containerd_deploy.facts.node import AppArmor
from containerd_deploy.plan.verdict import Expected, judge, kubelet_cgroup_driver, sandbox_image
from containerd_deploy.remote.node_state import SECTION

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CONFIG = "/etc/containerd/config.toml"
UNIT = "/etc/systemd/system/containerd.service"
PAUSE = "localhost/containerd-deploy/pause:conformance"


def expected(version="1.7.24", systemd_cgroup=True, sandbox=PAUSE):
    return Expected(
        version=version, systemd_cgroup=systemd_cgroup, sandbox_image=sandbox, loaded_files=(CONFIG, UNIT)
    )


def captured(name: str):
    """A `ContainerdDaemon` fact's output captured on a deployed test VM."""
    return parse_daemon_state((FIXTURES / "verify" / name).read_text().splitlines())


def section(name, *lines):
    return [f"{SECTION}{name}", *lines]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def dump_of(fixture: str, version: str, **knobs) -> str:
    return render((FIXTURES / "config" / fixture).read_text(), Version(version), Knobs(**knobs))


CTR = ["Client:", "  Version:  1.7.24~ds1", "", "Server:", "  Version:  1.7.24~ds1", "  UUID: x"]
PLUGINS = [
    "TYPE                  ID      PLATFORMS      STATUS",
    "io.containerd.grpc.v1 cri     linux/amd64    ok",
]

# The daemon of `healthy` started at 900 + 10050/100 s (btime + its stat's start in clock ticks).
STARTED = 1000.5
ON = "enabled Y"


def healthy(
    dump=None,
    image="present",
    kubelet=None,
    ctr=CTR,
    plugins=PLUGINS,
    started=(
        "stat 582 (containerd) S 1 582 582 0 -1 4194560 0 0 0 0 5 3 0 0 20 0 12 0 10050 0",
        "btime 900",
    ),
    mtimes=("990 " + CONFIG, "991 " + UNIT),
    exe="/usr/local/bin/containerd",
    service=("MainPID=582", "ActiveState=active", "NeedDaemonReload=no"),
    apparmor=(),
):
    dump = dump if dump is not None else dump_of("default-1.7.24.toml", "1.7.24")
    lines = [
        *section("service", *service),
        *section("exe", exe),
        *section("started", *started),
        *section("mtimes", *mtimes),
        *section("ctr", *ctr),
        *section("plugins", *plugins),
        *section("dump", "ok " + b64(dump)),
        *section("kubelet", *([b64(kubelet)] if kubelet else [])),
        *section("image", image),
        *section("apparmor", *apparmor),
    ]
    return parse_daemon_state(lines)


def test_a_healthy_node_passes_every_check():
    verdict = judge(expected(), healthy())
    assert verdict.problems == []
    assert verdict.checked == [
        "answers as 1.7.24 with its own ctr",
        "runs the unit and config on disk",
        "CRI plugins loaded",
        "SystemdCgroup = true in effect",
    ]
    assert verdict.notes == []
    assert verdict.summary("1.7.24").startswith("containerd 1.7.24 verified: answers as 1.7.24")


@pytest.mark.parametrize("name, version", [("daemon-1.7.24.txt", "1.7.24"), ("daemon-2.1.9.txt", "2.1.9")])
def test_captured_nodes_pass(name, version):
    state = captured(name)
    verdict = judge(expected(version), state)
    assert verdict.problems == [], verdict.problems
    assert state.sandbox_image == "present"
    assert state.main_pid > 0 and state.started > 1.7e9


def test_a_stopped_service_is_reported_with_where_to_look():
    state = healthy(service=("MainPID=0", "ActiveState=failed", "NeedDaemonReload=no"))
    assert judge(expected(), state).problems == [
        "containerd.service is failed, not active: see journalctl -u containerd.service"
    ]


def test_a_daemon_that_does_not_answer():
    state = healthy(ctr=["Client:", "  Version:  1.7.24~ds1", "ctr: failed to dial: connection refused"])
    [problem] = judge(expected(), state).problems
    assert "does not answer on its socket" in problem and "connection refused" in problem


def test_an_old_daemon_still_running_after_an_upgrade():
    ctr = ["Client:", "  Version:  v2.1.9", "Server:", "  Version:  v1.7.24"]
    problems = judge(expected("2.1.9"), healthy(ctr=ctr, exe="/usr/local/bin/containerd (deleted)")).problems
    assert any("ctr v2.1.9 talks to a containerd v1.7.24 daemon" in p and "restart" in p for p in problems)
    assert any("replaced after it started" in p for p in problems)


def test_a_daemon_of_another_version():
    [problem] = judge(expected("1.7.25"), healthy()).problems
    assert problem.startswith("containerd answers as 1.7.24~ds1, expected 1.7.25")


def test_config_written_after_the_daemon_started_means_it_runs_old_settings():
    state = healthy(mtimes=(f"1005 {CONFIG}", f"991 {UNIT}"))
    [problem] = judge(expected(), state).problems
    assert problem.startswith(f"{CONFIG} changed after the running daemon started") and "restart" in problem


def test_writes_within_the_clock_resolution_of_the_start_are_not_stale():
    assert judge(expected(), healthy(mtimes=(f"1001 {CONFIG}",))).problems == []


def test_a_unit_systemd_has_not_reloaded():
    state = healthy(service=("MainPID=582", "ActiveState=active", "NeedDaemonReload=yes"))
    [problem] = judge(expected(), state).problems
    assert "systemctl daemon-reload" in problem


@pytest.mark.parametrize("status", ["error", None])
def test_cri_plugin_not_running(status):
    plugins = PLUGINS[:1] + ([f"io.containerd.grpc.v1 cri linux/amd64 {status}"] if status else [])
    [problem] = judge(expected(), healthy(plugins=plugins)).problems
    assert f"io.containerd.grpc.v1 cri: {status or 'not loaded'}" in problem and "disabled_plugins" in problem


def test_containerd_2_needs_its_split_cri_plugins():
    verdict = judge(
        expected("2.1.9"),
        healthy(
            ctr=[line.replace("1.7.24", "2.1.9") for line in CTR], dump=dump_of("default-2.1.9.toml", "2.1.9")
        ),
    )
    [problem] = verdict.problems
    assert "io.containerd.cri.v1 runtime: not loaded" in problem and "io.containerd.cri.v1 images" in problem


@pytest.mark.parametrize(
    "fixture, version", [("default-1.7.24.toml", "1.7.24"), ("default-2.1.9.toml", "2.1.9")]
)
def test_effective_systemd_cgroup_must_be_the_declared_one(fixture, version):
    dump = dump_of(fixture, version, systemd_cgroup=False)
    ctr = [line.replace("1.7.24", version) for line in CTR]
    plugins = PLUGINS + ["io.containerd.cri.v1 runtime linux/amd64 ok", "io.containerd.cri.v1 images - ok"]
    [problem] = judge(expected(version), healthy(dump=dump, ctr=ctr, plugins=plugins)).problems
    assert "has SystemdCgroup = false on the runc runtime but containerd_systemd_cgroup is true" in problem
    # ... and a node deployed with false on purpose passes.
    state = healthy(dump=dump, ctr=ctr, plugins=plugins)
    assert judge(expected(version, systemd_cgroup=False), state).problems == []


def test_config_dump_failure_is_reported():
    lines = [
        *section("service", "ActiveState=active", "MainPID=1"),
        *section("ctr", *CTR),
        *section("plugins", *PLUGINS),
        *section("dump", "error " + b64("failed to load TOML: near line 3")),
        *section("image", "absent"),
    ]
    [problem] = judge(expected(), parse_daemon_state(lines)).problems
    assert problem == "containerd config dump failed: failed to load TOML: near line 3"


@pytest.mark.parametrize(
    "kubelet, driver",
    [
        (
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\n",
            "systemd",
        ),
        ('kind: KubeletConfiguration\ncgroupDriver: "cgroupfs"  # old\n', "cgroupfs"),
        ("kind: KubeletConfiguration\n", "cgroupfs"),
    ],
)
def test_kubelet_cgroup_driver(kubelet, driver):
    assert kubelet_cgroup_driver(kubelet) == driver
    verdict = judge(expected(), healthy(kubelet=kubelet))
    if driver == "systemd":
        assert verdict.problems == [] and "kubelet cgroupDriver systemd matches" in verdict.checked
    else:
        [problem] = verdict.problems
        assert (
            problem.startswith("the kubelet's cgroupDriver is cgroupfs") and "set both to systemd" in problem
        )


def test_no_sandbox_image_on_the_node_is_a_note_not_a_failure():
    verdict = judge(expected(), healthy(image="absent"))
    assert verdict.problems == []
    assert verdict.notes == [
        f"no container run: the sandbox image {PAUSE} is not on the node yet "
        "(a kubelet pulls it for the first pod)"
    ]
    assert judge(expected(), healthy(image="present")).notes == []


def test_images_the_daemon_cannot_list_are_a_problem():
    [problem] = judge(expected(), healthy(image="unlisted ctr: connection refused ")).problems
    assert problem == (
        f"could not list the k8s.io images to find the sandbox image {PAUSE}: ctr: connection refused; "
        "see journalctl -u containerd.service"
    )


FAKE_RUN_CTR = """#!/bin/sh
# ctr as the container check uses it: run -d, tasks ls, tasks rm, containers rm; `log` records.
# Each line of scope-fails is a run whose scope systemd fails.
echo "$*" >> {log}/calls
case "$3" in
  run) [ ! -e {log}/run-fails ] || {{ echo "ctr: failed to create shim task: OCI runtime create failed:"; \
         echo "exec format error"; exit 1; }}
       if [ -s {log}/scope-fails ]; then
         sed -i 1d {log}/scope-fails
         echo "ctr: failed to create shim task: OCI runtime create failed: unable to apply cgroup configuration:"
         echo "error creating systemd unit \\`containerd-deploy-x.scope\\`: got \\`failed\\`: unknown"; exit 1
       fi
       shift $(($# - 1)); echo "$1" > {log}/container;;
  tasks) [ "$4" = ls ] && echo "$(cat {log}/container) 4242 $(cat {log}/status)";;
  images) [ ! -e {log}/pull-fails ] || {{ echo "ctr: failed to resolve reference: dial tcp: lookup"; \
            echo "registry.k8s.io: no such host"; exit 1; }};;
esac
"""


def fake_ctr(tmp_path: Path, status: str = "RUNNING") -> tuple[Path, Path]:
    """A directory holding FAKE_RUN_CTR as `ctr`, whose tasks have `status`; and its log directory."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    (bin_dir / "ctr").write_text(FAKE_RUN_CTR.format(log=log))
    (bin_dir / "ctr").chmod(0o755)
    (log / "status").write_text(status + "\n")
    (log / "scope-fails").write_text("")
    return bin_dir, log


@pytest.mark.parametrize(
    "case, systemd_cgroup, problem",
    [
        ("runs in a scope", True, None),
        ("runs outside a scope, cgroupfs wanted", False, None),
        (
            "does not run",
            True,
            "did not run: ctr: failed to create shim task: OCI runtime create failed: exec format error",
        ),
        (
            "scope fails twice",
            True,
            "did not run: ctr: failed to create shim task: OCI runtime create failed: unable to apply cgroup "
            "configuration: error creating systemd unit `containerd-deploy-x.scope`: got `failed`: unknown; at "
            "the first try, systemd said about containerd-deploy-verify-N-runc.scope: Failed to add PIDs to "
            "scope's control group: No such process",
        ),
        ("scope fails once", True, None),
        (
            "scope fails once, then exits",
            True,
            "started but is not running (task STOPPED): see journalctl -u containerd.service (on a second try; "
            "at the first, systemd said about containerd-deploy-verify-N-runc.scope: Failed to add PIDs to "
            "scope's control group: No such process)",
        ),
        ("exited", True, "started but is not running (task STOPPED): see journalctl -u containerd.service"),
        (
            "outside a scope",
            True,
            "ran, but not in a systemd scope (its /proc/PID/cgroup: 0::/k8s.io/x;): runc cannot use systemd "
            "cgroups here (is dbus running?)",
        ),
    ],
)
def test_the_container_check_runs_one_checks_it_and_removes_it(tmp_path, case, systemd_cgroup, problem):
    import os
    import subprocess

    from containerd_deploy.remote.container_check import container_check_script

    bin_dir, log = fake_ctr(tmp_path, "STOPPED" if case.endswith("exits") or case == "exited" else "RUNNING")
    if case == "does not run":
        (log / "run-fails").touch()
    (log / "scope-fails").write_text(
        {"scope fails twice": "1\n2\n"}.get(case, "1\n" if "once" in case else "")
    )
    # systemd's side of a failed scope: its journal, and the failed unit cleared.
    (bin_dir / "journalctl").write_text(
        "#!/bin/sh\n"
        'case "$*" in "-q -o cat --since @"[0-9]*" -n 3 -u containerd-deploy-verify-"*"-runc.scope")\n'
        '  echo "Failed to add PIDs to scope\'s control group: No such process";;\n'
        "esac\n"
    )
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "systemctl $*" >> {log}/calls\n')
    for tool in ("journalctl", "systemctl"):
        (bin_dir / tool).chmod(0o755)
    in_scope = case in ("runs in a scope", "scope fails once")
    (tmp_path / "cgroup-4242").write_text(
        "0::/system.slice/containerd-deploy-verify-77.scope\n" if in_scope else "0::/k8s.io/x\n"
    )
    script = container_check_script(
        "node1", str(bin_dir), PAUSE, systemd_cgroup, "containerd.service"
    ).replace("/proc/${task%% *}/cgroup", f"{tmp_path}/cgroup-${{task%% *}}")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, env=env)
    calls = re.sub(r"verify-\d+-", "verify-N-", (log / "calls").read_text())
    cgroup = (
        "--runc-systemd-cgroup --cgroup system.slice:containerd-deploy:verify-N-runc "
        if systemd_cgroup
        else ""
    )
    runs = [line for line in calls.splitlines() if " run " in line]
    retried = case.startswith("scope fails")
    assert runs == [f"-n k8s.io run -d {cgroup}{PAUSE} containerd-deploy-verify-N-runc"] + (
        [
            f"-n k8s.io run -d {cgroup.replace('-runc ', '-runc-again ')}{PAUSE} containerd-deploy-verify-N-runc-again"
        ]
        if retried
        else []
    ), "a second try only after systemd failed the scope, under a new name"
    resets = [line for line in calls.splitlines() if line.startswith("systemctl")]
    assert (
        resets
        == [
            "systemctl reset-failed containerd-deploy-verify-N-runc.scope",
            "systemctl reset-failed containerd-deploy-verify-N-runc-again.scope",
        ][: 2 if "twice" in case else 1 if "once" in case else 0]
    ), "each failed scope is cleared"
    last = "containerd-deploy-verify-N-runc" + ("-again" if retried else "")
    assert f"tasks rm -f {last}" in calls and f"containers rm {last}" in calls, (
        "the container is removed whatever happened"
    )
    if problem is None:
        assert result.returncode == 0, result.stderr
        where = " in /system.slice/containerd-deploy-verify-77.scope" if in_scope else ""
        again = (
            " (on a second try; at the first, systemd said about containerd-deploy-verify-N-runc.scope: Failed "
            "to add PIDs to scope's control group: No such process)"
            if retried
            else ""
        )
        assert re.sub(r"verify-\d+-", "verify-N-", result.stdout) == f"a container ran{where}{again}\n"
    else:
        assert result.returncode == 1
        header, detail = result.stderr.splitlines()
        assert header == "containerd-deploy: node1 is not a conformant containerd node:"
        assert re.sub(r"verify-\d+-", "verify-N-", detail) == f"  - a container from {PAUSE} {problem}"


FAKE_QUESTION = """#!/bin/sh
# Waits (up to 10 s) until every read-only question to the daemon has started: they must run
# side by side. Then answers like the real binary.
log={log}
echo "$*" >> "$log/started"
for _ in $(seq 100); do [ "$(wc -l < "$log/started")" -ge {questions} ] && break; sleep 0.1; done
[ "$(wc -l < "$log/started")" -ge {questions} ] || echo "$*" >> "$log/alone"
"""

FAKE_CTR = (
    FAKE_QUESTION
    + """case "$3" in
  version) printf 'Client:\\n  Version:  v1.7.24\\n\\nServer:\\n  Version:  v1.7.24\\n';;
  plugins) printf 'TYPE ID PLATFORMS STATUS\\nio.containerd.grpc.v1 cri - ok\\n';;
  images) if [ -e {log}/images-fail ]; then echo "connection refused"; exit 1; fi; echo other; echo {image};;
  *) echo "$*" >> {log}/acted;;
esac
"""
)


@pytest.mark.parametrize("images", ["listed", "unlistable"])
def test_the_verify_fact_asks_the_daemon_its_questions_side_by_side(tmp_path, images):
    import os
    import subprocess

    from containerd_deploy.remote.daemon_state import daemon_state_command

    image = "localhost/containerd-deploy/pause:conformance"
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    (log / "started").touch()
    if images == "unlistable":
        (log / "images-fail").touch()
    fakes = {
        "ctr": FAKE_CTR,
        "containerd": FAKE_QUESTION
        + f'[ "$*" = "--config {tmp_path}/config.toml config dump" ] || exit 1\necho \'version = 2\'\n',
        "crun": "#!/bin/sh\n",
        # Each answers only the question the fact must ask.
        "systemctl": '#!/bin/sh\ncase "$*" in *--value*) echo 0;; '
        "'show containerd.service -p ActiveState -p MainPID -p NeedDaemonReload') "
        "printf 'ActiveState=active\\nMainPID=0\\nNeedDaemonReload=no\\n';; *) exit 1;; esac\n",
    }
    for name, text in fakes.items():
        (bin_dir / name).write_text(
            text.replace("{log}", str(log)).replace("{questions}", "4").replace("{image}", image)
        )
        (bin_dir / name).chmod(0o755)
    script = daemon_state_command(
        str(bin_dir), str(tmp_path / "config.toml"), "containerd.service", (), image, ("crun", "/no/kata")
    )
    result = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert not (log / "alone").exists(), "a question ran alone: " + (log / "alone").read_text()
    state = parse_daemon_state(result.stdout.splitlines())
    assert state.missing_binaries == ["/no/kata"], "crun is in the bin directory"
    assert (state.ctr_client, state.ctr_server) == ("v1.7.24", "v1.7.24")
    assert state.plugins == {("io.containerd.grpc.v1", "cri"): "ok"}
    assert state.dump == "version = 2\n" and state.active_state == "active"
    if images == "listed":
        assert state.sandbox_image == "present", result.stdout
    else:
        assert state.sandbox_image == "unlisted connection refused"
    assert not (log / "acted").exists(), "the fact only asks: " + (log / "acted").read_text()
    assert not any(tmp_path.glob("tmp*")), "its answers are removed"


def test_the_binaries_each_runtime_handler_needs():
    from containerd_deploy.plan.verdict import configured_runtimes, runtime_binaries

    text = dump_of(
        "default-1.7.24.toml",
        "1.7.24",
        runtimes=(
            Runtime("crun", "io.containerd.runc.v2", "/usr/bin/crun", {}),
            Runtime("kata", "io.containerd.kata.v2", None, {}),
            Runtime("own-shim", "/opt/shims/containerd-shim-x-v1", None, {}),
        ),
    )
    assert runtime_binaries(configured_runtimes(text, Version("1.7.24"))) == [
        ("crun", "containerd-shim-runc-v2"),
        ("crun", "/usr/bin/crun"),
        ("kata", "containerd-shim-kata-v2"),
        ("own-shim", "/opt/shims/containerd-shim-x-v1"),
        ("runc", "containerd-shim-runc-v2"),
        ("runc", "runc"),
    ]
    # The CRI status reports the same table in camelCase.
    assert runtime_binaries(
        {"gpu": {"runtimeType": "io.containerd.runc.v2", "options": {"BinaryName": "/x/nv"}}}
    ) == [("gpu", "containerd-shim-runc-v2"), ("gpu", "/x/nv")]
    assert configured_runtimes("not toml [", Version("1.7.24")) == {}
    assert configured_runtimes(None, Version("1.7.24")) == configured_runtimes("", Version("1.7.24")) == {}
    # A schema newer than the paths this deploy knows: nothing read, nothing made up.
    assert configured_runtimes("version = 4\n", Version("2.3.0")) == {}


def test_a_handler_whose_binary_is_missing_fails_verify_naming_it_and_the_fix():
    needed = (
        ("runc", "containerd-shim-runc-v2"),
        ("runc", "runc"),
        ("kata", "containerd-shim-kata-v2"),
        ("gpu", "/usr/bin/nvidia-container-runtime"),
    )
    state = healthy()
    state.missing_binaries = ["containerd-shim-kata-v2", "/usr/bin/nvidia-container-runtime"]
    verdict = judge(
        Expected(version="1.7.24", systemd_cgroup=True, sandbox_image=PAUSE, runtime_binaries=needed), state
    )
    assert verdict.problems == [
        "the runtime handler 'kata' needs containerd-shim-kata-v2 (looked for in /usr/local/bin:"
        "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin), which is not on the node: every pod that asks for it "
        "would fail. Fix: install it first, correct its binary_name/runtime_type in containerd_runtimes, or "
        "take 'kata' out of containerd_runtimes (or out of the config)",
        "the runtime handler 'gpu' needs /usr/bin/nvidia-container-runtime, which is not on the node: every "
        "pod that asks for it would fail. Fix: install it first, correct its binary_name/runtime_type in "
        "containerd_runtimes, or take 'gpu' out of containerd_runtimes (or out of the config)",
    ]
    fine = judge(
        Expected(version="1.7.24", systemd_cgroup=True, sandbox_image=PAUSE, runtime_binaries=needed[:2]),
        healthy(),
    )
    assert fine.problems == [] and fine.checked[-1] == "the runtime handlers' binaries are installed (runc)"


def test_the_fact_looks_for_handler_binaries_as_containerd_does(tmp_path):
    import subprocess

    from containerd_deploy.remote.node_state import missing_binaries_lines

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "containerd-shim-runc-v2").write_text("#!/bin/sh\n")
    (bin_dir / "containerd-shim-runc-v2").chmod(0o755)
    script = "\n".join(
        missing_binaries_lines(
            str(bin_dir),
            (
                "containerd-shim-runc-v2",
                "sh",
                "containerd-shim-kata-v2",
                "/bin/sh",
                str(tmp_path / "absent runtime"),
            ),
        )
    )
    result = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, env={"PATH": "/nonexistent"}
    )
    assert result.stdout.splitlines() == ["containerd-shim-kata-v2", str(tmp_path / "absent runtime")]


@pytest.mark.parametrize("pull_fails", [False, True], ids=["pulled", "no route"])
def test_a_missing_sandbox_image_is_pulled_through_the_nodes_registries_first(tmp_path, pull_fails):
    import os
    import subprocess

    from containerd_deploy.remote.container_check import container_check_script

    bin_dir, log = fake_ctr(tmp_path)
    if pull_fails:
        (log / "pull-fails").touch()
    script = container_check_script(
        "node1", str(bin_dir), PAUSE, False, "containerd.service", pull_hosts_dir="/etc/containerd/certs d"
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, env=env)
    calls = (log / "calls").read_text().splitlines()
    assert calls[0] == f"-n k8s.io images pull --hosts-dir /etc/containerd/certs d {PAUSE}"
    assert result.returncode == 0, "no route to a registry is a warning, not a failed node"
    if pull_fails:
        assert calls == calls[:1], "no container without its image"
        assert result.stdout == (
            f"no container run: the sandbox image {PAUSE} could not be pulled through the node's registries "
            "(ctr: failed to resolve reference: dial tcp: lookup registry.k8s.io: no such host)\n"
        )
    else:
        assert any(" run -d " in call for call in calls)
        assert result.stdout == "a container ran\n"


def verify_op(
    image: str = "present",
    run_container=True,
    registry_config_path="",
    seen=None,
    full_check_interval=0,
    wanted=None,
    verbose=False,
    **state_changes,
):
    """What the verify operation yields when it runs, the node's daemon answering as `healthy`."""
    from containerd_deploy.facts.daemon import ContainerdDaemon
    from containerd_deploy.operations.verify import containerd_verified

    from .operations import Facts, commands

    facts = Facts({ContainerdDaemon: lambda **_: healthy(image=image, **state_changes)})
    yielded = commands(
        containerd_verified,
        facts=facts,
        executing=True,
        expected=wanted or expected(),
        bin_dir="/usr/local/bin",
        config_path=CONFIG,
        run_container=run_container,
        registry_config_path=registry_config_path,
        seen=seen,
        full_check_interval=full_check_interval,
        verbose=verbose,
    )
    return yielded, facts.asked


def test_the_verify_operation_asks_once_and_runs_a_container_only_when_told():
    from containerd_deploy.remote.container_check import container_check_script

    from .operations import shell_text

    yielded, asked = verify_op(run_container=False)
    assert yielded == [], "a passing node with nothing changed: no change"
    assert asked == [
        (
            "ContainerdDaemon",
            {
                "bin_dir": "/usr/local/bin",
                "config_path": CONFIG,
                "unit": "containerd.service",
                "files": (CONFIG, UNIT),
                "image": PAUSE,
                "binaries": (),
            },
        )
    ]
    assert verify_op(run_container=False)[0] == []
    [command] = verify_op(run_container=True)[0]
    assert shell_text(command) == container_check_script(
        "node1", "/usr/local/bin", PAUSE, True, "containerd.service"
    )
    # No sandbox image on the node and no registry to pull it through: nothing to run a container from.
    assert verify_op(image="absent", run_container=True)[0] == []
    # ... with the node's registries, pulled through them first, as a kubelet's first pod would.
    [command] = verify_op(image="absent", run_container=True, registry_config_path="/etc/containerd/certs.d")[
        0
    ]
    assert shell_text(command) == container_check_script(
        "node1", "/usr/local/bin", PAUSE, True, "containerd.service", pull_hosts_dir="/etc/containerd/certs.d"
    )
    # never pulled when the node has it, or when the run runs no container
    [command] = verify_op(run_container=True, registry_config_path="/etc/containerd/certs.d")[0]
    assert "images pull" not in shell_text(command)
    assert (
        verify_op(image="absent", run_container=False, registry_config_path="/etc/containerd/certs.d")[0]
        == []
    )


def test_the_verify_operation_fails_the_run_on_a_problem_before_any_container():
    from .operations import shell_text

    [command] = verify_op(run_container=True, service=("MainPID=0", "ActiveState=failed"))[0]
    assert "containerd.service is failed, not active" in shell_text(command)
    assert "exit 1" in shell_text(command) and "ctr" not in shell_text(command)


def test_the_verify_operation_does_nothing_while_the_run_is_prepared():
    from containerd_deploy.operations.verify import containerd_verified

    from .operations import commands

    assert (
        commands(containerd_verified, expected=expected(), bin_dir="/usr/local/bin", config_path=CONFIG) == []
    ), "no fact asked (none may be), nothing yielded"


@pytest.mark.parametrize(
    "fixture, version, image",
    [
        ("default-1.6.20.toml", "1.6.20", "registry.k8s.io/pause:3.6"),
        ("default-1.7.24.toml", "1.7.24", "registry.k8s.io/pause:3.8"),
        ("default-2.1.9.toml", "2.1.9", "registry.k8s.io/pause:3.10"),
    ],
)
def test_the_sandbox_image_a_config_names_at_its_schemas_path(fixture, version, image):
    text = (FIXTURES / "config" / fixture).read_text()
    assert sandbox_image(text, Version(version)) == image
    assert sandbox_image(text.replace(image, ""), Version(version)) is None, "an empty name is none"
    assert sandbox_image("version = [", Version(version)) is None, "a config that does not parse names none"
    schema = 2 if version.startswith("1.") else 3
    assert sandbox_image(f"version = {schema}\n", Version(version)) == image, "unset: containerd's default"


def test_the_daemon_fact_asks_with_its_arguments_and_reads_its_answer():
    from containerd_deploy.facts.daemon import ContainerdDaemon
    from containerd_deploy.remote.daemon_state import daemon_state_command

    fact = ContainerdDaemon()
    assert fact.command(
        "/opt/bin", "/etc/c.toml", "c.service", files=["/etc/c.toml"], image=PAUSE, binaries=["runc"]
    ) == daemon_state_command("/opt/bin", "/etc/c.toml", "c.service", ("/etc/c.toml",), PAUSE, ("runc",))
    assert fact.command("/opt/bin", "/etc/c.toml", "c.service") == daemon_state_command(
        "/opt/bin", "/etc/c.toml", "c.service", (), "", ()
    )
    assert fact.process([*section("image", "present")]).sandbox_image == "present"
    assert (
        ContainerdDaemon.default() == ContainerdDaemon.default()
        and ContainerdDaemon.default().active_state == ""
    )


def sections(**bodies: list[str]) -> list[str]:
    return [line for name, body in bodies.items() for line in (f"{SECTION}{name}", *body)]


def test_what_the_verify_fact_makes_of_odd_or_missing_answers():
    state = parse_daemon_state(sections(service=["NeedDaemonReload=yes"]))
    assert (state.active_state, state.main_pid, state.need_daemon_reload) == ("", 0, True)
    for pid, parsed in (("MainPID=", 0), ("MainPID=x1", 0), ("MainPID=4242", 4242)):
        assert parse_daemon_state(sections(service=[pid])).main_pid == parsed
    refused = ["Client:", "  Version:  v1.7.24", "ctr: connection refused"]
    assert parse_daemon_state(sections(ctr=refused)).ctr_error == "\n".join(refused)
    answered = ["Client:", "  Version:  v1.7.24", "", "Server:", "  Version:  v1.7.24"]
    assert parse_daemon_state(sections(ctr=answered)).ctr_error == ""
    dump = base64.b64encode(b"version = 3\n").decode()
    assert parse_daemon_state(sections(dump=[f"ok {dump}", ""])).dump == "version = 3\n"
    bad = base64.b64encode(b"bad \xff config").decode()
    assert parse_daemon_state(sections(dump=[f"error {bad}"])).dump_error == "bad \ufffd config"
    assert parse_daemon_state(sections(dump=["error "])).dump_error == "no output"
    assert parse_daemon_state(sections(dump=["ok"])).dump == ""
    assert parse_daemon_state(sections(kubelet=["", "  "])).kubelet_config is None
    assert parse_daemon_state(sections(missing=["/no/kata", ""])).missing_binaries == ["/no/kata"]
    assert parse_daemon_state(sections(image=[" unlisted ", "connection refused "])).sandbox_image == (
        "unlisted connection refused"
    )
    assert parse_daemon_state(sections(image=[" "])).sandbox_image == "absent"


GOLDEN_VERDICTS = Path(__file__).parent / "golden" / "verdicts.txt"
NOT_TOML = "version = 2\n[plugins\n"


def verdict_cases():
    """(name, Expected, DaemonState): one node per way the verify step can judge it."""
    runtimes = (("crun", "/usr/bin/crun"), ("kata", "containerd-shim-kata-v2"))
    yield "healthy", expected(), healthy()
    yield "no unit", expected(), healthy(service=("MainPID=0",))
    yield "no answer", expected(), healthy(ctr=["ctr: " + "connection refused " * 30])
    yield (
        "another ctr",
        expected(),
        healthy(ctr=["Client:", "  Version:  1.6.20", "Server:", "  Version:  1.7.24"]),
    )
    yield "another version", expected("1.7.25"), healthy()
    yield (
        "replaced, unit not reloaded",
        expected(),
        healthy(
            exe="/usr/local/bin/containerd (deleted)",
            service=("MainPID=582", "ActiveState=active", "NeedDaemonReload=yes"),
        ),
    )
    yield "config and unit newer", expected(), healthy(mtimes=("1003 " + CONFIG, "1004 " + UNIT))
    yield (
        "2.x without its CRI parts",
        expected("2.1.9"),
        healthy(
            ctr=["Client:", "  Version:  v2.1.9", "Server:", "  Version:  v2.1.9"],
            dump=dump_of("default-2.1.9.toml", "2.1.9"),
        ),
    )
    yield "dump not TOML", expected(), healthy(dump=NOT_TOML)
    yield (
        "cgroupfs in effect",
        expected(),
        healthy(dump=dump_of("default-1.7.24.toml", "1.7.24", systemd_cgroup=False)),
    )
    settings = (
        ("sandbox_image", "registry.internal/pause:3.10"),
        ("enable_cdi", True),
        ("cdi_spec_dirs", ["/etc/cdi", "/run/cdi"]),
        ("max_container_log_line_size", 16384),
    )
    yield (
        "settings overridden or unset",
        Expected(version="1.7.24", systemd_cgroup=True, sandbox_image=PAUSE, settings=settings),
        healthy(),
    )
    yield (
        "a setting the dump lacks",
        Expected(
            version="1.7.24", systemd_cgroup=True, sandbox_image=PAUSE, settings=(("enable_cdi", True),)
        ),
        healthy(dump=dump_of("default-1.6.20.toml", "1.6.20")),
    )
    yield (
        "kubelet on cgroupfs",
        expected(),
        healthy(kubelet="kind: KubeletConfiguration\ncgroupDriver: cgroupfs\n"),
    )
    yield (
        "kubelet and containerd on cgroupfs",
        expected(systemd_cgroup=False),
        healthy(
            dump=dump_of("default-1.7.24.toml", "1.7.24", systemd_cgroup=False),
            kubelet="cgroupDriver: cgroupfs\n",
        ),
    )
    yield "images unlisted", expected(), healthy(image="unlisted " + "connection refused " * 30)
    yield "no sandbox image yet", expected(), healthy(image="absent")
    yield "no sandbox image named", expected(sandbox=None), healthy(image="absent")
    yield (
        "handlers' binaries there",
        Expected(version="1.7.24", systemd_cgroup=True, sandbox_image=PAUSE, runtime_binaries=runtimes),
        healthy(),
    )
    missing = healthy()
    missing.missing_binaries = ["/usr/bin/crun", "containerd-shim-kata-v2"]
    yield (
        "handlers' binaries missing",
        Expected(version="1.7.24", systemd_cgroup=True, sandbox_image=PAUSE, runtime_binaries=runtimes),
        missing,
    )


def verdicts_text() -> str:
    out = []
    for name, wanted, state in verdict_cases():
        verdict = judge(wanted, state)
        out.append(f"== {name}")
        out += [f"problem: {text}" for text in verdict.problems]
        out += [f"note: {text}" for text in verdict.notes]
        out.append(f"summary: {verdict.summary(wanted.version)}")
    return "\n".join(out) + "\n"


def test_each_way_a_node_can_fall_short_is_said_as_the_golden_file_says():
    """Every verdict the verify step gives, word for word, in golden/verdicts.txt; after a
    deliberate change rewrite it with `UPDATE_GOLDEN=1` and review its diff."""
    import os

    text = verdicts_text()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN_VERDICTS.write_text(text)
    assert text == GOLDEN_VERDICTS.read_text(), "a verdict changed: review it, then UPDATE_GOLDEN=1"


def test_a_summary_lists_what_was_checked_then_the_notes():
    from containerd_deploy.plan.verdict import Verdict

    assert Verdict(checked=["a", "b"], notes=["n1", "n2"]).summary("1.7.24") == (
        "containerd 1.7.24 verified: a; b (n1; n2)"
    )
    assert Verdict(checked=["a"]).summary("2.1.9") == "containerd 2.1.9 verified: a"


@pytest.mark.parametrize(
    "yaml, driver",
    [
        ("cgroupDriver: systemd\n", "systemd"),
        ("kind: KubeletConfiguration\ncgroupDriver: 'systemd' # see: docs # again\n", "systemd"),
        ("cgroupDriver:systemd\n", "systemd"),
        ("cgroupDriver: XYZ\n", "XYZ"),
        ("cgroupDriver: ''\n", "cgroupfs"),
        ("cgroupDriver: # unset\n", "cgroupfs"),
        ("  cgroupDriver: systemd\n", "cgroupfs"),
    ],
)
def test_the_kubelets_cgroup_driver_is_read_as_the_kubelet_reads_it(yaml, driver):
    """Odd lines; test_kubelet_cgroup_driver has the usual ones and what the verify step says."""
    assert kubelet_cgroup_driver(yaml) == driver


def test_what_each_runtime_handler_needs_and_which_the_container_check_runs_through():
    from containerd_deploy.plan.verdict import (
        container_handlers,
        release_version,
        runtime_binaries,
        shim_binary,
    )

    assert shim_binary("io.containerd.kata.v2") == "containerd-shim-kata-v2"
    assert shim_binary("/opt/shim") == "/opt/shim"
    assert shim_binary("com.example.runtime.v1") is None and shim_binary("io.containerd.v2") is None
    runtimes = {
        "a-not-a-table": "junk",
        "crun": {"runtime_type": RUNC, "options": {"BinaryName": "/usr/bin/crun"}},
        "kata": {"runtimeType": "io.containerd.kata.v2"},
        "runc": {"options": {"BinaryName": "/usr/sbin/runc"}},
        "plain": {},
    }
    assert runtime_binaries(runtimes) == [
        ("crun", "containerd-shim-runc-v2"),
        ("crun", "/usr/bin/crun"),
        ("kata", "containerd-shim-kata-v2"),
        ("plain", "containerd-shim-runc-v2"),
        ("plain", "runc"),
        ("runc", "containerd-shim-runc-v2"),
        ("runc", "/usr/sbin/runc"),
    ]
    assert container_handlers(runtimes) == (("runc", ""), ("crun", "/usr/bin/crun"))
    assert release_version("containerd github.com/containerd/containerd v1.7.11 64b8a81") == "1.7.11"
    assert release_version("no version") is None and release_version(None) is None


RUNC = "io.containerd.runc.v2"


# --- a no-op rerun judged from the run's first fact, after a full check of the same daemon ---


def seen(**changes):
    """The daemon as the node fact saw it at the start of the run: `healthy`'s process."""
    from containerd_deploy.facts.daemon import DaemonState

    state = healthy()
    fields = dict(
        active_state=state.active_state,
        main_pid=state.main_pid,
        exe=state.exe,
        started=state.started,
        mtimes=state.mtimes,
        ctr_client=state.ctr_client,
        ctr_server=state.ctr_server,
    )
    return DaemonState(**{**fields, **changes})


def test_the_daemon_the_node_fact_saw_is_the_verify_facts_daemon():
    """The same process reads the same in both facts: a record made from one matches the other."""
    from containerd_deploy.facts.daemon import seen_at_start
    from containerd_deploy.facts.node import parse_node_state
    from containerd_deploy.plan.verdict import daemon_identity

    daemon = healthy(kubelet="cgroupDriver: systemd\n", apparmor=(ON, "parser 1200", "container lxc"))
    lines = [
        *section("service", "ActiveState=active", "MainPID=582", "NeedDaemonReload=yes"),
        *section("exe", daemon.exe),
        *section(
            "started",
            "stat 582 (containerd) S 1 582 582 0 -1 4194560 0 0 0 0 5 3 0 0 20 0 12 0 10050 0",
            "btime 900",
        ),
        *section("mtimes", "990 " + CONFIG, "991 " + UNIT),
        *section("ctr", *CTR),
        *section("kubelet", b64("cgroupDriver: systemd\n")),
        *section("missing", "/usr/bin/crun"),
        *section("apparmor", ON, "parser 1200", "container lxc"),
    ]
    at_start = seen_at_start(parse_node_state(lines))
    assert at_start.apparmor == daemon.apparmor == AppArmor(True, 1200.0, "lxc")
    assert daemon_identity(at_start) == daemon_identity(daemon) == (582, daemon.started, daemon.exe)
    assert (at_start.active_state, at_start.need_daemon_reload) == ("active", True)
    assert (at_start.ctr_client, at_start.ctr_server, at_start.ctr_error) == (
        daemon.ctr_client,
        daemon.ctr_server,
        "",
    )
    assert at_start.mtimes == daemon.mtimes and at_start.kubelet_config == "cgroupDriver: systemd\n"
    assert at_start.missing_binaries == ["/usr/bin/crun"]
    assert (at_start.plugins, at_start.dump, at_start.sandbox_image) == ({}, None, "absent"), (
        "only a full check asks"
    )
    nothing = seen_at_start(parse_node_state(section("ctr", "ctr: connection refused")))
    assert (nothing.active_state, nothing.ctr_error) == ("", "no answer to the run's first question")
    assert seen_at_start(parse_node_state(lines), looked_for=["/usr/bin/crun"]).looked_for == (
        "/usr/bin/crun",
    )


def test_a_full_check_is_needed_unless_the_record_is_of_this_daemon_for_this_expectation_and_recent():
    from containerd_deploy.controller.verified import VerifiedDaemon
    from containerd_deploy.plan.verdict import daemon_identity, expected_digest, full_check_reason

    daemon, wanted = seen(), expected()
    identity, digest = daemon_identity(daemon), expected_digest(wanted)
    record = VerifiedDaemon(identity, digest, 5000.0, ("CRI plugins loaded",), True)
    assert full_check_reason(record, daemon, wanted, 5000.0, 60) is None
    assert full_check_reason(record, daemon, wanted, 5059.9, 60) is None
    crun = Expected(
        **{
            **wanted.__dict__,
            "runtime_binaries": (("crun", "/usr/bin/crun"), ("crun", "crun-shim"), ("runc", "runc")),
        }
    )
    crun_record = VerifiedDaemon(identity, expected_digest(crun), 5000.0, (), True)
    looked = seen(looked_for=("/usr/bin/crun", "crun-shim"))
    assert full_check_reason(crun_record, looked, crun, 5000.0, 60) is None, "runc: the deploy's, checked"
    no_image = Expected(**{**wanted.__dict__, "sandbox_image": None})
    assert (
        full_check_reason(
            VerifiedDaemon(identity, expected_digest(no_image), 5000.0, (), False),
            daemon,
            no_image,
            5000.0,
            60,
        )
        is None
    )
    reasons = {
        "none recorded": full_check_reason(None, daemon, wanted, 5000.0, 60),
        "restarted": full_check_reason(record, seen(main_pid=583), wanted, 5000.0, 60),
        "rebooted": full_check_reason(record, seen(started=daemon.started + 1), wanted, 5000.0, 60),
        "replaced": full_check_reason(record, seen(exe=daemon.exe + " (deleted)"), wanted, 5000.0, 60),
        "not running": full_check_reason(record, seen(main_pid=0), wanted, 5000.0, 60),
        "no start time": full_check_reason(record, seen(started=None), wanted, 5000.0, 60),
        "no binary": full_check_reason(record, seen(exe=""), wanted, 5000.0, 60),
        "expected otherwise": full_check_reason(record, daemon, expected(systemd_cgroup=False), 5000.0, 60),
        "too old": full_check_reason(record, daemon, wanted, 5060.0, 60),
        "from the future": full_check_reason(record, daemon, wanted, 4999.0, 60),
        "never stands": full_check_reason(record, daemon, wanted, 5000.0, 0),
        "binary not looked for": full_check_reason(crun_record, daemon, crun, 5000.0, 60),
    }
    other = "it is not the daemon last checked in full (restarted, replaced or rebooted since)"
    unknown = "the run's first look could not tell which process it is"
    assert reasons == {
        "none recorded": "no full check of it is recorded on this controller",
        "restarted": other,
        "rebooted": other,
        "replaced": other,
        "not running": unknown,
        "no start time": unknown,
        "no binary": unknown,
        "expected otherwise": "what it must be changed since its last full check",
        "too old": "its last full check is not within containerd_verify_interval (60 s)",
        "from the future": "its last full check is not within containerd_verify_interval (60 s)",
        "never stands": "its last full check is not within containerd_verify_interval (0 s)",
        "binary not looked for": "the run's first look did not look for /usr/bin/crun, crun-shim",
    }


def test_what_a_daemons_start_fixes_is_said_again_and_the_rest_judged_afresh():
    from containerd_deploy.plan.verdict import expected_digest, start_fixed

    full = healthy()
    remembered = start_fixed(expected(), full)
    assert remembered == (
        "answers as 1.7.24 with its own ctr",
        "CRI plugins loaded",
        "SystemdCgroup = true in effect",
    )
    assert start_fixed(expected(systemd_cgroup=False), full) == (
        "answers as 1.7.24 with its own ctr",
        "CRI plugins loaded",
    ), "only what passed"
    older = dataclasses.replace(full, ctr_client="v1.7.23", ctr_server="v1.7.23")
    assert start_fixed(expected(), older)[0] == "CRI plugins loaded", "only what passed"
    # The first look did not ask the ctr of a daemon it knew: its answer is remembered too.
    for first_look in (seen(), seen(ctr_client=None, ctr_server=None, ctr_error="", ctr_asked=False)):
        verdict = judge(expected(), first_look, remembered)
        assert verdict.problems == [] and verdict.notes == [], "no plugins, dump or images asked: none judged"
        assert verdict.checked == [
            "answers as 1.7.24 with its own ctr; CRI plugins loaded; SystemdCgroup = true in effect "
            "(as its last full check found)",
            "runs the unit and config on disk",
        ]
    assert judge(expected(), seen()).problems, "without the record, the missing answers are problems"
    assert "does not answer" in judge(expected(), seen(ctr_server=None, ctr_asked=False)).problems[0]
    # What can change while the same process runs is judged from what the run's first fact saw.
    for changed, problem in [
        (dict(mtimes={CONFIG: 2000.0, UNIT: 991.0}), "changed after the running daemon started"),
        (dict(need_daemon_reload=True), "systemd has not reloaded it"),
        (dict(kubelet_config="cgroupDriver: cgroupfs\n"), "the kubelet's cgroupDriver is cgroupfs"),
        (dict(active_state="failed"), "is failed, not active"),
        (dict(ctr_server=None, ctr_error="connection refused"), "does not answer on its socket"),
    ]:
        assert problem in " ".join(judge(expected(), seen(**changed), remembered).problems), changed
    crun = Expected(**{**expected().__dict__, "runtime_binaries": (("crun", "/usr/bin/crun"),)})
    assert (
        "needs /usr/bin/crun" in judge(crun, seen(missing_binaries=["/usr/bin/crun"]), remembered).problems[0]
    )
    assert expected_digest(crun) != expected_digest(expected()) == expected_digest(expected())


def test_a_noop_rerun_asks_nothing_more_of_the_daemon_a_full_check_passed_lately():
    from containerd_deploy.controller import verified

    # The first no-op run checks in full and records the daemon; the next one asks nothing more.
    yielded, asked = verify_op(run_container=False, seen=seen(), full_check_interval=3600)
    assert (yielded, [name for name, _ in asked]) == ([], ["ContainerdDaemon"])
    record = verified.read("node1")
    assert record is not None and record.identity == (582, seen().started, "/usr/local/bin/containerd")
    assert record.checked == (
        "answers as 1.7.24 with its own ctr",
        "CRI plugins loaded",
        "SystemdCgroup = true in effect",
    )
    assert record.image_present
    assert verify_op(run_container=False, seen=seen(), full_check_interval=3600) == ([], [])
    # The same daemon, whose ctr the node fact did not ask (it was told this MainPID): the same.
    unasked = seen(ctr_client=None, ctr_server=None, ctr_asked=False)
    assert verify_op(run_container=False, seen=unasked, full_check_interval=3600) == ([], [])
    # Anything that differs asks the daemon again: another process, another expectation, a run
    # that changes the node (it runs a container), no interval, or a problem at the first look.
    for case in [
        dict(seen=seen(main_pid=999)),
        dict(seen=seen(), wanted=expected(sandbox="registry.k8s.io/pause:3.10")),
        dict(seen=seen(), full_check_interval=0),
        dict(seen=seen(ctr_server=None, ctr_error="timed out")),
        dict(seen=None),
    ]:
        arguments = {"run_container": False, "full_check_interval": 3600, **case}
        assert [name for name, _ in verify_op(**arguments)[1]] == ["ContainerdDaemon"], case
    assert [name for name, _ in verify_op(run_container=True, seen=seen(), full_check_interval=3600)[1]] == [
        "ContainerdDaemon"
    ]


def test_only_a_passing_full_check_is_recorded():
    from containerd_deploy.controller import verified

    [failure] = verify_op(run_container=False, seen=seen(), full_check_interval=3600, plugins=PLUGINS[:1])[0]
    assert verified.read("node1") is None
    verify_op(run_container=False, seen=seen(), full_check_interval=0)
    assert verified.read("node1") is None, "an interval of 0 keeps no record"
    verify_op(run_container=False, seen=seen(), full_check_interval=3600)
    assert verified.read("node1") is not None


def test_the_report_says_the_same_of_a_noop_judged_either_way(monkeypatch):
    import shutil

    from containerd_deploy.controller import verified
    from containerd_deploy.controller.run_record import HostRun
    from containerd_deploy.operations import verify
    from containerd_deploy.plan.verdict import image_absent_note

    said = []
    monkeypatch.setattr(verify, "host_run", lambda host: said.append(HostRun()) or said[-1])
    for _ in range(2):  # a full check, then one from its record
        verify_op(run_container=False, seen=seen(), full_check_interval=3600)
    assert [(run.verify, run.container) for run in said] == [
        ("no container run: this run changed nothing", False)
    ] * 2
    said.clear()
    no_image = Expected(**{**expected().__dict__, "sandbox_image": None})
    for _ in range(2):
        verify_op(run_container=False, seen=seen(), full_check_interval=3600, wanted=no_image, image="absent")
    assert [run.verify for run in said] == ["no container run: the config names no sandbox image"] * 2
    said.clear()
    shutil.rmtree(verified.RECORD_DIR)
    for _ in range(2):  # the full check found no sandbox image; the next run says so too
        verify_op(run_container=False, seen=seen(), full_check_interval=3600, image="absent")
    assert [run.verify for run in said] == [image_absent_note(PAUSE)] * 2
    assert verified.read("node1").image_present is False


def test_why_a_noop_asks_the_daemon_in_full_is_said_under_v(caplog):
    import logging
    import shutil

    from containerd_deploy.controller import verified

    caplog.set_level(logging.DEBUG, logger="pyinfra")
    said = []
    for verbose in (False, True):
        caplog.clear()
        shutil.rmtree(verified.RECORD_DIR, ignore_errors=True)  # no record: a full check each time
        verify_op(run_container=False, seen=seen(), full_check_interval=3600, verbose=verbose)
        said.append(
            [
                (record.levelname, record.getMessage())
                for record in caplog.records
                if "verify:" in record.getMessage()
            ]
        )
    assert [[level for level, _ in lines] for lines in said] == [["DEBUG"], ["INFO"]]
    assert said[1][0][1].endswith(
        "verify: asks the daemon in full: no full check of it is recorded on this controller"
    )
    caplog.clear()
    verify_op(
        run_container=False,
        seen=seen(kubelet_config="cgroupDriver: cgroupfs\n", mtimes={CONFIG: 2000.0, UNIT: 991.0}),
        full_check_interval=3600,
        verbose=True,
    )
    [message] = [record.getMessage() for record in caplog.records if "verify:" in record.getMessage()]
    assert message.endswith(
        "verify: asks the daemon in full: the run's first look found: /etc/containerd/config.toml changed after the "
        "running daemon started, so it runs with the old settings: restart it (systemctl restart containerd.service) "
        "or rerun the deploy"
    )


def test_the_record_holds_for_the_checks_as_they_are(monkeypatch):
    from containerd_deploy.plan import verdict

    before = verdict.expected_digest(expected())
    monkeypatch.setattr(verdict, "START_FIXED", (verdict._judge_plugins,))
    assert verdict.expected_digest(expected()) != before, (
        "a deploy that checks otherwise checks in full again"
    )
    monkeypatch.undo()
    monkeypatch.setattr(verdict, "_CHECKS_TEXT", "another deploy's")
    assert verdict.expected_digest(expected()) != before


@pytest.mark.other_process
def test_the_digest_of_what_the_daemon_must_be_is_the_same_in_every_process():
    """Regression: it held the repr of the checks' code constants, with memory addresses and
    hash-ordered sets, so every run's digest differed and no record ever stood."""
    import os
    import subprocess
    import sys

    script = (
        "from containerd_deploy.plan.verdict import Expected, expected_digest; "
        "print(expected_digest(Expected(version='1.7.24', systemd_cgroup=True, sandbox_image='pause', "
        "settings=(('cdi_spec_dirs', ['/etc/cdi', '/var/run/cdi']),))))"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(digests) == 1, digests


@pytest.mark.parametrize(
    "apparmor, off, warned",
    [
        ((ON,), False, "the kernel has AppArmor on but /sbin/apparmor_parser is not installed"),
        (
            (ON, f"parser {int(STARTED) + 60}"),
            False,
            "/sbin/apparmor_parser (AppArmor's userspace) was installed or replaced after",
        ),
        ((ON, f"parser {int(STARTED) - 60}"), False, None),  # there before containerd started
        ((ON, f"parser {int(STARTED) + 1}"), False, None),  # within the clock's resolution of the start
        ((ON,), True, None),  # the config turns the CRI's AppArmor off
        (("enabled N",), False, None),  # the kernel's switch is off
        ((), False, None),  # no securityfs: the kernel has none (a machine of this host's kernel)
        ((ON, "container lxc"), False, None),  # containerd in a container uses no AppArmor
    ],
)
def test_a_daemon_that_may_run_containers_unconfined_is_a_warning_naming_the_fix(apparmor, off, warned):
    """containerd decides at its first container whether AppArmor is there: with the kernel's
    AppArmor on, a missing parser, or one installed after the daemon started, may leave every
    container unconfined. The node works: a warning, not a problem, judged from a full check and
    from the record of one alike."""
    wanted = dataclasses.replace(expected(), apparmor_off=off)
    state = healthy(apparmor=apparmor)
    verdict = judge(wanted, state)
    assert verdict.problems == [] and verdict.notes == []
    remembered = judge(wanted, state, remembered=("answers as 1.7.24",))
    if warned is None:
        assert verdict.warnings == [] and remembered.warnings == []
        return
    [warning] = verdict.warnings
    assert remembered.warnings == [warning]
    assert warning.startswith(f"AppArmor: {warned}"), warning
    assert "(systemctl restart containerd.service" in warning, warning


def test_the_apparmor_warnings_whole():
    from containerd_deploy.facts.node import AppArmor
    from containerd_deploy.plan.verdict import apparmor_daemon_problem

    assert apparmor_daemon_problem(AppArmor(enabled=True), STARTED, "ctd.service") == (
        "the kernel has AppArmor on but /sbin/apparmor_parser is not installed, so containerd runs every "
        "container unconfined: install AppArmor's userspace (Debian's apparmor package), then restart "
        "containerd (systemctl restart ctd.service)"
    )
    assert apparmor_daemon_problem(
        AppArmor(enabled=True, parser_changed=1779990000.0), 1779980000.0, "ctd.service"
    ) == (
        "/sbin/apparmor_parser (AppArmor's userspace) was installed or replaced after containerd started "
        "(2026-05-28 17:40:00 UTC); if it was missing when containerd created its first container, containerd "
        "decided then that AppArmor was not there and runs every container unconfined until it restarts: restart "
        "it (systemctl restart ctd.service; after an upgrade of the apparmor package, it is only this warning that "
        "goes)"
    )
    # A daemon whose start is not known is not said to predate the parser.
    assert apparmor_daemon_problem(AppArmor(enabled=True, parser_changed=1779990000.0), None, "c") is None


@pytest.mark.parametrize(
    "fixture, version", [("default-1.7.24.toml", "1.7.24"), ("default-2.1.9.toml", "2.1.9")]
)
def test_a_config_that_turns_the_cris_apparmor_off_is_read_in_its_schema(fixture, version):
    from containerd_deploy.plan.verdict import cri_apparmor_off

    text = (FIXTURES / "config" / fixture).read_text()
    assert cri_apparmor_off(text, Version(version)) is False  # containerd's default
    assert "disable_apparmor = false" in text  # where the CRI reads it, in the file's schema
    turned_off = text.replace("disable_apparmor = false", "disable_apparmor = true")
    assert cri_apparmor_off(turned_off, Version(version)) is True
    assert cri_apparmor_off("not = [toml", Version(version)) is False


def test_the_verify_operation_says_a_warning_and_keeps_it_for_the_report(caplog, monkeypatch):
    import containerd_deploy.operations.verify as operation
    from containerd_deploy.controller.run_record import HostRun

    said = HostRun()
    monkeypatch.setattr(operation, "host_run", lambda host: said)
    with caplog.at_level("WARNING"):
        yielded, _ = verify_op(run_container=False, apparmor=(ON,))
    assert yielded == []  # a warning fails nothing
    [record] = [record for record in caplog.records if "AppArmor" in record.getMessage()]
    assert record.levelname == "WARNING"
    [warning] = said.warnings
    assert record.getMessage() == f"[node1] containerd-deploy: node1: {warning}"
    assert warning.startswith(
        "AppArmor: the kernel has AppArmor on but /sbin/apparmor_parser is not installed"
    )

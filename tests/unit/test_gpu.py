"""GPU nodes and extra runtime handlers: the nvidia preset, the default handler, CDI, the
preflight check of each handler's binary, and what verify then expects of the daemon."""

import difflib
import re
import subprocess
from pathlib import Path

import pytest
import tomlkit
from pyinfra.api.exceptions import DeployError

from containerd_deploy.data.config_toml import PATHS, Runtime, value_at
from containerd_deploy.data.settings import resolve, runtime_handlers
from containerd_deploy.data.values import DataError
from containerd_deploy.plan.files import desired_config

from .flow import FIXTURES, changed_names, converged, drifted, fresh, prepare, settings_for

NVIDIA = "/usr/bin/nvidia-container-runtime"
GENERATIONS = {"1.7.24": 2, "2.1.9": 3}
DEFAULT_CONFIG = {"1.7.24": "default-1.7.24.toml", "2.1.9": "default-2.1.9.toml"}

# config.toml as `nvidia-ctk runtime configure --runtime=containerd --set-as-default` leaves a
# containerd 1.7 default config (toolkit 1.14-1.16 edit the file itself; their keys, verbatim).
NVIDIA_CTK_1_7 = """version = 2

[plugins]

  [plugins."io.containerd.grpc.v1.cri"]

    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "nvidia"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
          privileged_without_host_devices = false
          runtime_engine = ""
          runtime_root = ""
          runtime_type = "io.containerd.runc.v2"

          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
            BinaryName = "/usr/bin/nvidia-container-runtime"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"

          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
            SystemdCgroup = true
"""


def refusal(data: dict) -> str:
    with pytest.raises(DataError) as raised:
        resolve("node1", data)
    return str(raised.value)


# -- data --------------------------------------------------------------------------------------


def test_the_preset_adds_the_nvidia_handler_at_its_binary():
    assert runtime_handlers(settings_for()) == ()
    (nvidia,) = runtime_handlers(settings_for({"containerd_nvidia_runtime": True}))
    assert (nvidia.name, nvidia.runtime_type, nvidia.binary_name) == (
        "nvidia",
        "io.containerd.runc.v2",
        NVIDIA,
    )
    moved = settings_for(
        {"containerd_nvidia_runtime": True, "containerd_nvidia_runtime_path": "/opt/nv/bin/ncr"}
    )
    assert runtime_handlers(moved)[0].binary_name == "/opt/nv/bin/ncr"
    # After the operator's own handlers, which keep their order.
    both = settings_for(
        {
            "containerd_nvidia_runtime": "true",
            "containerd_runtimes": [{"name": "crun", "binary_name": "/usr/bin/crun"}],
        }
    )
    assert [runtime.name for runtime in runtime_handlers(both)] == ["crun", "nvidia"]


def test_the_preset_and_an_nvidia_entry_of_ones_own_are_refused_together():
    data = {
        "containerd_nvidia_runtime": True,
        "containerd_runtimes": [{"name": "nvidia", "binary_name": NVIDIA}],
    }
    assert refusal(data) == (
        "node1: data key 'containerd_nvidia_runtime' is true and containerd_runtimes also defines 'nvidia'. "
        "Fix: keep one: take the 'nvidia' entry out of containerd_runtimes (the preset writes it), or set "
        "containerd_nvidia_runtime to false"
    )
    # Either alone is fine.
    resolve("node1", {"containerd_runtimes": [{"name": "nvidia", "binary_name": NVIDIA}]})
    resolve("node1", {"containerd_nvidia_runtime": True, "containerd_runtimes": [{"name": "crun"}]})
    resolve("node1", {"containerd_nvidia_runtime": False, "containerd_runtimes": [{"name": "nvidia"}]})


@pytest.mark.parametrize(
    "data, handler, accepted",
    [
        ({}, "runc", True),
        ({}, "nvidia", False),
        ({"containerd_nvidia_runtime": True}, "nvidia", True),
        ({"containerd_runtimes": [{"name": "crun", "binary_name": "/usr/bin/crun"}]}, "crun", True),
        ({"containerd_runtimes": [{"name": "crun", "binary_name": "/usr/bin/crun"}]}, "kata", False),
        ({"containerd_nvidia_runtime": True}, "Nvidia", False),
    ],
)
def test_the_default_handler_must_be_one_the_deploy_configures(data, handler, accepted):
    data = {**data, "containerd_default_runtime": handler}
    if accepted:
        assert resolve("node1", data).containerd_default_runtime == handler
        return
    names = ", ".join(
        ["runc", *(entry["name"] for entry in data.get("containerd_runtimes", []))]
        + (["nvidia"] if data.get("containerd_nvidia_runtime") else [])
    )
    assert refusal(data) == (
        f"node1: data key 'containerd_default_runtime' is {handler!r}, which is not a runtime handler this deploy "
        f"configures ({names}). Fix: name one of those, add the handler to containerd_runtimes (for nvidia: set "
        "containerd_nvidia_runtime to true), or unset it to leave the config's default_runtime_name as it is"
    )


def test_an_unset_default_handler_or_cdi_leaves_the_config_as_it_is():
    settings = settings_for({"containerd_default_runtime": "", "containerd_enable_cdi": ""})
    assert settings.containerd_default_runtime is None and settings.containerd_enable_cdi is None
    assert settings.containerd_cdi_spec_dirs is None
    text = desired_config(settings_for(), NVIDIA_CTK_1_7)
    assert value_at(text, PATHS["default_runtime_name"][2]) == "nvidia", "nvidia-ctk's default stays"
    assert value_at(text, PATHS["enable_cdi"][2]) is None


@pytest.mark.parametrize(
    "key, value", [("containerd_enable_cdi", True), ("containerd_cdi_spec_dirs", ["/etc/cdi"])]
)
def test_cdi_is_refused_for_containerd_1_6_which_has_none(key, value):
    assert refusal({"containerd_version": "1.6.20", key: value}) == (
        f"node1: data key {key!r} is set, but containerd 1.6.20 has no CDI support (it came in 1.7). "
        f"Fix: unset {key}, or set containerd_version to 1.7.0 or later"
    )
    assert getattr(resolve("node1", {"containerd_version": "1.7.0", key: value}), key) in (
        True,
        ("/etc/cdi",),
    )
    # Unset is fine on 1.6.
    resolve("node1", {"containerd_version": "1.6.20", key: None})


@pytest.mark.parametrize("value", [[], "/etc/cdi", {"a": "/etc/cdi"}, 1])
def test_cdi_spec_dirs_is_a_list_of_directories(value):
    assert refusal({"containerd_cdi_spec_dirs": value}) == (
        f"node1: data key 'containerd_cdi_spec_dirs' is {value!r}, not a list of directories. Fix: set "
        'containerd_cdi_spec_dirs to a list of absolute paths, e.g. ["/etc/cdi", "/var/run/cdi"], or unset it'
    )
    assert "not an absolute path" in refusal({"containerd_cdi_spec_dirs": ["/etc/cdi", "cdi"]})
    assert resolve(
        "node1", {"containerd_cdi_spec_dirs": ("/etc/cdi/", "/var/run/cdi")}
    ).containerd_cdi_spec_dirs == (
        "/etc/cdi",
        "/var/run/cdi",
    )


# -- config.toml -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", sorted(GENERATIONS))
def test_the_gpu_keys_land_in_the_schema_of_each_generation(version):
    schema = GENERATIONS[version]
    settings = settings_for(
        {
            "containerd_version": version,
            "containerd_nvidia_runtime": True,
            "containerd_default_runtime": "nvidia",
            "containerd_enable_cdi": True,
            "containerd_cdi_spec_dirs": ["/etc/cdi", "/var/run/cdi"],
        }
    )
    text = desired_config(settings, (FIXTURES / DEFAULT_CONFIG[version]).read_text())
    nvidia = value_at(text, PATHS["runtimes"][schema] + ("nvidia",))
    assert nvidia["runtime_type"] == "io.containerd.runc.v2"
    assert nvidia["options"] == {"BinaryName": NVIDIA, "SystemdCgroup": True}
    assert value_at(text, PATHS["default_runtime_name"][schema]) == "nvidia"
    assert value_at(text, PATHS["enable_cdi"][schema]) is True
    assert value_at(text, PATHS["cdi_spec_dirs"][schema]) == ["/etc/cdi", "/var/run/cdi"]
    # Nothing at the other schema's paths.
    other = 3 if schema == 2 else 2
    assert value_at(text, PATHS["default_runtime_name"][other]) is None
    assert value_at(text, PATHS["enable_cdi"][other]) is None


def test_a_config_nvidia_ctk_edited_keeps_its_keys_and_the_preset_adds_only_its_own():
    # (No registry config_path: that table would be added too, as on any node.)
    settings = settings_for(
        {
            "containerd_version": "1.7.24",
            "containerd_nvidia_runtime": True,
            "containerd_registry_config_path": "",
        }
    )
    text = desired_config(settings, NVIDIA_CTK_1_7)
    nvidia = value_at(text, PATHS["runtimes"][2] + ("nvidia",))
    assert nvidia == {
        "privileged_without_host_devices": False,
        "runtime_engine": "",
        "runtime_root": "",
        "runtime_type": "io.containerd.runc.v2",
        "options": {"BinaryName": NVIDIA, "SystemdCgroup": True},
    }
    assert value_at(text, PATHS["default_runtime_name"][2]) == "nvidia"
    # Only SystemdCgroup was added, beside the toolkit's BinaryName: every other line is as it was.
    diff = difflib.ndiff(NVIDIA_CTK_1_7.splitlines(), text.splitlines())
    assert [line[2:].strip() for line in diff if line[:2] in ("+ ", "- ")] == ["SystemdCgroup = true"]
    # The data's own default wins over the toolkit's, in place.
    back = desired_config(settings_for({"containerd_default_runtime": "runc"}), NVIDIA_CTK_1_7)
    assert value_at(back, PATHS["default_runtime_name"][2]) == "runc"
    assert tomlkit.parse(back)


# -- preflight ---------------------------------------------------------------------------------


def test_the_node_is_asked_for_each_handlers_binary_the_deploy_does_not_install(monkeypatch):
    asked: dict = {}
    data = {
        "containerd_nvidia_runtime": True,
        "containerd_runtimes": [
            {"name": "crun", "binary_name": "/usr/bin/crun"},
            {"name": "gvisor", "runtime_type": "io.containerd.runsc.v1"},
            {"name": "plain"},  # the runc shim and runc: both the deploy's own
        ],
    }
    prepare(monkeypatch, converged(settings_for(data)), data, asked=asked)
    assert asked["handler_binaries"] == ("/usr/bin/crun", "containerd-shim-runsc-v1", NVIDIA)


@pytest.mark.parametrize(
    "data, missing, message",
    [
        (
            {"containerd_nvidia_runtime": True},
            [NVIDIA],
            "node1: data key 'containerd_nvidia_runtime' adds the runtime handler 'nvidia', but "
            "/usr/bin/nvidia-container-runtime is not on the node. Fix: install the NVIDIA Container Toolkit "
            "(package nvidia-container-toolkit) first, set containerd_nvidia_runtime_path to where it put "
            "nvidia-container-runtime, or set containerd_nvidia_runtime to false",
        ),
        (
            {"containerd_runtimes": [{"name": "gvisor", "runtime_type": "io.containerd.runsc.v1"}]},
            ["containerd-shim-runsc-v1"],
            "node1: data key 'containerd_runtimes': the runtime handler 'gvisor' needs containerd-shim-runsc-v1 "
            "(looked for in /usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin), which is not on the "
            "node: every pod that asks for it would fail. Fix: install it first, correct its "
            "binary_name/runtime_type in containerd_runtimes, or take 'gvisor' out of containerd_runtimes (or out "
            "of the config)",
        ),
        (
            # The operator's own handler named nvidia is theirs, not the preset's.
            {"containerd_runtimes": [{"name": "nvidia", "binary_name": NVIDIA}]},
            [NVIDIA],
            "node1: data key 'containerd_runtimes': the runtime handler 'nvidia' needs "
            "/usr/bin/nvidia-container-runtime, which is not on the node: every pod that asks for it would "
            "fail. Fix: install it first, correct its binary_name/runtime_type in containerd_runtimes, or take "
            "'nvidia' out of containerd_runtimes (or out of the config)",
        ),
    ],
)
def test_a_handler_whose_binary_is_not_on_the_node_is_refused_before_any_change(
    monkeypatch, data, missing, message
):
    settings = settings_for(data)
    for node in (fresh(), converged(settings)):
        with pytest.raises(DeployError) as raised:
            prepare(monkeypatch, drifted(node, missing_binaries=missing), data)
        assert str(raised.value) == message
    # With the binary there: a fresh node installs, a converged one stays as it is.
    assert changed_names(prepare(monkeypatch, fresh(), data))
    assert changed_names(prepare(monkeypatch, converged(settings), data)) == []


def test_every_missing_handler_is_named_in_one_refusal(monkeypatch):
    data = {
        "containerd_nvidia_runtime": True,
        "containerd_runtimes": [{"name": "crun", "binary_name": "/usr/bin/crun"}],
    }
    with pytest.raises(DeployError) as raised:
        prepare(monkeypatch, drifted(fresh(), missing_binaries=["/usr/bin/crun", NVIDIA]), data)
    lines = str(raised.value).splitlines()
    assert [re.search(r"runtime handler ('\w+')", line)[1] for line in lines] == [
        "'crun'",
        "'nvidia'",
    ]
    assert all(line.startswith("node1: data key ") for line in lines)


def test_the_node_fact_finds_a_missing_handler_binary(tmp_path):
    """The fact's own lines, run: a path must be executable; a name is looked up as containerd does."""
    from containerd_deploy.facts.node import parse_node_state
    from containerd_deploy.remote.node_state import SECTION, missing_binaries_lines

    present = tmp_path / "present"
    present.write_text("#!/bin/sh\n")
    present.chmod(0o755)
    not_executable = tmp_path / "plain"
    not_executable.write_text("")
    lines = [f'echo "{SECTION}missing"'] + missing_binaries_lines(
        str(tmp_path),
        (str(present), str(not_executable), str(tmp_path / "absent"), "present", "nowhere-shim"),
    )
    output = subprocess.run(["sh", "-c", "\n".join(lines)], capture_output=True, text=True, check=True).stdout
    state = parse_node_state(output.splitlines())
    assert state.missing_binaries == [str(not_executable), str(tmp_path / "absent"), "nowhere-shim"]


# -- verify ------------------------------------------------------------------------------------


def test_verify_expects_the_default_handler_and_cdi_the_data_sets():
    from containerd_deploy.plan.verdict import data_settings

    assert data_settings(settings_for()) == ()
    settings = settings_for(
        {
            "containerd_nvidia_runtime": True,
            "containerd_default_runtime": "nvidia",
            "containerd_enable_cdi": False,
            "containerd_cdi_spec_dirs": ["/etc/cdi"],
        }
    )
    assert data_settings(settings) == (
        ("default_runtime_name", "nvidia"),
        ("enable_cdi", False),
        ("cdi_spec_dirs", ["/etc/cdi"]),
    )


@pytest.mark.parametrize("version", sorted(GENERATIONS))
def test_verify_finds_a_default_handler_or_cdi_overridden_in_the_effective_config(version):
    from containerd_deploy.plan.verdict import Expected, judge

    from .test_verify import dump_of, healthy

    wanted = (("default_runtime_name", "nvidia"), ("enable_cdi", True), ("cdi_spec_dirs", ["/etc/cdi"]))
    expected = Expected(version=version, systemd_cgroup=True, settings=wanted)
    ctr = ["Client:", f"  Version:  {version}", "", "Server:", f"  Version:  {version}"]
    plugins = [
        "TYPE ID PLATFORMS STATUS",
        "io.containerd.grpc.v1 cri linux/amd64 ok",
        "io.containerd.cri.v1 runtime linux/amd64 ok",
        "io.containerd.cri.v1 images - ok",
    ]

    def dump(default_runtime: str, enable_cdi: bool) -> str:
        return dump_of(
            DEFAULT_CONFIG[version],
            version,
            runtimes=(Runtime("nvidia", binary_name=NVIDIA),),
            default_runtime=default_runtime,
            enable_cdi=enable_cdi,
            cdi_spec_dirs=("/etc/cdi",),
        )

    verdict = judge(expected, healthy(dump=dump("nvidia", True), ctr=ctr, plugins=plugins))
    assert verdict.problems == []
    assert {
        'default_runtime_name = "nvidia" in effect',
        "enable_cdi = true in effect",
        'cdi_spec_dirs = ["/etc/cdi"] in effect',
    } <= set(verdict.checked)
    # An import (or config_extra) put runc back as the default and turned CDI off.
    problems = judge(expected, healthy(dump=dump("runc", False), ctr=ctr, plugins=plugins)).problems
    assert problems == [
        'the effective config (containerd config dump) has default_runtime_name = "runc", but the data sets "nvidia": '
        "something overrides it (containerd_config_extra, or a file in the config's imports, e.g. one nvidia-ctk wrote)",
        "the effective config (containerd config dump) has enable_cdi = false, but the data sets true: something "
        "overrides it (containerd_config_extra, or a file in the config's imports, e.g. one nvidia-ctk wrote)",
    ]


def test_the_container_check_runs_through_runc_and_each_runc_type_handler_with_a_binary():
    from containerd_deploy.plan.verdict import container_handlers

    runtimes = {
        "runc": {"runtime_type": "io.containerd.runc.v2", "options": {"SystemdCgroup": True}},
        "nvidia": {"runtime_type": "io.containerd.runc.v2", "options": {"BinaryName": NVIDIA}},
        "crun": {"runtime_type": "io.containerd.runc.v2", "options": {"BinaryName": "crun"}},
        "plain": {"runtime_type": "io.containerd.runc.v2"},  # runc again
        "kata": {"runtime_type": "io.containerd.kata.v2", "options": {"BinaryName": "/x"}},
        "odd": "not a table",
    }
    assert container_handlers(runtimes) == (("runc", ""), ("crun", "crun"), ("nvidia", NVIDIA))
    assert container_handlers({}) == (("runc", ""),)


FAKE_HANDLER = """#!/bin/sh
# A runc-compatible binary as the check asks it: `--root ROOT state ID`; knows the container
# only if ctr ran it with --runc-binary naming this file.
echo "$*" >> {log}/handler-calls
grep -q -- "--runc-binary {path}" {log}/calls
"""


def container_check(tmp_path, handlers: tuple, cgroup: str) -> tuple[str, Path]:
    """The container check's script against a fake ctr whose task runs in `cgroup`, with
    `handlers`; returns (script, the fake's log directory)."""
    from containerd_deploy.remote.container_check import container_check_script

    from .test_verify import PAUSE, fake_ctr

    bin_dir, log = fake_ctr(tmp_path)
    (tmp_path / "cgroup-4242").write_text(cgroup + "\n")
    script = container_check_script("node1", str(bin_dir), PAUSE, True, "containerd.service", handlers)
    return script.replace("/proc/${task%% *}/cgroup", f"{tmp_path}/cgroup-${{task%% *}}"), log


def fake_handler(path: Path, log: Path, knows: Path | str) -> None:
    path.write_text(FAKE_HANDLER.format(log=log, path=knows))
    path.chmod(0o755)


@pytest.mark.parametrize("through", [True, False])
def test_the_container_check_proves_the_handlers_own_binary_ran_it(tmp_path, through):
    from .test_verify import PAUSE

    handler = tmp_path / "nvidia-container-runtime"
    script, log = container_check(
        tmp_path,
        (("runc", ""), ("nvidia", str(handler))),
        "0::/system.slice/containerd-deploy-verify-77-x.scope",
    )
    # A binary that does not know the container: as if the shim ran runc instead.
    fake_handler(handler, log, handler if through else "/elsewhere")
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    runs = [line for line in (log / "calls").read_text().splitlines() if " run -d " in line]
    assert len(runs) == 2 and "--runc-binary" not in runs[0]
    assert f"--runc-binary {handler} {PAUSE} containerd-deploy-verify-" in runs[1]
    assert "--cgroup system.slice:containerd-deploy:verify-" in runs[1] and runs[1].endswith("-nvidia")
    assert (
        (log / "handler-calls")
        .read_text()
        .startswith("--root /run/containerd/runc/k8s.io state containerd-deploy-verify-")
    )
    if through:
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "a container ran in /system.slice/containerd-deploy-verify-77-x.scope",
            "a container ran through nvidia in /system.slice/containerd-deploy-verify-77-x.scope",
        ]
    else:
        assert result.returncode == 1
        assert result.stderr.splitlines()[1] == (
            f"  - a container from {PAUSE} through runtime handler nvidia ({handler}) ran, but not through "
            f"{handler} (it does not know the container): is BinaryName right?"
        )
    calls = (log / "calls").read_text()
    assert calls.count("containers rm containerd-deploy-verify-") == 2, "each container is removed"


def test_a_handler_that_runs_the_process_in_a_cgroup_inside_the_scope_is_in_the_scope(tmp_path):
    """Regression (found on the VMs): crun puts the container's process in <scope>/container;
    the check said "not in a systemd scope" and failed every run that added crun."""
    crun = tmp_path / "crun"
    script, log = container_check(
        tmp_path, (("crun", str(crun)),), "0::/system.slice/containerd-deploy-verify-77-crun.scope/container"
    )
    fake_handler(crun, log, crun)
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout
        == "a container ran through crun in /system.slice/containerd-deploy-verify-77-crun.scope\n"
    )
    # A cgroup that only looks like one (a name that merely starts so) is not a scope.
    (tmp_path / "cgroup-4242").write_text("0::/system.slice/containerd-deploy-verify-77-crun.scoped\n")
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "not in a systemd scope" in result.stderr


def test_a_missing_binary_after_a_present_one_is_still_found(monkeypatch):
    """Handlers are checked in name order: crun's binary is there, nvidia's is not."""
    data = {
        "containerd_nvidia_runtime": True,
        "containerd_runtimes": [{"name": "crun", "binary_name": "/usr/bin/crun"}],
    }
    with pytest.raises(DeployError) as raised:
        prepare(monkeypatch, drifted(fresh(), missing_binaries=[NVIDIA]), data)
    assert "adds the runtime handler 'nvidia'" in str(raised.value) and "'crun'" not in str(raised.value)


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"containerd_nvidia_runtime": "yes"},
            "node1: data key 'containerd_nvidia_runtime' is 'yes', not true or false. Fix: set "
            "containerd_nvidia_runtime to true or false",
        ),
        (
            {"containerd_enable_cdi": "on"},
            "node1: data key 'containerd_enable_cdi' is 'on', not true or false. Fix: set containerd_enable_cdi "
            "to true or false",
        ),
        (
            {"containerd_cdi_spec_dirs": ["/etc/cdi", "cdi"]},
            "node1: data key 'containerd_cdi_spec_dirs' is 'cdi', not an absolute path. Fix: set "
            "containerd_cdi_spec_dirs to an absolute path such as /etc/cdi",
        ),
        (
            {"containerd_version": "1.6.20", "containerd_enable_cdi": False},
            "node1: data key 'containerd_enable_cdi' is set, but containerd 1.6.20 has no CDI support (it came in "
            "1.7). Fix: unset containerd_enable_cdi, or set containerd_version to 1.7.0 or later",
        ),
    ],
)
def test_each_gpu_key_refuses_with_the_host_the_key_and_the_fix(data, message):
    assert refusal(data) == message

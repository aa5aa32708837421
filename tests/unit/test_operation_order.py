"""How pyinfra's CLI orders and tells apart the deploy's operations: by the lines of each one's call
stack (`inspect.stack()`, per operation and host), where a frame of the deploy file it exec'd
must not make `inspect.getmodule` scan every loaded module."""

import inspect
import sys
import types
from types import SimpleNamespace

import pyinfra
import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_host, ctx_state

import containerd_deploy.deploy.node as flow
from containerd_deploy.deploy import report
from containerd_deploy.deploy.order import deploy_file_frames_known
from containerd_deploy.facts.node import DataDirectories, DataDirectory
from containerd_deploy.remote.manifest import Manifest

from .flow import converged, drifted, settings_for


@pytest.fixture
def frame_of_a_deploy_file(tmp_path, monkeypatch):
    """A frame of `deploy.py` run as pyinfra's CLI runs it: compiled under the name it was given
    on the command line (relative) and exec'd, so no module has that file."""
    (tmp_path / "deploy.py").write_text("import sys\nframe = sys._getframe()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inspect, "modulesbyfile", dict(inspect.modulesbyfile))
    namespace: dict = {}
    exec(compile((tmp_path / "deploy.py").read_text(), "deploy.py", "exec"), namespace)
    return namespace["frame"]


def modules_scanned(monkeypatch) -> list:
    scanned: list = []
    ismodule = inspect.ismodule

    def counting(thing):
        if isinstance(thing, types.ModuleType):
            scanned.append(thing)
        return ismodule(thing)

    monkeypatch.setattr(inspect, "ismodule", counting)
    return scanned


def test_a_frame_of_the_deploy_file_scans_no_module(frame_of_a_deploy_file, monkeypatch):
    deploy_file_frames_known(SimpleNamespace(current_exec_filename="deploy.py"))
    scanned = modules_scanned(monkeypatch)
    info = inspect.getframeinfo(frame_of_a_deploy_file)
    assert (info.filename, info.lineno) == ("deploy.py", 2)
    assert info.code_context == ["frame = sys._getframe()\n"]
    assert inspect.getmodule(frame_of_a_deploy_file, "deploy.py") is None  # as before: no module
    assert scanned == []


def test_without_it_each_frame_of_the_deploy_file_scans_every_module(frame_of_a_deploy_file, monkeypatch):
    """The cost it saves, so the test above can only pass for the registration's sake."""
    deploy_file_frames_known(SimpleNamespace(current_exec_filename=None))  # API mode: no file
    scanned = modules_scanned(monkeypatch)
    inspect.getframeinfo(frame_of_a_deploy_file)
    inspect.getframeinfo(frame_of_a_deploy_file)
    assert len(scanned) >= 2 * len([module for module in sys.modules.values() if hasattr(module, "__file__")])


def test_a_python_without_that_cache_runs_the_deploy_as_before(monkeypatch):
    monkeypatch.delattr(inspect, "modulesbyfile")
    deploy_file_frames_known(SimpleNamespace(current_exec_filename="deploy.py"))
    assert not hasattr(inspect, "modulesbyfile")


def test_hosts_changing_different_things_keep_their_own_operations(monkeypatch, tmp_path):
    """pyinfra's CLI tells operations apart by the lines of their call stack, their place in a
    loop, and how many came from the same place before on the same host; the deploy places each
    file's or component's operation by the name it shows. So where hosts differ in what they change (one removes the CNI plugins,
    writes config.toml and removes a registry's hosts.toml; another removes crictl, installs the
    unit and removes the proxy drop-in), each change is an operation of its own, never one
    operation under two names. And the deploy, as the CLI runs it from a deploy file, records
    that file first."""
    settings = settings_for()
    base = converged(settings)
    hosts_toml = "/etc/containerd/certs.d/docker.io/hosts.toml"
    dropin = "/etc/systemd/system/containerd.service.d/http-proxy.conf"
    nodes = {
        "one": (
            drifted(
                base, manifests={**base.manifests, "cni_plugins": Manifest()}, managed_hosts=[hosts_toml]
            ),
            {"containerd_max_container_log_line_size": 32768},
        ),
        "two": (
            drifted(
                base,
                manifests={**base.manifests, "crictl": Manifest()},
                unit_sha256="0" * 64,
                files={dropin: "0" * 64},
            ),
            {},
        ),
    }
    state = run_as_the_cli(monkeypatch, tmp_path, nodes)
    assert str(tmp_path / "deploy.py") in inspect.modulesbyfile
    changes = operation_names(state)
    for expected in (
        "Remove crictl (no crictl_version)",
        "Remove the CNI plugins (no cni_plugins_version)",
        "Write /etc/containerd/config.toml",
        "Install /etc/systemd/system/containerd.service",
        f"Remove {hosts_toml} (no longer in containerd_registries)",
        f"Remove {dropin}",
    ):
        assert expected in changes, changes


def test_hosts_taken_back_from_different_states_keep_their_own_operations(monkeypatch, tmp_path):
    base = converged(settings_for())
    one = "/etc/containerd/certs.d/one.internal/hosts.toml"
    two = "/etc/containerd/certs.d/two.internal/hosts.toml"
    absent, purged = {"containerd_state": "absent"}, {"containerd_state": "purged"}
    elsewhere = base.config_text.replace("root = '/var/lib/containerd'", "root = '/srv/containerd'")
    assert elsewhere != base.config_text
    nodes = {
        "one": (drifted(base, managed_hosts=[one, two], unit_sha256=None), absent),
        # the same files met the other way round: one order still (pyinfra refuses two)
        "two": (drifted(base, manifests={"runc": base.manifests["runc"]}, managed_hosts=[two, one]), absent),
        "three": (base, purged),
        "four": (drifted(base, config_text=elsewhere), purged),
    }
    changes = operation_names(run_as_the_cli(monkeypatch, tmp_path, nodes))
    for expected in (
        f"Remove {one}",
        f"Remove {two}",
        "Remove containerd files",
        "Remove runc files",
        "Remove containerd's data in /var/lib/containerd",
        "Remove containerd's data in /srv/containerd",
    ):
        assert expected in changes, changes


def test_hosts_installing_different_versions_keep_their_own_operations(monkeypatch, tmp_path):
    base = converged(settings_for())
    nodes = {"one": (base, {"containerd_version": "2.1.6"}), "two": (base, {"containerd_version": "2.0.7"})}
    changes = operation_names(run_as_the_cli(monkeypatch, tmp_path, nodes))
    assert [name for name in changes if name.startswith("Install containerd ")] == [
        "Install containerd 2.0.7 into /usr/local/bin",
        "Install containerd 2.1.6 into /usr/local/bin",
    ]


def run_as_the_cli(monkeypatch, tmp_path, nodes: dict) -> State:
    """Prepare the deploy for each host (name -> (node fact, data)) as pyinfra's CLI does from
    a deploy file: operations told apart by their call stack."""
    monkeypatch.setattr(pyinfra, "is_cli", True)
    monkeypatch.setattr(report.atexit, "register", lambda *args: None)  # no report at pytest's exit
    monkeypatch.setattr(report.signal, "signal", lambda *args: None)  # nor its Ctrl-C handler
    monkeypatch.setattr(inspect, "modulesbyfile", dict(inspect.modulesbyfile))
    monkeypatch.chdir(tmp_path)
    inventory = Inventory(
        ([(name, {"containerd_verify": False, **data}) for name, (_, data) in nodes.items()], {})
    )
    state = State(inventory, Config())
    state.current_stage = StateStage.Prepare
    state.current_exec_filename = "deploy.py"
    for name, (node, _) in nodes.items():
        host = inventory.get_host(name)
        state.activate_host(host)
        monkeypatch.setattr(
            host, "get_fact", lambda fact, *args, node=node, **kwargs: answer(fact, node, kwargs)
        )
        with ctx_state.use(state), ctx_host.use(host):
            flow.containerd_node._inner()
    state.get_op_order()  # one order of the operations for all hosts (pyinfra raises otherwise)
    return state


def answer(fact, node, asked: dict):
    """The node fact: `node`; a purge's question of its data directories: each there, empty."""
    if fact is DataDirectories:
        return {path: DataDirectory(path, ()) for path in asked["paths"]}
    return node


def operation_names(state: State) -> list[str]:
    """Each operation's name (without its deploy steps), asserted to be one: no operation of
    one host is merged with another's different one."""
    named = sorted(
        sorted({name.rsplit(" | ", 1)[-1] for name in meta.names}) for meta in state.op_meta.values()
    )
    assert [names for names in named if len(names) > 1] == []
    return sorted(names[0] for names in named)

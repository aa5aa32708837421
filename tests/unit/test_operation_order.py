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
from containerd_deploy.deploy.node import deploy_file_frames_known
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


def test_hosts_removing_different_components_keep_their_own_operations(monkeypatch, tmp_path):
    """pyinfra's CLI tells operations apart by the lines of their call stack; two calls from
    one line in a loop are told apart by the loop's place (`host.loop`), so one host removing
    the CNI plugins and another removing crictl are two operations, not one under both names.
    And the deploy, as the CLI runs it from a deploy file, records that file first."""
    monkeypatch.setattr(pyinfra, "is_cli", True)
    monkeypatch.setattr(report.atexit, "register", lambda *args: None)  # no report at pytest's exit
    monkeypatch.setattr(report.signal, "signal", lambda *args: None)  # nor its Ctrl-C handler
    monkeypatch.setattr(inspect, "modulesbyfile", dict(inspect.modulesbyfile))
    monkeypatch.chdir(tmp_path)
    settings = settings_for()
    base = converged(settings)
    nodes = {
        "with-cni": drifted(base, manifests={**base.manifests, "cni_plugins": Manifest()}),
        "with-crictl": drifted(base, manifests={**base.manifests, "crictl": Manifest()}),
    }
    data = {"containerd_verify": False}
    inventory = Inventory(([(name, data) for name in nodes], {}))
    state = State(inventory, Config())
    state.current_stage = StateStage.Prepare
    state.current_exec_filename = "deploy.py"
    for name, node in nodes.items():
        host = inventory.get_host(name)
        state.activate_host(host)
        monkeypatch.setattr(host, "get_fact", lambda fact, *args, node=node, **kwargs: node)
        with ctx_state.use(state), ctx_host.use(host):
            flow.containerd_node._inner()
    removals = sorted(
        sorted(meta.names)
        for meta in state.op_meta.values()
        if any(" | Remove " in name for name in meta.names)
    )
    assert str(tmp_path / "deploy.py") in inspect.modulesbyfile
    assert removals == [
        ["Install release files | Remove crictl (no crictl_version)"],
        ["Install release files | Remove the CNI plugins (no cni_plugins_version)"],
    ]

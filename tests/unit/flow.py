"""The deploy's flow on fake node states, with no host: pyinfra prepares `containerd_node` for
one inventory host whose ContainerdNode fact is a NodeState built here, and the test reads
which operations were added, which would change, and the commands they would run.

`converged(settings)` is a node exactly as this deploy leaves it (binaries by manifest, the
config, the unit, the service active and enabled, the daemon at the installed version);
tests derive drifted nodes from it.
"""

import dataclasses
import hashlib
import re
import time
from pathlib import Path

from pyinfra.api import Config, Inventory, State, StringCommand
from pyinfra.context import ctx_host, ctx_state

import containerd_deploy.deploy.node as flow
from containerd_deploy.data import artifacts
from containerd_deploy.data.settings import resolve
from containerd_deploy.facts.node import (
    ContainerdNode,
    DataDirectories,
    DataDirectory,
    MissingBinaries,
    NodeState,
)
from containerd_deploy.plan.files import desired_config, unit_text
from containerd_deploy.remote.lock import parse_lock_state
from containerd_deploy.remote.manifest import Manifest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "config"
DEFAULT_CONFIGS = {1: "default-1.7.24.toml", 2: "default-2.1.9.toml"}


def no_fetch(*args, **kwargs):
    raise AssertionError("the flow asked a release server for a checksum it has pinned")


def settings_for(data: dict | None = None):
    return resolve("node1", dict(data or {}))


def converged(settings, arch: str = "amd64") -> NodeState:
    """The node as this deploy leaves it with `settings`."""
    wanted = artifacts.resolve(settings, arch, published=no_fetch)
    manifests = {}
    for component, artifact in wanted.items():
        dest = artifacts.destination(settings, artifact)
        path = f"{dest}/{component}" if artifact.layout.tarball else dest
        files = {path: "0 1 755 root:root"}
        manifests[component] = Manifest(
            fields={"component": component, "version": artifact.version, "sha256": artifact.sha256},
            files=files,
            actual=dict(files),
        )
    default = (FIXTURES / DEFAULT_CONFIGS[settings.containerd_version.major]).read_text()
    config = desired_config(settings, default)
    version = str(settings.containerd_version)
    return NodeState(
        machine={"amd64": "x86_64", "arm64": "aarch64"}[arch],
        kernel="Linux",
        systemd=True,
        manifests=manifests,
        unit_sha256=hashlib.sha256(
            unit_text(settings.containerd_bin_dir, settings.containerd_limit_nofile).encode()
        ).hexdigest(),
        config_text=config,
        default_config=default,
        service={
            "ActiveState": "active",
            "UnitFileState": "enabled",
            "MainPID": "4242",
            "NeedDaemonReload": "no",
        },
        ctr_client=version,
        ctr_server=version,
        exe=f"{settings.containerd_bin_dir}/containerd",
        lock=parse_lock_state("free 0"),
        started=time.time() - 60,
        mtimes={settings.containerd_config_path: time.time() - 120},
    )


def fresh() -> NodeState:
    """A systemd node with nothing of this deploy on it."""
    return NodeState(machine="x86_64", kernel="Linux", systemd=True, lock=parse_lock_state("free 0"))


def drifted(node: NodeState, **changes) -> NodeState:
    return dataclasses.replace(node, **changes)


@dataclasses.dataclass
class PreparedOp:
    name: str
    commands: list
    dry_run_change: bool | None = None  # what pyinfra's dry run (change detection) said, when asked

    @property
    def changes(self) -> bool:
        return bool(self.commands)

    def full_text(self) -> str:
        return "\n".join(c.get_raw_value() if isinstance(c, StringCommand) else str(c) for c in self.commands)

    def text(self) -> str:
        """The commands without the `rollback` function they define (its restart and reload run
        only when the new release falls short): what the run itself does."""
        return re.sub(r"(?ms)^rollback\(\) \{\n.*?^\}\n", "rollback() { ...; }\n", self.full_text())


def prepare(
    monkeypatch,
    node: NodeState,
    data: dict | None = None,
    diff: bool = False,
    files: dict[str, str] | None = None,
    asked: dict | None = None,
    dry_run: bool = False,
    missing: tuple = (),
    asked_binaries: list | None = None,
    data_directories: dict | None = None,
    run: dict | None = None,
) -> list[PreparedOp]:
    """Prepare `containerd_node` for a host with `data` whose node fact is `node`; the operations
    it added, in order, with the commands each would run (none: no change). `diff`: as with
    pyinfra's --diff; `files`: path -> text the node's FileContents fact returns then; `asked`: filled with
    the arguments the deploy gave the node fact; `dry_run`: pyinfra checks each operation for a
    change as it is added (as with --dry, or before asking to go ahead), kept in `dry_run_change`;
    `missing`: the binaries the MissingBinaries fact finds missing (each question it is asked,
    (bin_dir, binaries), goes into `asked_binaries`); `data_directories`: path -> DataDirectory the DataDirectories
    fact answers for a purge (by default each is there, empty, and root's alone); `run`: given the
    pyinfra state and host the deploy was prepared in."""
    data = {"containerd_verify": False, **(data or {})}
    inventory = Inventory(([("node1", data)], {}))
    state = State(inventory, Config(DIFF=diff))
    host = inventory.get_host("node1")
    state.activate_host(host)
    state.check_for_changes = dry_run
    if run is not None:
        run.update(state=state, host=host)

    def get_fact(fact, path="", **kwargs):
        # The node fact answers with `node` (what the deploy asked is kept in `asked`); the
        # FileContents fact (--diff) with `files`.
        if fact is ContainerdNode:
            if asked is not None:
                asked.update(kwargs)
            return node
        if fact is DataDirectories:
            given = data_directories or {}  # None: the node's answer leaves that path out
            answer = {path: given.get(path, DataDirectory(path, ())) for path in kwargs["paths"]}
            return {path: found for path, found in answer.items() if found is not None}
        if fact is MissingBinaries:
            if asked_binaries is not None:
                asked_binaries.append((kwargs["bin_dir"], kwargs["binaries"]))
            return [binary for binary in kwargs["binaries"] if binary in missing]
        return (files or {})[path].splitlines()

    monkeypatch.setattr(host, "get_fact", get_fact)
    monkeypatch.setattr(flow, "fetch_digest", no_fetch)
    with ctx_state.use(state), ctx_host.use(host):
        flow.containerd_node._inner()
        prepared = []
        for op_hash in state.get_op_order():
            op_data = state.get_op_data_for_host(host, op_hash)
            names = state.op_meta[op_hash].names
            meta = op_data.operation_meta
            prepared.append(
                PreparedOp(
                    " | ".join(sorted(names)),
                    list(op_data.command_generator()),
                    meta._maybe_is_change if dry_run else None,
                )
            )
    return prepared


def changed_names(prepared: list[PreparedOp]) -> list[str]:
    return [op.name for op in prepared if op.changes]


def service_op(prepared: list[PreparedOp]) -> PreparedOp:
    (found,) = [op for op in prepared if op.name.endswith("Enable, start and check containerd")]
    return found

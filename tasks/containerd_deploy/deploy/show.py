"""What a run shows before it changes anything: its plan, always, and with pyinfra's `--diff` each
file's unified diff (credentials never shown) and whether containerd restarts. Shown while the
deploy is prepared, so a run with `-y` (where pyinfra asks no operation what it would change)
shows what a run without it, and a dry run, show. A refusal is shown as said."""

import posixpath

from pyinfra import host, logger
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import FileContents

from containerd_deploy.data.settings import Settings
from containerd_deploy.data.values import Refusal
from containerd_deploy.facts.node import NodeState
from containerd_deploy.operations.files import show_diff
from containerd_deploy.operations.service import restart_said
from containerd_deploy.plan.run import Plan


def show_plan(settings: Settings, node: NodeState, plan: Plan) -> None:
    """The plan's line; with --diff, what each write and removal changes and the restart."""
    logger.info(f"[{settings.host}] containerd-deploy plan: " + "; ".join(plan.lines()))
    if not host.state.config.DIFF:
        return
    for path in plan.write:
        file = plan.files[path]
        if file.text is None:
            host.log(f"Will write {path} from the defaults of the containerd this run installs")
            continue
        show_diff(
            path,
            _current_text(settings, node, path, file.mode, file.current_sha256),
            file.text,
            file.mode == "600",
        )
    for path in plan.delete:
        host.log(f"Will remove {path}")
    if not plan.stop and not plan.purge and settings.containerd_state == "present":
        action = "start" if not node.active else "restart" if plan.restart else ""
        unit = posixpath.basename(settings.containerd_unit_path)
        host.log(restart_said(unit, action, "; ".join(plan.restart), plan.reload))


def _current_text(
    settings: Settings, node: NodeState, path: str, mode: str, sha256: str | None
) -> str | None:
    """The node's file, to diff against (None: there is none; "": one whose text is never shown)."""
    if sha256 is None:
        return None
    if path == settings.containerd_config_path and node.config_text is not None:
        return node.config_text
    if mode == "600":
        return ""
    return "\n".join(host.get_fact(FileContents, path=path) or []) + "\n"


def as_said_by_the_cli(refusal: Refusal) -> DeployError:
    """`refusal` as pyinfra's CLI shows it as said: one line per problem, no source location (it
    shows any other error as one at the line of source that raised it). Only while the CLI runs:
    importing pyinfra's CLI package patches the whole process for gevent."""
    from pyinfra_cli.exceptions import CliError

    class RefusedRun(DeployError, CliError):  # a pyinfra error the CLI re-raises as it is
        def __init__(self, message: str):
            CliError.__init__(self, message)

        def __str__(self) -> str:
            return self.message

        def show(self, file=None) -> None:
            logger.error(f"--> {self.message}")

    return RefusedRun(refusal.message)

"""pyinfra operations of this deploy: thin, each decides from the node state it is given.

The deploy gives them the state the `ContainerdNode` fact gathered at the start of the run
instead of asking the node again, so a run with nothing to do costs one round trip for that
fact. Called on their own (in a deploy of the operator's), they read that state themselves:
an argument left at `FROM_NODE` is asked of the node with a fact of its own.

`release` installs, keeps and removes release files; `files` writes and removes files;
`service` runs the unit, the run lock and the restart hooks; `verify` checks the running daemon.
What they run on the controller itself is controller/'s.
"""

from typing import Any

from pyinfra import host, logger

from containerd_deploy.controller.run_record import HostRun, run_of


class FromNode:
    """The default of an operation's state argument: read it from the node (see FROM_NODE)."""

    def __repr__(self) -> str:
        return "FROM_NODE"


FROM_NODE = FromNode()


def _escalated() -> bool:
    """Whether this operation's commands run through sudo/doas/dzdo/su (so uploads go via the
    login user)."""
    arguments: dict = dict(host.current_op_global_arguments or {})
    return any(arguments.get(name) for name in ESCALATIONS)


# pyinfra's arguments that run a command as another user, and their "off" value: a command the
# login user runs itself is given all of them.
# (_su_user="": pyinfra's own default, which its type hint does not admit as None.)
ESCALATIONS: dict[str, Any] = {"_sudo": False, "_doas": False, "_dzdo": False, "_su_user": ""}


def failed_on_controller(state, on_host, said: str) -> bool:
    """What a command run on the controller for `on_host` (a FunctionCommand) returns when it
    fails: `said` (host first) logged, and kept for the run's report (pyinfra keeps no output
    of such a command)."""
    run_of(state).hosts.setdefault(on_host.name, HostRun()).failure = said
    on_host.log_styled(f"containerd-deploy: {said}", fg="red", log_func=logger.error)
    return False

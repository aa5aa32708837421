"""containerd-deploy: one module per concern, composed by `node.containerd_node`.

From a clone this is the package `tasks`; installed from the wheel it is `containerd_deploy`:

    from containerd_deploy import containerd_node
    containerd_node()
"""

from importlib import resources

__all__ = ["containerd_node"]


def resource(name: str):
    """A file shipped with the deploy (files/: the unit template, pinned checksums), found the
    same way from a clone and from an installed package."""
    return resources.files(__name__) / "files" / name


def __getattr__(name: str):
    # Lazy: the data-handling modules stay importable without pulling in pyinfra's API.
    if name == "containerd_node":
        from .node import containerd_node

        return containerd_node
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

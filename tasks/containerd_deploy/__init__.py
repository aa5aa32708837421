"""containerd-deploy: folders by layer (docs/layout.md), composed by `deploy.node.containerd_node`.

The same package from a clone (tasks/containerd_deploy, installed editable) and from the wheel:

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
        from containerd_deploy.deploy.node import containerd_node

        return containerd_node
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""containerd-deploy's tasks: one module per concern, composed by `tasks.node.containerd_node`."""

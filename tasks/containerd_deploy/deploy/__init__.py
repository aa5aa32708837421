"""The deploy's steps, each adding the operations of one part of a node, from the run's plan, composed by node.containerd_node."""

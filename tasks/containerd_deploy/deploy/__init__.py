"""The deploy's steps, each adding the operations of one part of a node, composed by node.containerd_node."""

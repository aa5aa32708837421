"""Pure decisions: from the node's state and the settings, what this run will fetch, install,
write, restart, keep and verify, and whether it takes the run lock (no pyinfra operation here)."""

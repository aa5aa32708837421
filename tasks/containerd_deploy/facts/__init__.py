"""pyinfra facts: they only ask the node (their scripts: remote/), and parse what it prints."""

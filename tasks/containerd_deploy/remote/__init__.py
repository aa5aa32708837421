"""Node-side shell, built by pure functions: each script written once, shellchecked and run in the unit tests."""

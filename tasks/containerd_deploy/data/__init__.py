"""The operator's data: every key declared, parsed and checked before any change (of pyinfra, only its errors)."""

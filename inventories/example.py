"""A production fleet. Each list is a group; group_data/<group>.py holds that group's data.

pyinfra inventories/example.py deploy.py -y
pyinfra inventories/example.py deploy.py -y --limit k8s_workers
"""

k8s_control_plane = [
    "cp-1.example.com",
    "cp-2.example.com",
    "cp-3.example.com",
]

k8s_workers = [
    "worker-1.example.com",
    # Per-host data: an arm64 worker reached as a sudo-capable admin user.
    ("worker-arm-1.example.com", {"ssh_user": "admin", "_sudo": True}),
]

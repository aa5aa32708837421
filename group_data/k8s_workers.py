# Data for the k8s_workers group of inventories/example.py (keys: see README, Data).
containerd_version = "1.7.11"
runc_version = "1.1.11"

# Fetch from an internal mirror with GitHub's release layout instead of github.com:
# artifact_mirror = "https://artifacts.example.internal/github"

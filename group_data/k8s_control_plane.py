# Data for the k8s_control_plane group of inventories/example.py (keys: see docs/data.md).
# Pin what the fleet runs; a version not in files/checksums.toml also needs containerd_sha256.
containerd_version = "2.2.1"
runc_version = "1.3.4"

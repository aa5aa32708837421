# Data for the k8s_workers group of inventories/example.py (keys: see docs/data.md).
containerd_version = "2.2.1"
runc_version = "1.3.4"

# Fetch from an internal mirror with GitHub's release layout instead of github.com:
# artifact_mirror = "https://artifacts.example.internal/github"

# Workers without a route to the mirror: the controller fetches each file once and uploads it.
# artifact_source = "controller"
# The CNI plugins into /opt/cni/bin, and crictl with /etc/crictl.yaml:
# cni_plugins_version = "1.8.0"
# crictl_version = "1.35.0"

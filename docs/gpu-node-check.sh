#!/usr/bin/env bash
# The real-GPU check, for operators: on a GPU node, deploy containerd with the nvidia preset and
# prove that a pod run through the CRI with runtime handler `nvidia` sees the GPU.
#
# Run it ON the GPU node, as root, once the NVIDIA driver (nvidia-smi works on the host) and the
# NVIDIA Container Toolkit (nvidia-container-runtime) are installed, with containerd-deploy in a
# venv there:
#
#     python3 -m venv /opt/containerd-deploy && /opt/containerd-deploy/bin/pip install containerd_deploy-*.whl
#     PATH=/opt/containerd-deploy/bin:$PATH bash gpu-node-check.sh
#
# What it does: `pyinfra @local containerd_deploy.containerd_node` with
# containerd_nvidia_runtime=true and crictl (data from the environment below; the node must reach
# the release files, or set ARTIFACT_MIRROR), then with crictl: pulls a CUDA base image, runs a
# pod with `--runtime nvidia` and a container running `nvidia-smi -L` in it, and passes when that
# lists a GPU. Everything it creates in containerd is removed; the deploy's changes stay.
# Not run by this project's CI (no GPU there): the stand-in tests in tests/e2e/test_gpu.py are.
set -euo pipefail

CUDA_IMAGE=${CUDA_IMAGE:-docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04}
CRICTL_VERSION=${CRICTL_VERSION:-1.33.0}
NVIDIA_RUNTIME=${NVIDIA_RUNTIME:-/usr/bin/nvidia-container-runtime}
MAKE_DEFAULT=${MAKE_DEFAULT:-false} # true: also containerd_default_runtime=nvidia
ARTIFACT_MIRROR=${ARTIFACT_MIRROR:-}

fail() {
	echo "gpu-node-check: FAIL: $*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || fail "run as root (it deploys containerd on this node)"
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: install the NVIDIA driver first"
nvidia-smi -L | grep -q '^GPU [0-9]' || fail "nvidia-smi on the host lists no GPU: fix the driver first"
[ -x "$NVIDIA_RUNTIME" ] || fail "$NVIDIA_RUNTIME not found: install the NVIDIA Container Toolkit (nvidia-container-toolkit) first"
command -v pyinfra >/dev/null || fail "pyinfra not found: install containerd-deploy's wheel into a venv and put its bin on PATH"

data=(
	--data containerd_nvidia_runtime=true
	--data "containerd_nvidia_runtime_path=$NVIDIA_RUNTIME"
	--data "crictl_version=$CRICTL_VERSION"
)
if [ "$MAKE_DEFAULT" = true ]; then
	data+=(--data containerd_default_runtime=nvidia)
fi
if [ -n "$ARTIFACT_MIRROR" ]; then
	data+=(--data "artifact_mirror=$ARTIFACT_MIRROR")
fi
echo "gpu-node-check: deploying this node with the nvidia preset"
pyinfra -y @local containerd_deploy.containerd_node "${data[@]}"

work=$(mktemp -d /tmp/gpu-node-check.XXXXXX)
pod=""
cleanup() {
	if [ -n "$pod" ]; then
		crictl stopp "$pod" >/dev/null 2>&1 || true
		crictl rmp -f "$pod" >/dev/null 2>&1 || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

uid="gpu-node-check-$$"
cat >"$work/pod.json" <<EOF
{"metadata": {"name": "gpu-node-check", "namespace": "default", "uid": "$uid", "attempt": 0},
 "log_directory": "$work", "linux": {}}
EOF
cat >"$work/container.json" <<EOF
{"metadata": {"name": "nvidia-smi"}, "image": {"image": "$CUDA_IMAGE"},
 "command": ["nvidia-smi", "-L"], "log_path": "nvidia-smi.log", "linux": {}}
EOF

echo "gpu-node-check: pulling $CUDA_IMAGE through the CRI"
crictl pull "$CUDA_IMAGE" >/dev/null || fail "could not pull $CUDA_IMAGE (set CUDA_IMAGE to one your registries serve)"
pod=$(crictl runp --runtime nvidia "$work/pod.json") || fail "the pod did not start with runtime handler nvidia"
container=$(crictl create "$pod" "$work/container.json" "$work/pod.json") || fail "could not create the container"
crictl start "$container" >/dev/null || fail "the container did not start"
for _ in $(seq 60); do
	state=$(crictl inspect -o go-template --template '{{.status.state}}' "$container")
	[ "$state" = CONTAINER_EXITED ] && break
	sleep 1
done
output=$(crictl logs "$container" 2>&1)
echo "$output"
if printf '%s\n' "$output" | grep -q '^GPU [0-9]'; then
	echo "gpu-node-check: PASS: a pod run with runtime handler nvidia sees the GPU"
else
	fail "nvidia-smi in the pod listed no GPU (is the toolkit configured for this driver? see nvidia-ctk)"
fi

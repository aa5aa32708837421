# The physical floor of a first converge: what a careful operator types by hand, as one script
# over one SSH session. Same mirror, same files, same checks as the deploy, nothing more.
# Set by the bench before it: MIRROR CONTAINERD_VERSION CONTAINERD_SHA256 RUNC_VERSION RUNC_SHA256 UNIT
set -eu
cd "$(mktemp -d)"
tarball=containerd-$CONTAINERD_VERSION-linux-amd64.tar.gz
curl -fsSL -o "$tarball" "$MIRROR/containerd/containerd/releases/download/v$CONTAINERD_VERSION/$tarball"
curl -fsSL -o runc.amd64 "$MIRROR/opencontainers/runc/releases/download/v$RUNC_VERSION/runc.amd64"
printf '%s  %s\n%s  %s\n' "$CONTAINERD_SHA256" "$tarball" "$RUNC_SHA256" runc.amd64 | sha256sum -c --quiet
tar -C /usr/local -xzf "$tarball"
install -m 0755 runc.amd64 /usr/local/sbin/runc
mkdir -p /etc/containerd
/usr/local/bin/containerd config default > /etc/containerd/config.toml
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
printf '%s' "$UNIT" > /etc/systemd/system/containerd.service
systemctl daemon-reload
systemctl enable --now containerd.service
until /usr/local/bin/ctr version >/dev/null 2>&1; do sleep 0.2; done
/usr/local/bin/ctr version | grep -c Version

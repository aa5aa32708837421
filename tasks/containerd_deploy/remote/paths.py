"""Where things are on a node, each written once: the names the deploy makes beside a final
path, the state it keeps, the files it reads of others, and the PATH its commands run with.
"""

# Where distribution packages (Debian/Ubuntu containerd, docker.io's, Docker's containerd.io,
# Fedora/RHEL's) put containerd: a second containerd beside this deploy's, which package
# upgrades restart under the same unit name.
DISTRO_BINARIES = ("/usr/bin/containerd", "/usr/sbin/containerd")
KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"
# What containerd reads to decide, once per process, whether it confines a kubelet's containers
# with AppArmor: the kernel's switch, its securityfs directory, and its userspace's parser.
APPARMOR_ENABLED = "/sys/module/apparmor/parameters/enabled"
APPARMOR_SECURITYFS = "/sys/kernel/security/apparmor"
APPARMOR_PARSER = "/sbin/apparmor_parser"
CRICTL_CONFIG = "/etc/crictl.yaml"  # written only when crictl is installed, removed only when ours
# The run lock's flock, and its .generation/.owner/.session, in a directory only root can enter:
# no other user opens the lock (a read handle is all flock needs) or writes what it records.
LOCK_DIR = "/run/containerd-deploy"
LOCK_PATH = f"{LOCK_DIR}/lock"
CRI_NAMESPACE = "k8s.io"  # containerd's namespace of the CRI (and so of a kubelet's images and pods)
RUNC_STATE_ROOT = "/run/containerd/runc"  # the runc shim's --root, one directory per namespace


# What a run cut short can leave beside the paths it writes: the hidden copy of a file about to
# be renamed over its path (`.<name>.containerd-deploy-new`), a manifest's, the hidden directory
# of a release being installed (`.containerd-deploy-new.<pid>`), and the private directory an
# upload through sudo goes through.
NEW_SUFFIX = ".containerd-deploy-new"
KEPT_DIR_NAME = "previous-release"  # in the state dir: the release a rollback puts back (remote/rollback.py)
ROLLED_BACK_NAME = "rolled-back"  # in the state dir: what the last rollback undid (remote/rollback.py)
HIDDEN_DIR_PREFIX = ".containerd-deploy-new."
UPLOAD_DIR_PREFIX = "/tmp/containerd-deploy-upload."


def ancestors(path: str) -> tuple[str, ...]:
    """`path` and every directory above it, from the root down ("/a/b" -> "/", "/a", "/a/b")."""
    parts = [part for part in path.split("/") if part]
    return ("/", *("/" + "/".join(parts[: depth + 1]) for depth in range(len(parts))))


def hidden_copy(path: str) -> str:
    """The hidden file written beside `path` and renamed over it."""
    directory, _, name = path.rpartition("/")
    return f"{directory}/.{name}{NEW_SUFFIX}"


# The PATH systemd gives containerd (the unit sets none); containerd's own directory goes first.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

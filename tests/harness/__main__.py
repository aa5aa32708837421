"""Local throw-away nodes and their artifact mirror, for `make demo`, the tests and by hand.

    python -m tests.harness up [--kind machine] [--suite bookworm] [--arch arm64] [--registry] [NAME ...]   # boot nodes (default: node1)
    python -m tests.harness guide-nginx NAME    # the install guide's nginx check, typed on the node
    python -m tests.harness status
    python -m tests.harness down [NAME ...]                   # stop nodes (default: all)

`inventories/local.py` deploys to every running node; each node's data (mirror URL, versions
and checksums of the Debian-built artifacts) is written by `up`.
"""

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from containerd_deploy.conformance.oci import PAUSE_IMAGE_NAME

from . import image, mirror, nspawn, registry, vm
from .paths import REPO_ROOT, run_root
from .platforms import NATIVE, PLATFORMS

MIRROR_STATE = "mirror.json"


def _answers(info: dict) -> bool:
    try:
        os.kill(info["pid"], 0)
        urllib.request.urlopen(f"http://127.0.0.1:{info['port']}/", timeout=5).close()
        return True
    except OSError:
        return False


def _mirror_alive() -> dict | None:
    path = run_root() / MIRROR_STATE
    info = json.loads(path.read_text()) if path.exists() else None
    return info if info and _answers(info) else None


def ensure_mirror() -> dict:
    """The mirror server of this checkout (started in the background once, shared by all nodes)."""
    with open(run_root() / ".mirror.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers start one mirror, not several
        return _mirror_alive() or _start_mirror()


def _start_mirror() -> dict:
    port = vm.free_port()
    log = open(run_root() / "mirror.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.harness", "serve-mirror", "--port", str(port)],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    info = {"pid": process.pid, "port": port}
    deadline = time.monotonic() + 20
    while not _answers(info):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"the artifact mirror did not start; see {run_root() / 'mirror.log'}")
        time.sleep(0.1)
    (run_root() / MIRROR_STATE).write_text(json.dumps(info))
    return info


def stop_mirror() -> None:
    info = _mirror_alive()
    if info:
        os.kill(info["pid"], signal.SIGTERM)
    (run_root() / MIRROR_STATE).unlink(missing_ok=True)
    registry.stop()


def stop_mirror_if_idle() -> None:
    with open(run_root() / ".mirror.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not vm.running():
            info = _mirror_alive()
            if info:
                os.kill(info["pid"], signal.SIGTERM)
            (run_root() / MIRROR_STATE).unlink(missing_ok=True)
            registry.stop()


def node_data(release: mirror.Release, mirror_port: int, kind: str) -> dict:
    """pyinfra data that points a local node of `kind` at the mirror (on this machine, as that
    kind of node reaches it) and the Debian-built artifacts."""
    data: dict = {
        "artifact_mirror": f"http://{vm.CONTROLLER_ADDRESS[kind]}:{mirror_port}",
        "containerd_version": release.containerd_version,
        "containerd_sha256": release.containerd_sha256,
        "runc_version": release.runc_version,
        "runc_sha256": release.runc_sha256,
        # No registry here: the CRI conformance checks import this pause image themselves.
        "containerd_sandbox_image": PAUSE_IMAGE_NAME,
    }
    if kind == vm.MACHINE:
        # This machine's sandbox has no CAP_SYS_RESOURCE: a machine's runc cannot lower a pod
        # sandbox's oom_score_adj to the -998 containerd asks for, so every pod would fail.
        data["containerd_restrict_oom_score_adj"] = True
    return data


def registry_data(info: dict, address: str) -> dict:
    """pyinfra data that makes the harness's TLS registry (on this machine, at `address` as the
    node sees it) the mirror of docker.io and registry.k8s.io, with the sandbox image pinned there
    (as on a kubelet node)."""
    return {
        "containerd_registries": registry.node_registries(info, address),
        "containerd_sandbox_image": registry.PAUSE_REFERENCE,
    }


def up(
    names: list[str],
    suite: str,
    release_suite: str | None = None,
    kernel_args: tuple = (),
    with_registry: bool = False,
    arch: str = NATIVE,
    kind: str = vm.VM,
    files: dict[str, str] | None = None,
) -> list[vm.Node]:
    """Boot nodes of a Debian `suite` image, with data for the containerd and runc that
    `release_suite` ships (default: the same suite; sid's binaries need a trixie image), and
    `kernel_args` on the kernel's command line. `with_registry`: the node pulls docker.io and
    registry.k8s.io images through the harness's registry (its CA is put on the node). `arch`:
    amd64 (this machine's) or arm64 (emulated), with that arch's containerd and runc. `kind`: a
    qemu VM, or a systemd-nspawn machine of the same image on this machine's kernel (no kernel
    arguments, this machine's arch). `files` (machines): path -> text written into each before it
    boots."""
    if files and kind != vm.MACHINE:
        raise ValueError("files are written into machines before they boot; a VM boots its image as built")
    if kind == vm.MACHINE and (kernel_args or arch != NATIVE):
        raise ValueError(
            "a machine runs on this machine's kernel: kernel arguments and other arches need --kind vm"
        )
    built = image.build(suite, arch)
    release = mirror.release(release_suite or suite, arch)
    nodes = []
    for name in names:
        started = time.monotonic()
        if kind == vm.MACHINE:
            node = nspawn.start(name, built, files=files)
        else:
            node = vm.start(name, built, kernel_args=tuple(kernel_args))
        # Asked for once the node runs: a mirror is only stopped when no node runs.
        port = ensure_mirror()["port"]
        data = node_data(release, port, kind)
        if with_registry:
            data.update(registry_data(registry.ensure(), node.controller_address))
            registry.install_ca(node)
        vm.replace_file(vm.node_dir(name) / "data.json", json.dumps(data))
        print(
            f"{name}: ssh root@127.0.0.1 -p {node.port} (up in {time.monotonic() - started:.1f}s)", flush=True
        )
        nodes.append(node)
    return nodes


def down(names: list[str]) -> None:
    """Stop the named nodes; with no names, every node (a dead one's mounts too) and the mirror."""
    for name in names or vm.known():
        vm.stop(name)
    if not names:
        stop_mirror()
        nspawn.release_images()


GUIDE_NGINX = [
    # The install guide's last step as an operator types it; ctr reads hosts.toml only when told.
    f"ctr image pull --hosts-dir /etc/containerd/certs.d {registry.NGINX_REFERENCE}",
    f"ctr run -d --net-host {registry.NGINX_REFERENCE} nginx",
    "for i in $(seq 30); do curl -fsS http://127.0.0.1:80/ && break; sleep 1; done | grep '<title>'",
]


def guide_nginx(name: str) -> int:
    """Run the guide's nginx commands on a node, print them with their output, clean up."""
    node = vm.load(name)
    if node is None:
        print(f"{name} is not running (python -m tests.harness up {name})", file=sys.stderr)
        return 1
    try:
        for command in GUIDE_NGINX:
            print(f"{name}# {command}", flush=True)
            result = node.ssh(command, check=False)
            # ctr pull redraws a progress table: its last lines are the summary.
            print("\n".join((result.stdout + result.stderr).strip().splitlines()[-3:]), flush=True)
            if result.returncode:
                return result.returncode
        return 0
    finally:
        node.ssh("ctr task kill nginx; sleep 1; ctr task rm -f nginx; ctr container rm nginx", check=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness")
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="boot local nodes")
    up_parser.add_argument("names", nargs="*", default=["node1"])
    up_parser.add_argument("--suite", default="bookworm", help="Debian suite of the node image")
    up_parser.add_argument(
        "--release",
        default=None,
        help="Debian suite whose containerd and runc the node gets (default: --suite)",
    )
    up_parser.add_argument(
        "--kind",
        default=vm.VM,
        choices=vm.KINDS,
        help="a qemu VM (its own kernel), or a systemd-nspawn machine (this machine's kernel, native speed)",
    )
    up_parser.add_argument(
        "--arch", default=NATIVE, choices=sorted(PLATFORMS), help="the node's machine kind"
    )
    up_parser.add_argument(
        "--kernel-arg",
        action="append",
        default=[],
        dest="kernel_args",
        help="add to the kernel command line, e.g. systemd.unified_cgroup_hierarchy=0",
    )
    up_parser.add_argument(
        "--registry",
        action="store_true",
        dest="with_registry",
        help="pull docker.io and registry.k8s.io images through the harness's TLS registry",
    )
    guide = commands.add_parser("guide-nginx", help="the install guide's nginx pull/run/curl on a node")
    guide.add_argument("name")
    down_parser = commands.add_parser("down", help="stop local nodes (all by default)")
    down_parser.add_argument("names", nargs="*")
    commands.add_parser("status", help="list running nodes")
    serve = commands.add_parser("serve-mirror")
    serve.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    if args.command == "up":
        up(
            args.names,
            args.suite,
            args.release,
            tuple(args.kernel_args),
            args.with_registry,
            args.arch,
            args.kind,
        )
    elif args.command == "guide-nginx":
        return guide_nginx(args.name)
    elif args.command == "down":
        down(args.names)
    elif args.command == "status":
        for node in vm.running():
            print(
                f"{node.name}: 127.0.0.1:{node.port} pid {node.pid} ({node.kind}, {node.suite}, {node.arch})"
            )
    elif args.command == "serve-mirror":
        with mirror.Mirror(args.port) as served:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            served.thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())

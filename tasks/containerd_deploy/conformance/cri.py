"""Talk CRI (v1, generated stubs over gRPC) to a node's containerd, as a kubelet does.

The node's socket is reached through an OpenSSH unix-socket forward made with the same SSH
settings testinfra uses for that host, so nothing is installed on the node. A host checked
through sudo logs in as a user who may not open the root-only socket: for the run, systemd
on the node relays a socket of that user's own (0600) to it (`systemd-socket-proxyd` in a
transient unit, stopped afterwards).
"""

import json
import os
import secrets
import shlex
import subprocess
import tempfile
import time
import uuid

import grpc
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as rpc

from . import oci

SOCKET = "/run/containerd/containerd.sock"


class ForwardError(RuntimeError):
    pass


def _ssh_command(backend, local: str, remote: str) -> list[str]:
    """An `ssh -N -L local:remote` for a testinfra ssh:// backend, with its config and identity."""
    command = ["ssh"]
    if backend.ssh_extra_args:
        command += shlex.split(backend.ssh_extra_args)
    if backend.ssh_config:
        command += ["-F", backend.ssh_config]
    if backend.host.user:
        command += ["-o", f"User={backend.host.user}"]
    if backend.host.port:
        command += ["-o", f"Port={backend.host.port}"]
    if backend.ssh_identity_file:
        command += ["-i", backend.ssh_identity_file]
    return command + [
        "-o",
        "BatchMode=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "StreamLocalBindUnlink=yes",
        # A connection of its own: a shared master would outlive this forward's process.
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-N",
        "-L",
        f"{local}:{remote}",
        backend.host.name,
    ]


class Forward:
    """The node's CRI socket as a local path: an SSH forward, or the socket itself on local://."""

    def __init__(self, host, remote: str = SOCKET, timeout: float = 30):
        self.process: subprocess.Popen | None = None
        self.directory: str | None = None
        self.host = host
        self.relay_unit: str | None = None
        backend = host.backend
        if backend.NAME == "local":
            self.path = remote
            return
        if backend.NAME not in ("ssh", "safe-ssh"):
            raise ForwardError(
                f"the CRI checks reach the node's socket through an OpenSSH forward: use --hosts=ssh://… "
                f"(this host uses the {backend.NAME} backend)"
            )
        if backend.sudo:
            remote = self._relay(host, remote)
        self.directory = tempfile.mkdtemp(prefix="cri-")
        self.path = os.path.join(self.directory, "containerd.sock")
        self.process = subprocess.Popen(
            _ssh_command(backend, self.path, remote),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                error = (
                    self.process.stderr.read().decode(errors="replace").strip() if self.process.stderr else ""
                )
                raise ForwardError(
                    f"could not forward {remote} from {backend.host.name} over SSH: {error or 'timed out'}"
                )
            time.sleep(0.05)

    def _relay(self, host, remote: str) -> str:
        """A socket the login user may open, relayed by systemd to `remote` (for sudo hosts)."""
        user = host.check_output('printf %s "${SUDO_USER:-}"')
        proxyd = host.run(
            "for p in /lib/systemd/systemd-socket-proxyd /usr/lib/systemd/systemd-socket-proxyd; do "
            '[ -x "$p" ] && echo "$p" && break; done'
        ).stdout.strip()
        if not user or not proxyd:
            raise ForwardError(
                f"cannot reach {remote} through sudo: "
                + (
                    "sudo did not say who logged in (SUDO_USER)"
                    if not user
                    else "no systemd-socket-proxyd on the node"
                )
            )
        self.relay_unit = f"containerd-deploy-cri-{secrets.token_hex(6)}"
        relay = f"/run/{self.relay_unit}.sock"
        result = host.run(
            f"systemd-run --quiet --collect --unit={self.relay_unit} "
            f"--socket-property=ListenStream={relay} --socket-property=SocketUser={shlex.quote(user)} "
            f"--socket-property=SocketMode=0600 --socket-property=RemoveOnStop=yes "
            f"{proxyd} --exit-idle-time=600 {shlex.quote(remote)}"
        )
        if result.rc != 0:
            self.relay_unit = None
            raise ForwardError(
                f"could not relay {remote} for {user} with systemd-run: {result.stderr.strip()}"
            )
        return relay

    def close(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.relay_unit:
            self.host.run(f"systemctl stop {self.relay_unit}.socket {self.relay_unit}.service")
            self.relay_unit = None
        if self.directory:
            for name in os.listdir(self.directory):
                os.unlink(os.path.join(self.directory, name))
            os.rmdir(self.directory)
            self.directory = None


class CRI:
    """The RuntimeService and ImageService of one node."""

    def __init__(self, socket_path: str, timeout: float = 60):
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.runtime = rpc.RuntimeServiceStub(self.channel)
        self.images = rpc.ImageServiceStub(self.channel)
        self.timeout = timeout

    def call(self, stub, method: str, request):
        return getattr(stub, method)(request, timeout=self.timeout)

    def version(self):
        return self.call(self.runtime, "Version", api.VersionRequest())

    def status(self) -> tuple[dict, dict]:
        """(conditions by type, verbose info decoded from JSON)."""
        response = self.call(self.runtime, "Status", api.StatusRequest(verbose=True))
        conditions = {condition.type: condition for condition in response.status.conditions}
        info = {}
        for key, value in response.info.items():
            try:
                info[key] = json.loads(value)
            except ValueError:
                info[key] = value
        return conditions, info

    def image_present(self, name: str) -> bool:
        response = self.call(
            self.images, "ImageStatus", api.ImageStatusRequest(image=api.ImageSpec(image=name))
        )
        return response.HasField("image")

    def close(self):
        self.channel.close()


def cri_config(info: dict) -> dict:
    """The CRI plugin's effective config from a verbose Status (1.x and 2.x both report it as `config`)."""
    config = info.get("config")
    if not isinstance(config, dict):
        raise AssertionError(f"the verbose CRI status has no config section (keys: {sorted(info)})")
    return config


def runtime_handlers(config: dict) -> dict:
    """Runtime handler name -> its config, from the CRI config."""
    return (config.get("containerd") or {}).get("runtimes") or {}


def systemd_cgroup(config: dict, handler: str = "runc") -> bool | None:
    """The SystemdCgroup option the running daemon uses for a runtime handler (None: not reported)."""
    runtime = runtime_handlers(config).get(handler)
    if runtime is None:
        return None
    options = runtime.get("options") or {}
    return options.get("SystemdCgroup")


def sandbox_image(config: dict) -> str | None:
    """The pause image the daemon uses: `sandboxImage` in 1.x, pinned images in 2.x."""
    if config.get("sandboxImage"):
        return config["sandboxImage"]
    pinned = config.get("pinnedImages") or {}
    return pinned.get("sandbox")


class Pod:
    """A pod sandbox with one long-running container, made and removed through the CRI."""

    def __init__(
        self,
        cri: "CRI",
        handler: str = "",
        image: str = oci.IMAGE_NAME,
        command: tuple[str, ...] | None = ("/bin/sleep", "3600"),
    ):
        """`command` None: the image's own entrypoint and command."""
        self.cri, self.handler, self.image, self.command = cri, handler, image, command
        self.uid = uuid.uuid4().hex  # kubelet writes pod UIDs into slice names without dashes
        self.slice = f"kubepods-besteffort-pod{self.uid}.slice"
        self.sandbox_config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(
                name=f"conformance-{self.uid[:8]}",
                uid=self.uid,
                namespace="containerd-deploy-conformance",
                attempt=0,
            ),
            linux=api.LinuxPodSandboxConfig(
                cgroup_parent=self.slice,
                # Host network: no CNI needed, the node may have none yet.
                security_context=api.LinuxSandboxSecurityContext(
                    namespace_options=api.NamespaceOption(network=api.NODE)
                ),
            ),
        )
        self.sandbox_id: str | None = None
        self.container_id: str | None = None

    def start(self) -> "Pod":
        self.sandbox_id = sandbox_id = self.cri.call(
            self.cri.runtime,
            "RunPodSandbox",
            api.RunPodSandboxRequest(config=self.sandbox_config, runtime_handler=self.handler),
        ).pod_sandbox_id
        container = api.ContainerConfig(
            metadata=api.ContainerMetadata(name="probe", attempt=0),
            image=api.ImageSpec(image=self.image),
            command=list(self.command or ()),
            linux=api.LinuxContainerConfig(),
        )
        self.container_id = container_id = self.cri.call(
            self.cri.runtime,
            "CreateContainer",
            api.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=container, sandbox_config=self.sandbox_config
            ),
        ).container_id
        self.cri.call(
            self.cri.runtime, "StartContainer", api.StartContainerRequest(container_id=container_id)
        )
        return self

    @property
    def started_container(self) -> str:
        assert self.container_id, "the pod's container was not started"
        return self.container_id

    def exec(self, *command: str):
        return self.cri.call(
            self.cri.runtime,
            "ExecSync",
            api.ExecSyncRequest(container_id=self.started_container, cmd=list(command), timeout=30),
        )

    def pid(self) -> int:
        status = self.cri.call(
            self.cri.runtime,
            "ContainerStatus",
            api.ContainerStatusRequest(container_id=self.started_container, verbose=True),
        )
        assert status.status.state == api.CONTAINER_RUNNING, (
            f"the container is {status.status.state}, not running"
        )
        return int(json.loads(status.info["info"])["pid"])

    def remove(self) -> None:
        """Stop and remove the container and the sandbox. Each step is tried even when one before
        it failed (a container whose shim died cannot be stopped, its sandbox still must go);
        the first failure is raised at the end. A StopContainer that fails for a container the
        runtime then reports exited is not a failure: the container did stop."""
        runtime, steps = self.cri.runtime, []
        if self.container_id:
            steps += [
                ("StopContainer", api.StopContainerRequest(container_id=self.container_id, timeout=5)),
                ("RemoveContainer", api.RemoveContainerRequest(container_id=self.container_id)),
            ]
        if self.sandbox_id:
            steps += [
                ("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=self.sandbox_id)),
                ("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=self.sandbox_id)),
            ]
        failures = []
        for method, request in steps:
            try:
                self.cri.call(runtime, method, request)
            except grpc.RpcError as error:
                if method == "StopContainer" and self._exited():
                    continue  # stopped after all (its shim went with it), as a kubelet's retry finds
                failures.append(error)
        if failures:
            raise failures[0]

    def _exited(self) -> bool:
        """Whether the container is there and has exited (asked after a failed StopContainer)."""
        try:
            status = self.cri.call(
                self.cri.runtime,
                "ContainerStatus",
                api.ContainerStatusRequest(container_id=self.started_container),
            )
        except grpc.RpcError:
            return False
        return status.status.state == api.CONTAINER_EXITED

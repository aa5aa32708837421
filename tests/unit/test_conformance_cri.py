"""The conformance suite's CRI pod, against a stand-in runtime service (no node)."""

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from containerd_deploy.conformance.cri import Pod


class ShimGone(grpc.RpcError):
    pass


class FakeCRI:
    """Answers RunPodSandbox and CreateContainer with ids, ContainerStatus with `state`; fails
    the methods named in `failing`."""

    runtime = "runtime-service"

    def __init__(self, failing=(), state=api.CONTAINER_RUNNING):
        self.failing, self.calls, self.state = set(failing), [], state

    def call(self, stub, method, request):
        assert stub == self.runtime
        self.calls.append(method)
        if method in self.failing:
            raise ShimGone(f"{method}: ttrpc: closed")
        if method == "ContainerStatus":
            return api.ContainerStatusResponse(status=api.ContainerStatus(state=self.state))
        return type("Response", (), {"pod_sandbox_id": "sandbox-1", "container_id": "container-1"})()


# A failed StopContainer is followed by a look at the container, then every other step.
EVERY_STEP_AFTER_A_FAILED_STOP = [
    "StopContainer",
    "ContainerStatus",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
]


def test_a_pod_is_removed_container_first_then_its_sandbox():
    cri = FakeCRI()
    pod = Pod(cri).start()  # type: ignore[arg-type]
    assert cri.calls == ["RunPodSandbox", "CreateContainer", "StartContainer"]
    pod.remove()
    assert cri.calls[3:] == ["StopContainer", "RemoveContainer", "StopPodSandbox", "RemovePodSandbox"]


def test_a_container_that_cannot_be_stopped_still_has_its_sandbox_removed_and_the_error_raised():
    """Regression: StopContainer failing (the container's shim gone) left the sandbox behind."""
    cri = FakeCRI(failing={"StopContainer"})
    pod = Pod(cri).start()  # type: ignore[arg-type]
    with pytest.raises(ShimGone, match="StopContainer: ttrpc: closed"):
        pod.remove()
    assert cri.calls[3:] == EVERY_STEP_AFTER_A_FAILED_STOP


def test_a_failed_stop_of_a_container_that_did_exit_is_no_failure():
    cri = FakeCRI(failing={"StopContainer"}, state=api.CONTAINER_EXITED)
    pod = Pod(cri).start()  # type: ignore[arg-type]
    pod.remove()
    assert cri.calls[3:] == EVERY_STEP_AFTER_A_FAILED_STOP


def test_a_pod_whose_sandbox_never_started_removes_nothing():
    cri = FakeCRI(failing={"RunPodSandbox"})
    pod = Pod(cri)  # type: ignore[arg-type]
    with pytest.raises(ShimGone):
        pod.start()
    pod.remove()
    assert cri.calls == ["RunPodSandbox"]

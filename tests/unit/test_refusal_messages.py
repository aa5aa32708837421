"""Every refusal the deploy makes about a node, word for word: the message is the product (it
names the host, what is wrong and the fix). The expected texts are in golden/refusals.txt, where
a reviewer reads them all at once; after changing a message on purpose, rewrite the file with
`UPDATE_GOLDEN=1 pytest tests/unit/test_refusal_messages.py` and review its diff."""

import dataclasses
import os
from pathlib import Path

import pytest
from pyinfra.api.exceptions import DeployError

from containerd_deploy.data.values import DataError
from containerd_deploy.deploy.node import (
    check_distro_package,
    check_kubelet,
    check_locked,
    check_not_busy,
    check_supported,
    check_trusted,
)
from containerd_deploy.facts.node import DistroPackage

from .flow import converged, settings_for

GOLDEN = Path(__file__).parent / "golden" / "refusals.txt"

DPKG = DistroPackage("dpkg", "containerd", "1.6.20~ds1-1+b1", "/usr/bin/containerd")
RPM = DistroPackage("rpm", "containerd.io", "1.7.22-3.1.el9", "/usr/bin/containerd")

# name -> (check, data, changes to a converged node): each must refuse.
REFUSED = {
    "lock unavailable, no reason given": (check_locked, {}, {"lock": "unavailable"}),
    "lock unavailable, flock missing": (check_locked, {}, {"lock": "unavailable flock: not found"}),
    "lock not answered": (check_locked, {}, {"lock": ""}),
    "lock held by another run": (
        check_not_busy,
        {},
        {"lock": "busy 4 controller ci-1 pid 4242 since 2026-11-27T10:00:00Z"},
    ),
    "lock held, owner unknown": (check_not_busy, {}, {"lock": "busy 0"}),
    "node state unreadable": (check_supported, {}, {"machine": ""}),
    "not Linux": (check_supported, {}, {"kernel": "FreeBSD", "machine": "amd64"}),
    "unknown architecture": (check_supported, {}, {"machine": "riscv64"}),
    "no systemd": (check_supported, {}, {"systemd": False}),
    "kubelet cgroupfs, containerd systemd": (
        check_kubelet,
        {},
        {"kubelet_config": "kind: KubeletConfiguration\ncgroupDriver: cgroupfs\n"},
    ),
    "kubelet systemd, containerd cgroupfs": (
        check_kubelet,
        {"containerd_systemd_cgroup": False},
        {"kubelet_config": "kind: KubeletConfiguration\ncgroupDriver: systemd\n"},
    ),
    "distro package, running": (check_distro_package, {}, {"distro_packages": [DPKG]}),
    "distro packages, stopped": (
        check_distro_package,
        {},
        {"distro_packages": [DPKG, RPM], "service": {"ActiveState": "inactive"}},
    ),
    "state directory another user made": (
        check_trusted,
        {},
        {"untrusted_directories": [("/var/lib/containerd-deploy", "is owned by uid 1000, not root")]},
    ),
    "staging directory under one anyone can write, a link on the way": (
        check_trusted,
        {"containerd_staging_dir": "/var/tmp/staging", "containerd_bin_dir": "/opt/bin/containerd"},
        {
            "untrusted_directories": [
                ("/var/tmp", "is writable by group or others"),
                ("/opt/bin", "is a symbolic link"),
            ]
        },
    ),
    "the lock's directory is a file": (
        check_trusted,
        {},
        {"untrusted_directories": [("/run/containerd-deploy", "is not a directory")]},
    ),
}

# name -> (check, data, changes): each must pass.
ACCEPTED = {
    "lock free": (check_locked, {}, {"lock": "free 3"}),
    "lock held by this run": (check_locked, {}, {"lock": "held"}),
    "lock busy is not for check_locked": (check_locked, {}, {"lock": "busy 3 controller c1 pid 7"}),
    "lock free is not busy": (check_not_busy, {}, {"lock": "free 3"}),
    "lock held by this run is not busy": (check_not_busy, {}, {"lock": "held"}),
    "unavailable is not busy": (check_not_busy, {}, {"lock": "unavailable"}),
    "arm64 host": (check_supported, {}, {"machine": "aarch64"}),
    "no kernel name read": (check_supported, {}, {"kernel": ""}),
    "no kubelet": (check_kubelet, {}, {"kubelet_config": None}),
    "kubelet systemd": (check_kubelet, {}, {"kubelet_config": "cgroupDriver: systemd\n"}),
    "kubelet cgroupfs, containerd cgroupfs": (
        check_kubelet,
        {"containerd_systemd_cgroup": False},
        {"kubelet_config": "cgroupDriver: cgroupfs\n"},
    ),
    "distro package to be removed": (
        check_distro_package,
        {"containerd_distro_package": "remove"},
        {"distro_packages": [DPKG]},
    ),
    "no distro package": (check_distro_package, {}, {"distro_packages": []}),
    "every directory root's alone": (check_trusted, {}, {"untrusted_directories": []}),
}


def node_for(data: dict, changes: dict):
    from containerd_deploy.remote.lock import parse_lock_state

    if "lock" in changes:  # as the node printed it
        changes = {**changes, "lock": parse_lock_state(changes["lock"])}
    settings = settings_for(data)
    node = dataclasses.replace(converged(settings), **changes)
    if "service" in changes:
        node = dataclasses.replace(node, service={**converged(settings).service, **changes["service"]})
    return settings, node


def refusal(check, data: dict, changes: dict) -> str:
    settings, node = node_for(data, changes)
    with pytest.raises((DeployError, DataError)) as raised:
        check(settings, node)
    return str(raised.value)


def test_every_refusal_says_what_the_golden_file_says():
    text = "".join(f"## {name}\n{refusal(*case)}\n\n" for name, case in REFUSED.items())
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), (
        "a refusal changed: review it, then UPDATE_GOLDEN=1 (see the docstring)"
    )


@pytest.mark.parametrize("name", REFUSED)
def test_a_refusal_names_the_host(name):
    assert refusal(*REFUSED[name]).startswith("node1: ")


@pytest.mark.parametrize("name", ACCEPTED)
def test_what_a_check_accepts(name):
    check, data, changes = ACCEPTED[name]
    settings, node = node_for(data, changes)
    check(settings, node)

"""The conformance pull check's explanations, from the messages containerd really returns (taken
from the e2e runs on 1.6, 1.7 and 2.1): each failure kind gets its own reason and fix, names the
route it expected, and never shows a header value."""

import pytest

from containerd_deploy.conformance.pull import Route, explain_failure, page_title, registry_of, route

TLS = "https://10.0.2.2:60893"
HOSTS_TOML = f"""# Managed by containerd-deploy
server = "{TLS}"

[host."{TLS}"]
capabilities = ["pull", "resolve"]
ca = "/etc/ssl/ca.pem"

[host."{TLS}".header]
Authorization = "Basic c2VjcmV0LXZhbHVl"
"""
PREFIX = 'failed to pull and unpack image "{ref}": failed to resolve reference "{ref}": '
ERRORS = {
    "401 Unauthorized:": "pull access denied, repository does not exist or may require authorization: "
    "authorization failed: no basic auth credentials",
    "TLS verification failed:": 'failed to do request: Head "https://10.0.2.2:60893/v2/library/nginx/manifests/alpine'
    '?ns=x": tls: failed to verify certificate: x509: certificate signed by unknown authority',
    "mirror down:": 'failed to do request: Head "https://10.0.2.2:38971/v2/library/nginx/manifests/alpine?ns=x": '
    "dial tcp 10.0.2.2:38971: connect: connection refused",
    "not found:": "docker.io/library/nginx:nope: not found",
}


@pytest.mark.parametrize(
    ("reference", "registry"),
    [
        ("nginx", "docker.io"),
        ("library/nginx:1.27", "docker.io"),
        ("docker.io/library/nginx:alpine", "docker.io"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io"),
        ("10.0.2.2:5000/x/y:z", "10.0.2.2:5000"),
        ("localhost/containerd-deploy/pause:conformance", "localhost"),
        ("someuser/app:v1", "docker.io"),
    ],
)
def test_the_registry_of_a_reference_is_the_one_containerd_routes_by(reference, registry):
    assert registry_of(reference) == registry


def test_the_route_is_the_registrys_own_hosts_toml_then_default_then_the_registry_itself():
    own = route(
        "docker.io", "/etc/containerd/certs.d", {"docker.io": HOSTS_TOML, "_default": "server = 'https://d'"}
    )
    assert own == Route("docker.io", "/etc/containerd/certs.d/docker.io/hosts.toml", [TLS], TLS)
    fallback = route("quay.io", "/c", {"_default": f'[host."{TLS}"]\n'})
    assert (
        fallback.hosts_file == "/c/_default/hosts.toml"
        and fallback.mirrors == [TLS]
        and fallback.server == ""
    )
    nothing = route("quay.io", "/c", {})
    assert nothing.hosts_file is None and nothing.server == "https://quay.io"
    assert route("docker.io", "/c", {}).server == "https://registry-1.docker.io"
    assert "unreadable" in route("docker.io", "/c", {"docker.io": "[[["}).server


@pytest.mark.parametrize("reason", sorted(ERRORS))
def test_each_failure_kind_has_its_own_reason_and_fix(reason):
    reference = "mirror.example/library/nginx:alpine"
    message = explain_failure(
        reference,
        route("mirror.example", "/c", {"mirror.example": HOSTS_TOML}),
        PREFIX.format(ref=reference) + ERRORS[reason],
    )
    assert message.startswith(reason)
    assert (
        f"expected {reference} to pull through /c/mirror.example/hosts.toml: {TLS} -> {TLS} (server)"
        in message
    )
    assert "Fix: " in message
    others = [other for other in ERRORS if other != reason]
    assert not any(message.startswith(other) for other in others)
    assert "c2VjcmV0LXZhbHVl" not in message


def test_a_registry_without_hosts_toml_is_no_route_whatever_the_network_said():
    reference = "10.0.2.2:39829/library/nginx:alpine"
    message = explain_failure(
        reference,
        route("10.0.2.2:39829", "/c", {}),
        PREFIX.format(ref=reference) + "dial tcp 10.0.2.2:39829: connect: connection refused",
    )
    assert message.startswith("no route: 10.0.2.2:39829 has no hosts.toml")
    assert "went to https://10.0.2.2:39829 itself" in message
    assert "Fix: add '10.0.2.2:39829' with a mirror" in message


def test_an_unknown_error_is_shown_with_the_route_not_hidden():
    message = explain_failure(
        "a.example/b:c", route("a.example", "/c", {"a.example": HOSTS_TOML}), "something odd"
    )
    assert message.startswith("the pull failed:") and "something odd" in message and TLS in message


def test_page_title():
    assert page_title("<html><head><title>Welcome to nginx!</title>") == "Welcome to nginx!"
    assert page_title("plain") is None


def test_the_test_image_goes_through_a_directory_only_root_can_enter_and_leaves_nothing(tmp_path):
    """Regression (#26): the suite uploaded the image as `<mktemp name>.b64` in /tmp as root: a
    name another local user could see coming and plant a link at (root then wrote through it)."""
    import shutil
    import subprocess
    import tarfile
    import types
    from pathlib import Path

    from containerd_deploy.conformance import images

    if not (shutil.which("busybox") or images.oci.BUSYBOX.exists()):
        pytest.skip("needs a static busybox (busybox-static)")
    imported = tmp_path / "imported"
    ctr = tmp_path / "ctr"
    # A stand-in ctr: no image yet; an import copies what it was given and says where it was.
    ctr.write_text(
        f'#!/bin/sh\ncase "$*" in *" image ls "*) exit 0;; esac\ncp "$5" {imported}\necho "$5" > {imported}.from\n'
    )
    ctr.chmod(0o755)
    commands: list[str] = []

    class LocalHost:
        def run(self, command):
            commands.append(command)
            done = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
            return types.SimpleNamespace(rc=done.returncode, stdout=done.stdout)

        def check_output(self, command):
            result = self.run(command)
            assert result.rc == 0, command
            return result.stdout.strip()

    layout = types.SimpleNamespace(ctr=str(ctr), busybox={})
    images.import_image(LocalHost(), layout, "k8s.io", images.oci.IMAGE_NAME)
    directory = Path(imported.with_suffix(".from").read_text().strip()).parent
    assert directory.parent == Path("/tmp") and directory.name.startswith("containerd-deploy-image.")
    assert tarfile.is_tarfile(imported), "the image reached ctr whole"
    assert not directory.exists(), "its directory is gone"
    assert any(command.startswith("mktemp -d ") for command in commands)

"""Through sudo, as cloud images log in: a non-root user with key auth and NOPASSWD sudo (and
one whose sudo asks a password) deploys the whole feature set, which conformance then checks
from an inventory with `_sudo`; nothing secret is readable by another local user at any
moment, nothing is left behind, and another user's staging directory cannot swap a file."""

import shlex
import subprocess

import pytest

from tests.harness import __main__ as harness
from tests.harness import vm
from tests.harness.image import ssh_key
from tests.harness.paths import REPO_ROOT

from .helpers import CONFORMANCE, OwnNode, changed_ops, mirror_from_controller, module_kind, pyinfra

pytestmark = [
    pytest.mark.xdist_group("sudo"),
    pytest.mark.machine("sudo logins, file modes and another user watching are the node's userland"),
]
NAME = "sudo-1"
SECRET = "s3cr3t-Hunter2"
PROXY_PASSWORD = "p%40ss" + SECRET  # percent-encoded: systemd must not read %40 as a specifier
SUDO_PASSWORD = "sudo-pw-" + SECRET
DATA = {
    # A proxy on the node's own loopback: configured and checked, never contacted.
    "containerd_http_proxy": f"http://proxy-user:{PROXY_PASSWORD}@127.0.0.1:3128",
    "containerd_no_proxy": "localhost,127.0.0.1,.svc",
    "containerd_registries": {
        "docker.io": {
            "mirrors": [{"host": "https://mirror.internal", "headers": {"Authorization": f"Basic {SECRET}"}}]
        }
    },
    "containerd_runtimes": [{"name": "crun", "binary_name": "/usr/bin/crun"}],
    "containerd_limit_nofile": "1048576",
}
HOSTS_TOML = "/etc/containerd/certs.d/docker.io/hosts.toml"
DROPIN = "/etc/systemd/system/containerd.service.d/http-proxy.conf"
LEFTOVERS = (
    "find / -xdev \\( -name '*.containerd-deploy-new*' -o -name 'containerd-deploy-upload.*' \\) "
    "2>/dev/null; ls -A /var/cache/containerd-deploy 2>/dev/null; true"
)


def setup_users(node: OwnNode) -> None:
    """deployer: key auth, NOPASSWD sudo; deployer-pw: key auth, sudo with a password; other: a
    plain local user, the one that must never read a secret."""
    key = ssh_key().with_suffix(".pub").read_text().strip()
    script = f"""set -e
for user in deployer deployer-pw other; do
  id "$user" >/dev/null 2>&1 || useradd -m -s /bin/sh "$user"
done
for user in deployer deployer-pw; do
  install -d -m 700 -o "$user" -g "$user" "/home/$user/.ssh"
  echo {shlex.quote(key)} > "/home/$user/.ssh/authorized_keys"
  chown "$user:$user" "/home/$user/.ssh/authorized_keys"; chmod 600 "/home/$user/.ssh/authorized_keys"
done
echo 'deployer ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/deployer
echo 'deployer-pw ALL=(ALL) ALL' > /etc/sudoers.d/deployer-pw
chmod 440 /etc/sudoers.d/deployer /etc/sudoers.d/deployer-pw
echo {shlex.quote("deployer-pw:" + SUDO_PASSWORD)} | chpasswd
"""
    node.vm.ssh(script)


@pytest.fixture(scope="module")
def node(request):
    (started,) = harness.up([NAME], "trixie", kind=module_kind(request))
    node = OwnNode(NAME, started)
    setup_users(node)
    yield node
    harness.down([NAME])


def as_user(node: OwnNode, user: str, *extra: str, data: dict | None = None, password: str | None = None):
    """The deploy as an operator with a sudo login runs it (pyinfra's own flags)."""
    args = ["--data", f"ssh_user={user}", "--sudo"]
    if password:
        args += ["--data", f"_sudo_password={password}"]
    return pyinfra(node.name, *args, *extra, data=data)


def secrets_in(text: str) -> list[str]:
    return [secret for secret in (SECRET, PROXY_PASSWORD, SUDO_PASSWORD) if secret in text]


def test_a_sudo_login_deploys_every_feature_with_secrets_never_readable(node, tmp_path):
    """Regression: through sudo, artifact_source=controller failed with PermissionError(13) on
    the upload, and a registry with headers failed the same way, leaving a hidden hosts.toml
    copy behind that later runs never removed."""
    # Another local user reads every place a secret passes through, for as long as the deploy runs.
    watcher = subprocess.Popen(
        node.vm.ssh_command(
            "su other -s /bin/sh -c 'n=0; while [ ! -e /tmp/stop-watch ]; do "
            "cat /etc/containerd/certs.d/*/.hosts.toml* /etc/containerd/certs.d/*/hosts.toml "
            "/etc/systemd/system/containerd.service.d/* /tmp/containerd-deploy-upload.*/* /tmp/pyinfra-* 2>/dev/null "
            f"| grep -q {SECRET} && echo LEAKED; n=$((n+1)); done; echo WATCHED $n'"
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        process, results = as_user(
            node,
            "deployer",
            "-v",
            data={
                **DATA,
                "artifact_source": "controller",
                "containerd_images_sandbox": False,  # the harness's sandbox image is on no registry
                "artifact_cache_dir": str(tmp_path / "cache"),
                "artifact_mirror": mirror_from_controller(node.data()["artifact_mirror"], node.vm),
            },
        )
    finally:
        node.vm.ssh("touch /tmp/stop-watch")
        watched, _ = watcher.communicate(timeout=120)
        node.vm.ssh("rm -f /tmp/stop-watch")
    assert process.returncode == 0, process.stderr[-4000:]
    assert "LEAKED" not in watched and int(watched.split("WATCHED")[1]) > 10, watched[-500:]
    assert secrets_in(process.stdout + process.stderr) == [], "a secret in pyinfra's output (-v)"
    changed = changed_ops(results, node.name)
    assert any("Install containerd" in name for name in changed) and any(
        HOSTS_TOML in name for name in changed
    )

    modes = node.vm.ssh(f"stat -c '%n %U:%G %a' {HOSTS_TOML} {DROPIN}").stdout.splitlines()
    assert modes == [f"{HOSTS_TOML} root:root 600", f"{DROPIN} root:root 600"]
    assert "%%40" in node.vm.ssh(f"cat {DROPIN}").stdout
    environment = node.vm.ssh("systemctl show containerd -p Environment").stdout
    assert f"HTTP_PROXY=http://proxy-user:{PROXY_PASSWORD}@127.0.0.1:3128" in environment, environment
    assert "LimitNOFILE=1048576" in node.vm.ssh("systemctl show containerd -p LimitNOFILE").stdout
    assert node.vm.ssh(LEFTOVERS).stdout.strip() == "", "nothing left behind"

    # The same data again, with the node's own fetch: 0 changes, no restart.
    pid = node.vm.ssh("systemctl show -p MainPID --value containerd").stdout.strip()
    process, results = as_user(node, "deployer", data=DATA)
    assert process.returncode == 0 and changed_ops(results, node.name) == [], process.stderr[-3000:]
    assert node.vm.ssh("systemctl show -p MainPID --value containerd").stdout.strip() == pid


def test_a_sudo_that_asks_a_password_deploys_too(node):
    process, results = as_user(node, "deployer-pw", data=DATA, password=SUDO_PASSWORD)
    assert process.returncode == 0 and changed_ops(results, node.name) == [], process.stderr[-3000:]
    assert secrets_in(process.stdout + process.stderr) == []


def conformance_through_sudo(node: OwnNode, tmp_path) -> subprocess.CompletedProcess:
    """The conformance suite from an inventory whose host logs in as deployer and uses sudo."""
    data = {
        "ssh_hostname": "127.0.0.1",
        "ssh_port": node.vm.port,
        "ssh_user": "deployer",
        "ssh_key": str(ssh_key()),
        "ssh_known_hosts_file": str(vm.known_hosts_file()),
        "ssh_strict_host_key_checking": "yes",
        "_sudo": True,
    }
    inventory = tmp_path / "fleet.py"
    inventory.write_text(f"sudo_nodes = [({NAME!r}, {data!r})]\n")
    return subprocess.run(
        [*CONFORMANCE, f"--inventory={inventory}", "--expect-runtime-handlers=runc,crun"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_conformance_from_an_inventory_whose_host_uses_sudo(node, tmp_path):
    result = conformance_through_sudo(node, tmp_path)
    assert result.returncode == 0, result.stdout[-5000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


def test_another_users_staging_or_state_directory_is_refused_before_any_change(node):
    """Regression (#26): a staging directory that existed was taken over (chown, chmod 700),
    and a state directory another user made was used as it was: they could swap a verified
    file before its install, or plant manifests (files root then deletes) and a kept release.
    Now either is refused, naming it, with nothing changed and nothing of theirs touched."""
    reset = as_user(node, "deployer", data={"containerd_state": "absent"})[0]
    assert reset.returncode == 0, reset.stderr[-3000:]
    assert (
        node.vm.ssh(
            "ls -A /usr/local/bin; ls -A /etc/containerd 2>/dev/null; ls -A /var/lib/containerd-deploy "
            "2>/dev/null; ls /etc/systemd/system/containerd.service.d 2>/dev/null; true"
        ).stdout.strip()
        == ""
    )
    hostname = node.vm.ssh("cat /etc/hostname").stdout
    planted = (
        "echo planted > /var/cache/containerd-deploy/.fetched-runc; "
        "ln -s /etc/hostname /var/cache/containerd-deploy/.fetched-containerd.partial; "
        "printf 'component runc\\nfile /etc/hostname sha256:0\\n' > /var/lib/containerd-deploy/runc.manifest"
    )
    listing = "stat -c '%u %a %n' /var/cache/containerd-deploy /var/lib/containerd-deploy; ls -lA /var/cache/containerd-deploy /var/lib/containerd-deploy"
    try:
        node.vm.ssh(
            "install -d -m 777 -o other -g other /var/cache/containerd-deploy /var/lib/containerd-deploy; "
            f"su other -s /bin/sh -c {shlex.quote(planted)}"
        )
        before = node.vm.ssh(listing).stdout
        process, _ = as_user(node, "deployer", data=DATA)
        assert process.returncode != 0
        said = process.stdout + process.stderr
        for directory, key in [
            ("/var/cache/containerd-deploy", "containerd_staging_dir"),
            ("/var/lib/containerd-deploy", "containerd_deploy_state_dir"),
        ]:
            assert f"{directory} is owned by uid" in said and f"data key {key!r}" in said, said[-3000:]
        assert "nothing was changed" in said
        assert node.vm.ssh(listing).stdout == before, "root acted in another user's directory"
        assert node.vm.ssh("cat /etc/hostname").stdout == hostname
        assert (
            node.vm.ssh("ls -A /usr/local/bin; ls -A /etc/containerd 2>/dev/null; true").stdout.strip() == ""
        )
    finally:
        node.vm.ssh("rm -rf /var/cache/containerd-deploy /var/lib/containerd-deploy")
    process, _ = as_user(node, "deployer", data=DATA)
    assert process.returncode == 0, process.stderr[-4000:]
    assert (
        f"sha256 {node.data()['runc_sha256']}"
        in node.vm.ssh("cat /var/lib/containerd-deploy/runc.manifest").stdout
    )


def test_another_local_user_can_neither_hold_the_run_lock_nor_steer_root_through_tmp(node):
    """Regression (#26): the run lock was a 0644 file in /run (flock needs only a read handle),
    so any local user could hold it and stop every run as "busy"; and the node fact listed
    /tmp/containerd-deploy-upload.* one name a line, root removing each: a name holding a
    newline made root delete, here, the login user's ~/.ssh."""
    from containerd_deploy.remote.paths import LOCK_PATH

    planted = "/tmp/containerd-deploy-upload.x\n.ssh"
    node.vm.ssh(f"su other -s /bin/sh -c {shlex.quote(f'mkdir {shlex.quote(planted)}')}")
    holder = node.vm.ssh(
        f"su other -s /bin/sh -c {shlex.quote(f'flock -n {LOCK_PATH} true')}; echo exit=$?",
        check=False,
    )
    assert "exit=0" not in holder.stdout, holder  # it could not even open the lock
    node.vm.ssh(
        f"su other -s /bin/sh -c {shlex.quote(f'flock {LOCK_PATH} sleep 120')} </dev/null >/dev/null 2>&1 &",
        check=False,
    )
    try:
        rotated = {
            **DATA,
            "containerd_max_container_log_line_size": 32768,  # a change: the run takes the lock
            "containerd_registries": {  # a new secret: written through the login user's upload
                "docker.io": {
                    "mirrors": [
                        {"host": "https://mirror.internal", "headers": {"Authorization": f"Basic {SECRET}-2"}}
                    ]
                }
            },
        }
        process, results = as_user(node, "deployer", data=rotated)
        assert process.returncode == 0, process.stderr[-3000:]
        assert HOSTS_TOML in " ".join(changed_ops(results, node.name))
    finally:
        node.vm.ssh("pkill -u other flock; true", check=False)
    assert node.vm.ssh("test -d /home/deployer/.ssh && echo kept").stdout.strip() == "kept"
    # Another user's names are theirs: root never acted on it, nor did the login user.
    assert node.vm.ssh(f"test -d {shlex.quote(planted)} && echo there").stdout.strip() == "there"
    node.vm.ssh(f"rm -rf {shlex.quote(planted)}")
    assert node.vm.ssh(LEFTOVERS).stdout.strip() == "", "nothing left behind"
    process, _ = as_user(node, "deployer", data=DATA)
    assert process.returncode == 0, process.stderr[-3000:]


# What the adversary (`other`, an unprivileged local user) does for a whole cycle: it plants
# names with newlines and links where it can write, makes the non-default staging and state
# directories an operator might choose before root does, holds flocks on whatever it can open,
# and gives processes of its own the SSH_CONNECTION of each connection to sshd it sees (the
# address and port are anyone's to read), as if they were a run's.
ADVERSARY_SETUP = r"""set -e
cd /tmp
mkdir -p 'containerd-deploy-upload.x
.ssh' 'containerd-deploy-image.x
/etc'
ln -sfn /etc containerd-deploy-upload.evil
ln -sfn /etc/shadow containerd-deploy-image.planted.b64
mkdir -p -m 777 /var/tmp/cd-staging /tmp/cd-state /run/lock/containerd-deploy
chmod 777 /var/tmp/cd-staging /tmp/cd-state
echo planted > /var/tmp/cd-staging/.fetched-runc
ln -sfn /etc/hostname /var/tmp/cd-staging/.fetched-containerd.partial
printf 'component runc\nfile /etc/hostname 1:2:3\n' > /tmp/cd-state/runc.manifest
: > "$HOME/pids"
rm -f "$HOME/stop"
"""
# Started detached (setsid): the impersonators, refreshed as connections come.
ADVERSARY_WATCH = r"""port=$1
: > "$HOME/seen"
while [ ! -e "$HOME/stop" ]; do
  ss -Htn state established "( sport = :$port )" | while read -r _ _ local peer; do
    grep -qxF -- "$peer" "$HOME/seen" && continue
    echo "$peer" >> "$HOME/seen"
    SSH_CONNECTION="${peer%:*} ${peer##*:} ${local%:*} ${local##*:}" setsid sleep 100000 </dev/null >/dev/null 2>&1 &
    echo $! >> "$HOME/pids"
  done
  sleep 0.2
done
"""
# Run after each step: a shared flock on every file of the deploy's it can open (the lock's it
# cannot: its directory is root's alone).
ADVERSARY_FLOCKS = r"""for f in /run/containerd-deploy/lock /etc/containerd/config.toml /usr/local/bin/* /usr/local/sbin/runc \
    /etc/systemd/system/containerd.service /etc/crictl.yaml /var/lib/containerd-deploy/*; do
  [ -r "$f" ] && [ -f "$f" ] || continue
  setsid flock -s -n "$f" sleep 100000 </dev/null >/dev/null 2>&1 &
  echo $! >> "$HOME/pids"
done
true
"""
# Everything on the node's filesystem but what the kernel, systemd and the deploy itself keep
# (its own set is judged by the other tests): a file by mode, owner, size and mtime, a
# directory by mode and owner, a link by its target.
LISTING = r"""find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /var/log \
    -o -path /var/lib/systemd -o -path /var/lib/sudo -o -path /var/cache/ldconfig \) -prune \
  -o -type d -printf 'd\t%p\t%m\t%u\n' -o -type l -printf 'l\t%p\t%l\t%u\n' -o -printf 'f\t%p\t%m\t%u\t%s\t%T@\n'
find /run/lock /dev/shm -printf '%y\t%p\t%m\t%u\t%l\n'
"""
# The deploy's own set (files it installs, writes, keeps or removes, and containerd's data).
OWN = (
    "/usr/local/bin/",
    "/usr/local/sbin/runc",
    "/usr/local/sbin/.",
    "/opt/cni",
    "/opt/containerd",
    "/etc/containerd",
    "/etc/crictl.yaml",
    "/etc/systemd/system/containerd.service",
    "/etc/systemd/system/multi-user.target.wants/containerd.service",
    "/var/lib/containerd-deploy",
    "/var/cache/containerd-deploy",
    "/var/lib/containerd",
    "/etc/cni",  # containerd's CRI plugin makes its CNI config directory
    "/home/other/",  # the adversary's own notes
)


def _listing(node: OwnNode) -> dict[str, str]:
    entries = {}
    for line in node.vm.ssh(LISTING).stdout.splitlines():
        kind, path, *rest = line.split("\t")
        if any(path == own.rstrip("/") or path.startswith(own) for own in OWN):
            continue
        # A directory's mtime moves with any name made in it (the deploy's too): its mode and owner only.
        entries[path] = "\t".join([kind, *rest])
    return entries


def _changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    paths = sorted(set(before) | set(after))
    return [
        f"{path}: {before.get(path)} -> {after.get(path)}"
        for path in paths
        if before.get(path) != after.get(path)
    ]


def _as_other(node: OwnNode, script: str, *args: str) -> str:
    command = f"su other -s /bin/sh -c {shlex.quote(script)} -- {' '.join(shlex.quote(a) for a in args)}"
    return node.vm.ssh(command).stdout


def _killed(node: OwnNode) -> list[str]:
    return _as_other(node, 'for p in $(cat "$HOME/pids"); do [ -d "/proc/$p" ] || echo "$p"; done').split()


def test_an_adversary_on_the_node_steers_nothing_and_loses_nothing_through_a_whole_cycle(node, tmp_path):
    """#26: a full cycle (first deploy, an upgrade rolled back and not tried again, runs
    refused for directories the adversary made, conformance, reset, purge) beside an active
    unprivileged adversary. After each step nothing outside the deploy's own set changed, none
    of its processes was stopped, and each run succeeded or stopped with a named refusal."""
    from tests.harness import mirror

    from .test_lifecycle import release_data

    reset = as_user(node, "deployer", data={"containerd_state": "purged"})[0]
    assert reset.returncode == 0, reset.stderr[-3000:]
    _as_other(node, ADVERSARY_SETUP)
    node.vm.ssh(
        f"su other -s /bin/sh -c {shlex.quote(ADVERSARY_WATCH)} -- {node.vm.port} </dev/null >/dev/null 2>&1 & true"
    )
    before = _listing(node)
    names = {}

    def step(name: str, *, data: dict, refused: str | None = None) -> str:
        process, _ = as_user(node, "deployer", data=data)
        said = process.stdout + process.stderr
        if refused is None:
            assert process.returncode == 0, f"{name}: {said[-4000:]}"
        else:
            assert process.returncode != 0 and refused in said, f"{name}: {said[-4000:]}"
        _as_other(node, ADVERSARY_FLOCKS)
        names[name] = _changed(before, _listing(node))
        assert names[name] == [], f"{name} changed what is not the deploy's: {names[name]}"
        assert _killed(node) == [], f"{name} stopped the adversary's processes"
        return said

    try:
        step("first deploy", data=DATA)
        old = node.data()
        broken_url, broken_sha256 = mirror.broken_release("sid")
        upgrade = {
            **DATA,
            **release_data("sid"),
            "containerd_download_url": broken_url,
            "containerd_sha256": broken_sha256,
            "containerd_ready_timeout": 20,
        }
        said = step("an upgrade that does not start", data=upgrade, refused="rolled back")
        assert f"containerd {old['containerd_version']}" in said or "answers again" in said
        step("the same upgrade again", data=upgrade, refused="the last run made this same change")
        step("the good release", data=DATA)
        step(
            "a staging directory another user made",
            data={**DATA, "containerd_staging_dir": "/var/tmp/cd-staging"},
            refused="/var/tmp is writable by group or others, on the path of data key 'containerd_staging_dir'",
        )
        step(
            "a state directory another user made",
            data={**DATA, "containerd_deploy_state_dir": "/tmp/cd-state"},
            refused="/tmp is writable by group or others, on the path of data key 'containerd_deploy_state_dir'",
        )
        checked = conformance_through_sudo(node, tmp_path)
        assert checked.returncode == 0, checked.stdout[-5000:]
        names["conformance"] = _changed(before, _listing(node))
        assert names["conformance"] == [] and _killed(node) == []
        step("reset", data={"containerd_state": "absent"})
        step("a deploy again", data=DATA)
        step("purge", data={"containerd_state": "purged"})
        assert node.vm.ssh("ls -A /var/lib/containerd 2>/dev/null; true").stdout.strip() in ("", "lost+found")
        assert node.vm.ssh("cat /var/tmp/cd-staging/.fetched-runc").stdout == "planted\n"
        # It was active all along: one impersonator per connection it saw (each run's, at least).
        seen = _as_other(node, 'cat "$HOME/seen"').split()
        assert len(seen) >= len(names), seen
    finally:
        node.vm.ssh(
            "touch /home/other/stop; pkill -u other; sleep 0.5; "
            "rm -rf /tmp/containerd-deploy-upload.* /tmp/containerd-deploy-image.* /var/tmp/cd-staging /tmp/cd-state "
            "/run/lock/containerd-deploy",
            check=False,
        )
    process, _ = as_user(node, "deployer", data=DATA)
    assert process.returncode == 0, process.stderr[-3000:]

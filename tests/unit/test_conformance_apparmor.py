"""The conformance suite's AppArmor check: what it reads on the node (the script, run in a
sandbox of files standing in for /sys and /sbin) and why it says a container runs unconfined."""

import subprocess

from containerd_deploy.facts.node import AppArmor, parse_apparmor, split_sections
from containerd_deploy.plan.verdict import apparmor_label_problem
from containerd_deploy.remote.node_state import apparmor_lines
from containerd_deploy.remote.paths import APPARMOR_ENABLED, APPARMOR_PARSER, APPARMOR_SECURITYFS


def test_what_decides_containerds_apparmor_is_read_as_it_reads_it(tmp_path):
    securityfs, enabled, parser = tmp_path / "securityfs", tmp_path / "enabled", tmp_path / "apparmor_parser"
    script = (
        "\n".join(apparmor_lines())
        .replace(APPARMOR_SECURITYFS, str(securityfs))
        .replace(APPARMOR_ENABLED, str(enabled))
        .replace(APPARMOR_PARSER, str(parser))
    )
    daemon = subprocess.Popen(["sleep", "30"], env={"container": "systemd-nspawn", "PATH": "/usr/bin:/bin"})

    def seen(pid: int = daemon.pid) -> AppArmor:
        out = subprocess.run(["sh", "-c", f"pid={pid}\n{script}"], capture_output=True, text=True, check=True)
        assert out.stderr == ""
        [(name, body)] = split_sections(out.stdout.splitlines())
        assert name == "apparmor"
        return parse_apparmor(body)

    try:
        assert seen() == AppArmor(), "no securityfs: nothing more is read"
        securityfs.mkdir()
        assert seen() == AppArmor(), "no switch to read"
        enabled.write_text("Y\n")
        assert seen() == AppArmor(enabled=True, daemon_container="systemd-nspawn")
        parser.write_text("")
        installed = float(parser.stat().st_ctime // 1)
        assert seen() == AppArmor(True, installed, "systemd-nspawn")
        assert seen(pid=0) == AppArmor(True, installed, ""), "no daemon: no environment to read"
        other = subprocess.Popen(["sleep", "30"], env={"X": "a\ncontainer=fake", "PATH": "/usr/bin:/bin"})
        try:
            assert seen(pid=other.pid) == AppArmor(True, installed, ""), "a value's newline is no variable"
        finally:
            other.kill()
            other.wait()
        enabled.write_text("N\n")
        assert seen() == AppArmor(False, installed, "systemd-nspawn")
    finally:
        daemon.kill()
        daemon.wait()


def test_an_apparmor_section_is_read_word_by_word():
    assert parse_apparmor(["enabled Y", "parser 1700000000", "container my box", ""]) == AppArmor(
        enabled=True, parser_changed=1700000000.0, daemon_container="my box"
    )
    assert parse_apparmor(["enabled Y", "parser ?"]) == AppArmor(enabled=True)


SEEN = "runs under the AppArmor label 'unconfined', not cri-containerd.apparmor.d (enforce)"


def test_what_is_wrong_with_a_pods_apparmor_label_names_why_and_the_fix():
    on = AppArmor(enabled=True, parser_changed=1780000000.0)
    assert (
        apparmor_label_problem("cri-containerd.apparmor.d (enforce)", on, 1779990000.0, "c.service") is None
    )
    assert apparmor_label_problem("cri-containerd.apparmor.d (complain)", on, 1779990000.0, "c.service") == (
        "runs under the AppArmor label 'cri-containerd.apparmor.d (complain)', not cri-containerd.apparmor.d "
        "(enforce): the profile only logs (complain mode); enforce it (aa-enforce cri-containerd.apparmor.d)"
    )
    assert apparmor_label_problem("other (enforce)", on, 1779990000.0, "c.service") == (
        "runs under the AppArmor label 'other (enforce)', not cri-containerd.apparmor.d (enforce): something "
        "other than containerd's default set it"
    )
    assert apparmor_label_problem(
        "unconfined", AppArmor(enabled=True), 1779990000.0, "containerd.service"
    ) == (
        f"{SEEN}: the kernel has AppArmor on but /sbin/apparmor_parser is not installed, so containerd runs every "
        "container unconfined: install AppArmor's userspace (Debian's apparmor package), then restart containerd "
        "(systemctl restart containerd.service)"
    )
    # The parser came after the daemon started: the likely cause, and a restart the fix.
    assert apparmor_label_problem("unconfined", on, 1779990000.0, "ctd.service") == (
        f"{SEEN}: /sbin/apparmor_parser (AppArmor's userspace) was installed or replaced after containerd started "
        "(2026-05-28 20:26:40 UTC); if it was missing when containerd created its first container, containerd "
        "decided then that AppArmor was not there and runs every container unconfined until it restarts: restart "
        "it (systemctl restart ctd.service; after an upgrade of the apparmor package, it is only this warning that "
        "goes)"
    )
    # ... not when it was there before (within /proc's whole-second start time), or the start is unknown.
    for started in (1780000000.0, 1779999999.0, None):
        assert apparmor_label_problem("unconfined", on, started, "ctd.service") == (
            f"{SEEN}; see journalctl -u ctd.service"
        ), started

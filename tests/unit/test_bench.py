from bench.measure import Report, artifact_sets, busy_share, cpu_times, median, remote_commands

JOURNAL = """Accepted publickey for root from 10.0.2.2 port 50100 ssh2: ED25519 SHA256:abc
pam_unix(sshd:session): session opened for user root(uid=0) by root(uid=0)
Starting session: command for root from 10.0.2.2 port 50100 id 0
Starting session: command for root from 10.0.2.2 port 50100 id 1
Starting session: subsystem 'sftp' for root from 10.0.2.2 port 50100 id 2
Starting session: command for root from 10.0.2.2 port 40000 id 7
Connection closed by 10.0.2.2 port 50100
"""


def test_remote_commands_are_the_sessions_of_connections_accepted_in_the_window():
    # Port 40000 is an older connection (the bench's own ssh master): not the deploy's.
    assert remote_commands(JOURNAL) == 3
    assert remote_commands("") == 0


def test_artifact_sets():
    assert artifact_sets(300, 100) == 3.0


def test_report_markdown_has_every_row_and_verdict(capsys):
    report = Report({"cpus": "2"})
    report.add("No-op rerun", "5.0 s", "≤ 12 commands", True)
    report.add("Fan-out", "2.10x", "≤ 1.5x", False)
    report.add("Peak RSS", "80 MiB")
    text = report.markdown()
    assert "- cpus: 2" in text
    assert "| No-op rerun | 5.0 s | ≤ 12 commands | yes |" in text
    assert "| Fan-out | 2.10x | ≤ 1.5x | **no** |" in text
    assert "| Peak RSS | 80 MiB |  |  |" in text
    assert "Fan-out: 2.10x  floor: ≤ 1.5x (DOES NOT HOLD)" in capsys.readouterr().out


def test_median():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5


def test_host_cpu_busy_share_from_proc_stat():
    # user nice system idle iowait irq softirq steal guest guest_nice
    before = cpu_times("cpu  100 0 50 800 50 0 0 0 40 0\ncpu0 1 2 3 4\n")
    after = cpu_times("cpu  250 0 100 850 50 0 0 0 140 0\n")
    assert before == (150, 1000) and after == (350, 1250)
    assert busy_share(before, after) == 200 / 250
    assert busy_share(after, after) == 0.0

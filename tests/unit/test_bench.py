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


def test_what_each_node_past_the_first_ones_added():
    from bench.measure import marginal

    assert abs(marginal((8, 2.0), (32, 6.8)) - 0.2) < 1e-9
    assert marginal((8, 60.0), (8, 61.0)) != marginal((8, 60.0), (8, 61.0))  # nan: no step


DOC = "# Benchmarks\n\n## Figures\n\n| a |\n\n## Notes\n\n- n\n"


def test_the_fan_out_section_is_replaced_in_place_or_appended_and_read_back():
    from bench.measure import replace_section, section

    appended = replace_section(DOC, "Fan-out at fleet scale", "## Fan-out at fleet scale\n\n| 32 |\n")
    assert appended == DOC + "\n## Fan-out at fleet scale\n\n| 32 |\n"
    again = replace_section(appended, "Fan-out at fleet scale", "## Fan-out at fleet scale\n\n| 64 |\n")
    assert again == DOC + "\n## Fan-out at fleet scale\n\n| 64 |\n"
    middle = replace_section(DOC, "Figures", "## Figures\n\n| b |\n")
    assert middle == "# Benchmarks\n\n## Figures\n\n| b |\n\n## Notes\n\n- n\n"
    assert section(again, "Fan-out at fleet scale") == "## Fan-out at fleet scale\n\n| 64 |\n"
    assert section(DOC, "Notes") == "## Notes\n\n- n\n"
    assert section(DOC, "Missing") is None


def test_profiled_time_is_summed_by_package():
    from bench.measure import package_of, time_by_package

    site = "/v/lib/python3.11/site-packages"
    stats = {
        (f"{site}/paramiko/transport.py", 1, "run"): (1, 1, 2.0, 3.0, {}),
        (f"{site}/paramiko/packet.py", 1, "read"): (1, 1, 1.0, 1.0, {}),
        (f"{site}/gevent/hub.py", 1, "switch"): (1, 1, 0.5, 0.5, {}),
        ("/work/main/tasks/containerd_deploy/facts.py", 1, "parse"): (1, 1, 0.25, 0.25, {}),
        ("~", 0, "<method 'read' of '_io.FileIO' objects>"): (1, 1, 0.75, 0.75, {}),
        ("/usr/lib/python3.11/json/decoder.py", 1, "decode"): (1, 1, 0.1, 0.1, {}),
        (f"{site}/six.py", 1, "x"): (1, 1, 0.01, 0.01, {}),
    }
    assert time_by_package(stats) == [
        ("paramiko", 3.0),
        ("built-ins", 0.75),
        ("gevent", 0.5),
        ("containerd_deploy (this deploy)", 0.25),
        ("standard library", 0.1),
        ("six", 0.01),
    ]
    assert package_of("<string>") == "built-ins"

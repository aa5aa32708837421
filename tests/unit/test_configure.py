from tasks.configure import unit_text


def test_unit_is_the_guides_with_execstart_at_the_bin_dir():
    default = unit_text("/usr/local/bin")
    assert "ExecStart=/usr/local/bin/containerd\n" in default
    for line in ("Type=notify", "Delegate=yes", "KillMode=process", "Restart=always", "OOMScoreAdjust=-999",
                 "ExecStartPre=-/sbin/modprobe overlay", "WantedBy=multi-user.target"):
        assert line in default.splitlines()
    moved = unit_text("/opt/containerd/bin")
    assert "ExecStart=/opt/containerd/bin/containerd\n" in moved and "/usr/local/bin" not in moved

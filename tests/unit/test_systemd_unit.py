"""systemd/cgctl.service and systemd/cgctl.tmpfiles.conf: systemd's own checker passes on them,
and the hardening they ask for lets the service run (MemoryDenyWriteExecute via PR_SET_MDWE)."""

from __future__ import annotations

import os
import signal
import pathlib
import shutil
import stat
import subprocess
import sys

import pytest

from tests.daemonkit import TEST_URI, Subprocess, mdwe_wrapper

ROOT = pathlib.Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "cgctl.service"
TMPFILES = ROOT / "systemd" / "cgctl.tmpfiles.conf"


def directives(path: pathlib.Path) -> dict:
    """{key: [values...]} of a unit file (systemd allows a key more than once)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def cgctl_command() -> str:
    found = shutil.which("cgctl") or os.path.join(os.path.dirname(sys.executable), "cgctl")
    if not os.access(found, os.X_OK):
        pytest.skip("no cgctl command installed to stand in for /usr/bin/cgctl")
    return found


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package 'systemd'); "
                    "the unit was not verified")
    # verify insists ExecStart= exists: point it at this checkout's cgctl, nothing else changes
    unit = tmp_path / "cgctl.service"
    text = UNIT.read_text()
    assert "\nExecStart=/usr/bin/cgctl daemon\n" in text
    unit.write_text(text.replace("\nExecStart=/usr/bin/cgctl ", f"\nExecStart={cgctl_command()} "))
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "" and r.stdout.strip() == "", r.stderr + r.stdout  # no warnings


def test_the_unit_says_what_the_design_asks():
    d = directives(UNIT)
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"] == "/usr/bin/cgctl daemon"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["WatchdogSec"] == "30" and one["Restart"] == "on-failure"
    assert set(one["After"].split()) == {"libvirtd.service", "virtqemud.service",
                                         "virtlxcd.service"}
    assert one["Wants"] == "libvirtd.service"
    assert one["ProtectSystem"] == "strict"
    assert set(one["ReadWritePaths"].split()) == {"/var/lib/cgctl", "/sys/fs/cgroup"}
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "LockPersonality",
                "MemoryDenyWriteExecute", "RestrictSUIDSGID", "ProtectKernelModules"):
        assert one[key] == "yes", key
    assert one["ProtectKernelTunables"] == "no" and one["ProtectControlGroups"] == "no"
    assert one["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_NETLINK"]
    assert one["SystemCallArchitectures"] == "native"


def test_tmpfiles_entry(tmp_path):
    lines = [ln.split() for ln in TMPFILES.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines == [["d", "/var/lib/cgctl", "0700", "root", "root", "-"]]
    tool = shutil.which("systemd-tmpfiles")
    if tool is None:
        pytest.skip("systemd-tmpfiles is not installed: entry checked by reading only")
    r = subprocess.run([tool, f"--root={tmp_path}", "--create", str(TMPFILES)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    st = os.stat(tmp_path / "var/lib/cgctl")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700




def test_the_service_runs_under_memory_deny_write_execute(tmp_path):
    """MemoryDenyWriteExecute=yes: the kernel's PR_SET_MDWE (Linux >= 6.3) refuses the same
    W+X mappings systemd's seccomp filter does, and is kept across exec."""
    probe = subprocess.run(
        mdwe_wrapper() + ["-c", "import mmap; mmap.mmap(-1, 4096, prot=7)"],
        capture_output=True, timeout=60)
    if probe.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
    assert probe.returncode != 0 and b"PermissionError" in probe.stderr  # it is enforced
    pytest.importorskip("libvirt")
    svc = Subprocess(["-c", TEST_URI, "--journal", str(tmp_path / "j.db"),
                      "--config-file", str(tmp_path / "none.toml")],
                     log_path=tmp_path / "daemon.log", wrapper=mdwe_wrapper())
    try:
        svc.wait_log("ready:")
        svc.signal(signal.SIGTERM)
        assert svc.wait() == 0, svc.log()
    finally:
        svc.stop()

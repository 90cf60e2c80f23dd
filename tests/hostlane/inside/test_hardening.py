"""The unit's sandbox as systemd applied it: from inside the service's own mount namespace
(nsenter into its MainPID), exactly the paths the service writes are writable, nothing else."""
import subprocess

import pytest

from .hostkit import unit_props

WRITABLE = [
    "/var/lib/cgctl",            # the journal (StateDirectory=, ReadWritePaths=)
    "/run/cgctl",                # the command socket, the hook's lock files (RuntimeDirectory=)
    "/sys/fs/cgroup",            # the guests' cgroup files (ReadWritePaths=)
    "/tmp",                      # PrivateTmp=: writable, but its own
]
READ_ONLY = ["/etc", "/usr", "/var/lib/libvirt", "/var/log", "/opt/cgctl", "/run/libvirt", "/boot"]


def in_service(script: str) -> subprocess.CompletedProcess:
    pid = unit_props("cgctl.service", "MainPID")["MainPID"]
    assert pid != "0"
    return subprocess.run(["nsenter", "-t", pid, "-m", "sh", "-c", script],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("path", WRITABLE)
def test_the_service_can_write(path):
    if path == "/sys/fs/cgroup":
        script = "mkdir /sys/fs/cgroup/hl-hardening && rmdir /sys/fs/cgroup/hl-hardening"
    else:
        script = f"touch {path}/.hl-hardening && rm {path}/.hl-hardening"
    p = in_service(script)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("path", READ_ONLY)
def test_the_service_cannot_write(path):
    p = in_service(f"touch {path}/.hl-hardening")
    assert p.returncode != 0 and "Read-only file system" in p.stderr, (p.returncode, p.stderr)


def test_home_is_hidden_and_tmp_is_private():
    p = in_service("ls -A /root; touch /tmp/hl-private; echo ok")
    assert p.stdout.split() == ["ok"], p.stdout + p.stderr   # /root empty (ProtectHome=yes)
    try:
        assert not __import__("os").path.exists("/tmp/hl-private")
    finally:
        in_service("rm -f /tmp/hl-private")

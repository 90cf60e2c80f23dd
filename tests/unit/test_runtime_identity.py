"""A guest's process is identified by more than its argv (cgctl/runfiles.py): real processes of
the test that fake a guest's argv, against a fake libvirt run dir and the real /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from cgctl.host import runfiles
from tests.otheruser import need_python_as_nobody

UUID = "0b8f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4"
NAME = "cgt-fake"
PYTHON = os.path.realpath(sys.executable)


def status_xml(driver: str, pid: int, emulator: str) -> str:
    return (f"<domstatus state='running' reason='booted' pid='{pid}'>"
            f"<domain type='{driver}' id='1'><name>{NAME}</name><uuid>{UUID}</uuid>"
            f"<devices><emulator>{emulator}</emulator></devices></domain></domstatus>")


@pytest.fixture
def procs():
    started = []

    def start(argv, **kw):
        # argv[0] is only a name: the program is this Python (exe says so), the rest of argv
        # is what a guest's process would show
        p = subprocess.Popen(argv, executable=sys.executable, stdin=subprocess.DEVNULL, **kw)
        started.append(p)
        deadline = time.monotonic() + 10
        while runfiles._argv(p.pid, "/proc") != argv and time.monotonic() < deadline:
            time.sleep(0.01)
        return p
    yield start
    for p in started:
        p.kill()
        p.wait()


SLEEP = ["-c", "import time; time.sleep(60)"]


def qemu_argv():
    return ["qemu-system-x86_64", *SLEEP, "-name", f"guest={NAME}", "-uuid", UUID]


def lxc_argv():
    return ["libvirt_lxc", *SLEEP, "--name", NAME, "--console", "23"]


def plant(run, driver, pid, *, emulator="/usr/bin/qemu-system-x86_64", status_pid=None,
          pidfile=True):
    d = run / driver
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{NAME}.xml").write_text(status_xml(driver, status_pid or pid, emulator))
    if pidfile:
        (d / f"{NAME}.pid").write_text(str(pid))


def find(run):
    return runfiles.find_running(NAME, str(run), etc_dir=str(run / "etc"), proc_root="/proc")


def test_a_faked_qemu_argv_is_rejected(tmp_path, procs):
    p = procs(qemu_argv())
    plant(tmp_path, "qemu", p.pid)  # the emulator libvirt started: not this process's exe
    assert find(tmp_path) is None
    assert runfiles.verified_pid("qemu", NAME, UUID, str(tmp_path), "/proc") is None


def test_positive_control_the_same_process_as_its_emulator(tmp_path, procs):
    """The checks pass for a process whose exe is the status XML's emulator: the rejections
    around it are for the reason each test names, not for the fake run dir."""
    p = procs(qemu_argv())
    plant(tmp_path, "qemu", p.pid, emulator=sys.executable)  # a symlink is resolved
    g = find(tmp_path)
    assert g is not None and (g.pid, g.uuid) == (p.pid, UUID)
    assert runfiles.verified_pid("qemu", NAME, UUID, str(tmp_path), "/proc") == p.pid


def test_pid_file_and_status_must_both_name_the_pid(tmp_path, procs):
    p = procs(qemu_argv())
    plant(tmp_path, "qemu", p.pid, emulator=PYTHON, pidfile=False)
    assert find(tmp_path) is None
    plant(tmp_path, "qemu", p.pid, emulator=PYTHON, status_pid=p.pid + 1)
    assert find(tmp_path) is None


def test_a_process_younger_than_the_pid_file_is_a_reused_pid(tmp_path, procs):
    p = procs(qemu_argv())
    plant(tmp_path, "qemu", p.pid, emulator=PYTHON)
    hour_ago = time.time() - 3600  # libvirt wrote the pid file an hour before this process
    os.utime(tmp_path / "qemu" / f"{NAME}.pid", (hour_ago, hour_ago))
    assert find(tmp_path) is None


def test_a_process_of_another_user_is_rejected(tmp_path, procs):
    need_python_as_nobody()
    p = procs(qemu_argv(), user=65534, group=65534)
    plant(tmp_path, "qemu", p.pid, emulator=PYTHON)
    assert find(tmp_path) is None


def test_a_faked_lxc_controller_is_rejected(tmp_path, procs, monkeypatch):
    p = procs(lxc_argv())
    plant(tmp_path, "lxc", p.pid)
    assert find(tmp_path) is None
    # control: with this Python as the controller binary, the same process passes
    monkeypatch.setattr(runfiles, "LXC_CONTROLLERS", (PYTHON,))
    assert find(tmp_path).pid == p.pid


def test_the_early_applier_uses_the_same_check(tmp_path, procs, monkeypatch):
    """cgctl/hook/main.py's early applier finds the guest's PID through runfiles.verified_pid: a
    faked argv never reaches an apply."""
    from cgctl.start import applier as early
    p = procs(qemu_argv())
    plant(tmp_path, "qemu", p.pid)
    applied = []

    class Ctl:
        run_dir = str(tmp_path)
        host = None

        def journal(self, create=True):
            class J:
                def get_config(self, uuid):
                    return {("cpu_shares", ""): "512"}
            return J()

        def effective(self, uuid, journal):
            class E:
                config = journal.get_config(uuid)
            return E()

        def apply_config(self, guest, **kw):
            applied.append(guest)

    result = early.serve(Ctl(), "qemu", NAME, UUID, 1, time.monotonic() + 0.5,
                         lambda *a, **k: None)
    assert result == "timed out" and applied == []

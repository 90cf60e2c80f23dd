"""The hook without Python on a start (docs/hook.md, "The start without Python"), under a real
libvirtd: cgctl's hook installed for real into /etc/libvirt/hooks, run through a recording
wrapper of the venv's Python, so the test knows every call that started Python.

- The service running: the script hands the start to it at ``prepare begin``; no call of the
  start starts Python, and the service's applier puts the limits in force before QEMU resumes
  the vCPUs (QEMU's own RESUME timestamp), then answers ``started begin``.
- The service stopped: Python starts once (``prepare begin``, which launches the detached
  applier); ``start begin`` and ``started begin`` are answered by the script and the applier,
  with the limits in force before the vCPUs run.

Run under the machine's libvirt lock (HELPERS: flock). Everything is removed afterwards.
"""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest

from cgctl.hook import install as hookinstall
from cgctl.start import applier as hookearly
from tests.clikit import cgctl
from tests.daemonkit import Subprocess

HOOKS = "/etc/libvirt/hooks"
LIMIT = 200 * 2**20
RESUME_RE = re.compile(r"event RESUME at (\d+\.\d+) for domain '([^']+)'")


class Resumes:
    """QEMU's RESUME events of one guest (``virsh qemu-monitor-event``), with QEMU's time."""

    def __init__(self, name):
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "virsh", "-c", "qemu:///system", "qemu-monitor-event", "--domain",
             name, "--event", "RESUME", "--loop"], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.at = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            m = RESUME_RE.search(line)
            if m:
                with self.cond:
                    self.at.append(float(m.group(1)))
                    self.cond.notify_all()

    def first(self, timeout=20.0) -> float:
        with self.cond:
            assert self.cond.wait_for(lambda: self.at, timeout), "no RESUME event"
            return self.at[0]

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def installed(libvirt_sandbox, tmp_path):
    """cgctl's hook installed with a recording Python; libvirtd restarted to see it."""
    for d in ("qemu", "lxc"):
        ours = os.path.join(HOOKS, f"{d}.d", hookinstall.SCRIPT_NAME)
        if os.path.lexists(ours) and not hookinstall.is_ours(ours):
            pytest.skip(f"{ours} belongs to someone else")
    os.chmod(tmp_path, 0o755)
    journal = str(tmp_path / "journal.db")
    ran = tmp_path / "python-ran"
    wrapper = tmp_path / "python-recording"
    wrapper.write_text(f"#!/bin/sh\necho \"$*\" >> {shlex.quote(str(ran))}\n"
                       f"exec {shlex.quote(sys.executable)} \"$@\"\n")
    wrapper.chmod(0o755)
    try:
        cgctl(journal, "hook", "install", "--hooks-dir", HOOKS, "--drivers", "qemu",
              "--cgctl", str(wrapper))
        libvirt_sandbox.restart_libvirtd()
        yield journal, ran
    finally:
        cgctl(journal, "hook", "uninstall", "--hooks-dir", HOOKS, check=False)
        libvirt_sandbox.restart_libvirtd()


def memory_limit(pid: int) -> int:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if "memory" in ctrls.split(","):
                with open(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes") as g:
                    return int(g.read())
    raise AssertionError("no memory group")


def rows(journal, guest):
    db = sqlite3.connect(journal)
    try:
        return db.execute("SELECT at, command, param, outcome FROM history WHERE uuid = ? "
                          "ORDER BY id", (guest.uuid,)).fetchall()
    finally:
        db.close()


def python_calls(ran, guest):
    try:
        lines = ran.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [" ".join(line.split()[-3:-1]) for line in lines if f" {guest.name} " in line]


def start_and_check(sb, guest, journal):
    """Start the guest; the limits in force before its vCPUs resumed, the authority apply
    after; returns the history rows."""
    resumes = Resumes(guest.name)
    try:
        pid = sb.start_guest(guest.name, guest.uri)
        resume = resumes.first()
    finally:
        resumes.close()
    assert memory_limit(pid) == LIMIT
    # `started begin` was answered before the journal's commit (docs/hook.md, "The answer
    # before the commit"): its record follows within the applier's commit
    end = time.monotonic() + 20
    while not any(r[1] == "hook started" for r in rows(journal, guest)) \
            and time.monotonic() < end:
        time.sleep(0.02)
    hist = rows(journal, guest)
    early = [r for r in hist if r[1] == "hook early"]
    started = [r for r in hist if r[1] == "hook started"]
    assert {(r[2], r[3]) for r in early} == {("hard_limit", "ok"), ("cpu_shares", "ok")}, hist
    assert started and all(r[3] == "ok" for r in started), hist
    # recorded after the writes: in force before QEMU resumed the vCPUs (QEMU's clock)
    applied = max(datetime.fromisoformat(r[0]).timestamp() for r in early)
    assert applied < resume, (applied, resume)
    assert not os.path.exists(hookearly.lock_path("qemu", guest.name))
    return hist


def stop_and_check_nothing_left(sb, guest):
    """A stop ends the start: its go and result files go at `release end` (the script)."""
    assert os.path.exists(hookearly.result_path("qemu", guest.name))  # the answer, read
    sb.destroy(guest.name, guest.uri)
    left = [f for f in os.listdir("/run/cgctl") if f.startswith(f"early-qemu-{guest.name}")
            or f.startswith(f"request-qemu-{guest.name}")]
    assert left == []


def test_with_the_service_a_start_starts_no_python(installed, libvirt_sandbox, make_guest,
                                                   tmp_path):
    journal, ran = installed
    guest = make_guest("qemu", start=False)
    cgctl(journal, "set", guest.name, "hard_limit=200M", "cpu_shares=300", "--config")
    conf = tmp_path / "cgctl.toml"
    conf.write_text("")
    svc = Subprocess(["--journal", journal, "--config-file", str(conf)],
                     env_extra={"CGCTL_HOOK_RUN_DIR": "/run/cgctl"},
                     log_path=tmp_path / "daemon.log")
    try:
        svc.wait_log("ready:")
        start_and_check(libvirt_sandbox, guest, journal)
        log = svc.wait_log(f"hook hand-off: qemu guest={guest.name}: ")
        stop_and_check_nothing_left(libvirt_sandbox, guest)
    finally:
        code = svc.stop()
    assert code == 0, svc.log()
    assert python_calls(ran, guest) == []  # handed off: no call of the start ran Python
    assert "started: 2 setting(s) applied" in log or "started: 0 setting(s)" in log, log


def test_without_the_service_the_hook_alone_does_it(installed, libvirt_sandbox, make_guest):
    journal, ran = installed
    guest = make_guest("qemu", start=False)
    cgctl(journal, "set", guest.name, "hard_limit=200M", "cpu_shares=300", "--config")
    start_and_check(libvirt_sandbox, guest, journal)
    # Python once, to launch the applier; `start begin` and `started begin` answered without it
    assert python_calls(ran, guest) == ["prepare begin"]
    stop_and_check_nothing_left(libvirt_sandbox, guest)
    assert python_calls(ran, guest) == ["prepare begin"]  # nor `stopped`/`release`

"""A faked host for the controller, CLI and drift tests: cgroupfs, /proc and libvirt's run
files on pyfakefs (tests/fakecg.py), the journal a real SQLite file under tmp_path.

No root, no libvirtd, no libvirt-python: a running guest is found the way cgctl finds one
without libvirt (``runfiles.find_running`` reads ``<run dir>/qemu/NAME.{xml,pid}`` and checks
``/proc/PID/cmdline`` names its UUID); a stopped guest is what ``virt.lookup`` would return
(patched here: the real one needs libvirt). Paths are consts' (``CGCTL_*`` overrides apply).
"""

from __future__ import annotations

import os
from typing import Dict

import pytest
from pyfakefs.fake_filesystem_unittest import Patcher

from cgctl import consts
from cgctl.cgroup import hierarchy
from cgctl.host import runfiles
from cgctl.errors import GuestNotFound, LibvirtError
from cgctl.host.runfiles import Guest
from tests import fakecg
# modules the code under test imports lazily, loaded here with the real os: one first imported
# inside a test, under pyfakefs, keeps that test's fake os after it ends (the next test fails)
from cgctl.cgroup import usage  # noqa: E402,F401
from cgctl.cli import main as _cli  # noqa: E402,F401
from cgctl.core import controller as _controller  # noqa: E402,F401

STATUS = """<domstatus state='running' reason='booted' pid='{pid}'>
  <domain type='kvm' id='{id}'>
    <name>{name}</name>
    <uuid>{uuid}</uuid>
    <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
  </domain>
</domstatus>
"""
CLK_TCK = os.sysconf("SC_CLK_TCK")


class FakeHost:
    """Guests on a faked cgroup v1 (default) or v2 host."""

    def __init__(self, fs, monkeypatch, journal_path: str, version: int = 1):
        self.fs = fs
        self.version = version
        self.journal_path = journal_path
        self.stopped: Dict[str, Guest] = {}
        self.machines = {}
        if version == 1:
            fakecg.make_v1_host(fs, consts.CGROUP_ROOT, proc_root=consts.PROC_ROOT)
        else:
            fakecg.make_v2_host(fs, consts.CGROUP_ROOT, proc_root=consts.PROC_ROOT)
        # the process has run 100 s; /proc/uptime says the host has run 1000 s
        fs.create_file(os.path.join(consts.PROC_ROOT, "uptime"), contents="1000.00 1900.00\n")
        # the apply path records the instance (psutil's start time of a real process)
        monkeypatch.setattr(runfiles, "instance_of", lambda pid: (pid, 1_000_000.0 + pid))
        import cgctl.virt as virt
        monkeypatch.setattr(virt, "lookup", self._lookup)
        # the persistent domain XML libvirt would give (cgctl/model/tunables.py): what a test
        # puts in ``persistent_xml``; else libvirt is "down" (never a real libvirtd here)
        self.persistent_xml: Dict[str, str] = {}
        monkeypatch.setattr(virt, "guest_xml", self._guest_xml)
        # these guests are not libvirt's: no domain metadata to write (cgctl/core/travel.py)
        monkeypatch.setenv("CGCTL_METADATA", "0")

    def running(self, name: str, uuid: str, id: int = 1, *, persistent: bool = True,
                layout: str = "nosystemd"):
        """A running QEMU guest: its groups, status XML, pid file and /proc/PID."""
        if self.version == 1:
            m = fakecg.make_v1_machine(self.fs, consts.CGROUP_ROOT, name, id=id, layout=layout,
                                       proc_root=consts.PROC_ROOT,
                                       run_dir=consts.LIBVIRT_RUN_DIR)
        else:
            m = fakecg.make_systemd_v2_machine(self.fs, name, id=id, proc_root=consts.PROC_ROOT,
                                               run_dir=consts.LIBVIRT_RUN_DIR)
        run = os.path.join(consts.LIBVIRT_RUN_DIR, "qemu")
        self.fs.create_file(os.path.join(run, f"{name}.xml"),
                            contents=STATUS.format(pid=m.pid, id=id, name=name, uuid=uuid))
        proc = os.path.join(consts.PROC_ROOT, str(m.pid))
        argv = ["/usr/bin/qemu-system-x86_64", "-name", f"guest={name}", "-uuid", uuid]
        self.fs.create_file(os.path.join(proc, "cmdline"),
                            contents="".join(a + "\0" for a in argv))
        self.fs.create_file(os.path.join(proc, "stat"))
        # what cgctl.host.runfiles checks besides argv: the emulator's binary, run by root
        self.fs.create_symlink(os.path.join(proc, "exe"), argv[0])
        self.fs.create_file(os.path.join(proc, "status"), contents="Uid:\t0\t0\t0\t0\n")
        self.started(m.pid, 100)
        if persistent:
            self.define(name)
        self.machines[name] = m
        return m

    def started(self, pid: int, seconds_ago: float) -> None:
        """Set when process ``pid`` started (/proc/PID/stat's field 22 against /proc/uptime's
        1000 s); a negative value is a process started after now (a new run of the guest)."""
        ticks = int((1000 - seconds_ago) * CLK_TCK)
        self.fs.get_object(os.path.join(consts.PROC_ROOT, str(pid), "stat")).set_contents(
            f"{pid} (qemu-system-x86) S 1 " + " ".join(["0"] * 17) + f" {ticks} 0 0\n")
        # libvirt writes the pid file once the process runs: never older than the process.
        # Through the fake filesystem's own API: this module's `os` is not always the patched
        # one (it depends on what else the session imported before the patcher ran).
        import time
        from pyfakefs.fake_os import FakeOsModule
        fos = FakeOsModule(self.fs)
        run = os.path.join(consts.LIBVIRT_RUN_DIR, "qemu")
        for f in fos.listdir(run) if self.fs.isdir(run) else ():
            path = os.path.join(run, f)
            if f.endswith(".pid") and self.fs.get_object(path).contents.strip() == str(pid):
                t = time.time() - seconds_ago + 1
                fos.utime(path, (t, t))

    def define(self, name: str) -> None:
        path = os.path.join(consts.LIBVIRT_ETC_DIR, "qemu", f"{name}.xml")
        if not self.fs.exists(path):
            self.fs.create_file(path, contents="<domain/>")

    def stopped_guest(self, name: str, uuid: str, persistent: bool = True) -> Guest:
        """A guest libvirt defines but does not run (what virt.lookup would say)."""
        g = Guest(name=name, uuid=uuid, driver="qemu", uri="qemu:///system", running=False,
                  persistent=persistent, pid=None)
        self.stopped[name] = g
        return g

    def _lookup(self, ident, uris=(), **kw):
        for g in self.stopped.values():
            if ident in (g.name, g.uuid):
                return g
        raise GuestNotFound("no such guest on " + ", ".join(uris), guest=ident)

    def _guest_xml(self, guest, *, inactive=False):
        if guest.name not in self.persistent_xml:
            raise LibvirtError("cannot connect to libvirt (faked host)")
        return self.persistent_xml[guest.name]

    def host(self):
        return hierarchy.detect(consts.PROC_ROOT)


@pytest.fixture
def fakefs_journal_real(tmp_path):
    """pyfakefs for every module but the journal: SQLite (C) opens real files, so the
    journal's own os calls must see the real filesystem too. (tmp_path first: it is real.)"""
    with Patcher(additional_skip_names=["cgctl.core.journal"]) as p:
        yield p.fs


@pytest.fixture
def fake_host(fakefs_journal_real, monkeypatch, tmp_path):
    """A cgroup v1 host (this project's real machines are v1) with no guest yet."""
    return FakeHost(fakefs_journal_real, monkeypatch, str(tmp_path / "journal.db"))


@pytest.fixture
def fake_host_v2(fakefs_journal_real, monkeypatch, tmp_path):
    """A cgroup v2 (systemd) host with no guest yet."""
    return FakeHost(fakefs_journal_real, monkeypatch, str(tmp_path / "journal.db"), version=2)


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


@pytest.fixture
def ctl(fake_host):
    """A Controller on the faked host's journal and hierarchies."""
    from cgctl.core.controller import Controller
    c = Controller(journal_path=fake_host.journal_path, host=fake_host.host())
    yield c
    c.close()


@pytest.fixture
def run(fake_host):
    """The CLI in this process on the faked host's journal: ``run(*argv)`` -> (rc, out, err)."""
    from cgctl.cli import main as cli

    def run(*argv):
        return cli.run_captured(["--journal", fake_host.journal_path, *argv])
    return run


def shares(m) -> str:
    """The machine group's cpu.shares of a faked v1 guest."""
    return read(os.path.join(m.machine["cpu"], "cpu.shares"))


def applier_pid(run_dir: str, name: str, timeout: float = 5.0) -> int:
    """The PID the early applier of qemu guest ``name`` wrote into its lock file (it writes it
    as soon as it holds the lock); waits for it, a bounded while."""
    import time
    path = os.path.join(run_dir, f"early-qemu-{name}.lock")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(path) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            time.sleep(0.01)
    raise AssertionError("no early applier")


def one_line_error(err: str) -> str:
    """The one line an operator gets for an error (no traceback); returns it."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cgctl: error: "), err
    return lines[0]

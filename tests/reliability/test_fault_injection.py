"""A write failing in the middle of a set (docs/reliability.md), on real v1 cgroup groups.

``Controller.set`` (mode live+config, a journal in tmp_path) against a ScratchGuest: the Nth
``write(2)`` of the set fails with a real errno, for every N until the set gets through. After
every failure each cgroup file of the guest holds what it held before and the journal is byte for
byte what it was. Then the same with real kernel refusals: the group removed mid-apply (ENOENT),
a limit below the memory in use (EBUSY) and a parent CPU quota below a vCPU's (EINVAL).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import uuid as uuidlib

import pytest

from cgctl.cgroup import fs
from cgctl.core.controller import BOTH, Controller
from cgctl.errors import CgctlError, CgroupNotFound, KernelRefused
from cgctl.host.runfiles import Guest
from tests.reliability.conftest import snapshot_journal

pytestmark = pytest.mark.realcg

UUID = "6f1b2a7e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"

# two full sets, alternated so that every round is a real change of every value
SET_A = ["hard_limit=512M", "soft_limit=256M", "swap_hard_limit=1G", "cpu_shares=300",
         "weight=300", "global_period=50000", "global_quota=40000", "vcpu_quota=20000",
         "emulator_quota=30000"]
SET_B = ["hard_limit=1G", "soft_limit=128M", "swap_hard_limit=2G", "cpu_shares=700",
         "weight=700", "global_period=100000", "global_quota=90000", "vcpu_quota=60000",
         "emulator_quota=70000"]
if (os.cpu_count() or 1) >= 2:
    SET_A.append("cpuset_cpus=0")
    SET_B.append("cpuset_cpus=0-1")

ERRNOS = [errno.EINVAL, errno.EBUSY, errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC]


def _guest(sg) -> Guest:
    return Guest(name=sg.name, uuid=UUID, driver="qemu", uri="qemu:///system", running=True,
                 persistent=True, pid=sg.proc.pid)


def _controller(sg, journal) -> Controller:
    ctl = Controller(journal_path=str(journal), host=sg.host)
    guest = _guest(sg)
    ctl.find_guest = lambda ident: guest
    return ctl


def _files(sg):
    """Every setting file of the scratch guest's groups, with its content."""
    out = {}
    for parent in sg.parents:
        base = os.path.join(parent, sg.group)
        for d, _, names in os.walk(base):
            for n in sorted(names):
                if n in ("tasks", "cgroup.procs") or any(
                        p in n for p in ("usage", "failcnt", "stat", "pressure", "oom_control",
                                         "force_empty", "event_control")):
                    continue
                p = os.path.join(d, n)
                if not os.stat(p).st_mode & 0o200:
                    continue
                try:
                    out[p] = fs.read(p)
                except OSError:
                    continue
    return out


def _set(sg, journal, assignments):
    ctl = _controller(sg, journal)
    try:
        return ctl.set(sg.name, assignments, BOTH)
    finally:
        ctl.close()


class FailNth:
    """fs.write that raises OSError(err) on its Nth call (and only then)."""

    def __init__(self, n, err, before=None):
        self.n, self.err, self.before, self.calls = n, err, before, 0
        self.real = fs.write

    def __call__(self, path, data):
        self.calls += 1
        if self.calls == self.n:
            if self.before:
                self.before()
                return self.real(path, data)  # the kernel's own answer, after the sabotage
            raise OSError(self.err, os.strerror(self.err), path)
        return self.real(path, data)


@pytest.fixture
def seeded(scratch_guest, tmp_path):
    journal = tmp_path / "journal.db"
    _set(scratch_guest, journal, SET_B)  # a journal with config and history, and live values
    return scratch_guest, journal


@pytest.mark.parametrize("err", ERRNOS, ids=[errno.errorcode[e] for e in ERRNOS])
def test_a_failing_write_at_every_position_restores_everything(seeded, monkeypatch, err):
    sg, journal = seeded
    target = SET_A
    n = 0
    while True:
        n += 1
        files, jsnap = _files(sg), snapshot_journal(journal)
        fail = FailNth(n, err)
        monkeypatch.setattr(fs, "write", fail)
        try:
            _set(sg, journal, target)
        except CgctlError as exc:
            monkeypatch.setattr(fs, "write", fail.real)
            assert exc.errno == err, exc
            assert isinstance(exc, CgroupNotFound if err == errno.ENOENT else KernelRefused), exc
            assert fail.calls >= n
            assert _files(sg) == files, f"write {n} failed with {errno.errorcode[err]}: not restored"
            assert snapshot_journal(journal) == jsnap, f"write {n}: the journal changed"
            continue
        monkeypatch.setattr(fs, "write", fail.real)
        break
    # the set gets through once N is past its last write: the values are in, the journal has them
    writes = n - 1
    assert writes >= 8, f"only {writes} writes: the set was meant to touch many files"
    assert sg.read("memory", "memory.limit_in_bytes") == str(512 * 2**20)
    assert sg.read("cpu", "cpu.cfs_quota_us", "vcpu0") == "20000"
    with _controller(sg, journal).journal(create=False) as j:
        assert j.get_config(UUID)[("cpu_shares", "")] == "300"


def _vanish(sg):
    """The guest stops: its process is killed and libvirt removes its groups."""
    sg.proc.send_signal(signal.SIGKILL)
    sg.proc.wait()
    for parent in sg.parents:
        base = os.path.join(parent, sg.group)
        for d, subdirs, _ in os.walk(base, topdown=False):
            for s in subdirs:
                os.rmdir(os.path.join(d, s))
        os.rmdir(base)


@pytest.mark.parametrize("nth", [1, 4, 7])
def test_group_removed_mid_apply_is_a_clean_failure(real_host, tmp_path, monkeypatch, nth):
    from tests.realcg.conftest import ScratchGuest
    sg = ScratchGuest(real_host, f"v{uuidlib.uuid4().hex[:6]}").create()
    try:
        journal = tmp_path / "journal.db"
        _set(sg, journal, SET_B)
        jsnap = snapshot_journal(journal)
        fail = FailNth(nth, None, before=lambda: _vanish(sg))
        monkeypatch.setattr(fs, "write", fail)
        with pytest.raises(CgroupNotFound) as info:
            _set(sg, journal, SET_A)
        monkeypatch.setattr(fs, "write", fail.real)
        assert "vanished" in str(info.value) or "gone" in str(info.value), info.value
        assert snapshot_journal(journal) == jsnap
    finally:
        sg.destroy()


def test_real_ebusy_limit_below_usage(seeded):
    """The kernel's own EBUSY: a hard limit below what the guest's process uses (no swap here)."""
    sg, journal = seeded
    # the hog allocates only once it sits in the group: v1 does not move a charge with a process
    hog = subprocess.Popen([sys.executable, "-c",
                            "import sys,time; sys.stdin.readline(); b=bytearray(48<<20); "
                            "b[::4096]=b'x'*len(b[::4096]); print('ready',flush=True); "
                            "time.sleep(600)"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        with open(sg.file("memory", "cgroup.procs"), "w") as f:
            f.write(str(hog.pid))
        hog.stdin.write("go\n")
        hog.stdin.flush()
        assert hog.stdout.readline().strip() == "ready"
        files, jsnap = _files(sg), snapshot_journal(journal)
        with pytest.raises(KernelRefused) as info:
            _set(sg, journal, ["cpu_shares=222", "hard_limit=8M", "swap_hard_limit=8M",
                               "soft_limit=4M"])
        if info.value.errno != errno.EBUSY:
            pytest.fail(f"expected EBUSY, got {info.value}")
        assert "uses" in str(info.value)  # says how much the guest uses
        assert _files(sg) == files
        assert snapshot_journal(journal) == jsnap
    finally:
        hog.send_signal(signal.SIGKILL)
        hog.wait()


def test_real_einval_parent_quota_below_vcpu_quota(seeded, monkeypatch):
    """v1 refuses a parent CFS quota below a child's (EINVAL) after earlier writes went in."""
    sg, journal = seeded
    _set(sg, journal, ["global_quota=unlimited", "vcpu_quota=50000", "global_period=100000"])
    files, jsnap = _files(sg), snapshot_journal(journal)
    count = FailNth(0, None)  # never fails: counts
    monkeypatch.setattr(fs, "write", count)
    with pytest.raises(KernelRefused) as info:
        # memory, cpu_shares and weight are written first; the global quota is refused
        _set(sg, journal, ["hard_limit=300M", "cpu_shares=333", "weight=333",
                           "global_quota=10000"])
    assert info.value.errno == errno.EINVAL, info.value
    assert count.calls >= 7, "3 writes, the refused one, 3 restores"
    assert _files(sg) == files
    assert snapshot_journal(journal) == jsnap

"""The per-guest lock (cgctl/core/guestlock.py) and the controller holding it around an apply.

Real files, real flock, real threads and processes; the cgroups are a dict (the kernel is
faked at ``live.set_live``), the journal is a real SQLite file. The real-guest race is
tests/libvirt/test_lost_update.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading

import pytest

from cgctl import consts
from cgctl.core import controller, guestlock, live
from cgctl.host import runfiles
from cgctl.core.controller import Controller
from cgctl.core.guestlock import GuestBusy
from cgctl.errors import CgctlError

U = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def lockdir(tmp_path, monkeypatch):
    d = tmp_path / "run"
    monkeypatch.setattr(consts, "HOOK_RUN_DIR", str(d))
    return d


def _holder(lockdir):
    """Another process holding the guest's lock until its stdin closes."""
    code = ("import sys; sys.path.insert(0, %r); from cgctl import consts; from cgctl.core import guestlock; "
            "consts.HOOK_RUN_DIR = %r\n"
            "with guestlock.hold(%r, wait=5):\n"
            "    print('held', flush=True); sys.stdin.read()\n" % (ROOT, str(lockdir), U))
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _release(p):
    p.stdin.close()
    assert p.wait(timeout=10) == 0
    p.stdout.close()


def test_another_process_holding_the_lock_makes_a_bounded_wait_fail_with_one_line(lockdir):
    p = _holder(lockdir)
    try:
        with pytest.raises(GuestBusy) as e:
            with guestlock.hold(U, wait=0.2, guest="web1"):
                pytest.fail("entered a lock another process holds")
        msg = str(e.value)
        assert "\n" not in msg and "web1" in msg and "did not finish within 0.2 s" in msg
    finally:
        _release(p)
    with guestlock.hold(U, wait=0.2):   # let go: free again
        pass
    assert os.listdir(lockdir) == []    # the holder removes its file


def test_a_waiter_gets_the_lock_when_the_holder_lets_go(lockdir):
    p = _holder(lockdir)
    got = threading.Event()

    def waiter():
        with guestlock.hold(U, wait=30):
            got.set()

    t = threading.Thread(target=waiter)
    t.start()
    assert not got.wait(0.3)            # held elsewhere: still waiting
    _release(p)
    t.join(30)
    assert got.is_set()
    assert os.listdir(lockdir) == []


def test_threads_exclude_each_other_and_one_thread_may_reenter(lockdir):
    inside, order = threading.Event(), []
    with guestlock.hold(U):
        with guestlock.hold(U, wait=0):  # re-entered by the holder: no wait, no deadlock
            order.append("nested")

        def other():
            with guestlock.hold(U, wait=30):
                order.append("other")
                inside.set()

        t = threading.Thread(target=other)
        t.start()
        assert not inside.wait(0.3)
        order.append("holder done")
    t.join(30)
    assert order == ["nested", "holder done", "other"]


def test_another_guest_is_not_held_up(lockdir):
    p = _holder(lockdir)
    try:
        with guestlock.hold("3f2504e0-4f89-41d3-9a0c-0305e82c3302", wait=0):
            pass
    finally:
        _release(p)


def test_a_symlink_planted_at_the_lock_path_is_not_followed(lockdir, tmp_path):
    os.makedirs(lockdir, mode=0o700)
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    os.symlink(target, guestlock.path_for(U))
    with pytest.raises(CgctlError, match="cannot open the guest's lock file"):
        with guestlock.hold(U, wait=0.1):
            pytest.fail("locked through a symlink")
    assert target.read_text() == "keep me\n"


def test_a_lock_directory_others_can_write_is_refused(lockdir):
    os.makedirs(lockdir)
    os.chmod(lockdir, 0o777)
    with pytest.raises(CgctlError, match="writable by its owner alone"):
        with guestlock.hold(U, wait=0.1):
            pytest.fail("locked in a directory anyone can write")


def test_not_a_uuid_is_refused(lockdir):
    with pytest.raises(CgctlError):
        guestlock.path_for("../../etc/passwd")


# ------------------------------------------------------------------ the controller's applies

class FakeKernel:
    """The guest's live values: what ``live.set_live`` wrote, by parameter."""

    def __init__(self, monkeypatch):
        self.values = {}
        monkeypatch.setattr(live, "set_live", self.set_live)

    def set_live(self, router, groups, settings, devnums=None):
        changes = []
        for s in settings.values():
            changes.append(live.Change(s.param.name, s.device, self.values.get(s.param.name),
                                       s.text()))
            self.values[s.param.name] = s.text()
        return changes, []


@pytest.fixture
def ctl(tmp_path, lockdir, monkeypatch):
    guest = runfiles.Guest(name="web1", uuid=U, driver="qemu", uri="qemu:///system",
                          running=True, persistent=True, pid=os.getpid())
    c = Controller(journal_path=str(tmp_path / "j.db"), host=object())
    monkeypatch.setattr(c, "find_guest", lambda ident: guest)
    monkeypatch.setattr(c, "groups", lambda g: object())
    monkeypatch.setattr(Controller, "router", property(lambda self: None))
    kernel = FakeKernel(monkeypatch)
    c.set("web1", ["hard_limit=600M"], controller.BOTH)
    yield c, guest, kernel
    c.close()


def _race(ctl, monkeypatch, tmp_path):
    """An apply reads the config; a `set --perm` by another controller runs before it writes
    (or, if the guest's lock keeps it out, when the apply is done)."""
    c, guest, kernel = ctl
    other = Controller(journal_path=c.journal_path, host=object())
    monkeypatch.setattr(other, "find_guest", lambda ident: guest)
    monkeypatch.setattr(other, "groups", lambda g: object())
    setter = threading.Thread(target=lambda: other.set("web1", ["hard_limit=700M"],
                                                       controller.BOTH))

    def window():                       # between the apply's config read and its write
        setter.start()
        setter.join(0.5)                # done unless the lock keeps it waiting

    monkeypatch.setattr(controller, "_test_window", window)
    c.apply_config(guest)
    setter.join(30)
    config = other.journal().get_config(U)[("hard_limit", "")]
    other.close()
    return kernel.values["hard_limit"], config


def test_a_set_during_an_apply_waits_and_wins(ctl, monkeypatch, tmp_path):
    assert _race(ctl, monkeypatch, tmp_path) == ("700M", "700M")


def test_without_the_lock_the_same_interleaving_loses_the_set(ctl, monkeypatch, tmp_path):
    """The control: the test above can fail. No lock, and the apply writes the stale 600M."""
    monkeypatch.setattr(Controller, "locked", lambda self, guest: contextlib.nullcontext())
    assert _race(ctl, monkeypatch, tmp_path) == ("600M", "700M")


def test_apply_once_is_decided_under_the_lock(ctl):
    c, guest, kernel = ctl
    assert c.apply_config(guest, once=True) is not None    # first apply to this instance
    c.set("web1", ["hard_limit=650M"], controller.LIVE)    # a --live change afterwards
    assert c.apply_config(guest, once=True) is None        # kept: not re-applied
    assert kernel.values["hard_limit"] == "650M"

"""cgctl/core/controller.py on a faked cgroup v1 host with a real journal (no root, no libvirt):
the modes and what each leaves in the kernel files and the journal, the undo of the live
writes when the journal cannot commit, the per-parameter fallback of an apply, and a guest
the host does not know. The real-libvirtd runs of the same claims are in tests/libvirt."""

from __future__ import annotations

import errno
import os
import sqlite3

import pytest

from cgctl.core import controller
from cgctl.core.controller import BOTH, CONFIG, CURRENT, LIVE, Controller
from cgctl.errors import (GuestNotFound, GuestNotRunning, GuestTransient, JournalError,
                          KernelRefused, Unsupported, UsageError)
from cgctl.core.journal import Journal, Transaction
from tests.fakekernel import FakeKernel
from tests.unit.conftest import read, shares

UUID = "d30eb5b3-72ba-4af9-8591-0ef552da6d8c"
OFF_UUID = "2a29237e-15bb-4467-a36f-07f04fc1adcf"
G = 2**30
V1_UNLIMITED = "9223372036854771712"


@pytest.fixture
def vm(fake_host):
    return fake_host.running("web1", UUID)


def mem(m, name="memory.limit_in_bytes"):
    return read(os.path.join(m.libvirt["memory"], name))


def rows(ctl, uuid=UUID):
    """History as (command, mode, param, old, new, outcome) tuples, oldest first."""
    return [(r.command, r.mode, r.param, r.old_value, r.new_value, r.outcome)
            for r in ctl.journal().history(uuid)]


def config(ctl, uuid=UUID):
    return ctl.journal().get_config(uuid)


# --------------------------------------------------------------------------- modes

def test_live_writes_the_kernel_and_history_not_the_config(ctl, vm):
    o = ctl.set("web1", ["hard_limit=1G", "cpu_shares=512"], LIVE)
    assert o.mode == LIVE
    assert mem(vm) == str(G)
    assert shares(vm) == "512"
    assert config(ctl) == {}
    assert sorted(rows(ctl)) == [("set", "live", "cpu_shares", "1024", "512", "ok"),
                                 ("set", "live", "hard_limit", "unlimited", "1G", "ok")]


def test_config_writes_the_journal_not_the_kernel(ctl, vm):
    o = ctl.set("web1", ["hard_limit=1G"], CONFIG)
    assert o.mode == CONFIG
    assert mem(vm) == V1_UNLIMITED
    assert config(ctl) == {("hard_limit", ""): "1G"}
    # old is the config's old value (none), not the live one
    assert rows(ctl) == [("set", "config", "hard_limit", None, "1G", "ok")]


def test_perm_writes_both(ctl, vm):
    ctl.set("web1", ["hard_limit=2G"], CONFIG)
    o = ctl.set("web1", ["hard_limit=1G"], BOTH)
    assert o.mode == BOTH
    assert mem(vm) == str(G)
    assert config(ctl) == {("hard_limit", ""): "1G"}
    # a live+config change reports the live old value
    assert rows(ctl)[-1] == ("set", "live+config", "hard_limit", "unlimited", "1G", "ok")


def test_current_is_live_on_a_running_guest(ctl, vm):
    assert ctl.set("web1", ["hard_limit=1G"], CURRENT).mode == LIVE
    assert mem(vm) == str(G)
    assert config(ctl) == {}


def test_current_is_config_on_a_stopped_guest(ctl, fake_host):
    fake_host.stopped_guest("off1", OFF_UUID)
    assert ctl.set("off1", ["hard_limit=1G"], CURRENT).mode == CONFIG
    assert config(ctl, OFF_UUID) == {("hard_limit", ""): "1G"}
    assert rows(ctl, OFF_UUID) == [("set", "config", "hard_limit", None, "1G", "ok")]


@pytest.mark.parametrize("mode", [LIVE, BOTH])
def test_live_on_a_stopped_guest_is_refused_and_records_nothing(ctl, fake_host, mode):
    fake_host.stopped_guest("off1", OFF_UUID)
    with pytest.raises(GuestNotRunning):
        ctl.set("off1", ["hard_limit=1G"], mode)
    assert config(ctl, OFF_UUID) == {}
    assert rows(ctl, OFF_UUID) == []


@pytest.mark.parametrize("mode", [CONFIG, BOTH])
def test_config_of_a_transient_guest_is_refused(ctl, fake_host, mode):
    m = fake_host.running("tmp1", UUID, persistent=False)
    with pytest.raises(GuestTransient) as exc:
        ctl.set("tmp1", ["hard_limit=1G"], mode)
    assert exc.value.exit_code == 2
    assert mem(m) == V1_UNLIMITED
    assert rows(ctl) == []


def test_found_by_uuid_too(ctl, vm):
    assert ctl.set(UUID.upper(), ["cpu_shares=300"], LIVE).guest.name == "web1"
    assert shares(vm) == "300"


def test_a_guest_the_host_does_not_know_is_an_error_and_writes_nothing(ctl, vm):
    with pytest.raises(GuestNotFound):
        ctl.set("nosuch", ["hard_limit=1G"], CURRENT)
    assert mem(vm) == V1_UNLIMITED
    assert ctl.journal().guests() == []


def test_a_stale_run_file_is_not_a_running_guest(ctl, vm, fake_host):
    """libvirt's files left after a crash, the PID now someone else's: not web1."""
    fake_host.fs.get_object(f"/proc/{vm.pid}/cmdline").set_contents("/bin/bash\0")
    with pytest.raises(GuestNotFound):
        ctl.set("web1", ["hard_limit=1G"], LIVE)
    assert mem(vm) == V1_UNLIMITED


def test_unknown_guest_with_libvirts_test_driver(fake_host, vm, monkeypatch):
    """The same with the real virt.lookup on test:///default (needs libvirt-python)."""
    pytest.importorskip("libvirt")
    import cgctl.virt as virt
    monkeypatch.undo()   # the real virt.lookup again
    ctl = Controller(journal_path=fake_host.journal_path, host=fake_host.host(),
                     uris=["test:///default"])
    try:
        with pytest.raises(GuestNotFound) as exc:
            ctl.set("nosuch", ["hard_limit=1G"], CURRENT)
        assert "test:///default" in str(exc.value)
        assert virt.lookup.__module__ == "cgctl.virt"
        assert mem(vm) == V1_UNLIMITED
        assert ctl.journal().guests() == []
    finally:
        ctl.close()


def test_a_bad_value_touches_nothing(ctl, vm):
    with pytest.raises(UsageError):
        ctl.set("web1", ["hard_limit=1G", "cpu_shares=1"], LIVE)   # shares: 2..262144
    assert (mem(vm), shares(vm)) == (V1_UNLIMITED, "1024")
    assert rows(ctl) == []


def test_a_kernel_refusal_leaves_files_and_journal_as_they_were(ctl, vm, monkeypatch):
    FakeKernel(monkeypatch, fail_on={"cpu.shares": errno.EINVAL})
    with pytest.raises(KernelRefused):
        ctl.set("web1", ["hard_limit=1G", "cpu_shares=512"], BOTH)
    assert (mem(vm), shares(vm)) == (V1_UNLIMITED, "1024")
    assert config(ctl) == {} and rows(ctl) == []


# --------------------------------------------------------------------------- undo

class _NoCommit:
    """The journal's connection, except that COMMIT fails (a full or failing disk)."""

    def __init__(self, db):
        self._db = db

    def execute(self, sql, *args):
        if sql.strip().upper() == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


def test_live_writes_are_undone_when_the_journal_cannot_commit(ctl, vm):
    ctl.set("web1", ["cpu_shares=300"], LIVE)
    j = ctl.journal()
    j._db = _NoCommit(j._db)
    with pytest.raises(JournalError) as exc:
        ctl.set("web1", ["hard_limit=1G", "cpu_shares=512"], BOTH)
    assert "cannot commit" in str(exc.value)
    assert (mem(vm), shares(vm)) == (V1_UNLIMITED, "300")   # as before the failed change
    j._db = j._db._db
    assert config(ctl) == {}
    assert rows(ctl) == [("set", "live", "cpu_shares", "1024", "300", "ok")]


def test_live_writes_are_undone_when_recording_raises(ctl, vm, monkeypatch):
    def broken(self, *a, **kw):
        raise JournalError("cannot write to journal: database or disk is full")
    monkeypatch.setattr(Transaction, "add_history", broken)
    with pytest.raises(JournalError):
        ctl.set("web1", ["hard_limit=1G", "cpu_shares=512"], LIVE)
    assert (mem(vm), shares(vm)) == (V1_UNLIMITED, "1024")
    monkeypatch.undo()
    assert rows(ctl) == []


def test_an_unopenable_journal_writes_nothing(fake_host, vm):
    # the journal sees the real filesystem: a directory that is a character device
    ctl = Controller(journal_path="/dev/null/journal.db", host=fake_host.host())
    with pytest.raises(JournalError) as exc:
        ctl.set("web1", ["hard_limit=1G"], LIVE)
    assert exc.value.errno == errno.ENOTDIR
    assert mem(vm) == V1_UNLIMITED


# --------------------------------------------------------------------------- apply

def configure(fake_host, uuid=UUID, name="web1", **settings):
    with Journal(fake_host.journal_path) as j, j.transaction() as tx:
        tx.set_config(uuid, name, "qemu", {(k, ""): v for k, v in settings.items()})


def test_apply_writes_the_config_and_records_the_instance(ctl, vm, fake_host):
    configure(fake_host, hard_limit="1G", cpu_shares="512")
    guest = ctl.find_guest("web1")
    o = ctl.apply_config(guest, source="event", command="start")
    assert not o.errors
    assert (mem(vm), shares(vm)) == (str(G), "512")
    assert ctl.journal().get_instance(UUID).pid == vm.pid
    assert sorted(rows(ctl))[-2:] == [("start", "live", "cpu_shares", "1024", "512", "ok"),
                                      ("start", "live", "hard_limit", "unlimited", "1G", "ok")]


def test_apply_falls_back_to_one_parameter_at_a_time(ctl, vm, fake_host, monkeypatch):
    """One setting the kernel refuses does not keep the others away: each is tried alone,
    the refused one is reported and recorded as failed, the rest are written."""
    configure(fake_host, hard_limit="1G", cpu_shares="512", soft_limit="512M")
    kernel = FakeKernel(monkeypatch, fail_on={"cpu.shares": errno.EINVAL})
    o = ctl.apply_config(ctl.find_guest("web1"))
    assert [(type(e), e.param) for e in o.errors] == [(KernelRefused, "cpu_shares")]
    assert sorted(c.param for c in o.changes) == ["hard_limit", "soft_limit"]
    assert mem(vm) == str(G)
    assert mem(vm, "memory.soft_limit_in_bytes") == str(G // 2)
    assert shares(vm) == "1024"
    hist = rows(ctl)
    failed = [r for r in hist if r[5] != "ok"]
    assert len(failed) == 1 and failed[0][2] == "cpu_shares" and "EINVAL" in failed[0][5]
    assert {r[2] for r in hist if r[5] == "ok"} == {"hard_limit", "soft_limit"}
    assert ctl.journal().get_instance(UUID) is not None
    # the whole set was tried first, then one by one
    assert len([p for p, _ in kernel.writes if p.endswith("cpu.shares")]) == 2


def test_apply_of_a_v2_only_setting_on_v1_keeps_the_others(ctl, vm, fake_host):
    configure(fake_host, hard_limit="1G", min_guarantee="256M")
    o = ctl.apply_config(ctl.find_guest("web1"))
    assert [(type(e), e.param) for e in o.errors] == [(Unsupported, "min_guarantee")]
    assert mem(vm) == str(G)


def test_apply_all_at_once_when_nothing_is_refused(ctl, vm, fake_host, monkeypatch):
    configure(fake_host, hard_limit="1G", cpu_shares="512")
    kernel = FakeKernel(monkeypatch)
    ctl.apply_config(ctl.find_guest("web1"))
    assert sorted(os.path.basename(p) for p, _ in kernel.writes) == \
        ["cpu.shares", "memory.limit_in_bytes"]


def test_unset_drops_config_and_leaves_the_kernel(ctl, vm):
    ctl.set("web1", ["hard_limit=1G", "cpu_shares=512"], BOTH)
    o = ctl.unset("web1", ["cpu_shares"])
    assert [(c.param, c.old, c.new) for c in o.changes] == [("cpu_shares", "512", None)]
    assert config(ctl) == {("hard_limit", ""): "1G"}
    assert shares(vm) == "512"
    with pytest.raises(UsageError):
        ctl.unset("web1", ["cpu_shares"])


def test_resolve_mode_is_pure():
    from cgctl.host.runfiles import Guest
    up = Guest("a", UUID, "qemu", "qemu:///system", True, True, 1)
    down = up._replace(running=False, pid=None)
    assert controller.resolve_mode(CURRENT, up) == LIVE
    assert controller.resolve_mode(CURRENT, down) == CONFIG
    assert controller.resolve_mode(CONFIG, down) == CONFIG
    with pytest.raises(GuestTransient):
        controller.resolve_mode(CONFIG, up._replace(persistent=False))

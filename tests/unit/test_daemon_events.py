"""Event dispatch and reconcile of ``cgctl daemon`` with libvirt's in-process test:///default
driver (real lifecycle events, no daemon, no root) and a fake controller that records calls."""

from __future__ import annotations

import logging
import os
import threading
import uuid as uuidlib

import pytest

from tests.testdriver import remove_domains

from cgctl.config import Config
from cgctl.service import daemon as D, reconcile
from cgctl.host import runfiles
from cgctl.core.journal import Journal
from tests.daemonkit import TEST_URI, Recorder, domain_xml, in_process, wait_for

libvirt = pytest.importorskip("libvirt")


@pytest.fixture
def conn():
    """A connection of the test's own to test:///default (shared by the whole process)."""
    c = libvirt.open(TEST_URI)
    made = []

    def define(start=True, name=None):
        uid = str(uuidlib.uuid4())
        dom = c.defineXML(domain_xml(name or f"cgd-{uid[:8]}", uid))
        made.append(dom)
        if start:
            dom.create()
        return dom
    yield define
    remove_domains(libvirt, made)
    c.close()


@pytest.fixture
def rec(tmp_path):
    return Recorder(str(tmp_path / "j.db"))


def make(rec, **kw):
    cfg = Config(uris=(TEST_URI,), journal=rec.journal_path, **kw)
    return D.Daemon(cfg, controller_factory=rec.factory, install_signals=False)


def test_started_applies_the_config_with_source_event(rec, conn):
    with in_process(make(rec)):
        dom = conn(start=False)
        rec.set_config(dom.UUIDString(), dom.name(), {"cpu_shares": "512"})
        dom.create()
        wait_for(lambda: rec.of("apply", dom.UUIDString()), what="an apply")
        dom.destroy()
        dom.create()  # every start, not only the first
        wait_for(lambda: len(rec.of("apply", dom.UUIDString())) == 2, what="a second apply")
    assert {c.source for c in rec.of("apply", dom.UUIDString())} == {"event"}


def test_a_guest_without_config_is_left_alone(rec, conn):
    with in_process(make(rec)):
        bare = conn(start=True)
        marker = conn(start=False)
        rec.set_config(marker.UUIDString(), marker.name(), {"cpu_shares": "512"})
        marker.create()  # events are handled in order: once this one is applied ...
        wait_for(lambda: rec.of("apply", marker.UUIDString()), what="the marker's apply")
    assert rec.of("apply", bare.UUIDString()) == []  # ... the bare guest's is long done


def test_undefined_forgets_and_rename_does_not(rec, conn):
    with in_process(make(rec)):
        renamed = conn(start=False)
        rec.set_config(renamed.UUIDString(), renamed.name(), {"cpu_shares": "512"})
        renamed.rename(renamed.name() + "-new")
        gone = conn(start=False)
        rec.set_config(gone.UUIDString(), gone.name(), {"cpu_shares": "256"})
        gone.undefine()
        wait_for(lambda: rec.of("forget", gone.UUIDString()), what="a forget")
    assert rec.of("forget", renamed.UUIDString()) == []
    with Journal(rec.journal_path) as j:
        assert j.get_config(gone.UUIDString()) == {}
        assert j.get_config(renamed.UUIDString()) == {("cpu_shares", ""): "512"}
        rows = j.history(gone.UUIDString())
    assert rows[-1].source == "event" and rows[-1].command == "undefine"


def test_reconcile_at_start_and_one_failing_guest_does_not_stop_the_others(rec, conn):
    doms = [conn(start=True) for _ in range(3)]
    for d in doms:
        rec.set_config(d.UUIDString(), d.name(), {"cpu_shares": "512"})
    rec.fail.add(doms[0].name())
    with in_process(make(rec)):
        pass  # ready means reconciled
    for d in doms:
        assert [c.source for c in rec.of("apply", d.UUIDString())] == ["reconcile"]


def test_lost_connection_reconnects_and_reconciles_again(rec, conn, caplog):
    caplog.set_level(logging.INFO, logger="cgctl")
    dom = conn(start=True)
    rec.set_config(dom.UUIDString(), dom.name(), {"cpu_shares": "512"})
    d = make(rec, reconnect_initial=0.05)
    with in_process(d):
        link = d.links[TEST_URI]
        gen = link.generation
        d._control.put(("closed", TEST_URI, gen, "end of file (libvirtd went away)"))
        wait_for(lambda: len(rec.of("apply", dom.UUIDString())) == 2, what="a second reconcile")
        wait_for(lambda: d.links[TEST_URI].reconciled, what="reconciled again")
        assert d.links[TEST_URI].generation > gen
        # a close of the old connection arriving late changes nothing
        d._control.put(("closed", TEST_URI, gen, "late"))
        dom2 = conn(start=False)
        rec.set_config(dom2.UUIDString(), dom2.name(), {"cpu_shares": "256"})
        dom2.create()
        wait_for(lambda: rec.of("apply", dom2.UUIDString()), what="events on the new connection")
    text = caplog.text
    assert "lost connection to test:///default: end of file" in text
    assert text.count("connected to test:///default") == 2
    assert "late" not in text


def _same_instance_daemon(rec, tmp_path):
    d = make(rec)
    d.worker.ctl = rec.factory(journal_path=rec.journal_path, uris=())
    return d


def test_reconcile_leaves_the_same_instance_alone(rec, tmp_path):
    """Same PID + start time as the last apply: its --live changes stay; else apply."""
    uid = str(uuidlib.uuid4())
    me = runfiles.Guest(name="me", uuid=uid, driver="qemu", uri="qemu:///system",
                       running=True, persistent=True, pid=os.getpid())
    rec.set_config(uid, "me", {"cpu_shares": "512"})
    d = _same_instance_daemon(rec, tmp_path)
    assert reconcile.reconcile_guest(d.worker, me) == "applied"  # never applied: no instance yet
    pid, start = runfiles.instance_of(os.getpid())
    with Journal(rec.journal_path) as j, j.transaction() as tx:
        tx.set_instance(uid, pid, start)
    assert reconcile.reconcile_guest(d.worker, me) == "unchanged"
    with Journal(rec.journal_path) as j, j.transaction() as tx:
        tx.set_instance(uid, pid, start + 0.02)  # two clock ticks later: another run
    assert reconcile.reconcile_guest(d.worker, me) == "applied"
    with Journal(rec.journal_path) as j, j.transaction() as tx:
        tx.set_instance(uid, pid, start - 5)  # same PID, earlier process: a reused PID
    assert reconcile.reconcile_guest(d.worker, me) == "applied"
    assert [c.source for c in rec.of("apply", uid)] == ["reconcile"] * 3
    d.worker.ctl.close()


def test_a_block_device_event_reapplies_in_the_worker(rec, conn, monkeypatch):
    """udev's delivery thread only hands the disk over; the worker re-applies it with its own
    Controller and the running guests; the watcher stops with the service."""
    from cgctl.host import udevwatch
    seen = {}

    class FakeWatcher:  # pyudev's netlink monitor is not what this test is about
        def __init__(self, callback):
            seen["callback"] = callback

        def start(self):
            return self

        def stop(self):
            seen["stopped"] = True

    def reapply(ctl, running, majmin, command):
        seen.update(ctl=ctl, running=running, majmin=majmin, command=command,
                    thread=threading.current_thread().name)
    monkeypatch.setattr(udevwatch, "DeviceWatcher", FakeWatcher)
    monkeypatch.setattr(udevwatch, "reapply_device", reapply)
    d = D.Daemon(Config(uris=(TEST_URI,), journal=rec.journal_path),
                 controller_factory=rec.factory, install_signals=False)
    with in_process(d):
        wait_for(lambda: "callback" in seen, what="the watcher started once ready")
        seen["callback"]("/dev/loop7", "7:7", "change")
        wait_for(lambda: "ctl" in seen, what="the re-apply")
        assert seen["ctl"] is d.worker.ctl and seen["thread"] == "cgctl-worker"
        assert seen["majmin"] == "7:7" and seen["command"] == "device"
        assert seen["running"]  # test:///default's own "test" domain runs
    assert seen["stopped"]


def test_watch_devices_false_starts_no_watcher(rec, conn, monkeypatch):
    from cgctl.host import udevwatch
    monkeypatch.setattr(udevwatch, "DeviceWatcher", None)  # any use would fail
    d = D.Daemon(Config(uris=(TEST_URI,), journal=rec.journal_path, watch_devices=False),
                 controller_factory=rec.factory, install_signals=False)
    with in_process(d):
        pass
    assert d._stop_watcher is None


def test_a_started_event_during_a_reconcile_runs_between_two_guests(rec, conn):
    """Events go first: a STARTED job queued while a reconcile works through its guests is run
    after the guest in progress, not after the whole reconcile (cgctl/service/worker.py)."""
    from cgctl import virt
    from cgctl.service import worker as W
    doms = [conn(start=True) for _ in range(3)]
    for d in doms:
        rec.set_config(d.UUIDString(), d.name(), {"cpu_shares": "512"})
    late = conn(start=True)
    rec.set_config(late.UUIDString(), late.name(), {"cpu_shares": "256"})
    virt.start_event_loop()
    econn = virt.EventConnection(TEST_URI, on_event=lambda ev: None,
                                 on_close=lambda r: None).open()
    d = _same_instance_daemon(rec, None)
    ctl = d.worker.ctl
    apply_config = ctl.apply_config

    def first_apply_brings_an_event(guest, **kw):
        if kw.get("source") == "reconcile" and not rec.calls:
            ev = virt.LifecycleEvent(TEST_URI, late.name(), late.UUIDString(), "started",
                                     "booted")
            d.worker.put(W.Job("started", TEST_URI, econn, 1, event=ev))
        return apply_config(guest, **kw)
    ctl.apply_config = first_apply_brings_an_event

    class Ours:  # the reconcile's list: our three guests (the test driver holds others' too)
        def running_guests(self):
            return [g for g in econn.running_guests()
                    if g.uuid in {x.UUIDString() for x in doms}]
    try:
        assert reconcile.reconcile(d.worker, W.Job("reconcile", TEST_URI, Ours(), 1))
    finally:
        ctl.close()
        econn.close()
    assert [(c.name, c.source) for c in rec.calls][1] == (late.name(), "event")
    assert sorted(c.name for c in rec.calls if c.source == "reconcile") == \
        sorted(x.name() for x in doms)


def test_ready_freezes_what_the_start_left_out_of_the_collector(rec):
    """cgctl/service/daemon.py ``settle_memory``: at ready the service's start-up objects go
    to the permanent generation, so a full collection on the worker (between an event and its
    writes) no longer walks them (docs/performance.md, section 2 A)."""
    import gc
    gc.unfreeze()
    try:
        with in_process(make(rec)) as d:
            assert d.ready
            assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()

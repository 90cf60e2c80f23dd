"""The reconcile's batched journal commits (cgctl/core/batch.py) on a faked cgroup v1 host with
a real journal and a real Controller, and the worker's "events go first" (cgctl/service/worker.py
``take_events``): what a batch holds, when it commits, what order the jobs keep."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from cgctl.config import Config
from cgctl.core import batch as B, guestlock
from cgctl.host.runfiles import Guest
from cgctl.service import daemon as D, reconcile, worker as W
from tests.unit.conftest import read

UUIDS = [f"5e1f0000-0000-4000-8000-{i:012d}" for i in range(1, 6)]
HARD = str(300 << 20)


@pytest.fixture
def guests(fake_host, ctl):
    out = []
    with ctl.journal().transaction() as tx:
        for i, uid in enumerate(UUIDS, 1):
            m = fake_host.running(f"vm{i}", uid, id=i)
            tx.set_config(uid, f"vm{i}", "qemu", {("hard_limit", ""): "300M"})
            out.append((Guest(name=f"vm{i}", uuid=uid, driver="qemu", uri="qemu:///system",
                              running=True, persistent=True, pid=m.pid), m))
    return out


def _worker(ctl, journal_path):
    d = D.Daemon(Config(journal=journal_path, uris=("test:///default",)), install_signals=False)
    d.worker.ctl = ctl
    return d.worker


class _Lister:
    def __init__(self, guests):
        self.guests = guests

    def running_guests(self):
        return self.guests


def _count_commits(monkeypatch, journal) -> list:
    commits = []
    real = journal.transaction

    @contextlib.contextmanager
    def counted():
        with real() as tx:
            yield tx
        commits.append(time.monotonic())
    monkeypatch.setattr(journal, "transaction", counted)
    return commits


def test_a_reconcile_commits_its_guests_in_batches(fake_host, ctl, guests, monkeypatch):
    monkeypatch.setattr(B, "MAX_GUESTS", 2)
    monkeypatch.setattr(B, "MAX_AGE_S", 3600.0)
    commits = _count_commits(monkeypatch, ctl.journal())
    w = _worker(ctl, fake_host.journal_path)
    assert reconcile.reconcile(w, W.Job("reconcile", "test:///default",
                                        _Lister([g for g, _ in guests]), 1))
    assert len(commits) == 3  # 2 + 2 + 1 guests, not one fsynced commit per guest
    j = ctl.journal()
    for (g, m) in guests:
        assert read(f"{m.libvirt['memory']}/memory.limit_in_bytes") == HARD
        assert j.get_instance(g.uuid) is not None
        assert [r.command for r in j.history(g.uuid)] == ["reconcile"]
    stamps = [j.history(g.uuid)[0].at for g, _ in guests]
    assert stamps == sorted(stamps)  # each guest's rows carry the time of its own apply


def _busy_for_another_thread(uuid: str) -> bool:
    busy = []

    def other_writer():
        try:
            with guestlock.hold(uuid, wait=0):
                busy.append(False)
        except guestlock.GuestBusy:
            busy.append(True)
    t = threading.Thread(target=other_writer)
    t.start()
    t.join()
    return busy[0]


def test_a_batch_holds_each_guests_lock_until_it_commits(ctl, guests):
    (g, _), = guests[:1]
    b = B.Batch(ctl.journal())
    ctl.apply_config(g, source="reconcile", command="reconcile", batch=b)
    assert ctl.journal().get_instance(g.uuid) is None  # not recorded yet ...
    assert _busy_for_another_thread(g.uuid)  # ... and no other writer can get in before it is
    b.commit()
    assert ctl.journal().get_instance(g.uuid) is not None
    assert not _busy_for_another_thread(g.uuid)


def test_a_busy_guest_makes_the_batch_commit_before_waiting_for_it(ctl, guests):
    (g1, _), (g2, _) = guests[:2]
    b = B.Batch(ctl.journal())
    ctl.apply_config(g1, source="reconcile", command="reconcile", batch=b)
    held, seen = threading.Event(), []

    def holder():  # holds g2 until g1 is recorded (or 5 s): a batch must not wait holding g1
        from cgctl.core.journal import Journal
        with guestlock.hold(g2.uuid, wait=0), Journal(ctl.journal_path) as j:
            held.set()
            end = time.monotonic() + 5
            while j.get_instance(g1.uuid) is None and time.monotonic() < end:
                time.sleep(0.01)
            seen.append(j.get_instance(g1.uuid) is not None)
    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    ctl.apply_config(g2, source="reconcile", command="reconcile", batch=b)
    t.join()
    assert seen == [True]
    b.commit()
    assert ctl.journal().get_instance(g2.uuid) is not None


def test_a_failed_commit_records_nothing_and_lets_the_locks_go(ctl, guests, monkeypatch):
    from cgctl.errors import JournalError
    (g, m), = guests[:1]
    b = B.Batch(ctl.journal())
    ctl.apply_config(g, source="reconcile", command="reconcile", batch=b)

    @contextlib.contextmanager
    def refused():
        raise JournalError("disk full for the test")
        yield
    monkeypatch.setattr(ctl.journal(), "transaction", refused)
    with pytest.raises(JournalError):
        b.commit()
    monkeypatch.undo()
    assert ctl.journal().get_instance(g.uuid) is None
    assert not _busy_for_another_thread(g.uuid)
    assert read(f"{m.libvirt['memory']}/memory.limit_in_bytes") == HARD  # the next reconcile


def test_take_events_takes_lifecycle_jobs_and_leaves_the_others_in_order():
    w = W.Worker(lambda **kw: None, lambda msg: None)
    jobs = [W.Job("call", payload=(None, "a")), W.Job("started", "u"), W.Job("reconcile", "u"),
            W.Job("defined", "u"), W.Job("close", "u"), W.Job("undefined", "u")]
    for job in jobs:
        w.put(job)
    w._jobs.put(W._STOP)  # noqa: SLF001
    w.put(W.Job("started", "late"))  # after a stop: left for the stop to drop
    assert [j.kind for j in w.take_events()] == ["started", "defined", "undefined"]
    rest = []
    while not w._jobs.empty():  # noqa: SLF001
        rest.append(w._jobs.get_nowait())  # noqa: SLF001
    assert rest[:3] == [jobs[0], jobs[2], jobs[4]] and rest[3] is W._STOP  # noqa: SLF001
    assert rest[4].uri == "late"
    assert w.take_events() == []


class _EventConn:
    """What a STARTED job asks its connection: the guest and its XML (no metadata)."""

    def __init__(self, guests):
        self.by_uuid = {g.uuid: g for g in guests}

    def guest(self, uuid):
        return self.by_uuid[uuid]

    def domain_xml(self, uuid, inactive=False):
        return "<domain/>"


def test_an_event_for_a_guest_of_the_batch_comes_after_its_records(fake_host, ctl, guests,
                                                                   monkeypatch):
    """vm1 is applied (batch pending), then its STARTED event arrives: the batch commits before
    the event runs, so the journal has the reconcile's rows, then the event's. vm3's event (vm2
    pending), for a guest not in the batch, runs without a commit in front of it."""
    from cgctl.virt import LifecycleEvent
    monkeypatch.setattr(B, "MAX_AGE_S", 3600.0)
    gs = [g for g, _ in guests]
    w = _worker(ctl, fake_host.journal_path)
    conn = _EventConn(gs)
    commits = _count_commits(monkeypatch, ctl.journal())
    apply_config = ctl.apply_config
    order = []

    def apply_and_queue(guest, **kw):
        out = apply_config(guest, **kw)
        order.append((guest.name, kw["source"], len(commits)))
        if kw["source"] == "reconcile" and guest.name in ("vm1", "vm2"):
            g = gs[0] if guest.name == "vm1" else gs[2]  # vm1's own event; then vm3's
            ev = LifecycleEvent("test:///default", g.name, g.uuid, "started", "booted")
            w.put(W.Job("started", "test:///default", conn, 1, event=ev))
        return out
    monkeypatch.setattr(ctl, "apply_config", apply_and_queue)
    assert reconcile.reconcile(w, W.Job("reconcile", "test:///default", _Lister(gs), 1))
    j = ctl.journal()
    assert [r.source for r in j.history(gs[0].uuid)] == ["reconcile", "event"]
    # commits seen after each apply: vm1's batch committed (1) before vm1's event (2); vm3's
    # event, queued with vm2 pending, commits without a batch commit in front of it (3)
    assert order[:4] == [("vm1", "reconcile", 0), ("vm1", "event", 2), ("vm2", "reconcile", 2),
                         ("vm3", "event", 3)]

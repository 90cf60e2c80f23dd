"""A reconcile's per-guest cost outside the kernel writes (docs/performance.md, section 3 F), on
a faked cgroup v1 host with a real journal and a real Controller: the config read once per guest
(under its lock), one log line per guest at info (the settings at debug, not even formatted when
debug is off), the batch's records written with one ``executemany`` per table."""

from __future__ import annotations

import logging

import pytest

from cgctl.core import batch as B
from cgctl.core import profiles
from cgctl.core.journal import Journal
from cgctl.host.runfiles import Guest
from cgctl.service import reconcile, worker as W
from tests.unit.conftest import read
from tests.unit.test_reconcile_batch import HARD, UUIDS, _Lister, _worker, guests  # noqa: F401

NO_CONFIG = "5e1f0000-0000-4000-8000-000000000099"


def _run(ctl, fake_host, gs):
    w = _worker(ctl, fake_host.journal_path)
    assert reconcile.reconcile(w, W.Job("reconcile", "test:///default", _Lister(gs), 1))


def _count_config_reads(monkeypatch) -> list:
    reads = []
    real = profiles.effective

    def counted(journal, uuid, *a, **kw):
        reads.append(uuid)
        return real(journal, uuid, *a, **kw)
    monkeypatch.setattr(profiles, "effective", counted)
    return reads


def test_a_reconcile_reads_each_guests_config_once(fake_host, ctl, guests, monkeypatch):
    reads = _count_config_reads(monkeypatch)
    _run(ctl, fake_host, [g for g, _ in guests])
    assert sorted(reads) == sorted(UUIDS)  # once each, not has_config + the read under the lock
    for _, m in guests:
        assert read(f"{m.libvirt['memory']}/memory.limit_in_bytes") == HARD


def test_a_guest_without_config_is_neither_written_nor_recorded(fake_host, ctl, guests):
    m = fake_host.running("bare", NO_CONFIG, id=99)
    before = read(f"{m.libvirt['memory']}/memory.limit_in_bytes")
    bare = Guest(name="bare", uuid=NO_CONFIG, driver="qemu", uri="qemu:///system",
                 running=True, persistent=True, pid=m.pid)
    assert ctl.apply_config(bare, source="reconcile", command="reconcile",
                            need_config=True) is None
    b = B.Batch(ctl.journal())
    assert ctl.apply_config(bare, source="reconcile", command="reconcile", batch=b,
                            need_config=True) is None
    b.commit()
    _run(ctl, fake_host, [bare] + [g for g, _ in guests])
    j = ctl.journal()
    assert j.get_instance(NO_CONFIG) is None and j.history(NO_CONFIG) == []
    assert read(f"{m.libvirt['memory']}/memory.limit_in_bytes") == before
    assert all(j.get_instance(g.uuid) is not None for g, _ in guests)


def _lines(caplog, name):
    return [r for r in caplog.records if f"guest={name} " in r.getMessage()]


def test_one_info_line_per_guest_the_settings_at_debug(fake_host, ctl, guests, caplog):
    with ctl.journal().transaction() as tx:  # two settings: two per-setting lines before
        tx.set_config(UUIDS[0], "vm1", "qemu", {("cpu_shares", ""): "777"})
    caplog.set_level(logging.INFO, logger="cgctl")
    _run(ctl, fake_host, [g for g, _ in guests[:1]])
    lines = _lines(caplog, "vm1")
    assert [r.levelno for r in lines] == [logging.INFO]
    assert "2 change(s), 0 error(s)" in lines[0].getMessage()
    assert "source=reconcile" in lines[0].getMessage()


def test_with_debug_on_each_setting_still_has_its_line(fake_host, ctl, guests, caplog):
    caplog.set_level(logging.DEBUG, logger="cgctl")
    _run(ctl, fake_host, [g for g, _ in guests[:1]])
    debug = [r.getMessage() for r in _lines(caplog, "vm1") if r.levelno == logging.DEBUG]
    assert any("param=hard_limit" in m and "-> 300M" in m and "source=reconcile" in m
               for m in debug)


def test_debug_lines_are_not_formatted_when_debug_is_off(fake_host, ctl, guests, caplog,
                                                         monkeypatch):
    from cgctl.core import outcome
    formatted = []
    real = outcome.log.log
    monkeypatch.setattr(outcome.log, "log",
                        lambda level, msg, *a: (formatted.append(level), real(level, msg, *a)))
    caplog.set_level(logging.INFO, logger="cgctl")
    _run(ctl, fake_host, [g for g, _ in guests])
    assert logging.DEBUG not in formatted


def test_a_batch_writes_its_rows_in_one_executemany_per_table(fake_host, ctl, guests,
                                                              monkeypatch):
    monkeypatch.setattr(B, "MAX_AGE_S", 3600.0)
    statements = []
    j = ctl.journal()
    real_tx = j.transaction

    import contextlib

    @contextlib.contextmanager
    def spied():
        with real_tx() as tx:
            db = tx._db
            tx._db = _Spy(db, statements)
            yield tx
    monkeypatch.setattr(j, "transaction", spied)
    _run(ctl, fake_host, [g for g, _ in guests])
    inserts = [s for s in statements if s.startswith("INSERT")]
    assert len(inserts) == 2, inserts  # history and instance, for all five guests
    for g, _ in guests:
        assert j.get_instance(g.uuid) is not None
        assert [(r.param, r.command) for r in j.history(g.uuid)] == [("hard_limit", "reconcile")]


class _Spy:
    def __init__(self, db, seen):
        self._db, self._seen = db, seen

    def execute(self, sql, *a):
        self._seen.append(sql)
        return self._db.execute(sql, *a)

    def executemany(self, sql, rows):
        self._seen.append(sql)
        return self._db.executemany(sql, rows)

    def __getattr__(self, name):
        return getattr(self._db, name)


def test_gathered_rows_keep_their_order_and_an_error_writes_none(tmp_path):
    with Journal(str(tmp_path / "j.db"), create=True) as j:
        with j.transaction() as tx, tx.gathered():
            for i, uid in enumerate(UUIDS[:2]):
                tx.add_history(uid, f"vm{i}", command="reconcile", source="reconcile",
                               mode="live", changes=[("hard_limit", "", "1", "2"),
                                                     ("cpu_shares", "", "3", "4")])
                tx.set_instance(uid, 100 + i, 1.5)
        assert [r.param for r in j.history(UUIDS[0])] in (["hard_limit", "cpu_shares"],
                                                         ["cpu_shares", "hard_limit"])
        assert j.get_instance(UUIDS[1]).pid == 101
        with pytest.raises(RuntimeError):
            with j.transaction() as tx, tx.gathered():
                tx.set_instance(UUIDS[2], 7, 1.0)
                raise RuntimeError("boom")
        assert j.get_instance(UUIDS[2]) is None

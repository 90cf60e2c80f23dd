"""The journal's memory in a long-lived process (docs/performance.md, section 4): SQLite keeps
up to ``cache_size`` of the file's pages per connection, and the journal grows with every
start (history rows). The service's RSS followed the file up to SQLite's default 2,000 KiB;
a cap of ``journal.CACHE_KIB`` bounds that growth whatever the journal's size."""

from __future__ import annotations

from cgctl.core import journal as J


def _cache_kib(j: J.Journal) -> int:
    n = j._db.execute("PRAGMA cache_size").fetchone()[0]
    if n < 0:  # negative: KiB
        return -n
    page = j._db.execute("PRAGMA page_size").fetchone()[0]
    return n * page // 1024


def test_every_connection_caps_its_page_cache(tmp_path):
    path = str(tmp_path / "journal.db")
    with J.Journal(path) as created:
        assert _cache_kib(created) == J.CACHE_KIB
        with J.Journal(path) as second:  # a second connection in the same process
            assert _cache_kib(second) == J.CACHE_KIB
    with J.Journal(path, create=False) as reopened:
        assert _cache_kib(reopened) == J.CACHE_KIB


def test_a_missing_journal_read_in_memory_is_capped_too(tmp_path):
    with J.Journal(str(tmp_path / "none.db"), create=False) as j:
        assert j.missing
        assert _cache_kib(j) == J.CACHE_KIB


def test_the_cap_is_below_sqlites_default_and_under_the_soak_goal():
    # the goal: RSS after 10,000 starts within 1 MiB of the figure after 1,000; a page cache
    # that may still grow by its whole size after 1,000 starts must stay well under that
    assert 0 < J.CACHE_KIB <= 512 < 2000


def test_the_capped_journal_still_reads_and_writes_a_large_history(tmp_path):
    """More history than the cache holds: everything still comes back (pages re-read)."""
    path = str(tmp_path / "journal.db")
    uuid = "6ba0895f-fa92-4fae-88dc-fcb92a3e5016"
    with J.Journal(path) as j:
        with j.transaction() as tx:
            tx.set_config(uuid, "g", "qemu", {("cpu_shares", ""): "777"})
        for i in range(300):
            with j.transaction() as tx:
                tx.add_history(uuid, "g", command="event", source="event", mode="live",
                               changes=[("cpu_shares", "", str(i), str(i + 1))] * 20)
    import os
    size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    assert size > J.CACHE_KIB * 1024
    with J.Journal(path, create=False) as j:
        rows = j.history(uuid)
        assert len(rows) == 300 * 20  # one row per change
        assert j.get_config(uuid) == {("cpu_shares", ""): "777"}

"""The journal on real SQLite files in tmp_path: schema, permissions, migrations, errors, API."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cgctl.core import journal as jmod
from cgctl.errors import JournalError, UsageError
from cgctl.core.journal import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, Journal

REPO = Path(__file__).resolve().parents[2]
U1 = "6f0c1a52-0d3e-4d6b-9a57-0000000000a1"
U2 = "6f0c1a52-0d3e-4d6b-9a57-0000000000a2"
U3 = "6f0c1a52-0d3e-4d6b-9a57-0000000000a3"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "state" / "journal.db"


@pytest.fixture
def j(path):
    with Journal(path, create=True) as journal:
        yield journal


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def set_one(journal, uuid, name, param, device, value, *, command="set", driver="qemu"):
    with journal.transaction() as tx:
        old = tx.set_config(uuid, name, driver, {(param, device): value})
        tx.add_history(uuid, name, command=command, source="cli", mode="config",
                       changes=[(param, device, old[(param, device)], value)])


def write_v1(path: Path) -> None:
    """A journal exactly as schema version 1 wrote it."""
    db = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO guest VALUES (?, 'web', 'qemu', 0)", (U1,))
    db.execute("INSERT INTO guest VALUES (?, 'old', 'lxc', 1)", (U2,))
    db.execute("INSERT INTO setting VALUES (?, 'hard_limit', '', '1073741824')", (U1,))
    for uuid, name in ((U1, "web"), (U2, "old")):
        db.execute("INSERT INTO history (at, uuid, name, command, source, mode, param, device,"
                   " old_value, new_value, outcome, user) VALUES ('2025-01-01T00:00:00.000000+00:00',"
                   " ?, ?, 'set', 'cli', 'config', 'hard_limit', '', NULL, '1', 'ok', 'root(0)')",
                   (uuid, name))
    db.close()


# -- creation, schema, permissions ------------------------------------------------------

def test_creates_schema_wal_and_version(j, path):
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"guest", "setting", "history", "instance"} <= tables
    db.close()
    assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert j._db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert j.integrity_check() == "ok"


def test_permissions_dir_0700_file_0600_wal_shm_0600(path):
    old_umask = os.umask(0o002)  # a lax umask must not leak into the modes
    try:
        with Journal(path, create=True) as journal:
            set_one(journal, U1, "web", "hard_limit", "", "1")
            assert mode(path.parent) == 0o700
            for suffix in ("", "-wal", "-shm"):
                assert mode(f"{path}{suffix}") == 0o600, suffix
    finally:
        os.umask(old_umask)


def test_reopen_keeps_data(path):
    with Journal(path, create=True) as journal:
        set_one(journal, U1, "web", "hard_limit", "", "1073741824")
    with Journal(path, create=False) as journal:
        assert journal.get_config(U1) == {("hard_limit", ""): "1073741824"}


def test_default_path_is_consts():
    import inspect
    from cgctl import consts
    assert inspect.signature(Journal).parameters["path"].default == consts.JOURNAL_PATH


# -- migrations and versions --------------------------------------------------------------

def test_migration_from_v1_runs_and_keeps_data(path):
    path.parent.mkdir()
    write_v1(path)
    with Journal(path, create=False) as journal:
        assert journal._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert journal.get_config(U1) == {("hard_limit", ""): "1073741824"}
        rows = {r.uuid: r for r in journal.history()}
        assert rows[U1].deleted is False
        assert rows[U2].deleted is True  # v2 back-filled the mark from guest.deleted
        assert journal.integrity_check() == "ok"


def test_migrations_run_in_one_transaction(path, monkeypatch):
    path.parent.mkdir()
    write_v1(path)
    broken = MIGRATIONS + (("CREATE TABLE extra (x)", "THIS IS NOT SQL"),)
    monkeypatch.setattr(jmod, "MIGRATIONS", broken)
    monkeypatch.setattr(jmod, "SCHEMA_VERSION", len(broken))
    with pytest.raises(JournalError, match=str(path)):
        Journal(path, create=False)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1  # v2 rolled back with v3
    columns = [r[1] for r in db.execute("PRAGMA table_info(history)")]
    assert "deleted" not in columns
    assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'extra'").fetchall()
    db.close()


def test_empty_file_is_initialized(path):
    path.parent.mkdir()
    path.touch()
    with Journal(path, create=False) as journal:
        assert journal.guests() == []
        assert journal._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused(j, path):
    j.close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match=r"newer than this cgctl knows") as err:
        Journal(path, create=False)
    assert str(path) in str(err.value)


# -- files that are not ours ------------------------------------------------------------

def test_garbage_file_is_refused_untouched(path):
    path.parent.mkdir()
    garbage = b"this is a text file, not a database\n" * 200
    path.write_bytes(garbage)
    with pytest.raises(JournalError, match="not a SQLite database") as err:
        Journal(path, create=True)
    assert str(path) in str(err.value)
    assert path.read_bytes() == garbage


def test_foreign_sqlite_db_is_refused_untouched(path):
    path.parent.mkdir()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(JournalError, match="not a cgctl journal") as err:
        Journal(path, create=True)
    assert str(path) in str(err.value) and "customers" in str(err.value)
    assert path.read_bytes() == before  # not switched to WAL, not migrated


def test_foreign_db_with_our_table_names_but_no_mark_is_refused(path):
    path.parent.mkdir()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE guest (uuid TEXT)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="not a cgctl journal"):
        Journal(path, create=True)


# -- missing file, unwritable places ---------------------------------------------------

def test_missing_file_with_create_false_reads_empty_and_creates_nothing(path):
    with Journal(path, create=False) as journal:
        assert journal.missing
        assert journal.guests() == []
        assert journal.get_config(U1) == {}
        assert journal.history() == []
        assert journal.find_guest("web") is None
        assert journal.get_instance(U1) is None
        with pytest.raises(JournalError, match="does not exist"):
            with journal.transaction():
                pass
    assert not path.parent.exists()


def test_parent_is_a_regular_file_enotdir(tmp_path):
    (tmp_path / "plain").write_text("x")
    target = tmp_path / "plain" / "journal.db"
    with pytest.raises(JournalError) as err:
        Journal(target, create=True)
    assert str(target) in str(err.value)
    assert err.value.errno in (20,)  # ENOTDIR (makedirs on a path through a file)
    assert "ENOTDIR" in str(err.value) or "Not a directory" in str(err.value)


def test_immutable_file_eperm_even_for_root(j, path):
    """chattr +i stops root too: a real EPERM on open for writing."""
    j.close()
    if shutil.which("chattr") is None:
        pytest.skip("no chattr")
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem does not support chattr +i")
    try:
        with pytest.raises(JournalError) as err:
            Journal(path, create=False)
        assert str(path) in str(err.value)
        assert "EPERM" in str(err.value) or "EACCES" in str(err.value)
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


RO_SCRIPT = textwrap.dedent("""
    set -e
    mount -t tmpfs -o size=8m,mode=0755 tmpfs "$1"
    "$2" -c 'import sys; from cgctl.core.journal import Journal; Journal(sys.argv[1] + "/cgctl/journal.db").close()' "$1"
    mount -o remount,ro "$1"
    "$2" -c '
import sys
from cgctl.errors import JournalError
from cgctl.core.journal import Journal
for target, create in ((sys.argv[1] + "/cgctl/journal.db", False), (sys.argv[1] + "/new/journal.db", True)):
    try:
        Journal(target, create=create)
    except JournalError as exc:
        print("ERR", exc)
    else:
        print("OPENED", target)
' "$1"
""")


def test_read_only_filesystem_real_erofs(tmp_path):
    """A tmpfs remounted read-only in a private mount namespace: EROFS stops root too."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private read-only mount")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", RO_SCRIPT,
                           "sh", str(mnt), sys.executable],
                          capture_output=True, text=True, env=env, timeout=60)
    if proc.returncode != 0 and "unshare" in proc.stderr:
        pytest.skip(f"cannot make a private mount namespace: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    for line, name in zip(lines, ("cgctl/journal.db", "new/journal.db")):
        assert line.startswith("ERR "), line
        assert f"{mnt}/{name}" in line
        assert "EROFS" in line and "Read-only file system" in line
    assert "Traceback" not in proc.stderr


# -- guests, config, history, instances ----------------------------------------------

def test_upsert_renames_and_keeps_config(j):
    set_one(j, U1, "web", "hard_limit", "", "1073741824")
    with j.transaction() as tx:
        tx.upsert_guest(U1, "web-renamed", "qemu")
    assert j.find_guest("web") is None
    row = j.find_guest("web-renamed")
    assert row.uuid == U1 and row.name == "web-renamed" and row.settings == 1
    assert j.get_config(U1) == {("hard_limit", ""): "1073741824"}
    assert len(j.guests()) == 1


def test_uuid_is_normalized(j):
    set_one(j, U1.upper(), "web", "hard_limit", "", "1")
    assert j.get_config(U1) == {("hard_limit", ""): "1"}
    assert j.find_guest(U1.upper()).uuid == U1
    with pytest.raises(ValueError):
        j.get_config("not-a-uuid")


def test_config_set_update_remove(j):
    with j.transaction() as tx:
        old = tx.set_config(U1, "web", "qemu", {
            ("hard_limit", ""): "1073741824",
            ("device_read_bytes_sec", "/dev/vda"): "10485760",
            ("device_read_bytes_sec", "vdb"): "unlimited",
            ("global_quota", ""): "150%",
        })
    assert set(old.values()) == {None}
    with j.transaction() as tx:
        old = tx.set_config(U1, "web", "qemu", {("hard_limit", ""): "2147483648",
                                                ("device_read_bytes_sec", "vdb"): None,
                                                ("never_set", ""): None})
    assert old == {("hard_limit", ""): "1073741824",
                   ("device_read_bytes_sec", "vdb"): "unlimited",
                   ("never_set", ""): None}
    assert j.get_config(U1) == {("hard_limit", ""): "2147483648",
                                ("device_read_bytes_sec", "/dev/vda"): "10485760",
                                ("global_quota", ""): "150%"}
    with pytest.raises(TypeError):
        with j.transaction() as tx:
            tx.set_config(U1, "web", "qemu", {("hard_limit", ""): 5})


def test_transaction_rolls_back_on_exception(j):
    set_one(j, U1, "web", "hard_limit", "", "1")
    with pytest.raises(RuntimeError, match="kernel said no"):
        with j.transaction() as tx:
            tx.set_config(U1, "web", "qemu", {("hard_limit", ""): "2", ("soft_limit", ""): "3"})
            tx.add_history(U1, "web", command="set", source="cli", mode="live+config",
                           changes=[("hard_limit", "", "1", "2")])
            raise RuntimeError("kernel said no")
    assert j.get_config(U1) == {("hard_limit", ""): "1"}
    assert len(j.history()) == 1
    with j.transaction() as tx:  # the journal is usable again
        assert tx.get_config(U1) == {("hard_limit", ""): "1"}


def test_transactions_do_not_nest(j):
    with j.transaction():
        with pytest.raises(RuntimeError, match="nest"):
            with j.transaction():
                pass


def test_history_rows_fields_and_order(j):
    set_one(j, U1, "web", "hard_limit", "", "1")
    with j.transaction() as tx:
        tx.add_history(U2, "db", command="set", source="cli", mode="live",
                       changes=[("cpu_shares", "", "1024", "2048")],
                       outcome="kernel refused '2048' in cpu.shares: EINVAL", user="alice(1000)")
    set_one(j, U1, "web", "hard_limit", "", "2", command="apply")
    with j.transaction() as tx:
        tx.add_history(U1, "web", command="unset", source="cli", mode="config",
                       changes=[("hard_limit", "", "2", None)])
    rows = j.history()
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert [r.at for r in rows] == sorted(r.at for r in rows)
    assert [(r.command, r.new_value) for r in rows] == [
        ("set", "1"), ("set", "2048"), ("apply", "2"), ("unset", None)]
    assert rows[1].outcome.startswith("kernel refused") and rows[1].user == "alice(1000)"
    assert rows[0].user == jmod.current_user() and rows[0].user.endswith(f"({os.getuid()})")
    parsed = datetime.fromisoformat(rows[0].at)
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)
    assert [r.new_value for r in j.history(U1)] == ["1", "2", None]
    assert [r.new_value for r in j.history(limit=2)] == ["2", None]  # the newest two, in order
    assert j.history(since=datetime.now(timezone.utc) + timedelta(seconds=5)) == []
    assert len(j.history(since=datetime.now(timezone.utc).timestamp() - 60)) == 4
    assert len(j.history(since=rows[2].at)) == 2


def test_history_rejects_unknown_source_or_mode(j):
    with j.transaction() as tx:
        with pytest.raises(ValueError):
            tx.add_history(U1, "web", command="set", source="cron", mode="live", changes=[])
        with pytest.raises(ValueError):
            tx.add_history(U1, "web", command="set", source="cli", mode="dynamic", changes=[])


def test_instance_roundtrip(j):
    assert j.get_instance(U1) is None
    with j.transaction() as tx:
        tx.set_instance(U1, 4242, 1714550000.25)
    first = j.get_instance(U1)
    assert (first.pid, first.start_time) == (4242, 1714550000.25)
    with j.transaction() as tx:
        tx.set_instance(U1, 4343, 1714560000.5, applied_at="2025-05-01T00:00:00.000000+00:00")
    second = j.get_instance(U1)
    assert (second.pid, second.applied_at) == (4343, "2025-05-01T00:00:00.000000+00:00")


def test_forget_guest_keeps_history_marked_deleted(j):
    set_one(j, U1, "web", "hard_limit", "", "1")
    set_one(j, U1, "web", "device_write_iops_sec", "/dev/vda", "100")
    set_one(j, U2, "other", "cpu_shares", "", "512")
    with j.transaction() as tx:
        tx.set_instance(U1, 10, 1.0)
    dropped = j.forget_guest(U1, command="event", source="event")
    assert dropped == {("hard_limit", ""): "1", ("device_write_iops_sec", "/dev/vda"): "100"}
    assert j.get_config(U1) == {} and j.get_instance(U1) is None
    row = j.find_guest(U1)
    assert row.deleted and row.settings == 0
    rows = j.history(U1)
    assert len(rows) == 4 and all(r.deleted for r in rows)
    assert {(r.param, r.old_value, r.new_value) for r in rows[2:]} == {
        ("hard_limit", "1", None), ("device_write_iops_sec", "100", None)}
    assert all(not r.deleted for r in j.history(U2))
    assert j.get_config(U2) == {("cpu_shares", ""): "512"}
    assert j.forget_guest(U3) == {}  # unknown guest: nothing to do

    # the same UUID defined again is a live guest; its old history stays deleted
    set_one(j, U1, "web", "hard_limit", "", "7")
    assert not j.find_guest(U1).deleted
    assert [r.deleted for r in j.history(U1)] == [True] * 4 + [False]


def test_find_guest(j):
    set_one(j, U1, "web", "hard_limit", "", "1")
    j.forget_guest(U1)
    assert j.find_guest("web").uuid == U1 and j.find_guest("web").deleted
    set_one(j, U2, "web", "hard_limit", "", "2")  # the name is reused by a new guest
    assert j.find_guest("web").uuid == U2
    assert j.find_guest(U1).uuid == U1  # the old one stays reachable by UUID
    assert j.find_guest("nope") is None
    set_one(j, U3, "web", "cpu_shares", "", "3", driver="lxc")
    with pytest.raises(UsageError, match="give the UUID or the driver"):
        j.find_guest("web")
    assert j.find_guest("web", driver="lxc").uuid == U3
    assert j.find_guest("web", driver="qemu").uuid == U2


def test_guests_listing(j):
    assert j.guests() == []
    set_one(j, U1, "web", "hard_limit", "", "1")
    set_one(j, U1, "web", "soft_limit", "", "1")
    set_one(j, U2, "db", "cpu_shares", "", "512", driver="lxc")
    j.forget_guest(U2)
    rows = {r.uuid: r for r in j.guests()}
    assert (rows[U1].name, rows[U1].driver, rows[U1].deleted, rows[U1].settings) == \
        ("web", "qemu", False, 2)
    assert (rows[U2].driver, rows[U2].deleted, rows[U2].settings) == ("lxc", True, 0)
    assert rows[U1].last_change == j.history(U1)[-1].at


def test_bad_driver_is_refused(j):
    with pytest.raises(ValueError):
        with j.transaction() as tx:
            tx.upsert_guest(U1, "web", "xen")


def test_locked_too_long_is_a_journal_error(path):
    with Journal(path, create=True) as holder, Journal(path, busy_timeout=0.2) as waiter:
        with holder.transaction():
            with pytest.raises(JournalError, match="locked") as err:
                with waiter.transaction():
                    pass
    assert str(path) in str(err.value) and "0.2 s" in str(err.value)


_LOCK_PROBE = """import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    # SQLite's SHARED range on the database file (unix VFS): a live WAL connection holds it
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 510, 0x40000002, 0)
    print("free")
except OSError:
    print("held")
"""


def test_another_journal_in_the_process_keeps_the_first_ones_locks(tmp_path):
    """Closing any fd of the database drops all of this process's POSIX locks on it; the
    service opens several journals at once, so opening one must not close a raw fd while
    another is open (this corrupted a journal under the service once)."""
    path = str(tmp_path / "j.db")

    def probe():
        return subprocess.run([sys.executable, "-c", _LOCK_PROBE, path], capture_output=True,
                              text=True, check=True).stdout.strip()

    first = Journal(path)
    first.guests()
    assert probe() == "held"
    second = Journal(path)
    second.guests()
    second.close()
    assert probe() == "held"
    first.close()
    assert probe() == "free"

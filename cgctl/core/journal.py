"""The lifecycle journal: the only code in cgctl that speaks SQLite.

One SQLite file (WAL, ``synchronous=FULL``) keyed by guest UUID holds each
guest's config settings, the history of every change, and the last instance
(PID + process start time) its config was applied to.  docs/journal.md
describes the file for operators.

Writers use one transaction per change::

    with journal.transaction() as tx:           # BEGIN IMMEDIATE: serialized
        old = tx.get_config(uuid)               # read ...
        ...                                     # ... validate, write cgroup ...
        tx.set_config(uuid, name, "qemu", {("hard_limit", ""): "1073741824"})
        tx.add_history(uuid, name, command="set", source="cli", mode="live+config",
                       changes=[("hard_limit", "", None, "1073741824")])
    # committed and on disk here; an exception inside the block rolls back

Why one module of ~700 lines: it is the one place that speaks SQLite, and its parts change
together. A migration (``MIGRATIONS``) and the queries that read its columns (``_Reader``,
``Transaction``) land in the same commit and are checked against each other by
tests/unit/test_journal.py; opening the file (create with the right mode, identity and
version check, WAL, migrate: ``Journal._open``...) shares the connection handling and
the error translation (``Journal._fail``) with every transaction. Split along "schema vs
queries", each half would import the other's private names. Reading order: rows and
schema (top), who made a change (``current_user``), reads and writes (``_Reader``,
``Transaction``), the file and its lifecycle (``Journal``).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno as _errno
import os
import pwd
import sqlite3
import threading
import time
from datetime import datetime, timezone
from typing import Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Tuple, Union

from cgctl import consts
from cgctl.consts import DRIVERS
from cgctl.model import units
from cgctl.errors import JournalError, UsageError

ConfigKey = Tuple[str, str]  # (param, device); device is "" for non-device parameters
Config = Dict[ConfigKey, str]

SOURCES = ("cli", "event", "hook", "reconcile")
MODES = ("live", "config", "live+config")

APPLICATION_ID = 0x63676374  # "cgct" in PRAGMA application_id: marks the file as ours
BUSY_TIMEOUT = 30.0  # seconds a writer waits for another cgctl process before giving up
# SQLite's page cache per connection (its default: 2,000 KiB). The journal grows with every
# start, and the service's RSS followed it up to that default; this cap bounds it whatever the
# journal's size. Pages past it are read again from the OS's file cache (docs/performance.md,
# section 4).
CACHE_KIB = 512

# Ordered migrations; MIGRATIONS[i] takes user_version i to i + 1.  Never edit a
# released entry: append a new one.  All pending ones run in one transaction.
MIGRATIONS: Tuple[Tuple[str, ...], ...] = (
    # 1: the first schema
    (
        f"PRAGMA application_id = {APPLICATION_ID}",
        """CREATE TABLE guest (
            uuid    TEXT PRIMARY KEY,
            name    TEXT NOT NULL,
            driver  TEXT NOT NULL CHECK (driver IN ('qemu', 'lxc')),
            deleted INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX guest_name ON guest (name)",
        """CREATE TABLE setting (
            uuid   TEXT NOT NULL,
            param  TEXT NOT NULL,
            device TEXT NOT NULL DEFAULT '',
            value  TEXT NOT NULL,
            PRIMARY KEY (uuid, param, device)
        ) WITHOUT ROWID""",
        """CREATE TABLE history (
            id        INTEGER PRIMARY KEY AUTOINCREMENT,
            at        TEXT NOT NULL,
            uuid      TEXT NOT NULL,
            name      TEXT NOT NULL,
            command   TEXT NOT NULL,
            source    TEXT NOT NULL CHECK (source IN ('cli', 'event', 'hook', 'reconcile')),
            mode      TEXT NOT NULL CHECK (mode IN ('live', 'config', 'live+config')),
            param     TEXT NOT NULL,
            device    TEXT NOT NULL DEFAULT '',
            old_value TEXT,
            new_value TEXT,
            outcome   TEXT NOT NULL,
            user      TEXT NOT NULL
        )""",
        "CREATE INDEX history_uuid ON history (uuid, at)",
        """CREATE TABLE instance (
            uuid       TEXT PRIMARY KEY,
            pid        INTEGER NOT NULL,
            start_time REAL NOT NULL,
            applied_at TEXT NOT NULL
        )""",
    ),
    # 2: history rows carry their own "deleted" mark, so a UUID that is defined
    #    again later does not revive the history of the guest that was undefined
    (
        "ALTER TABLE history ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0",
        "UPDATE history SET deleted = 1 WHERE uuid IN (SELECT uuid FROM guest WHERE deleted)",
    ),
    # 3: profiles (cgctl/core/profiles.py, docs/fleet.md#profiles): named sets of settings, and
    #    each guest's reference to one (NULL: the host's default profile; '': none at all) with
    #    the values its metadata carried (used where this host does not define the profile)
    (
        """CREATE TABLE profile (
            name       TEXT PRIMARY KEY,
            settings   TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        "ALTER TABLE guest ADD COLUMN profile TEXT",
        "ALTER TABLE guest ADD COLUMN profile_values TEXT",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class GuestRow(NamedTuple):
    uuid: str
    name: str
    driver: str
    deleted: bool
    settings: int  # number of config settings
    last_change: Optional[str]  # time of the newest history row, ISO 8601 UTC


class HistoryRow(NamedTuple):
    id: int
    at: str  # ISO 8601 UTC with microseconds, e.g. 2025-05-01T12:00:00.123456+00:00
    uuid: str
    name: str
    command: str
    source: str
    mode: str
    param: str
    device: str
    old_value: Optional[str]
    new_value: Optional[str]
    outcome: str  # "ok" or the error text
    user: str
    deleted: bool  # the guest was undefined (forgotten) after this row


class GuestProfile(NamedTuple):
    profile: Optional[str]  # None: the host's default profile; "": no profile at all
    values: Optional[Config]  # the profile's values as the guest's metadata carried them


def _config_text(settings: Mapping[ConfigKey, str]) -> str:
    import json
    return json.dumps([[p, d, v] for (p, d), v in sorted(settings.items())])


def _config_of(text: str) -> Config:
    import json
    return {(p, d): v for p, d, v in json.loads(text)}


class InstanceRow(NamedTuple):
    uuid: str
    pid: int
    start_time: float  # process start time (runfiles.instance_of)
    applied_at: str


def now() -> str:
    """The journal's timestamp: UTC, ISO 8601, microseconds; sorts as text."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _timestamp(when: Union[str, float, datetime]) -> str:
    if isinstance(when, str):
        return when
    if isinstance(when, (int, float)):
        when = datetime.fromtimestamp(when, timezone.utc)
    if when.tzinfo is None:
        raise ValueError("naive datetime: give a timezone")
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


# who asked, when it is not this process's user: the command socket's client (cgctl/service/cmdserver.py
# sets it per request, in the thread that runs it)
ASKED_BY: "contextvars.ContextVar[Optional[str]]" = contextvars.ContextVar("cgctl_asked_by",
                                                                          default=None)
NO_LOGINUID = 4294967295  # (uid_t)-1: the process never logged in (a service, a boot script)


def read_loginuid(pid="self") -> Optional[int]:
    """The kernel's audit login uid of a process (who logged in, kept across su/sudo)."""
    try:
        with open(f"/proc/{pid}/loginuid") as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if value == NO_LOGINUID else value


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "?"


def describe_user(uid: int, loginuid: Optional[int] = None, sudo_user: Optional[str] = None) -> str:
    """``login(uid)``, then ``login NAME(UID)`` when someone else logged in, then
    ``via sudo by NAME``: e.g. ``root(0) login alice(1000) via sudo by alice``."""
    login = _name(uid)
    who = f"{login}({uid})"
    if loginuid is not None and loginuid != NO_LOGINUID and loginuid != uid:
        who += f" login {_name(loginuid)}({loginuid})"
    if sudo_user and sudo_user != login:
        who += f" via sudo by {sudo_user}"
    return who


def current_user() -> str:
    """Who is making the change: the command socket's client, else this process's user."""
    asked = ASKED_BY.get()
    if asked is not None:
        return asked
    return describe_user(os.getuid(), read_loginuid(), os.environ.get("SUDO_USER"))


def _uuid(value: str) -> str:
    """The journal's key: units.normalize_uuid's canonical form. Anything else is a caller's
    bug (they look guests up first), so a ValueError, never a row under a bad key."""
    canon = units.normalize_uuid(value)
    if canon is None:
        raise ValueError(f"not a UUID: {value!r}")
    return canon


def _check(value: str, allowed: Tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")


_GUEST_SELECT = """
    SELECT g.uuid, g.name, g.driver, g.deleted,
           (SELECT count(*) FROM setting s WHERE s.uuid = g.uuid),
           (SELECT max(h.at) FROM history h WHERE h.uuid = g.uuid) AS last_change
    FROM guest g"""

_HISTORY_COLUMNS = ("id, at, uuid, name, command, source, mode, param, device, "
                    "old_value, new_value, outcome, user, deleted")


def _guest(row: tuple) -> GuestRow:
    return GuestRow(row[0], row[1], row[2], bool(row[3]), row[4], row[5])


def _history(row: tuple) -> HistoryRow:
    return HistoryRow(*row[:-1], deleted=bool(row[-1]))


class _Reader:
    """Queries shared by the journal's convenience readers and transactions."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def get_config(self, uuid: str) -> Config:
        rows = self._db.execute(
            "SELECT param, device, value FROM setting WHERE uuid = ? ORDER BY param, device",
            (_uuid(uuid),))
        return {(param, device): value for param, device, value in rows}

    def get_guest(self, uuid: str) -> Optional[GuestRow]:
        row = self._db.execute(_GUEST_SELECT + " WHERE g.uuid = ?",
                               (_uuid(uuid),)).fetchone()
        return _guest(row) if row else None

    def guests(self) -> List[GuestRow]:
        return [_guest(r) for r in self._db.execute(_GUEST_SELECT + " ORDER BY g.name, g.uuid")]

    def find_guest(self, name_or_uuid: str, driver: Optional[str] = None) -> Optional[GuestRow]:
        """By UUID, else by name: the live guest, else the most recently changed deleted one.

        Two live guests of different drivers may share a name: give ``driver``
        (or the UUID), else UsageError.
        """
        try:
            row = self.get_guest(name_or_uuid)
        except ValueError:
            row = None
        if row is not None and driver in (None, row.driver):
            return row
        sql = _GUEST_SELECT + " WHERE g.name = ?"
        args: tuple = (name_or_uuid,)
        if driver is not None:
            sql, args = sql + " AND g.driver = ?", args + (driver,)
        rows = [_guest(r) for r in self._db.execute(
            sql + " ORDER BY g.deleted, last_change DESC", args)]
        live = [r for r in rows if not r.deleted]
        if len(live) > 1:
            drivers = ", ".join(sorted(r.driver for r in live))
            raise UsageError(f"the name is used by several guests ({drivers}): "
                             f"give the UUID or the driver", guest=name_or_uuid)
        return rows[0] if rows else None

    def history(self, uuid: Optional[str] = None, limit: Optional[int] = None,
                since: Union[str, float, datetime, None] = None) -> List[HistoryRow]:
        """Oldest first; ``limit`` keeps the newest ``limit`` rows."""
        where, args = [], []
        if uuid is not None:
            where.append("uuid = ?")
            args.append(_uuid(uuid))
        if since is not None:
            where.append("at >= ?")
            args.append(_timestamp(since))
        sql = f"SELECT {_HISTORY_COLUMNS} FROM history"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_history(r) for r in reversed(self._db.execute(sql, args).fetchall())]

    def history_heads(self, uuid: str) -> List[HistoryRow]:
        """Of one guest's history, oldest first, only what metadata's conflict rules read
        (cgctl/model/metadata.py ``journal_stamps``, cgctl/core/travel.py): per (param,
        device), the newest row, and the row with the latest time among those that put a
        config in force (ok, config or live+config, not an undefined guest's past). Both come
        out of ``history(uuid)`` the same, without reading a history that grows with every
        start into Python at each STARTED event (docs/performance.md, section 4)."""
        u = _uuid(uuid)
        # SQLite: a bare column beside MAX() comes from the row holding that maximum
        sql = (f"SELECT {_HISTORY_COLUMNS} FROM history WHERE id IN ("
               "SELECT MAX(id) FROM history WHERE uuid = ? GROUP BY param, device "
               "UNION SELECT id FROM (SELECT id, MAX(at) FROM history WHERE uuid = ? "
               "AND deleted = 0 AND outcome = 'ok' AND mode IN ('config', 'live+config') "
               "GROUP BY param, device)) ORDER BY id")
        return [_history(r) for r in self._db.execute(sql, (u, u)).fetchall()]

    def get_instance(self, uuid: str) -> Optional[InstanceRow]:
        row = self._db.execute("SELECT uuid, pid, start_time, applied_at FROM instance "
                               "WHERE uuid = ?", (_uuid(uuid),)).fetchone()
        return InstanceRow(*row) if row else None

    # -- profiles (cgctl/core/profiles.py gives them meaning) --
    def get_profiles(self) -> Dict[str, Config]:
        """Every profile defined in the journal: name -> settings."""
        return {name: _config_of(text) for name, text in
                self._db.execute("SELECT name, settings FROM profile ORDER BY name")}

    def get_profile(self, name: str) -> Optional[Config]:
        row = self._db.execute("SELECT settings FROM profile WHERE name = ?",
                               (name,)).fetchone()
        return _config_of(row[0]) if row else None

    def get_guest_profile(self, uuid: str) -> GuestProfile:
        """The guest's profile reference (None: the host default; '': none) and the values
        its metadata carried for it (None: none carried)."""
        row = self._db.execute("SELECT profile, profile_values FROM guest WHERE uuid = ? "
                               "AND deleted = 0", (_uuid(uuid),)).fetchone()
        if row is None:
            return GuestProfile(None, None)
        return GuestProfile(row[0], None if row[1] is None else _config_of(row[1]))

    def profile_users(self, name: str) -> List[GuestRow]:
        """The (not deleted) guests whose reference names ``name``."""
        return [_guest(r) for r in self._db.execute(
            _GUEST_SELECT + " WHERE g.profile = ? AND g.deleted = 0 ORDER BY g.name", (name,))]


_HISTORY_INSERT = ("INSERT INTO history (at, uuid, name, command, source, mode, param, device, "
                   "old_value, new_value, outcome, user) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSTANCE_INSERT = ("INSERT OR REPLACE INTO instance (uuid, pid, start_time, applied_at) "
                    "VALUES (?, ?, ?, ?)")


class Transaction(_Reader):
    """One ``BEGIN IMMEDIATE`` transaction; get it from ``Journal.transaction()``."""

    _gather: Optional[Tuple[list, list]] = None  # (history rows, instance rows) in gathered()

    @contextlib.contextmanager
    def gathered(self) -> Iterator["Transaction"]:
        """Inside the block ``add_history`` and ``set_instance`` only gather their rows; at its
        end each table gets them in one ``executemany``, in the order given (a batch of many
        guests' records, cgctl/core/batch.py). On an exception nothing gathered is written."""
        self._gather = ([], [])
        try:
            yield self
            history, instances = self._gather
        finally:
            self._gather = None
        if history:
            self._db.executemany(_HISTORY_INSERT, history)
        if instances:
            self._db.executemany(_INSTANCE_INSERT, instances)

    def upsert_guest(self, uuid: str, name: str, driver: str) -> None:
        """Record the guest (or its new name/driver); a defined-again UUID is live again."""
        _check(driver, DRIVERS, "driver")
        self._db.execute(
            "INSERT INTO guest (uuid, name, driver) VALUES (?, ?, ?) ON CONFLICT (uuid) "
            "DO UPDATE SET name = excluded.name, driver = excluded.driver, deleted = 0",
            (_uuid(uuid), name, driver))

    def set_config(self, uuid: str, name: str, driver: str,
                   changes: Mapping[ConfigKey, Optional[str]]) -> Dict[ConfigKey, Optional[str]]:
        """Set (value) or remove (None) settings; returns their previous values (None: unset)."""
        uuid = _uuid(uuid)
        self.upsert_guest(uuid, name, driver)
        before = self.get_config(uuid)
        for (param, device), value in changes.items():
            if value is None:
                self._db.execute("DELETE FROM setting WHERE uuid = ? AND param = ? AND device = ?",
                                 (uuid, param, device))
            elif isinstance(value, str):
                self._db.execute(
                    "INSERT INTO setting (uuid, param, device, value) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (uuid, param, device) DO UPDATE SET value = excluded.value",
                    (uuid, param, device, value))
            else:
                raise TypeError(f"{param}: the journal keeps canonical text, not {value!r}")
        return {key: before.get(key) for key in changes}

    def add_history(self, uuid: str, name: str, *, command: str, source: str, mode: str,
                    changes: Iterable[Tuple[str, str, Optional[str], Optional[str]]],
                    outcome: str = "ok", user: Optional[str] = None,
                    at: Union[str, float, datetime, None] = None) -> int:
        """One row per (param, device, old, new), all with the same time; returns the count."""
        _check(source, SOURCES, "source")
        _check(mode, MODES, "mode")
        stamp = now() if at is None else _timestamp(at)
        user = current_user() if user is None else user
        uuid = _uuid(uuid)
        rows = [(stamp, uuid, name, command, source, mode,
                 param, device, old, new, outcome, user)
                for param, device, old, new in changes]
        if self._gather is not None:
            self._gather[0].extend(rows)
        else:
            self._db.executemany(_HISTORY_INSERT, rows)
        return len(rows)

    def set_instance(self, uuid: str, pid: int, start_time: float,
                     applied_at: Union[str, float, datetime, None] = None) -> None:
        row = (_uuid(uuid), int(pid), float(start_time),
               now() if applied_at is None else _timestamp(applied_at))
        if self._gather is not None:
            self._gather[1].append(row)
        else:
            self._db.execute(_INSTANCE_INSERT, row)

    def put_profile(self, name: str, settings: Mapping[ConfigKey, str],
                    at: Union[str, float, datetime, None] = None) -> Optional[Config]:
        """Define or replace a profile (the whole set); returns the previous settings."""
        before = self.get_profile(name)
        self._db.execute(
            "INSERT INTO profile (name, settings, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET settings = excluded.settings, "
            "updated_at = excluded.updated_at",
            (name, _config_text(settings), now() if at is None else _timestamp(at)))
        return before

    def delete_profile(self, name: str) -> Optional[Config]:
        before = self.get_profile(name)
        self._db.execute("DELETE FROM profile WHERE name = ?", (name,))
        return before

    def set_guest_profile(self, uuid: str, name: str, driver: str, profile: Optional[str],
                          values: Optional[Mapping[ConfigKey, str]] = None) -> GuestProfile:
        """Set the guest's reference (None: the host default; '': none) and the values
        carried with it; returns the previous ones."""
        uuid = _uuid(uuid)
        before = self.get_guest_profile(uuid)
        self.upsert_guest(uuid, name, driver)
        self._db.execute("UPDATE guest SET profile = ?, profile_values = ? WHERE uuid = ?",
                         (profile, None if values is None else _config_text(values), uuid))
        return before

    def forget_guest(self, uuid: str, *, command: str = "forget", source: str = "cli",
                     user: Optional[str] = None) -> Config:
        """Undefine: drop config and instance, mark guest and history deleted.

        Each dropped setting gets a history row (old value -> NULL, mode
        "config").  Returns the dropped config; {} for an unknown guest.
        """
        uuid = _uuid(uuid)
        guest = self.get_guest(uuid)
        if guest is None:
            return {}
        dropped = self.get_config(uuid)
        self.add_history(uuid, guest.name, command=command, source=source, mode="config",
                         changes=[(p, d, v, None) for (p, d), v in dropped.items()], user=user)
        self._db.execute("DELETE FROM setting WHERE uuid = ?", (uuid,))
        self._db.execute("DELETE FROM instance WHERE uuid = ?", (uuid,))
        self._db.execute("UPDATE guest SET deleted = 1, profile = NULL, profile_values = NULL "
                         "WHERE uuid = ?", (uuid,))
        self._db.execute("UPDATE history SET deleted = 1 WHERE uuid = ?", (uuid,))
        return dropped


    def prune_history(self, *, keep_days: float = 0, keep_rows: int = 0,
                      now_at: Union[str, float, datetime, None] = None) -> int:
        """The history retention: remove rows older than ``keep_days`` and, per guest, beyond
        the newest ``keep_rows`` (0 turns either off). Never removed, for a guest that is not
        deleted: the newest row of each (param, device, mode, ok or not), so the history still
        explains the current config and drift repair keeps its reference (cgctl/core/drift.py).
        A deleted guest whose rows are all gone leaves the guest table too. Returns the count.
        """
        if keep_days < 0 or keep_rows < 0:
            raise ValueError("keep_days and keep_rows are >= 0")
        db = self._db
        over: List[str] = []
        if keep_rows:
            # (uuid, at) index: no table scan to find the guests over the cap
            over = [r[0] for r in db.execute(
                "SELECT uuid FROM history GROUP BY uuid HAVING count(*) > ?", (int(keep_rows),))]
        cutoff = None
        if keep_days:
            stamp = datetime.now(timezone.utc) if now_at is None else now_at
            when = _to_datetime(stamp).timestamp() - keep_days * 86400
            cutoff = _timestamp(when)
            if db.execute("SELECT 1 FROM history WHERE at < ? LIMIT 1", (cutoff,)).fetchone() \
                    is None:
                cutoff = None  # nothing that old (the common case: pruned an hour ago)
        if cutoff is None and not over:
            return 0
        db.execute("DROP TABLE IF EXISTS temp.history_keep")
        db.execute(
            # (a --live change records history without a guest row: not joined to guest)
            "CREATE TEMP TABLE history_keep AS SELECT max(id) AS id FROM history "
            "WHERE deleted = 0 GROUP BY uuid, param, device, mode, outcome = 'ok'")
        removed = 0
        try:
            if cutoff is not None:
                removed += db.execute(
                    "DELETE FROM history WHERE at < ? AND id NOT IN "
                    "(SELECT id FROM temp.history_keep)", (cutoff,)).rowcount
            for uuid in over:
                edge = db.execute(
                    "SELECT at, id FROM history WHERE uuid = ? ORDER BY at DESC, id DESC "
                    "LIMIT 1 OFFSET ?", (uuid, int(keep_rows) - 1)).fetchone()
                if edge is None:
                    continue  # fewer rows now (the age rule removed some)
                removed += db.execute(
                    "DELETE FROM history WHERE uuid = ? AND (at < ? OR (at = ? AND id < ?)) "
                    "AND id NOT IN (SELECT id FROM temp.history_keep)",
                    (uuid, edge[0], edge[0], edge[1])).rowcount
            db.execute("DELETE FROM guest WHERE deleted = 1 AND NOT EXISTS "
                       "(SELECT 1 FROM history h WHERE h.uuid = guest.uuid)")
        finally:
            db.execute("DROP TABLE IF EXISTS temp.history_keep")
        return removed


def _to_datetime(when: Union[str, float, datetime]) -> datetime:
    if isinstance(when, str):
        return datetime.fromisoformat(when)
    if isinstance(when, (int, float)):
        return datetime.fromtimestamp(when, timezone.utc)
    return when


# journal files this process has SQLite connections to (realpath -> count); see Journal._open
_OPEN_HERE: Dict[str, int] = {}
_OPEN_LOCK = threading.Lock()


class Journal:
    """The journal file.  ``create=False`` never creates it: a missing file reads as empty.

    Safe to share between threads (one connection behind a lock); each process
    opens its own.  Use as a context manager or call ``close()``.
    """

    def __init__(self, path: str = consts.JOURNAL_PATH, create: bool = True, *,
                 busy_timeout: float = BUSY_TIMEOUT):
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._in_tx = False
        self.missing = not create and not os.path.lexists(self.path)
        if self.missing:
            # nothing on disk: an empty in-memory journal answers the readers
            self._db = self._connect(":memory:")
            self._migrate(self._db)
        else:
            self._db = self._open(create)
        self._reader = _Reader(self._db)

    # -- opening ------------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException) -> JournalError:
        if isinstance(exc, OSError):
            code = exc.errno
            reason = f"{_errno.errorcode.get(code or 0, code)} ({exc.strerror or exc})"
        else:
            code = None
            reason = str(exc)
            if "locked" in reason or "busy" in reason:
                reason += (f" (another process held the journal for more than "
                           f"{self.busy_timeout:g} s)")
        return JournalError(f"{what} journal {self.path}: {reason}", path=self.path, errno=code)

    def _connect(self, target: str) -> sqlite3.Connection:
        db = sqlite3.connect(target, timeout=self.busy_timeout, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA synchronous = FULL")
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        return db

    def _create_file(self) -> None:
        """Create the directory (0700) and an empty file (0600) before SQLite sees them."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.lexists(directory):  # (a file there: os.open says ENOTDIR)
            try:
                os.makedirs(directory, mode=0o700)
                os.chmod(directory, 0o700)
                _fsync_dir(os.path.dirname(directory))
            except FileExistsError:
                pass  # another process was first
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return  # another process was first
        try:
            os.fchmod(fd, 0o600)  # whatever the umask; SQLite gives -wal/-shm the same mode
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(directory)

    def _open(self, create: bool) -> sqlite3.Connection:
        with _OPEN_LOCK:
            # Closing ANY descriptor of the database file drops every POSIX lock this process
            # holds on it, including those of another SQLite connection here (the service runs
            # several): other processes would then write under it and corrupt the journal.
            # So the raw probes below run only while no connection of ours has the file open.
            key = os.path.realpath(self.path)
            try:
                if not _OPEN_HERE.get(key):
                    if create and not os.path.lexists(self.path):
                        self._create_file()
                    # fails with the real errno (EROFS, EACCES, EPERM, ENOTDIR, EISDIR) where
                    # SQLite would only say "unable to open database file"
                    os.close(os.open(self.path, os.O_RDWR | os.O_CLOEXEC))
            except OSError as exc:
                raise self._fail("cannot open", exc) from exc
            db = self._open_sqlite()
            self._key = key
            _OPEN_HERE[key] = _OPEN_HERE.get(key, 0) + 1
            return db

    def _open_sqlite(self) -> sqlite3.Connection:
        db = None
        try:
            db = self._connect(self.path)
            self._check_identity(db)
            mode = self._use_wal(db)
            if mode != "wal":
                raise JournalError(f"journal {self.path}: cannot use WAL mode "
                                   f"(SQLite stayed in {mode!r})", path=self.path)
            self._migrate(db)
            return db
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            if "not a database" in str(exc):
                raise JournalError(f"{self.path} is not a SQLite database (it is not a "
                                   f"cgctl journal): {exc}", path=self.path) from exc
            raise self._fail("cannot open", exc) from exc
        except BaseException:
            if db is not None:
                db.close()
            raise

    def _use_wal(self, db: sqlite3.Connection) -> str:
        """Switch to WAL.  SQLite answers "locked" at once, without waiting, while
        other processes are creating the same file: wait for them here."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                return db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _identity(self, db: sqlite3.Connection) -> Tuple[int, int, List[str]]:
        # one snapshot: another process may be creating the schema right now
        own = not db.in_transaction
        if own:
            db.execute("BEGIN")
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")]
        finally:
            if own and db.in_transaction:
                db.execute("COMMIT")
        return app_id, version, tables

    def _check_identity(self, db: sqlite3.Connection) -> int:
        """Our journal (or an empty file we may initialize)?  Returns its schema version."""
        app_id, version, tables = self._identity(db)
        fresh = app_id == 0 and version == 0 and not tables
        if app_id != APPLICATION_ID and not fresh:
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise JournalError(f"{self.path} is a SQLite database but not a cgctl journal "
                               f"(application_id {app_id:#x}, user_version {version}, "
                               f"tables: {shown or 'none'}); refusing to touch it",
                               path=self.path)
        if version > SCHEMA_VERSION:
            raise JournalError(f"journal {self.path} has schema version {version}, newer than "
                               f"this cgctl knows ({SCHEMA_VERSION}): upgrade cgctl",
                               path=self.path)
        return version

    def _migrate(self, db: sqlite3.Connection) -> None:
        if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            version = self._check_identity(db)  # again, under the write lock
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # -- use ----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """BEGIN IMMEDIATE ... COMMIT (durable when the block exits); ROLLBACK on exception."""
        if self.missing:
            raise JournalError(f"journal {self.path} does not exist (opened without create)",
                               path=self.path)
        with self._lock:
            if self._in_tx:
                raise RuntimeError("journal transactions do not nest")
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._fail("cannot lock", exc) from exc
            self._in_tx = True
            tx = Transaction(self._db)
            try:
                try:
                    yield tx
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back already
                        self._db.execute("ROLLBACK")
                    raise
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise self._fail("cannot commit to", exc) from exc
            except sqlite3.Error as exc:
                raise self._fail("cannot write to", exc) from exc
            finally:
                tx._db = None  # a Transaction is not usable after its block
                self._in_tx = False

    @contextlib.contextmanager
    def _reading(self) -> Iterator[_Reader]:
        with self._lock:
            try:
                yield self._reader
            except sqlite3.Error as exc:
                raise self._fail("cannot read", exc) from exc

    def get_config(self, uuid: str) -> Config:
        with self._reading() as r:
            return r.get_config(uuid)

    def get_guest(self, uuid: str) -> Optional[GuestRow]:
        with self._reading() as r:
            return r.get_guest(uuid)

    def guests(self) -> List[GuestRow]:
        with self._reading() as r:
            return r.guests()

    def find_guest(self, name_or_uuid: str, driver: Optional[str] = None) -> Optional[GuestRow]:
        with self._reading() as r:
            return r.find_guest(name_or_uuid, driver)

    def history(self, uuid: Optional[str] = None, limit: Optional[int] = None,
                since: Union[str, float, datetime, None] = None) -> List[HistoryRow]:
        with self._reading() as r:
            return r.history(uuid, limit, since)

    def get_instance(self, uuid: str) -> Optional[InstanceRow]:
        with self._reading() as r:
            return r.get_instance(uuid)

    def get_profiles(self) -> Dict[str, Config]:
        with self._reading() as r:
            return r.get_profiles()

    def get_profile(self, name: str) -> Optional[Config]:
        with self._reading() as r:
            return r.get_profile(name)

    def get_guest_profile(self, uuid: str) -> GuestProfile:
        with self._reading() as r:
            return r.get_guest_profile(uuid)

    def profile_users(self, name: str) -> List[GuestRow]:
        with self._reading() as r:
            return r.profile_users(name)

    def integrity_check(self) -> str:
        """SQLite's own verdict on the file: "ok" or the problems it found."""
        with self._reading() as r:
            return "\n".join(row[0] for row in r._db.execute("PRAGMA integrity_check"))

    def forget_guest(self, uuid: str, *, command: str = "forget", source: str = "cli",
                     user: Optional[str] = None) -> Config:
        with self.transaction() as tx:
            return tx.forget_guest(uuid, command=command, source=source, user=user)

    def prune_history(self, *, keep_days: float = 0, keep_rows: int = 0,
                      now_at: Union[str, float, datetime, None] = None) -> int:
        """Transaction.prune_history in one transaction of its own."""
        with self.transaction() as tx:
            return tx.prune_history(keep_days=keep_days, keep_rows=keep_rows, now_at=now_at)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            key = getattr(self, "_key", None)
            if key is not None:
                with _OPEN_LOCK:
                    _OPEN_HERE[key] -= 1
                    if not _OPEN_HERE[key]:
                        del _OPEN_HERE[key]
                self._key = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fsync_dir(directory: str) -> None:
    """Make a new directory entry durable (the file's own fsync does not)."""
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

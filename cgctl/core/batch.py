"""Several guests' applies recorded in one journal transaction (the service's reconcile).

An apply writes the guest's cgroups, then records its history rows and its instance (PID + start
time) in the journal; every transaction is a ``synchronous=FULL`` commit (an fsync, ~1 ms or
more), which made a 1,000-guest reconcile cost one fsync per guest. A ``Batch`` collects the
records of up to ``max_guests`` applies, or those made within ``max_age`` seconds, and commits
them in one transaction (docs/performance.md, section 3 D).

Locks: each guest's lock (``guestlock``) is taken before its config is read and **held until
the batch has committed**, as for a single apply (one writer from config read to record), so no
``set``, hook or other apply of that guest can land between our cgroup write and our record (it
would otherwise be recorded before us, or have its instance overwritten by ours). A batch holds
at most ``max_guests`` locks for at most ~``max_age`` plus one commit; and it never *waits* for
a lock while holding others: a busy guest makes it commit (and let go) first, then wait as a
single apply would. Order stays lock first, then transaction (the transaction opens only at
commit, when every lock of the batch is taken).

What a crash leaves (docs/reliability.md, "A crash during a reconcile"): the cgroups of the
guests written since the last commit hold their config, their history rows and instance are not
in the journal; the next reconcile finds no instance for them and applies again (same values:
idempotent). Nothing committed is lost, and the journal is never half-written (one SQLite
transaction).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, List, Optional, Set

from cgctl.core import guestlock
from cgctl.core.journal import current_user

MAX_GUESTS = 100  # guests per commit
MAX_AGE_S = 0.05  # s from a batch's first lock to its commit, at most (plus one guest's apply)


class Batch:
    def __init__(self, journal, *, max_guests: Optional[int] = None,
                 max_age: Optional[float] = None):
        self.journal = journal
        self.max_guests = MAX_GUESTS if max_guests is None else max_guests
        self.max_age = MAX_AGE_S if max_age is None else max_age
        self._locks = contextlib.ExitStack()
        self._records: List[Callable] = []  # fn(tx), in apply order
        self._after: List[Callable] = []    # fn() once committed (the log lines)
        self.guests: List[str] = []         # names of the guests locked in this batch
        self.uuids: Set[str] = set()
        self._since = 0.0
        self.user = current_user()  # the history's "who": the same for every apply here

    def lock(self, uuid: str, name: str, wait: float) -> None:
        """Take the guest's lock for this batch (held until ``commit``)."""
        try:
            self._locks.enter_context(guestlock.hold(uuid, wait=0, guest=name))
        except guestlock.GuestBusy:
            self.commit()  # never wait for one guest while holding others' locks
            self._locks.enter_context(guestlock.hold(uuid, wait=wait, guest=name))
        if not self.guests:
            self._since = time.monotonic()
        self.guests.append(name)
        self.uuids.add(uuid)

    def add(self, record: Callable, after: Callable) -> None:
        self._records.append(record)
        self._after.append(after)

    @property
    def pending(self) -> int:
        """Applies waiting for the commit."""
        return len(self._records)

    def due(self) -> bool:
        return bool(self.guests) and (len(self.guests) >= self.max_guests
                                      or time.monotonic() - self._since >= self.max_age)

    def commit(self) -> None:
        """One transaction for every record, then the guests' locks are let go. On a journal
        error (raised) nothing of the batch is recorded and the locks are let go too."""
        records, after = self._records, self._after
        self._records, self._after, self.guests, self.uuids = [], [], [], set()
        try:
            if records:
                with self.journal.transaction() as tx, tx.gathered():  # one executemany a table
                    for record in records:
                        record(tx)
        finally:
            self._locks.close()
            self._locks = contextlib.ExitStack()
        for fn in after:
            fn()

"""The service's periodic work, scheduled by the main loop once ready and run as worker jobs:
drift repair of running guests every ``drift_interval`` (cgctl/core/drift.py), and the history
retention every HISTORY_PRUNE_S (``history_keep_days``, ``history_keep_rows``)."""

from __future__ import annotations

import logging
from typing import Callable

from cgctl.errors import CgctlError

log = logging.getLogger("cgctl")

HISTORY_PRUNE_S = 3600.0  # the history retention runs this often (and once when ready)


class Upkeep:
    """``running_guests()`` lists the running guests of every connected URI (in the worker)."""

    def __init__(self, worker, running_guests: Callable[[], list], stopping):
        self.worker = worker
        self.running_guests = running_guests
        self.stopping = stopping
        self._next_drift = 0.0
        self._next_prune = 0.0

    def tick(self, now: float, config) -> None:
        """Queue what is due (the main loop calls this once ready)."""
        if config.drift_interval and now >= self._next_drift:
            self._next_drift = now + config.drift_interval
            self.worker.submit(self.repair_drift, "drift")
        if now >= self._next_prune:
            self._next_prune = now + HISTORY_PRUNE_S
            days, rows = config.history_keep_days, config.history_keep_rows
            self.worker.submit(lambda ctl: prune_history(ctl, days, rows), "history retention")

    def repair_drift(self, ctl) -> None:
        """Put back what cgctl last wrote where something else rewrote it."""
        from cgctl.core import drift
        for guest in self.running_guests():
            if self.stopping.is_set():
                return
            self.worker.progress()
            try:
                found = drift.find(ctl, guest)
                if not found:
                    continue
                for d in found:
                    log.warning("drift guest=%s param=%s%s: cgctl wrote %s, the cgroup holds %s",
                                guest.name, d.param, f"[{d.device}]" if d.device else "",
                                d.expected, d.live if d.live is not None else "nothing")
                outcome = drift.repair(ctl, guest, found, source="reconcile")
                log.info("guest=%s drift repaired: %d setting(s), %d error(s)", guest.name,
                         len(outcome.changes), len(outcome.errors))
            except CgctlError as e:
                log.error("guest=%s drift check failed: %s", guest.name, e)
            except Exception as e:  # one guest never stops the others
                log.error("guest=%s drift check failed: internal error: %s: %s", guest.name,
                          type(e).__name__, e)


def prune_history(ctl, days: int, rows: int) -> None:
    """The history retention: cheap, in the worker."""
    if not days and not rows:
        return
    removed = ctl.journal().prune_history(keep_days=days, keep_rows=rows)
    if removed:
        log.info("history retention: %d row(s) older than %s removed", removed,
                 " or ".join(filter(None, (f"{days:g} day(s)" if days else "",
                                           f"the newest {rows} per guest" if rows else ""))))

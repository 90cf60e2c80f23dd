"""Reconcile, in the worker after every (re)connect: each running guest with a config gets it
unless it is the very process instance (PID + start time) it was last applied to; that one
keeps its ``--live`` changes. One failing guest is one log line; the others go on."""

from __future__ import annotations

import logging
import time
from typing import Optional

from cgctl.core.batch import Batch
from cgctl.errors import CgctlError
from cgctl.host import runfiles

log = logging.getLogger("cgctl")



def reconcile(w, job) -> bool:
    """Every running guest of ``job.conn``; False when they could not even be listed.

    The applies are recorded in batches (cgctl/core/batch.py: one journal commit for up to
    MAX_GUESTS guests or MAX_AGE_S); lifecycle events queued meanwhile run between two guests,
    after the batch so far is committed if it holds one of their guests (docs/performance.md,
    section 3 D)."""
    t0 = time.monotonic()
    try:
        with w.calling_libvirt(job.uri, "list guests"):
            guests = job.conn.running_guests()
    except CgctlError as e:
        log.error("reconcile %s: cannot list guests: %s", job.uri, e)
        return False  # the connection is going away: its close starts a new round
    try:
        batch = Batch(w.ctl.journal())
    except CgctlError as e:  # as before batches: every guest failed, the round is done
        log.error("reconcile %s: %d running, all failed: %s", job.uri, len(guests), e)
        return True
    counts = {"applied": 0, "unchanged": 0, "without config": 0, "failed": 0}
    for guest in guests:
        w.progress()
        urgent = w.take_events()
        if urgent:
            if any(j.event is None or j.event.uuid in batch.uuids for j in urgent):
                _commit(batch, counts)  # that guest's records first: they are older
            for ev_job in urgent:
                w.run(ev_job)
        try:
            result = reconcile_guest(w, guest, batch)
        except CgctlError as e:
            log.error("guest=%s reconcile failed: %s", guest.name, e)
            result = "failed"
        except Exception as e:  # one guest never stops the others
            log.error("guest=%s reconcile failed: internal error: %s: %s", guest.name,
                      type(e).__name__, e)
            result = "failed"
        counts[result] += 1
        if batch.due():
            _commit(batch, counts)
    _commit(batch, counts)
    log.info("reconcile %s: %d running, %s (%.0f ms)", job.uri, len(guests),
             ", ".join(f"{n} {k}" for k, n in counts.items()), (time.monotonic() - t0) * 1000)
    return True


def _commit(batch: Batch, counts: dict) -> None:
    """Commit the batch; if the journal refuses, its guests count as failed (their cgroups are
    written, their instance is not recorded: the next reconcile applies them again)."""
    names = list(batch.guests)
    pending = batch.pending
    try:
        batch.commit()
    except CgctlError as e:
        log.error("reconcile: %d guest(s) applied but not recorded (%s ...): %s",
                  pending, ", ".join(names[:3]), e)
        lost = min(pending, counts["applied"])
        counts["applied"] -= lost
        counts["failed"] += lost


def reconcile_guest(w, guest, batch: Optional[Batch] = None) -> str:
    """The instance check first (an instance is recorded only by an apply of a config), then
    the config, read once under the guest's lock by the apply itself (docs/performance.md,
    section 3 F)."""
    last = w.ctl.journal().get_instance(guest.uuid)
    if last is not None and guest.pid:
        pid, start = inst = runfiles.instance_of(guest.pid)
        if runfiles.same_instance(last, inst):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("guest=%s same instance (pid %d): left as it is", guest.name, pid)
            return "unchanged"
    outcome = w.ctl.apply_config(guest, source="reconcile", command="reconcile", batch=batch,
                                 need_config=True)
    if outcome is None:
        return "without config"
    return "failed" if outcome.errors else "applied"

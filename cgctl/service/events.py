"""libvirt's lifecycle events, as the service acts on them (in the worker): STARTED → the
settings the domain's <metadata> carries merged into the journal and the guest's config
applied; UNDEFINED → its config forgotten (history kept); DEFINED → the persistent XML's
metadata merged (cgctl/core/travel.py, docs/fleet.md)."""

from __future__ import annotations

import logging
import time
from typing import Optional

from cgctl.errors import CgctlError
from cgctl.host import runfiles

log = logging.getLogger("cgctl")


EVENT_JOBS = ("started", "undefined", "defined")  # run before the rest of a reconcile
# the service's line for an event's apply (metrics.HealthHandler counts it): the steps are
# perf_counter_ns stamps, docs/performance.md section 2 A
APPLIED = ("guest=%s applied source=event (%s): %d change(s), %d error(s), "
           "%.0f ms after the event; steps ms: queue %.3f run files %.3f metadata %.3f "
           "apply %.3f record %.3f, in force %.3f")


def job_kind(ev) -> Optional[str]:
    """The worker job an event asks for, or None (nothing to do)."""
    if ev.event == "started":
        return "started"
    if ev.event == "undefined" and ev.detail != "renamed":  # a rename keeps the UUID
        return "undefined"
    if ev.event == "defined":  # maybe with settings in its metadata
        return "defined"
    return None


def receive_metadata(w, job, inactive: bool = False, xml: Optional[str] = None) -> dict:
    """Merge the metadata of the guest's live (or persistent) XML into the journal; returns
    the <live> overlay. Never raises: the journal config still applies. ``xml``: the live XML
    (text or its parsed ``<domain>`` element) when the caller has it already (libvirt's status
    file)."""
    from cgctl.core import travel
    ev = job.event
    try:
        if xml is None:
            xml = job.conn.domain_xml(ev.uuid, inactive=inactive)
        driver = "lxc" if job.uri.startswith("lxc") else "qemu"
        overlay, decisions = travel.receive(w.ctl.journal(), ev.uuid, ev.name, driver,
                                            xml, source="event", live=not inactive)
    except Exception as e:  # noqa: BLE001  bad metadata never stops the apply
        log.error("guest=%s metadata not used: %s", ev.name, e)
        return {}
    if decisions:
        log.info("guest=%s metadata (%s): %d setting(s) taken, %d kept", ev.name,
                 "persistent" if inactive else "live", sum(d.taken for d in decisions),
                 sum(not d.taken for d in decisions))
    return overlay


def from_run_files(job):
    """(guest, live XML) of the STARTED guest from libvirt's run files (what the hook reads:
    the pid file, checked against /proc, and the status file, which holds the live XML with its
    metadata), or (None, None) when they are not this guest's or the URI is not the system one
    whose files they are. Asking libvirtd instead waits, right after a start, until libvirtd
    has finished the start job: the largest cost of event → applied (docs/performance.md,
    section 2 A)."""
    ev = job.event
    driver = "lxc" if job.uri.startswith("lxc") else "qemu"
    if runfiles.SYSTEM_URIS.get(driver) != job.uri:
        return None, None
    try:  # one read and parse of the status file for the checks and the metadata
        guest, dom = runfiles.running_with_domain(driver, ev.name)
    except CgctlError:
        return None, None
    if guest is None or guest.uuid != ev.uuid:
        return None, None
    return guest, dom


def apply_started(w, job) -> None:
    ev = job.event
    guest, xml = from_run_files(job)
    files_ns = time.perf_counter_ns()
    overlay = receive_metadata(w, job, xml=xml)
    meta_ns = time.perf_counter_ns()
    # from the run files the config is read once, by the apply under the lock; asking libvirtd
    # for the guest costs more than a config read, so that way goes only for one with a config
    if guest is None and not overlay and not w.has_config(ev.uuid):
        log.debug("guest=%s has no config: nothing to apply", ev.name)
        return
    try:
        if guest is None:
            with w.calling_libvirt(job.uri, "lookup"):
                guest = job.conn.guest(ev.uuid)
        if not guest.running:
            log.info("guest=%s stopped before its config was applied", ev.name)
            return
        outcome = w.ctl.apply_config(guest, source="event", command="event", overlay=overlay,
                                     need_config=True)
    except CgctlError as e:
        # the next reconcile (reconnect or restart) tries again if the guest still runs
        log.error("guest=%s apply failed source=event: %s", ev.name, e)
        return
    if outcome is None:
        log.debug("guest=%s has no config: nothing to apply", ev.name)
        return
    done_ns = time.perf_counter_ns()
    q, written = job.queued_ns, getattr(outcome, "written_ns", 0) or done_ns
    log.info(APPLIED, guest.name, ev.detail,
             len(outcome.changes), len(outcome.errors), (time.monotonic() - job.queued) * 1000,
             *_steps_ms(q, job.taken_ns or q, files_ns, meta_ns, written, done_ns),
             (written - q) / 1e6)


def _steps_ms(*stamps_ns: int) -> list:
    """The time between each stamp and the next, in ms."""
    return [(b - a) / 1e6 for a, b in zip(stamps_ns, stamps_ns[1:])]


def forget(w, job) -> None:
    ev = job.event
    try:
        dropped = w.ctl.forget(ev.uuid, source="event", command="undefine")
    except CgctlError as e:
        log.error("guest=%s forget failed source=event: %s", ev.name, e)
        return
    if dropped:
        log.info("guest=%s undefined: config dropped (%d setting(s)); history kept",
                 ev.name, len(dropped))

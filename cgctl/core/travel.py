"""Settings that travel with the guest (docs/fleet.md).

- ``publish``: after a change is committed to the journal, write it into the domain's own
  metadata (``cgctl.model.metadata``), live and/or persistent copy as the mode says. Called by the
  controller (CLI and service); it calls libvirt, so never from the hook.
- ``receive``: a domain XML arrives (the hook's stdin at ``prepare``/``start``/``started``,
  the service's STARTED and DEFINED events): merge its ``<config>`` into this host's journal
  by the conflict rules, and return the ``<live>`` entries to put in force on top.
- the controller's ``apply_config(overlay=...)`` puts the journal config plus that overlay
  into the guest's cgroups, under the guest's lock.

A failure here never fails the change or the start: the journal is the host's authority and
the metadata its copy for other hosts. Whatever is wrong is said in one line.
"""

from __future__ import annotations

import contextvars
import logging
import os
from typing import Dict, List, Optional, Tuple

from cgctl.core import profiles
from cgctl.model import metadata
from cgctl.model import params as P
from cgctl.errors import CgctlError

log = logging.getLogger("cgctl")

ENV = "CGCTL_METADATA"  # "0"/"off": never write metadata (a host whose libvirt must not be
                        # written by cgctl, or tests with fake guests)
COMMAND = "metadata"  # the history command of an imported setting


# set by the command server (cgctl/service/cmdserver.py) in the thread running a command: its
# publisher (cgctl/service/publisher.py), and the list of the command's deferred writes
PUBLISHER: "contextvars.ContextVar" = contextvars.ContextVar("cgctl_publisher", default=None)
PENDING: "contextvars.ContextVar" = contextvars.ContextVar("cgctl_pending", default=None)


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "no", "false")


# --------------------------------------------------------------------------- publishing

def publish(guest, mode: str, changes: Dict[Tuple[str, str], Optional[str]], *, at: str,
            user: str, live_changes: Optional[Dict[Tuple[str, str], str]] = None,
            defer: bool = False) -> Optional[str]:
    """Write a committed change into the domain's metadata; returns a warning or None.

    ``changes``: config key → canonical text (None: removed), for 'config'/'live+config';
    ``live_changes``: key → text in force now, for 'live' (and 'live+config', where the
    live copy's ``<config>`` gets ``changes`` and its ``<live>`` entries for them go).
    ``defer`` (only from under the guest's lock): in the service, after the answer (``_update``)."""
    if not enabled() or not (changes or live_changes):
        return None
    kw = dict(at=at, host=metadata.hostname(), user=user)
    if mode == "live":
        return _update(guest, "change", lambda d: metadata.record(
            d, live_changes or {}, section="live", **kw), live=True, config=False, defer=defer)
    if mode == "config":
        return _update(guest, "change", lambda d: metadata.record(
            d, changes, section="config", **kw), live=False, config=True, defer=defer)
    return _update(guest, "change", lambda d: metadata.record(
        d, changes, section="config", drop_live=True, **kw),
        live=guest.running, config=guest.persistent, defer=defer)


def deferring() -> bool:
    """True in a service command thread: ``publish(defer=True)`` queues rather than writes."""
    return PUBLISHER.get() is not None and PENDING.get() is not None


def publish_profile(guest, mode: str, name: Optional[str], values: Dict[Tuple[str, str], str], *,
                    at: str, user: str) -> Optional[str]:
    """Write the guest's profile reference and the profile's values (by value, so a host that
    lacks the profile applies them: docs/fleet.md#profiles) into the copies the mode says
    ('config': persistent; 'live+config': both; 'live': the live copy)."""
    if not enabled():
        return None
    # None: the guest follows the host's default, which is each host's own: no <profile>
    entry = None if name is None else \
        metadata.ProfileEntry(name, dict(values), at, metadata.hostname(), user)
    return _update(guest, "profile", lambda d: metadata.record_profile(d, entry),
                   live=guest.running and mode != "config",
                   config=guest.persistent and mode != "live")


def _update(guest, what: str, edit, *, live: bool, config: bool,
            defer: bool = False) -> Optional[str]:
    """``virt.update_metadata``, never fatal: a failure is one warning (returned and logged).

    In the service's command threads (``PUBLISHER`` set, cgctl/service/publisher.py) the write
    goes through its publisher, in order; ``defer``: made after the command's answer (the
    caller holds the guest's lock, so the queue's order is the journal's), nothing returned."""
    pub = PUBLISHER.get()
    if pub is None:
        return _write(guest, what, edit, live=live, config=config)

    def run(conn_for):
        return _write(guest, what, edit, live=live, config=config, conn_for=conn_for)

    pending = PENDING.get()
    if defer and pending is not None:
        pending.append(pub.submit(run, guest.name, ready=False))
        return None
    release(pending)  # this command's own deferred writes first: never wait on ourselves
    return pub.submit(run, guest.name, ready=True).wait()


def release(pending) -> None:
    """The command's answer is out (or it waits on its own writes): let its writes run."""
    for item in pending or ():
        item.ready.set()


def _write(guest, what: str, edit, *, live: bool, config: bool, conn_for=None) -> Optional[str]:
    from cgctl import virt
    from cgctl.errors import LibvirtError
    try:
        if conn_for is None:
            virt.update_metadata(guest, edit, live=live, config=config)
        else:
            try:  # the publisher's kept connection; once more on a fresh one if it failed
                virt.update_metadata(guest, edit, live=live, config=config,
                                     conn=conn_for(guest.uri))
            except LibvirtError as exc:
                log.info("guest=%s metadata: kept libvirt connection failed (%s); "
                         "reconnecting", guest.name, exc)
                virt.update_metadata(guest, edit, live=live, config=config,
                                     conn=conn_for(guest.uri, fresh=True))
    except (CgctlError, metadata.MetadataError) as exc:
        msg = (f"the {what} is in force and in the journal, but not in the domain's metadata "
               f"(it will not travel with the guest): {exc}")
        log.warning("guest=%s %s", guest.name, msg)
        return msg
    return None


# --------------------------------------------------------------------------- receiving

def receive(journal, uuid: str, name: str, driver: str, domain_xml, *, source: str,
            live: bool = True) -> Tuple[Dict[Tuple[str, str], str], List[metadata.Decision]]:
    """Merge the cgctl metadata of ``domain_xml`` into the journal (one transaction).

    Returns (live overlay, decisions). ``live=False`` (a persistent definition): the
    ``<live>`` section is not for this instance and is ignored. MetadataError if the
    element is unusable (nothing is written then)."""
    doc = metadata.find_in_domain(domain_xml)
    if doc is None or not (doc.config or doc.live or doc.profile):
        return {}, []
    incoming = {}
    for key, e in doc.config.items():
        if key[0] not in P.BY_NAME:
            log.warning("guest=%s metadata: unknown parameter %s from %s ignored", name,
                        key[0], e.host)
            continue
        if e.value is not None:
            try:
                e = e._replace(value=P.from_text(key[0], key[1], e.value).text())
            except CgctlError as exc:
                log.warning("guest=%s metadata: %s from %s ignored: %s", name, key[0],
                            e.host, exc)
                continue
        incoming[key] = e
    with journal.transaction() as tx:
        config = tx.get_config(uuid)
        rows = tx.history_heads(uuid)  # not the whole history: it grows with every start
        stamps = metadata.journal_stamps(rows)
        decisions = metadata.decide(config, stamps, incoming)
        taken = [d for d in decisions if d.taken]
        if taken:
            tx.set_config(uuid, name, driver, {d.key: d.incoming.value for d in taken})
        for d in taken:
            # the row carries the decision's own time, host and user: the conflict rules
            # compare that time the next time metadata arrives
            tx.add_history(uuid, name, command=COMMAND, source=source, mode="config",
                           changes=[(d.key[0], d.key[1], d.journal, d.incoming.value)],
                           user=metadata.origin(d.incoming), at=d.incoming.at)
            stamps[d.key] = d.incoming.at
        if doc.profile is not None:
            d = _receive_profile(tx, uuid, name, driver, doc.profile, stamps, source)
            if d is not None:
                decisions.append(d)
        last = {(r.param, r.device): r for r in rows}
        for d in decisions:
            if d.taken:
                continue
            prev = last.get(d.key)
            if prev is not None and prev.outcome == d.why and prev.new_value == d.incoming.value:
                continue  # said already (this guest restarts with the same old metadata)
            tx.add_history(uuid, name, command=COMMAND, source=source, mode="config",
                           changes=[(d.key[0], d.key[1], d.journal, d.incoming.value)],
                           user=metadata.origin(d.incoming), outcome=d.why)
    for d in decisions:
        if d.key[0] == profiles.HISTORY_PARAM:
            log.info("guest=%s profile metadata %s -> %s: %s", name, d.journal,
                     d.incoming.value, d.why)
            continue
        log.info("guest=%s param=%s%s metadata %s -> %s: %s", name, d.key[0],
                 f"[{d.key[1]}]" if d.key[1] else "", d.journal or "-",
                 d.incoming.value or "-", d.why)
    overlay = metadata.live_overlay(doc, stamps) if live else {}
    return {k: v for k, v in overlay.items() if k[0] in P.BY_NAME}, decisions


def _receive_profile(tx, uuid, name, driver, pr: "metadata.ProfileEntry", stamps, source):
    """The incoming profile reference, by the same rules as a setting (key ``profile``):
    taken if this host has no decision on it or an older one. Its values are kept as the
    guest's carried values (used where this host does not define the profile)."""
    values = {}
    for key, text in pr.values.items():
        try:
            values[key] = P.from_text(key[0], key[1], text).text()
        except CgctlError as exc:
            log.warning("guest=%s metadata: profile %s: %s ignored: %s", name, pr.name,
                        key[0], exc)
    have = tx.get_guest_profile(uuid)
    key = (profiles.HISTORY_PARAM, "")
    entry = metadata.Entry(pr.name, pr.at, pr.host, pr.user)
    if have.profile == pr.name:
        if have.values != values:  # the same reference: refresh the values it carries
            tx.set_guest_profile(uuid, name, driver, pr.name, values)
        return None
    stamp = stamps.get(key)
    if stamp is not None and pr.at <= stamp:
        why = (f"kept: this host's value ({stamp}) is newer than {pr.host or '?'}'s ({pr.at})")
        return metadata.Decision(key, have.profile, entry, False, why)
    tx.set_guest_profile(uuid, name, driver, pr.name, values)
    tx.add_history(uuid, name, command=COMMAND, source=source, mode="config",
                   changes=[(key[0], "", have.profile, pr.name)],
                   user=metadata.origin(entry), at=pr.at)
    stamps[key] = pr.at
    return metadata.Decision(key, have.profile, entry, True, f"from {pr.host or '?'} ({pr.at})")

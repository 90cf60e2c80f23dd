"""The service's libvirt connections, one Link per configured URI: each connect attempt in a
thread of its own (a hung libvirtd never holds the main loop), reconnect with backoff after a
failure or a lost connection, generations that tell stale callbacks and jobs apart, and what
STATUS says of each URI. Everything here runs in the main loop unless marked."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

from cgctl.errors import CgctlError
from cgctl.service import events
from cgctl.service.worker import Job

log = logging.getLogger("cgctl")

CONNECT_TIMEOUT_S = 5.0  # a connect attempt unanswered this long: libvirtd counts as hung
CLOSE_WAIT_S = 2.0  # at stop, how long closing the connections may take (a hung peer)


@dataclass
class Link:
    """One configured URI: its connection (if any) and its reconnect schedule."""

    uri: str
    conn: object = None  # virt.EventConnection while connected
    generation: int = 0  # new at each connect: stale callbacks and jobs are told apart
    pending: Optional[float] = None  # time.monotonic() a connect attempt began, while it runs
    hung: bool = False  # the pending attempt passed CONNECT_TIMEOUT_S (counted as failed)
    attempts: int = 0
    delay: float = 0.0  # before the next attempt after a failure
    last_delay: float = 0.0  # the one before (the log goes quiet once it stops growing)
    next_try: float = 0.0  # time.monotonic() of the next connect attempt
    reconciled: bool = False
    last_error: str = ""


class Links:
    """``report(msg)`` puts a message on the main loop's control queue (from any thread);
    ``changed()`` is called when what STATUS says may have changed. ``config`` is replaced
    by the daemon on SIGHUP."""

    def __init__(self, config, worker, report: Callable[[tuple], None],
                 changed: Callable[[], None]):
        self.config = config
        self.worker = worker
        self.report = report
        self.changed = changed
        self._links: Dict[str, Link] = {}
        self._generations = itertools.count(1)  # unique over links, also after a reload

    def __getitem__(self, uri: str) -> Link:
        return self._links[uri]

    def __contains__(self, uri: str) -> bool:
        return uri in self._links

    def __iter__(self) -> Iterator[Link]:
        return iter(list(self._links.values()))

    # ----- the main loop's view ---------------------------------------------------------------
    def waits(self, now: float) -> List[float]:
        """Seconds until each link next needs the main loop."""
        out = []
        for link in self:
            if link.pending is not None:
                if not link.hung:
                    out.append(link.pending + CONNECT_TIMEOUT_S - now)
            elif link.conn is None:
                out.append(link.next_try - now)
        return out

    def tick(self, now: float, stopping: threading.Event) -> None:
        """Start the connect attempts that are due; count unanswered ones as failed."""
        for link in self:
            if stopping.is_set():
                break
            if link.pending is not None:
                if not link.hung and now - link.pending > CONNECT_TIMEOUT_S:
                    self._connect_hung(link)
            elif link.conn is None and now >= link.next_try:
                self._connect(link)

    def settled(self) -> bool:
        """Every URI reconciled, or tried and not connected (refused or hung)."""
        return all(link.reconciled if link.conn is not None else link.attempts > 0
                   for link in self)

    def status(self) -> List[str]:
        parts = []
        for link in self:
            if link.conn is not None:
                parts.append(f"{link.uri} {'watching' if link.reconciled else 'reconciling'}")
            else:
                parts.append(f"{link.uri} disconnected ({link.attempts} attempt(s)"
                             + (f": {link.last_error})" if link.last_error else ")"))
        return parts

    def running_guests(self) -> list:
        """The running guests of every connected URI (in the worker: it closes connections)."""
        out = []
        for link in self:
            conn = link.conn
            if conn is not None:
                try:
                    with self.worker.calling_libvirt(link.uri, "list guests"):
                        out += conn.running_guests()
                except CgctlError as e:
                    log.warning("cannot list the guests of %s: %s", link.uri, e)
        return out

    # ----- life of a link ---------------------------------------------------------------------
    def add(self, uri: str) -> None:
        link = Link(uri, delay=self.config.reconnect_initial)
        self._links[uri] = link
        self._connect(link)

    def drop(self, uri: str) -> None:
        self.disconnect(self._links.pop(uri))

    def _connect(self, link: Link) -> None:
        """Start one connect attempt in a thread of its own; its result comes back as an
        ("opened", ...) control message (see opened)."""
        from cgctl import virt
        link.generation = generation = next(self._generations)
        uri = link.uri
        conn = virt.EventConnection(
            uri,
            on_event=lambda ev: self._on_event(ev, generation),
            on_close=lambda reason: self.report(("closed", uri, generation, reason)),
            keepalive=(self.config.keepalive_interval, self.config.keepalive_count))
        link.pending, link.hung = time.monotonic(), False

        def attempt():
            error = None
            try:
                conn.open()
            except CgctlError as e:
                error = e
            except Exception as e:  # a bug: one attempt failed, the service goes on
                error = CgctlError(f"internal error: {type(e).__name__}: {e}")
            self.report(("opened", uri, generation, conn, error))
        threading.Thread(target=attempt, name="cgctl-connect", daemon=True).start()

    def _connect_hung(self, link: Link) -> None:
        """The attempt under way has had no answer for CONNECT_TIMEOUT_S: count it as failed
        (readiness, STATUS) and leave it running; its late result is still taken."""
        link.hung = True
        link.attempts += 1
        link.last_error = (f"libvirtd not answering (no reply to the connect within "
                           f"{CONNECT_TIMEOUT_S:g} s)")
        log.warning("cannot connect to %s (attempt %d): %s; still waiting for it", link.uri,
                    link.attempts, link.last_error)
        self.changed()

    def opened(self, uri: str, generation: int, conn, error, stopping: bool) -> None:
        link = self._links.get(uri)
        if link is None or link.generation != generation or stopping:
            if error is None:  # a URI dropped by a reload meanwhile, or stopping: not wanted
                self.worker.put(Job("close", uri, conn))
            return
        link.pending = None
        if error is not None:
            if not link.hung:
                link.attempts += 1
            link.hung = False
            link.last_error = str(error)
            delay = link.delay
            link.next_try = time.monotonic() + delay
            link.delay = min(link.delay * 2, self.config.reconnect_max)
            # every attempt while the delay grows; once it stopped growing, every tenth
            loud = delay != link.last_delay or link.attempts % 10 == 0
            log.log(logging.WARNING if loud else logging.DEBUG,
                    "cannot connect (attempt %d): %s; next attempt in %.1f s",
                    link.attempts, error, delay)
            link.last_delay = delay
            self.changed()
            return
        link.hung = False
        link.conn = conn
        link.reconciled = False
        link.last_error = ""
        link.delay = self.config.reconnect_initial
        link.last_delay = 0.0
        log.info("connected to %s (libvirt %s%s)%s", link.uri, conn.version,
                 ", keepalive" if conn.keepalive else "",
                 f" after {link.attempts} failed attempt(s)" if link.attempts else "")
        link.attempts = 0
        self.worker.put(Job("reconcile", link.uri, conn, generation))
        self.changed()

    def closed(self, uri: str, generation: int, reason: str) -> None:
        link = self._links.get(uri)
        if link is not None and link.generation == generation and link.conn is not None:
            log.warning("lost connection to %s: %s; reconnecting", uri, reason)
            self.disconnect(link)
            link.delay = self.config.reconnect_initial
            link.attempts = 0
            link.next_try = time.monotonic() + link.delay
            self.changed()

    def reconciled(self, uri: str, generation: int) -> None:
        link = self._links.get(uri)
        if link is not None and link.generation == generation and link.conn is not None:
            link.reconciled = True
            self.changed()

    def disconnect(self, link: Link) -> None:
        conn, link.conn = link.conn, None
        link.reconciled = False
        link.generation = next(self._generations)  # events, jobs, attempts of before: stale
        link.pending, link.hung = None, False
        if conn is not None:
            # closed by the worker, after any job still using it (never under its feet)
            self.worker.put(Job("close", link.uri, conn))

    def _on_event(self, ev, generation: int) -> None:  # libvirt event loop thread
        link = self._links.get(ev.uri)
        if link is None or link.generation != generation:
            return
        kind = events.job_kind(ev)
        if kind is None:
            log.debug("event guest=%s %s/%s on %s: nothing to do", ev.name, ev.event,
                      ev.detail, ev.uri)
            return
        # handed to the worker first: the log line's formatting and write come after
        self.worker.put(Job(kind, ev.uri, link.conn, generation, event=ev))
        log.info("event guest=%s %s (%s) on %s", ev.name, ev.event, ev.detail, ev.uri)


def close_all(conns: list) -> None:
    """Close connections at stop, in a thread: a hung libvirtd may never answer the close,
    and the stop must not wait on it for more than CLOSE_WAIT_S."""
    if not conns:
        return

    def close():
        for conn in conns:
            conn.close()
    t = threading.Thread(target=close, name="cgctl-close", daemon=True)
    t.start()
    t.join(CLOSE_WAIT_S)
    if t.is_alive():
        log.warning("stopping: libvirtd did not answer the close of %d connection(s) within "
                    "%.0f s; not waiting for it", len(conns), CLOSE_WAIT_S)

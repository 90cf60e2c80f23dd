"""The command socket's metadata publisher: one thread, one libvirt connection per URI.

A change served over the command socket (cgctl/service/cmdserver.py) is answered once it is in
force and committed to the journal; writing it into the domain's metadata (cgctl/core/travel.py,
docs/fleet.md) is a libvirtd round trip (~3 ms) that the client need not wait for. So while the
service runs a command, ``travel`` hands its metadata writes here (``travel.PUBLISHER``):

- **Order.** One FIFO queue, one thread: the writes are made in the order they were handed over.
  ``Controller.set``/``unset`` hand theirs over while still holding the guest's lock, i.e. in the
  order the journal committed them, so a second change to a guest never publishes an older
  metadata state after a newer one (each write reads, edits and writes back the whole element).
- **After the reply.** A deferred write waits (``Item.ready``) until the command server has sent
  the command's answer (or at most ``READY_WAIT_S``), so it does not compete with the reply; a
  write the caller waits for (profile publishes, which report warnings) is ready at once, and
  the caller's own earlier deferred writes are released first (no wait on itself).
- **One connection.** Only this thread uses its libvirt connections (nothing shared across
  threads); a write that fails on a kept connection is tried once more on a fresh one, and a
  connection that failed is dropped.
- **Never fatal**, as before: a failure is one warning in the service's log (a deferred write has
  no client left to tell). A crash between the answer and the write leaves the journal and the
  cgroups right and the metadata without the change (docs/fleet.md#what-is-written-where).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Callable, Dict, Optional

log = logging.getLogger("cgctl")

READY_WAIT_S = 10.0  # a deferred write waits this long at most for its command's answer
DRAIN_S = 5.0  # at stop: time left to the writes still queued


class Item:
    """One metadata write: ``run(conn_for)`` -> warning or None."""

    __slots__ = ("run", "ready", "done", "warning", "guest")

    def __init__(self, run: Callable, guest: str, ready: bool):
        self.run = run
        self.guest = guest
        self.ready = threading.Event()
        if ready:
            self.ready.set()
        self.done = threading.Event()
        self.warning: Optional[str] = None

    def wait(self, timeout: float = 60.0) -> Optional[str]:
        if not self.done.wait(timeout):
            return "the metadata write did not finish in time (the service's publisher is busy)"
        return self.warning


class Publisher:
    def __init__(self, opener: Optional[Callable[[str], object]] = None):
        self._queue: "queue.Queue[Optional[Item]]" = queue.Queue()
        self._conns: Dict[str, object] = {}
        self._opener = opener
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self.published = 0  # writes made (tests, metrics)

    def start(self) -> "Publisher":
        self._thread = threading.Thread(target=self._loop, name="cgctl-publisher", daemon=True)
        self._thread.start()
        return self

    def submit(self, run: Callable, guest: str, *, ready: bool) -> Item:
        item = Item(run, guest, ready)
        self._queue.put(item)
        return item

    def stop(self) -> None:
        """Make the writes still queued (not waiting for answers any more), then close."""
        self._stopping = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(DRAIN_S)

    # -- this thread only ----------------------------------------------------------
    def _open(self, uri: str):
        if self._opener is not None:
            return self._opener(uri)
        from cgctl import virt
        return virt.open_connection(uri, readonly=False)

    def conn_for(self, uri: str, fresh: bool = False):
        """This thread's connection to ``uri`` (``fresh``: drop the kept one first)."""
        if fresh:
            self.drop(uri)
        conn = self._conns.get(uri)
        if conn is None:
            conn = self._conns[uri] = self._open(uri)
        return conn

    def drop(self, uri: str) -> None:
        conn = self._conns.pop(uri, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _loop(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if not self._stopping:
                    item.ready.wait(READY_WAIT_S)
                try:
                    item.warning = item.run(self.conn_for)
                    self.published += 1
                except Exception as exc:  # a bug: one line, the next write still runs
                    log.error("guest=%s metadata publisher: internal error: %s: %s",
                              item.guest, type(exc).__name__, exc)
                    item.warning = f"internal error: {type(exc).__name__}: {exc}"
                finally:
                    item.done.set()
        finally:
            for uri in list(self._conns):
                self.drop(uri)

"""The worker: the one thread of the service that uses the Controller (journal, cgroup writes).
Jobs reach it through a queue, from the main loop and libvirt's event loop; it runs them one at
a time and marks its libvirt calls, so a hung libvirtd shows in STATUS, not as a stuck worker."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from cgctl.errors import CgctlError
from cgctl.service import events, reconcile

log = logging.getLogger("cgctl")

WORKER_STALL_S = 60.0  # one job (or one guest of a reconcile) longer than this: worker is stuck
STOP_WAIT_S = 10.0  # at stop, how long the job in progress may take to finish
LIBVIRT_CALL_NOTE_S = 5.0  # a worker libvirt call longer than this is named in STATUS


@dataclass
class Job:
    kind: str  # "started" | "undefined" | "defined" | "reconcile" | "close" | "swap" | "call"
    uri: str = ""
    conn: object = None
    generation: int = 0
    event: object = None
    payload: object = None
    queued: float = field(default_factory=time.monotonic)
    # perf_counter_ns when queued and when the worker took it: the steps of event → applied
    # in the service's own log line (docs/performance.md, section 2 A)
    queued_ns: int = field(default_factory=time.perf_counter_ns)
    taken_ns: int = 0


_STOP = object()


class Worker:
    """``controller_factory(journal_path=, uris=)`` makes its Controller (tests pass a fake);
    ``report(msg)`` hands a message to the main loop (its control queue)."""

    def __init__(self, controller_factory, report: Callable[[tuple], None]):
        self.factory = controller_factory
        self.report = report
        self.ctl = None  # the Controller: only this thread uses it
        self.busy_since: Optional[float] = None
        self.libvirt_call: Optional[tuple] = None  # (uri, what, monotonic, time) while waiting
        self._jobs: "queue.Queue" = queue.Queue()
        self._thread: Optional[threading.Thread] = None

    def start(self, journal: str, uris) -> None:
        self.ctl = self.factory(journal_path=journal, uris=uris)
        self._thread = threading.Thread(target=self._work, name="cgctl-worker", daemon=True)
        self._thread.start()

    def put(self, job: Job) -> None:
        self._jobs.put(job)

    def submit(self, fn: Callable[[object], None], what: str = "job") -> None:
        """Run ``fn(controller)`` in the worker thread; a CgctlError is one log line."""
        self._jobs.put(Job("call", payload=(fn, what)))

    def progress(self) -> None:
        """One step of a long job (a guest of a reconcile) is done: not stuck."""
        self.busy_since = time.monotonic()

    def take_events(self) -> List[Job]:
        """The lifecycle-event jobs queued now (before any stop), taken out of the queue in
        their order; every other job keeps its place. A long job (a reconcile) runs them
        between two of its steps: a guest that starts meanwhile does not wait behind it."""
        q = self._jobs
        if not q.qsize():
            return []
        with q.mutex:  # queue.Queue's own lock over its deque: taken and rest in one step
            taken, rest = [], []
            for i, job in enumerate(q.queue):
                if job is _STOP:
                    rest.extend(list(q.queue)[i:])
                    break
                (taken if job.kind in events.EVENT_JOBS else rest).append(job)
            if taken:
                q.queue.clear()
                q.queue.extend(rest)
        return taken

    def run(self, job: Job) -> None:
        """Run one job now, inside a long one (see take_events); a failure is one log line."""
        busy = self.busy_since
        self._run(job)
        self.busy_since = busy

    def has_config(self, uuid: str) -> bool:
        return bool(self.ctl.effective(uuid, self.ctl.journal()).config)  # profile + own

    @contextlib.contextmanager
    def calling_libvirt(self, uri: str, what: str):
        """Marks the worker's libvirt calls (they can wait as long as libvirtd hangs)."""
        self.libvirt_call = (uri, what, time.monotonic(), time.time())
        try:
            yield
        finally:
            self.libvirt_call = None

    # ----- health -----------------------------------------------------------------------------
    def stuck(self, now: float) -> Optional[str]:
        """None while the worker makes progress; else what is wrong with it."""
        if self._thread is None or not self._thread.is_alive():
            return "the worker thread is gone"
        busy = self.busy_since
        if busy is not None and now - busy > WORKER_STALL_S and self.libvirt_call is None:
            # (a worker waiting on a hung libvirtd is not ours to restart: a new process would
            # wait the same; STATUS names it, see libvirt_hang(), keepalive ends most waits)
            return f"the worker has been busy with one job for {now - busy:.0f} s"
        return None

    def libvirt_hang(self) -> Optional[str]:
        """What the worker has been waiting on libvirtd for, longer than LIBVIRT_CALL_NOTE_S."""
        call = self.libvirt_call
        if call is None or time.monotonic() - call[2] < LIBVIRT_CALL_NOTE_S:
            return None
        since = time.strftime("%H:%M:%S", time.localtime(call[3]))
        return f"worker waiting on libvirtd at {call[0]} ({call[1]}) since {since}"

    # ----- stop -------------------------------------------------------------------------------
    def drain(self) -> Tuple[int, List[object]]:
        """Take the queued jobs off: (how many were dropped, the connections they would close)."""
        dropped, closing = 0, []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return dropped, closing
            if job.kind == "close":
                closing.append(job.conn)
            else:
                dropped += 1

    def stop(self, hung_wait: float) -> None:
        """After the jobs queued by now; ``hung_wait`` instead of STOP_WAIT_S while the job in
        progress waits on libvirtd (a hung one would never let it finish)."""
        self._jobs.put(_STOP)
        if self._thread is not None:
            self._thread.join(hung_wait if self.libvirt_call is not None else STOP_WAIT_S)
            if self._thread.is_alive():
                log.error("the worker did not finish its job within %.0f s", STOP_WAIT_S)

    # ----- the thread -------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                self._run(job)
        finally:
            ctl, self.ctl = self.ctl, None
            if ctl is not None:
                ctl.close()

    def _run(self, job: Job) -> None:
        job.taken_ns = time.perf_counter_ns()
        self.busy_since = time.monotonic()
        try:
            self._do(job)
        except Exception as e:  # a bug must not end the worker: one line, go on
            log.error("internal error in %s job: %s: %s", job.kind, type(e).__name__, e,
                      exc_info=log.isEnabledFor(logging.DEBUG))
        finally:
            self.busy_since = None

    def _do(self, job: Job) -> None:
        if job.kind == "started":
            events.apply_started(self, job)
        elif job.kind == "undefined":
            events.forget(self, job)
        elif job.kind == "defined":
            events.receive_metadata(self, job, inactive=True)
        elif job.kind == "reconcile":
            if reconcile.reconcile(self, job):
                self.report(("reconciled", job.uri, job.generation))
        elif job.kind == "close":
            with self.calling_libvirt(job.uri, "close"):
                job.conn.close()
        elif job.kind == "swap":  # SIGHUP changed the journal or the URIs
            journal, uris = job.payload
            if self.ctl is not None:
                self.ctl.close()
            self.ctl = self.factory(journal_path=journal, uris=uris)
        elif job.kind == "call":
            fn, what = job.payload
            try:
                fn(self.ctl)
            except CgctlError as e:
                log.error("%s: %s", what, e)

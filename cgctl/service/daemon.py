"""``cgctl daemon``: the listener service (DESIGN §6).

Threads, and what each one may do::

    main          signals, connections (lose, reconnect with backoff), systemd notify and
                  watchdog, SIGHUP reload. Never applies anything itself, and never waits on a
                  libvirt call: a hung libvirtd must not hold SIGTERM or the watchdog.
    connect       one short-lived thread per connect attempt (open, keepalive, event
                  registration): it can hang on a hung libvirtd, so the main loop only reads
                  its result from the control queue and counts it as failed after
                  CONNECT_TIMEOUT_S (one attempt per URI at a time).
    libvirt loop  libvirt's default event loop (cgctl.virt.start_event_loop): keepalive, close
                  callbacks, lifecycle events. Its callbacks only queue work and return.
    worker        the only thread that uses the Controller (journal, cgroup writes): applies the
                  config on STARTED, forgets it on UNDEFINED, reconciles after every (re)connect.

Ready (READY=1) after the first round: every URI connected and reconciled, or tried and not
connected (refused, or no answer within CONNECT_TIMEOUT_S), or READY_DEADLINE_S after start
whatever the state; STATUS says which URIs are not connected. Reconnecting goes on with backoff.

Reconcile: for each running guest with a config, the instance now (PID + process start time)
is compared with the last one the config was applied to; a new instance gets the config, the
same one is left alone (its ``--live`` changes stay). One failing guest is one log line; the
others go on. Losing libvirtd is never a reason to exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from cgctl import consts
from cgctl.host import runfiles
from cgctl.errors import CgctlError
from cgctl.service.notify import Notifier
from cgctl.config import Config, resolve

log = logging.getLogger("cgctl")

HEARTBEAT_S = 1.0  # the libvirt event loop proves it runs this often
LOOP_STALL_S = 5.0  # no heartbeat for this long: the event loop is stuck, stop the watchdog pings
WORKER_STALL_S = 60.0  # one job (or one guest of a reconcile) longer than this: worker is stuck
STOP_WAIT_S = 10.0  # at stop, how long the job in progress may take to finish
SAME_START_S = 0.05  # two start times this close are the same process start (clock ticks)
CONNECT_TIMEOUT_S = 5.0  # a connect attempt unanswered this long: libvirtd counts as hung
READY_DEADLINE_S = 30.0  # READY=1 by then whatever the state (systemd's start timeout is 90 s)
LIBVIRT_CALL_NOTE_S = 5.0  # a worker libvirt call longer than this is named in STATUS
CLOSE_WAIT_S = 2.0  # at stop, how long closing the connections may take (a hung peer)
HISTORY_PRUNE_S = 3600.0  # the history retention runs this often (and once when ready)


# ------------------------------------------------------------------------- the device watcher slot

@dataclass
class WatchContext:
    """What a device watcher gets from the daemon (see ``Daemon(device_watcher=...)``).

    ``submit(fn, what)`` runs ``fn(controller)`` in the worker thread, the only thread that may
    use the Controller; ``running_guests()`` lists the running guests of every connected URI
    (call it from a submitted ``fn``: connections are closed in the worker thread);
    ``stopping`` is set when the service stops.
    """

    submit: Callable[[Callable[[object], None], str], None]
    running_guests: Callable[[], list]
    stopping: threading.Event


DeviceWatcher = Callable[[WatchContext], Optional[Callable[[], None]]]


def default_device_watcher(config: Config) -> Optional[DeviceWatcher]:
    """PLUG-IN POINT for per-device udev watching (``cgctl/host/udevwatch.py``, built separately).

    A device watcher is ``watcher(ctx: WatchContext)``: it starts watching (in its own thread)
    and returns a callable that stops it, or None. The daemon calls it once it is ready
    (connected and reconciled) and the stop callable when it stops; work on guests goes
    through ``ctx.submit`` (the worker thread). ``watch_devices = false`` turns it off.
    """
    if not config.watch_devices:
        return None
    try:
        from cgctl.host import udevwatch  # noqa: F401 (optional: pyudev may be missing)
    except ImportError:
        return None
    return udev_watcher


def udev_watcher(ctx: WatchContext) -> Callable[[], None]:
    """The udevwatch adapter: a block disk added or changed → the per-device settings of the
    running guests that name it are re-applied (in the worker, like every other apply)."""
    from cgctl.host import udevwatch

    def on_disk(node, majmin, action):  # udevwatch's delivery thread: hand over, return
        def job(ctl):
            udevwatch.reapply_device(ctl, ctx.running_guests(), majmin, command="device")
        ctx.submit(job, f"block device {node or majmin} ({action})")
    watcher = udevwatch.DeviceWatcher(on_disk).start()
    return watcher.stop


# --------------------------------------------------------------------------- the daemon

@dataclass
class _Link:
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


@dataclass
class _Job:
    kind: str  # "started" | "undefined" | "reconcile" | "close" | "swap" | "call"
    uri: str = ""
    conn: object = None
    generation: int = 0
    event: object = None
    payload: object = None
    queued: float = field(default_factory=time.monotonic)


_STOP = object()


class Daemon:
    """The listener. ``run()`` returns the exit code (0 after SIGTERM/SIGINT or ``stop()``).

    ``controller_factory(journal_path=, uris=)`` makes the Controller the worker uses (tests pass
    a fake). ``config_file`` is re-read on SIGHUP (``reload()``); ``overrides`` (from the command
    line) win over it every time.
    """

    def __init__(self, config: Config, *, config_file: Optional[str] = None,
                 overrides: Optional[dict] = None, controller_factory=None,
                 notifier: Optional[Notifier] = None,
                 device_watcher: Optional[DeviceWatcher] = None,
                 install_signals: bool = True, command_server=None):
        if controller_factory is None:
            from cgctl.core.controller import Controller as controller_factory
        self.config = config
        self.config_file = config_file
        self.overrides = dict(overrides or {})
        self.controller_factory = controller_factory
        self.notifier = notifier or Notifier()
        self.device_watcher = device_watcher
        self.install_signals = install_signals
        self.command_server = command_server  # cgctl.service.cmdserver.CommandServer, or None
        self.links: Dict[str, _Link] = {}
        self.ready = False
        self.stopping = threading.Event()
        self._control: "queue.SimpleQueue" = queue.SimpleQueue()  # safe from signal handlers
        self._jobs: "queue.Queue" = queue.Queue()
        self._worker: Optional[threading.Thread] = None
        self._ctl = None  # the worker's Controller
        self._heartbeat = time.monotonic()
        self._worker_busy_since: Optional[float] = None
        self._timer: Optional[int] = None
        self._stop_watcher: Optional[Callable[[], None]] = None
        self._next_ping = 0.0
        self._next_drift = 0.0
        self._next_prune = 0.0
        self._status_text = ""
        self._generations = itertools.count(1)  # unique over links, also after a reload
        self._started = time.monotonic()
        self._libvirt_call: Optional[tuple] = None  # (uri, what, since) while the worker waits

    # ----- entry ------------------------------------------------------------------------------
    def run(self) -> int:
        from cgctl import virt
        if self.install_signals:
            self._install_signals()
        virt.start_event_loop()  # before any connection: keepalive and events run on it
        self._timer = virt.add_timer(HEARTBEAT_S, self._beat)
        self._ctl = self.controller_factory(journal_path=self.config.journal,
                                            uris=self.config.uris)
        self._worker = threading.Thread(target=self._work, name="cgctl-worker", daemon=True)
        self._worker.start()
        log.info("starting: uris=%s journal=%s", " ".join(self.config.uris), self.config.journal)
        if self.command_server is not None:
            try:
                self.command_server.start()
            except OSError as e:  # the service works without it; `cgctl set` then runs alone
                log.error("cannot answer commands on %s: %s", self.command_server.path, e)
                self.command_server = None
        self._started = time.monotonic()
        for uri in self.config.uris:
            self._add_link(uri)
        self._set_status()
        try:
            while not self.stopping.is_set():
                self._tick()
        finally:
            self._shutdown()
        return 0

    def stop(self) -> None:
        """Ask the service to stop (what SIGTERM does); safe from any thread."""
        self._control.put(("stop",))

    def reload(self) -> None:
        """Ask the service to re-read its config file (what SIGHUP does)."""
        self._control.put(("reload",))

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda s, f: self._control.put(("stop",)))
        signal.signal(signal.SIGINT, lambda s, f: self._control.put(("stop",)))
        signal.signal(signal.SIGHUP, lambda s, f: self._control.put(("reload",)))

    # ----- the main loop ----------------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic()
        waits = [0.5]
        for link in self.links.values():
            if link.pending is not None:
                if not link.hung:
                    waits.append(link.pending + CONNECT_TIMEOUT_S - now)
            elif link.conn is None:
                waits.append(link.next_try - now)
        if not self.ready:
            waits.append(self._started + READY_DEADLINE_S - now)
        if self.notifier.watchdog_interval:
            waits.append(self._next_ping - now)
        try:
            msg = self._control.get(timeout=max(0.0, min(waits)))
        except queue.Empty:
            msg = None
        if msg is not None:
            self._handle(msg)
        now = time.monotonic()
        for link in list(self.links.values()):
            if self.stopping.is_set():
                break
            if link.pending is not None:
                if not link.hung and now - link.pending > CONNECT_TIMEOUT_S:
                    self._connect_hung(link)
            elif link.conn is None and now >= link.next_try:
                self._connect(link)
        self._maybe_ready()
        self._watchdog()
        self._set_status()  # a worker call to libvirt may have begun or ended hanging
        if self.ready and self.config.drift_interval and now >= self._next_drift:
            self._next_drift = now + self.config.drift_interval
            self.submit(self._repair_drift, "drift")
        if self.ready and now >= self._next_prune:
            self._next_prune = now + HISTORY_PRUNE_S
            self.submit(self._prune_history, "history retention")

    def _handle(self, msg: tuple) -> None:
        what = msg[0]
        if what == "stop":
            log.info("stopping (signal)")
            self.stopping.set()
        elif what == "reload":
            self._reload()
        elif what == "opened":
            self._opened(*msg[1:])
        elif what == "closed":
            _, uri, generation, reason = msg
            link = self.links.get(uri)
            if link is not None and link.generation == generation and link.conn is not None:
                log.warning("lost connection to %s: %s; reconnecting", uri, reason)
                self._disconnect(link)
                link.delay = self.config.reconnect_initial
                link.attempts = 0
                link.next_try = time.monotonic() + link.delay
                self._set_status()
        elif what == "reconciled":
            _, uri, generation = msg
            link = self.links.get(uri)
            if link is not None and link.generation == generation and link.conn is not None:
                link.reconciled = True
                self._set_status()

    def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        now = time.monotonic()
        if not interval or now < self._next_ping:
            return
        problem = self.health()
        if problem is None:
            self.notifier.watchdog()
            self._next_ping = now + interval
        else:
            log.error("not pinging the watchdog: %s", problem)
            self._next_ping = now + interval

    def health(self) -> Optional[str]:
        """None when the event loop and the worker both make progress; else what is stuck."""
        from cgctl import virt
        now = time.monotonic()
        if not virt.event_loop_alive():
            return "the libvirt event loop thread is gone"
        if now - self._heartbeat > LOOP_STALL_S:
            return f"the libvirt event loop has not run for {now - self._heartbeat:.0f} s"
        if self._worker is None or not self._worker.is_alive():
            return "the worker thread is gone"
        busy = self._worker_busy_since
        if busy is not None and now - busy > WORKER_STALL_S and self._libvirt_call is None:
            # (a worker waiting on a hung libvirtd is not ours to restart: a new process would
            # wait the same; STATUS names it, see libvirt_hang(), keepalive ends most waits)
            return f"the worker has been busy with one job for {now - busy:.0f} s"
        return None

    def libvirt_hang(self) -> Optional[str]:
        """What the worker has been waiting on libvirtd for, longer than LIBVIRT_CALL_NOTE_S."""
        call = self._libvirt_call
        if call is None or time.monotonic() - call[2] < LIBVIRT_CALL_NOTE_S:
            return None
        since = time.strftime("%H:%M:%S", time.localtime(call[3]))
        return f"worker waiting on libvirtd at {call[0]} ({call[1]}) since {since}"

    @contextlib.contextmanager
    def _calling_libvirt(self, uri: str, what: str):
        """Marks the worker's libvirt calls (they can wait as long as libvirtd hangs)."""
        self._libvirt_call = (uri, what, time.monotonic(), time.time())
        try:
            yield
        finally:
            self._libvirt_call = None

    def _beat(self) -> None:  # libvirt event loop thread
        self._heartbeat = time.monotonic()

    # ----- connections ------------------------------------------------------------------------
    def _add_link(self, uri: str) -> None:
        link = _Link(uri, delay=self.config.reconnect_initial)
        self.links[uri] = link
        self._connect(link)

    def _connect(self, link: _Link) -> None:
        """Start one connect attempt in a thread of its own; its result comes back as an
        ("opened", ...) control message (see _opened)."""
        from cgctl import virt
        link.generation = generation = next(self._generations)
        uri = link.uri
        conn = virt.EventConnection(
            uri,
            on_event=lambda ev: self._on_event(ev, generation),
            on_close=lambda reason: self._control.put(("closed", uri, generation, reason)),
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
            self._control.put(("opened", uri, generation, conn, error))
        threading.Thread(target=attempt, name="cgctl-connect", daemon=True).start()

    def _connect_hung(self, link: _Link) -> None:
        """The attempt under way has had no answer for CONNECT_TIMEOUT_S: count it as failed
        (readiness, STATUS) and leave it running; its late result is still taken."""
        link.hung = True
        link.attempts += 1
        link.last_error = (f"libvirtd not answering (no reply to the connect within "
                           f"{CONNECT_TIMEOUT_S:g} s)")
        log.warning("cannot connect to %s (attempt %d): %s; still waiting for it", link.uri,
                    link.attempts, link.last_error)
        self._set_status()

    def _opened(self, uri: str, generation: int, conn, error) -> None:
        link = self.links.get(uri)
        if link is None or link.generation != generation or self.stopping.is_set():
            if error is None:  # a URI dropped by a reload meanwhile, or stopping: not wanted
                self._jobs.put(_Job("close", uri, conn))
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
            self._set_status()
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
        self._jobs.put(_Job("reconcile", link.uri, conn, generation))
        self._set_status()

    def _disconnect(self, link: _Link) -> None:
        conn, link.conn = link.conn, None
        link.reconciled = False
        link.generation = next(self._generations)  # events, jobs, attempts of before: stale
        link.pending, link.hung = None, False
        if conn is not None:
            # closed by the worker, after any job still using it (never under its feet)
            self._jobs.put(_Job("close", link.uri, conn))

    def _on_event(self, ev, generation: int) -> None:  # libvirt event loop thread
        link = self.links.get(ev.uri)
        if link is None or link.generation != generation:
            return
        if ev.event == "started":
            kind = "started"
        elif ev.event == "undefined" and ev.detail != "renamed":  # a rename keeps the UUID
            kind = "undefined"
        elif ev.event == "defined":  # maybe with settings in its metadata (cgctl/core/travel.py)
            kind = "defined"
        else:
            log.debug("event guest=%s %s/%s on %s: nothing to do", ev.name, ev.event,
                      ev.detail, ev.uri)
            return
        log.info("event guest=%s %s (%s) on %s", ev.name, ev.event, ev.detail, ev.uri)
        self._jobs.put(_Job(kind, ev.uri, link.conn, generation, event=ev))

    # ----- readiness and status ---------------------------------------------------------------
    def _maybe_ready(self) -> None:
        if self.ready:
            return
        # every URI settled: reconciled, or tried and not connected (refused or hung); a
        # service that waits for libvirtd would fail systemd's start timeout in a loop
        settled = all(link.reconciled if link.conn is not None else link.attempts > 0
                      for link in self.links.values())
        late = time.monotonic() - self._started > READY_DEADLINE_S
        if settled or late:
            self.ready = True
            log.info("ready: %s", self._status())
            self.notifier.ready(self._status())
            self._status_text = self._status()
            self._start_watcher()

    def _status(self) -> str:
        parts = []
        for link in self.links.values():
            if link.conn is not None:
                parts.append(f"{link.uri} {'watching' if link.reconciled else 'reconciling'}")
            else:
                parts.append(f"{link.uri} disconnected ({link.attempts} attempt(s)"
                             + (f": {link.last_error})" if link.last_error else ")"))
        hang = self.libvirt_hang()
        if hang:
            parts.append(hang)
        return "; ".join(parts) or "no URIs configured"

    def _set_status(self) -> None:
        text = self._status()
        if text != self._status_text:
            self._status_text = text
            self.notifier.status(text)

    # ----- reload -----------------------------------------------------------------------------
    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            new = resolve(self.config_file, self.overrides)
        except CgctlError as e:
            log.error("reload: %s; keeping the previous configuration", e)
            self.notifier.ready(self._status())
            return
        old, self.config = self.config, new
        if new.log_level != old.log_level:
            set_log_level(new.log_level)
        if (new.journal, new.uris) != (old.journal, old.uris):
            self._jobs.put(_Job("swap", payload=(new.journal, new.uris)))
            if self.command_server is not None:  # `cgctl set` through the socket too
                self.command_server.configure(new.journal, new.uris)
        for uri in [u for u in self.links if u not in new.uris]:
            log.info("reload: no longer watching %s", uri)
            self._disconnect(self.links.pop(uri))
        for uri in new.uris:
            if uri not in self.links:
                log.info("reload: now watching %s", uri)
                self._add_link(uri)
        changed = [f.name for f in dataclasses.fields(Config)
                   if getattr(old, f.name) != getattr(new, f.name)]
        log.info("reloaded %s: %s", self.config_file,
                 ("changed " + ", ".join(changed)) if changed else "nothing changed")
        self._status_text = self._status()
        self.notifier.ready(self._status_text)

    # ----- the device watcher slot ------------------------------------------------------------
    def _start_watcher(self) -> None:
        if self.device_watcher is None:
            return
        ctx = WatchContext(submit=self.submit, running_guests=self._running_guests,
                           stopping=self.stopping)
        try:
            self._stop_watcher = self.device_watcher(ctx)
            log.info("device watcher started")
        except Exception as e:
            log.error("device watcher failed to start: %s; going on without it", e)

    def submit(self, fn: Callable[[object], None], what: str = "job") -> None:
        """Run ``fn(controller)`` in the worker thread (for the device watcher)."""
        self._jobs.put(_Job("call", payload=(fn, what)))

    def _running_guests(self) -> list:
        out = []
        for link in list(self.links.values()):
            conn = link.conn
            if conn is not None:
                try:
                    with self._calling_libvirt(link.uri, "list guests"):
                        out += conn.running_guests()
                except CgctlError as e:
                    log.warning("cannot list the guests of %s: %s", link.uri, e)
        return out

    # ----- stop -------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        from cgctl import virt
        self.stopping.set()
        self.notifier.stopping()
        if self.command_server is not None:
            self.command_server.stop()
        if self._stop_watcher is not None:
            try:
                self._stop_watcher()
            except Exception as e:
                log.error("device watcher did not stop cleanly: %s", e)
        dropped, closing = 0, []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job.kind == "close":
                closing.append(job.conn)
            else:
                dropped += 1
        _close_all(closing)
        if dropped:
            log.info("stopping: %d queued job(s) dropped (the next start reconciles)", dropped)
        for link in self.links.values():
            self._disconnect(link)
        self._jobs.put(_STOP)
        if self._worker is not None:
            # a job waiting on a hung libvirtd would not finish: do not wait long for it
            self._worker.join(CLOSE_WAIT_S if self._libvirt_call is not None else STOP_WAIT_S)
            if self._worker.is_alive():
                log.error("the worker did not finish its job within %.0f s", STOP_WAIT_S)
        if self._timer is not None:
            virt.remove_timer(self._timer)
        log.info("stopped")
        self.notifier.close()

    # ----- the worker -------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                self._worker_busy_since = time.monotonic()
                try:
                    self._do(job)
                except Exception as e:  # a bug must not end the worker: one line, go on
                    log.error("internal error in %s job: %s: %s", job.kind, type(e).__name__, e,
                              exc_info=log.isEnabledFor(logging.DEBUG))
                finally:
                    self._worker_busy_since = None
        finally:
            ctl, self._ctl = self._ctl, None
            if ctl is not None:
                ctl.close()

    def _prune_history(self, ctl) -> None:
        """The history retention (history_keep_days, history_keep_rows): cheap, in the worker."""
        days, rows = self.config.history_keep_days, self.config.history_keep_rows
        if not days and not rows:
            return
        removed = ctl.journal().prune_history(keep_days=days, keep_rows=rows)
        if removed:
            log.info("history retention: %d row(s) older than %s removed", removed,
                     " or ".join(filter(None, (f"{days:g} day(s)" if days else "",
                                               f"the newest {rows} per guest" if rows else ""))))

    def _do(self, job: _Job) -> None:
        if job.kind == "started":
            self._apply_started(job)
        elif job.kind == "undefined":
            self._forget(job)
        elif job.kind == "defined":
            self._receive_metadata(job, inactive=True)
        elif job.kind == "reconcile":
            self._reconcile(job)
        elif job.kind == "close":
            with self._calling_libvirt(job.uri, "close"):
                job.conn.close()
        elif job.kind == "swap":
            journal, uris = job.payload
            if self._ctl is not None:
                self._ctl.close()
            self._ctl = self.controller_factory(journal_path=journal, uris=uris)
        elif job.kind == "call":
            fn, what = job.payload
            try:
                fn(self._ctl)
            except CgctlError as e:
                log.error("%s: %s", what, e)

    def _has_config(self, uuid: str) -> bool:
        return bool(self._ctl.effective(uuid, self._ctl.journal()).config)  # profile + own

    # --- settings carried in the domain's <metadata> (cgctl/core/travel.py) ---
    def _receive_metadata(self, job: _Job, inactive: bool = False) -> dict:
        """Merge the metadata of the guest's live (or persistent) XML into the journal;
        returns the <live> overlay. Never raises: the journal config still applies."""
        from cgctl.core import travel
        ev = job.event
        try:
            xml = job.conn.domain_xml(ev.uuid, inactive=inactive)
            driver = "lxc" if job.uri.startswith("lxc") else "qemu"
            overlay, decisions = travel.receive(self._ctl.journal(), ev.uuid, ev.name, driver,
                                                xml, source="event", live=not inactive)
        except Exception as e:  # noqa: BLE001  bad metadata never stops the apply
            log.error("guest=%s metadata not used: %s", ev.name, e)
            return {}
        if decisions:
            log.info("guest=%s metadata (%s): %d setting(s) taken, %d kept", ev.name,
                     "persistent" if inactive else "live", sum(d.taken for d in decisions),
                     sum(not d.taken for d in decisions))
        return overlay

    def _apply_started(self, job: _Job) -> None:
        ev = job.event
        overlay = self._receive_metadata(job)
        if not overlay and not self._has_config(ev.uuid):
            log.debug("guest=%s has no config: nothing to apply", ev.name)
            return
        try:
            with self._calling_libvirt(job.uri, "lookup"):
                guest = job.conn.guest(ev.uuid)
            if not guest.running:
                log.info("guest=%s stopped before its config was applied", ev.name)
                return
            outcome = self._ctl.apply_config(guest, source="event", command="event",
                                             overlay=overlay)
        except CgctlError as e:
            # the next reconcile (reconnect or restart) tries again if the guest still runs
            log.error("guest=%s apply failed source=event: %s", ev.name, e)
            return
        log.info("guest=%s applied source=event (%s): %d change(s), %d error(s), "
                 "%.0f ms after the event", guest.name, ev.detail, len(outcome.changes),
                 len(outcome.errors), (time.monotonic() - job.queued) * 1000)

    def _forget(self, job: _Job) -> None:
        ev = job.event
        try:
            dropped = self._ctl.forget(ev.uuid, source="event", command="undefine")
        except CgctlError as e:
            log.error("guest=%s forget failed source=event: %s", ev.name, e)
            return
        if dropped:
            log.info("guest=%s undefined: config dropped (%d setting(s)); history kept",
                     ev.name, len(dropped))

    def _reconcile(self, job: _Job) -> None:
        t0 = time.monotonic()
        try:
            with self._calling_libvirt(job.uri, "list guests"):
                guests = job.conn.running_guests()
        except CgctlError as e:
            log.error("reconcile %s: cannot list guests: %s", job.uri, e)
            return  # the connection is going away: its close starts a new round
        counts = {"applied": 0, "unchanged": 0, "without config": 0, "failed": 0}
        for guest in guests:
            self._worker_busy_since = time.monotonic()
            try:
                result = self._reconcile_guest(guest)
            except CgctlError as e:
                log.error("guest=%s reconcile failed: %s", guest.name, e)
                result = "failed"
            except Exception as e:  # one guest never stops the others
                log.error("guest=%s reconcile failed: internal error: %s: %s", guest.name,
                          type(e).__name__, e)
                result = "failed"
            counts[result] += 1
        log.info("reconcile %s: %d running, %s (%.0f ms)", job.uri, len(guests),
                 ", ".join(f"{n} {k}" for k, n in counts.items()), (time.monotonic() - t0) * 1000)
        self._control.put(("reconciled", job.uri, job.generation))

    def _repair_drift(self, ctl) -> None:
        """Put back what cgctl last wrote where something else rewrote it (cgctl/core/drift.py)."""
        from cgctl.core import drift
        for guest in self._running_guests():
            if self.stopping.is_set():
                return
            self._worker_busy_since = time.monotonic()
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

    def _reconcile_guest(self, guest) -> str:
        if not self._has_config(guest.uuid):
            return "without config"
        last = self._ctl.journal().get_instance(guest.uuid)
        if last is not None and guest.pid:
            pid, start = runfiles.instance_of(guest.pid)
            if last.pid == pid and abs(last.start_time - start) < SAME_START_S:
                log.debug("guest=%s same instance (pid %d): left as it is", guest.name, pid)
                return "unchanged"
        outcome = self._ctl.apply_config(guest, source="reconcile", command="reconcile")
        return "failed" if outcome.errors else "applied"


def _close_all(conns: list) -> None:
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


# --------------------------------------------------------------------------- entry point

class _Formatter(logging.Formatter):
    """``2024-05-01 12:00:00.123 cgctl: message`` on a terminal or file; under journald (which
    stamps lines itself) ``<6>message`` with the syslog priority prefix journald understands."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}

    def __init__(self, journald: bool):
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if self.journald:
            return f"<{self.PRIORITY.get(record.levelno, 6)}>{msg}"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return f"{stamp}.{int(record.msecs):03d} cgctl[{record.process}]: {msg}"


def _stderr_is_journal() -> bool:
    """True when systemd connected stderr to journald ($JOURNAL_STREAM is its dev:inode)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(_stderr_is_journal()))
    logging.basicConfig(handlers=[handler], force=True)
    set_log_level(level)


def set_log_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    log.setLevel(level.upper())


def main(ctl, config_file: Optional[str] = consts.CONFIG_PATH,
         command_line: Optional[dict] = None) -> int:
    """``cgctl daemon``: the command line's ``--journal`` / ``-c`` win over the environment,
    which wins over the config file (cgctl.config.resolve, as for every entry point)."""
    overrides = {k: v for k, v in (command_line or {}).items() if v is not None}
    setup_logging("info")
    # a wrong file at start is an error (exit 2, the unit does not restart on it); at SIGHUP
    # the running configuration stays
    config = resolve(config_file, overrides)
    set_log_level(config.log_level)
    server = None
    if config.command_socket:
        from cgctl.service.cmdserver import CommandServer
        server = CommandServer(config.command_socket, config.journal, uris=config.uris)
    daemon = Daemon(config, config_file=config_file, overrides=overrides,
                    device_watcher=default_device_watcher(config), command_server=server)
    return daemon.run()

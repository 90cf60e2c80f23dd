"""``cgctl daemon``: the listener service's life and main loop (docs/operations.md).

Threads, and what each one may do::

    main          signals, connections (links.py: lose, reconnect with backoff), systemd notify
                  and watchdog, SIGHUP reload, the periodic work's schedule (upkeep.py). Never
                  applies anything itself, and never waits on a libvirt call: a hung libvirtd
                  must not hold SIGTERM or the watchdog.
    connect       one short-lived thread per connect attempt (links.py): it can hang on a hung
                  libvirtd, so the main loop only reads its result from the control queue.
    libvirt loop  libvirt's default event loop (cgctl.virt.start_event_loop): keepalive, close
                  callbacks, lifecycle events. Its callbacks only queue work and return.
    worker        the only thread that uses the Controller (worker.py): events (events.py),
                  reconcile after every (re)connect (reconcile.py), drift repair, retention.
    commands      the command socket (cmdserver.py), when configured.

Ready (READY=1) after the first round: every URI connected and reconciled, or tried and not
connected (refused, or no answer within links.CONNECT_TIMEOUT_S), or READY_DEADLINE_S after
start whatever the state; STATUS says which URIs are not connected. Losing libvirtd is never a
reason to exit.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import queue
import signal
import threading
import time
from typing import Callable, Optional

from cgctl import consts
from cgctl.config import Config, resolve
from cgctl.errors import CgctlError
from cgctl.service import logs
from cgctl.service.links import CLOSE_WAIT_S, Links, close_all
from cgctl.service.notify import Notifier
from cgctl.service.upkeep import Upkeep
from cgctl.service.worker import Job, Worker

log = logging.getLogger("cgctl")

HEARTBEAT_S = 1.0  # the libvirt event loop proves it runs this often
LOOP_STALL_S = 5.0  # no heartbeat for this long: the event loop is stuck, stop the watchdog pings
READY_DEADLINE_S = 30.0  # READY=1 by then whatever the state (systemd's start timeout is 90 s)


class Daemon:
    """The listener. ``run()`` returns the exit code (0 after SIGTERM/SIGINT or ``stop()``).

    ``controller_factory(journal_path=, uris=)`` makes the Controller the worker uses (tests pass
    a fake). ``config_file`` is re-read on SIGHUP (``reload()``); ``overrides`` (from the command
    line) win over it every time. ``command_server``: a cmdserver.CommandServer, or None.
    """

    def __init__(self, config: Config, *, config_file: Optional[str] = None,
                 overrides: Optional[dict] = None, controller_factory=None,
                 notifier: Optional[Notifier] = None, install_signals: bool = True,
                 command_server=None):
        if controller_factory is None:
            from cgctl.core.controller import Controller as controller_factory
        self.config = config
        self.config_file = config_file
        self.overrides = dict(overrides or {})
        self.notifier = notifier or Notifier()
        self.install_signals = install_signals
        self.command_server = command_server
        self.ready = False
        self.stopping = threading.Event()
        self._control: "queue.SimpleQueue" = queue.SimpleQueue()  # safe from signal handlers
        self.worker = Worker(controller_factory, self._control.put)
        self.links = Links(config, self.worker, self._control.put, self._set_status)
        self.upkeep = Upkeep(self.worker, self.links.running_guests, self.stopping)
        self._heartbeat = time.monotonic()
        self._timer: Optional[int] = None
        self._stop_watcher: Optional[Callable[[], None]] = None
        self._next_ping = 0.0
        self._status_text = ""
        self._started = time.monotonic()
        # called with the new Config after every reload that read a good file (metrics.py)
        self.reload_hooks: list = []

    # ----- entry ------------------------------------------------------------------------------
    def run(self) -> int:
        from cgctl import virt
        if self.install_signals:
            self._install_signals()
        virt.start_event_loop()  # before any connection: keepalive and events run on it
        self._timer = virt.add_timer(HEARTBEAT_S, self._beat)
        self.worker.start(self.config.journal, self.config.uris)
        log.info("starting: uris=%s journal=%s", " ".join(self.config.uris), self.config.journal)
        if self.command_server is not None:
            try:
                self.command_server.start()
            except OSError as e:  # the service works without it; `cgctl set` then runs alone
                log.error("cannot answer commands on %s: %s", self.command_server.path, e)
                self.command_server = None
        self._started = time.monotonic()
        for uri in self.config.uris:
            self.links.add(uri)
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
        waits = [0.5] + self.links.waits(now)
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
        self.links.tick(now, self.stopping)
        self._maybe_ready()
        self._watchdog()
        self._set_status()  # a worker call to libvirt may have begun or ended hanging
        if self.ready:
            self.upkeep.tick(now, self.config)

    def _handle(self, msg: tuple) -> None:
        what = msg[0]
        if what == "stop":
            log.info("stopping (signal)")
            self.stopping.set()
        elif what == "reload":
            self._reload()
        elif what == "opened":
            self.links.opened(*msg[1:], stopping=self.stopping.is_set())
        elif what == "closed":
            self.links.closed(*msg[1:])
        elif what == "reconciled":
            self.links.reconciled(*msg[1:])

    def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        now = time.monotonic()
        if not interval or now < self._next_ping:
            return
        problem = self.health()
        if problem is None:
            self.notifier.watchdog()
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
        return self.worker.stuck(now)

    def _beat(self) -> None:  # libvirt event loop thread
        self._heartbeat = time.monotonic()

    # ----- readiness and status ---------------------------------------------------------------
    def _maybe_ready(self) -> None:
        if self.ready:
            return
        # every URI settled; a service that waits for libvirtd would fail systemd's start
        # timeout in a loop
        if self.links.settled() or time.monotonic() - self._started > READY_DEADLINE_S:
            settle_memory()
            self.ready = True
            log.info("ready: %s", self._status())
            self.notifier.ready(self._status())
            self._status_text = self._status()
            self._start_device_watcher()

    def _status(self) -> str:
        parts = self.links.status()
        hang = self.worker.libvirt_hang()
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
        self.links.config = new
        if new.log_level != old.log_level:
            logs.set_level(new.log_level)
        if (new.journal, new.uris) != (old.journal, old.uris):
            self.worker.put(Job("swap", payload=(new.journal, new.uris)))
            if self.command_server is not None:  # `cgctl set` through the socket too
                self.command_server.configure(new.journal, new.uris)
        for uri in [link.uri for link in self.links if link.uri not in new.uris]:
            log.info("reload: no longer watching %s", uri)
            self.links.drop(uri)
        for uri in new.uris:
            if uri not in self.links:
                log.info("reload: now watching %s", uri)
                self.links.add(uri)
        for hook in self.reload_hooks:
            try:
                hook(new)
            except Exception as e:  # noqa: BLE001  an observer never fails the reload
                log.error("reload: %s: %s", type(e).__name__, e)
        changed = [f.name for f in dataclasses.fields(Config)
                   if getattr(old, f.name) != getattr(new, f.name)]
        log.info("reloaded %s: %s", self.config_file,
                 ("changed " + ", ".join(changed)) if changed else "nothing changed")
        self._status_text = self._status()
        self.notifier.ready(self._status_text)

    # ----- block devices ----------------------------------------------------------------------
    def _start_device_watcher(self) -> None:
        """A block disk added or changed → the per-device settings of the running guests that
        name it re-applied, in the worker like every other apply (cgctl/host/udevwatch.py)."""
        if not self.config.watch_devices:
            return
        from cgctl.host import udevwatch

        def on_disk(node, majmin, action):  # udevwatch's delivery thread: hand over, return
            def job(ctl):
                udevwatch.reapply_device(ctl, self.links.running_guests(), majmin,
                                         command="device")
            self.worker.submit(job, f"block device {node or majmin} ({action})")
        try:
            self._stop_watcher = udevwatch.DeviceWatcher(on_disk).start().stop
            log.info("device watcher started")
        except Exception as e:  # pyudev missing, no netlink: the rest of the service works
            log.error("device watcher failed to start: %s; going on without it", e)

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
        dropped, closing = self.worker.drain()
        close_all(closing)
        if dropped:
            log.info("stopping: %d queued job(s) dropped (the next start reconciles)", dropped)
        for link in self.links:
            self.links.disconnect(link)
        self.worker.stop(hung_wait=CLOSE_WAIT_S)
        if self._timer is not None:
            virt.remove_timer(self._timer)
        log.info("stopped")
        self.notifier.close()


def settle_memory() -> None:
    """Once ready: collect, then freeze what is left (the imported modules, the connections,
    the parser) out of the garbage collector's reach. A full collection walked those ~17,000
    objects and took 4-11 ms on the development machine, on the worker thread between an event
    and its writes whenever the allocations of the applies triggered one (docs/performance.md,
    section 2 A). Cost: an object alive at ready that becomes garbage later in a reference cycle
    is never freed (the ready-time state lives for the whole service anyway)."""
    gc.collect()
    gc.freeze()


def main(cli, config_file: Optional[str] = consts.CONFIG_PATH,
         command_line: Optional[dict] = None) -> int:
    """``cgctl daemon``: the command line's ``--journal`` / ``-c`` win over the environment,
    which wins over the config file (cgctl.config.resolve, as for every entry point).
    ``cli``: the CLI module, for the command socket (cmdserver.CommandServer says why)."""
    overrides = {k: v for k, v in (command_line or {}).items() if v is not None}
    logs.setup("info")
    # a wrong file at start is an error (exit 2, the unit does not restart on it); at SIGHUP
    # the running configuration stays
    config = resolve(config_file, overrides)
    logs.set_level(config.log_level)
    server = None
    if config.command_socket:
        from cgctl.service.cmdserver import CommandServer
        server = CommandServer(config.command_socket, config.journal, cli, uris=config.uris)
    daemon = Daemon(config, config_file=config_file, overrides=overrides, command_server=server)
    from cgctl.service import metrics, oomwatch  # docs/observability.md; both end at stop
    metrics.start(config, daemon.stopping)
    # SIGHUP: the endpoint and the textfile follow the file; the OOM watcher needs no
    # config and counts into whichever registry is current (metrics.count_oom)
    daemon.reload_hooks.append(lambda new: metrics.reconfigure(new, daemon.stopping))
    oomwatch.start(daemon.stopping, on_event=metrics.count_oom)
    from cgctl.start import handoff  # the hook's starts handed to the service (docs/hook.md)
    handoff.start(daemon.stopping)
    return daemon.run()

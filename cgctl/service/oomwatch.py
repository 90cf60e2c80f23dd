"""The service's OOM watcher: an OOM kill or a memory-limit hit in a guest's group is logged
with the guest's name, and counted in the metrics (docs/observability.md).

Woken by the kernel, never by a timer: the thread sleeps in poll(2) on

* an inotify descriptor watching libvirt's run directories (a guest started or stopped: its
  ``.pid``/``.xml`` files come and go) and, on cgroup v2, each running guest's
  ``memory.events`` in its machine group (the kernel signals a modification of that file on
  every high/max/oom/oom_kill event; the counts are hierarchical);
* on cgroup v1, one eventfd per guest registered through ``cgroup.event_control`` on the
  machine group's ``memory.oom_control`` (signalled when the group, or one below it, runs
  out of memory). The kernel signals before the OOM killer picks its victim, so the counts
  are read again a moment later (``RECHECK_S``): the only timed wake-ups, and only then.

Counts when a guest is first seen are the baseline: kills from before the service started
are in ``cgctl show``, not logged again. A memory-limit hit (v2 ``max``) is logged at most
once per ``MAX_LOG_EVERY_S`` per guest, with the number of hits since the last line (a guest
at its limit hits it constantly). On v1 there is no notification for a limit hit without an
OOM: ``failcnt`` is read (and logged) at OOM time and shown by ``show``/``top``/metrics.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from typing import Callable, Dict, Optional

from cgctl import consts
from cgctl.errors import CgctlError
from cgctl.host.inotify import Inotify as _Inotify
from cgctl.model.convert import PAGE_COUNTER_MAX

log = logging.getLogger("cgctl")

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_IGNORED, IN_NONBLOCK, IN_CLOEXEC = 0x8000, 0o4000, 0o2000000
RUN_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE
RECHECK_S = (0.2, 1.0, 3.0)  # after a v1 OOM notification: read the counts again then
MAX_LOG_EVERY_S = 60.0


class _Watched:
    """One guest: where its counts are, what they were, how it is watched."""

    def __init__(self, guest, groups):
        self.guest = guest
        self.groups = groups
        self.v2 = "memory" in groups.v2_controllers
        self.wd: Optional[int] = None  # v2: inotify watch of memory.events
        self.efd: Optional[int] = None  # v1: the eventfd ...
        self.ofd: Optional[int] = None  # ... and the memory.oom_control it is registered on
        self.counts = self.read()
        self.unlogged_max = 0
        self.max_logged_at = 0.0

    def read(self) -> Dict[str, int]:
        from cgctl.cgroup import usage
        mem = usage.memory(self.groups) or {}
        ev = mem.get("events") or {}
        return {k: v for k, v in ev.items() if v is not None}

    def close(self, ino: _Inotify) -> None:
        if self.wd is not None:
            ino.remove(self.wd)
        for fd in (self.efd, self.ofd):
            if fd is not None:
                os.close(fd)
        self.wd = self.efd = self.ofd = None


class OomWatch:
    def __init__(self, on_event: Callable = None, *, run_dir: str = None, host=None):
        self.on_event = on_event or (lambda guest, event, n: None)
        self.run_dir = run_dir or consts.LIBVIRT_RUN_DIR
        self._host = host
        self.ino = _Inotify()
        self._wake_r, self._wake_w = os.pipe()
        self.guests: Dict[str, _Watched] = {}  # uuid -> watched
        self._by_wd: Dict[int, str] = {}
        self._by_efd: Dict[int, str] = {}
        self._run_wds: Dict[int, str] = {}
        self._rechecks: Dict[str, list] = {}  # uuid -> [monotonic times]
        self.rescans = 0
        self._stopped = False
        self._closed = False
        self._lock = threading.Lock()

    @property
    def host(self):
        if self._host is None:
            from cgctl.cgroup import hierarchy
            self._host = hierarchy.detect()
        return self._host

    # -- the guests --------------------------------------------------------------------------
    def _watch_run_dirs(self) -> None:
        from cgctl.host import runfiles
        have = set(self._run_wds.values())
        for d in [self.run_dir] + [os.path.join(self.run_dir, x) for x in runfiles.DRIVERS]:
            if d not in have and os.path.isdir(d):
                try:
                    self._run_wds[self.ino.add(d, RUN_MASK)] = d
                except OSError as e:
                    log.warning("oom watch: cannot watch %s: %s", d, e)

    def rescan(self) -> None:
        """Watch the guests that run now, drop those that stopped."""
        from cgctl.cgroup import placement
        from cgctl.host import runfiles
        self.rescans += 1
        self._watch_run_dirs()
        try:
            running = runfiles.all_running(self.run_dir)
        except CgctlError as e:
            log.warning("oom watch: cannot list the running guests: %s", e)
            return
        for uuid in list(self.guests):
            w = self.guests[uuid]
            g = running.get(uuid)
            if g is None or g.pid != w.guest.pid:
                self._drop(uuid)
        for uuid, g in running.items():
            if uuid in self.guests or not g.pid:
                continue
            try:
                groups = placement.groups_for_pid(g.pid, self.host, guest=g.name,
                                                  driver=g.driver)
                groups.machine_dir("memory")
            except CgctlError as e:
                log.debug("oom watch: guest=%s not watched: %s", g.name, e)
                continue
            w = _Watched(g, groups)
            try:
                self._arm(w)
            except OSError as e:
                log.warning("oom watch: guest=%s not watched: %s", g.name, e)
                w.close(self.ino)
                continue
            self.guests[uuid] = w
            log.debug("oom watch: guest=%s watched (%s)", g.name, "v2" if w.v2 else "v1")

    def _arm(self, w: _Watched) -> None:
        d = w.groups.machine_dir("memory")
        if w.v2:
            w.wd = self.ino.add(os.path.join(d, "memory.events"), IN_MODIFY)
            self._by_wd[w.wd] = w.guest.uuid
            return
        w.efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        w.ofd = os.open(os.path.join(d, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        from cgctl.cgroup import fs
        fs.write(os.path.join(d, "cgroup.event_control"), f"{w.efd} {w.ofd}")
        self._by_efd[w.efd] = w.guest.uuid

    def _drop(self, uuid: str) -> None:
        w = self.guests.pop(uuid, None)
        if w is None:
            return
        self._by_wd.pop(w.wd, None)
        self._by_efd.pop(w.efd, None)
        self._rechecks.pop(uuid, None)
        try:
            w.close(self.ino)
        except OSError:
            pass

    # -- the counts ----------------------------------------------------------------------------
    def check(self, uuid: str) -> None:
        w = self.guests.get(uuid)
        if w is None:
            return
        now = w.read()
        if not now:  # the group is gone: the guest stopped
            return
        delta = {k: now.get(k, 0) - w.counts.get(k, 0) for k in now}
        w.counts = now
        name = w.guest.name
        limit = self._limit(w)
        if delta.get("oom_kill", 0) > 0:
            n = delta["oom_kill"]
            log.warning("guest=%s OOM kill: %d process(es) killed in its memory group "
                        "(limit %s; %d OOM kill(s) since it started)", name, n, limit,
                        now["oom_kill"])
            self.on_event(w.guest, "oom_kill", n)
        elif delta.get("oom", 0) > 0:
            log.warning("guest=%s out of memory in its memory group (limit %s), nothing "
                        "killed", name, limit)
            self.on_event(w.guest, "oom", delta["oom"])
        if delta.get("max", 0) > 0:
            w.unlogged_max += delta["max"]
            t = time.monotonic()
            if t - w.max_logged_at >= MAX_LOG_EVERY_S:
                log.warning("guest=%s memory limit hit %d time(s) (limit %s%s)", name,
                            w.unlogged_max, limit,
                            "" if w.v2 else "; v1 failcnt")
                self.on_event(w.guest, "max", w.unlogged_max)
                w.unlogged_max, w.max_logged_at = 0, t

    def _limit(self, w: _Watched) -> str:
        from cgctl.cgroup import fs
        from cgctl.model.units import format_bytes
        d = w.groups.libvirt_dir("memory")
        f = "memory.max" if w.v2 else "memory.limit_in_bytes"
        try:
            text = fs.read(os.path.join(d, f)).strip()
            return "max" if text == "max" or int(text) >= PAGE_COUNTER_MAX else \
                format_bytes(int(text))
        except (OSError, ValueError):
            return "?"

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        self.rescan()
        try:
            while not self._stopped:
                p = select.poll()
                p.register(self.ino.fd, select.POLLIN)
                p.register(self._wake_r, select.POLLIN)
                for efd in self._by_efd:
                    p.register(efd, select.POLLIN)
                due = [t for ts in self._rechecks.values() for t in ts]
                timeout = None if not due else max(0, (min(due) - time.monotonic()) * 1000)
                ready = p.poll(timeout)
                self._handle(ready)
        finally:
            for uuid in list(self.guests):
                self._drop(uuid)
            self.ino.close()
            with self._lock:  # stop() never writes to a closed (maybe reused) descriptor
                self._closed = True
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _handle(self, ready) -> None:
        rescan = False
        for fd, _ in ready:
            if fd == self._wake_r:
                self._stopped = True
                return
            if fd == self.ino.fd:
                for wd, mask, name in self.ino.read():
                    if wd in self._run_wds:
                        if mask & IN_IGNORED:
                            self._run_wds.pop(wd, None)
                            rescan = True
                        elif self._may_start_or_stop(wd, name):
                            rescan = True
                    elif wd in self._by_wd:
                        uuid = self._by_wd[wd]
                        if mask & IN_IGNORED:  # the group was removed
                            self._by_wd.pop(wd, None)
                            if uuid in self.guests:
                                self.guests[uuid].wd = None
                            rescan = True
                        else:
                            self.check(uuid)
            elif fd in self._by_efd:
                uuid = self._by_efd[fd]
                try:
                    os.eventfd_read(fd)
                except OSError:
                    pass
                self.check(uuid)
                t = time.monotonic()
                self._rechecks[uuid] = [t + s for s in RECHECK_S]
        now = time.monotonic()
        for uuid, ts in list(self._rechecks.items()):
            if ts and ts[0] <= now:
                self.check(uuid)
                self._rechecks[uuid] = [t for t in ts if t > now]
            if not self._rechecks.get(uuid):
                self._rechecks.pop(uuid, None)
        if rescan:
            self.rescan()

    def _may_start_or_stop(self, wd: int, name: str) -> bool:
        """Whether a change of ``name`` in a run directory may mean a guest started or
        stopped. libvirtd rewrites a running guest's status file (NAME.xml) at every change it
        makes to it (each ``virsh memtune``, ``setmem``, ``cgctl set`` publishing its metadata),
        and a rescan parses every running guest's status file: for a guest watched already
        that rewrite changes nothing here (its start and stop come and go with NAME.pid).
        libvirt rewrites it as NAME.xml.new renamed to NAME.xml (four events)."""
        if name.endswith(".new"):
            name = name[:-4]
        if not name.endswith(".xml"):
            return True
        driver = os.path.basename(self._run_wds.get(wd, ""))
        return not any(w.guest.driver == driver and w.guest.name == name[:-4]
                       for w in self.guests.values())

    def stop(self) -> None:
        with self._lock:
            if not self._closed:
                os.write(self._wake_w, b"x")


def start(stopping: threading.Event, *, on_event: Callable = None, run_dir: str = None,
          host=None) -> Optional[OomWatch]:
    """The watcher in its own thread until ``stopping`` is set; never raises (the service
    runs without it, one error line)."""
    try:
        w = OomWatch(on_event, run_dir=run_dir, host=host)
    except (OSError, AttributeError) as e:  # AttributeError: no os.eventfd (Python < 3.10)
        log.error("OOM watcher not started: %s", e)
        return None

    def run():
        try:
            w.run()
        except Exception as e:  # noqa: BLE001  a bug here must not touch the service
            log.error("OOM watcher stopped: %s: %s", type(e).__name__, e)
    threading.Thread(target=run, name="cgctl-oomwatch", daemon=True).start()
    threading.Thread(target=lambda: (stopping.wait(), w.stop()), name="cgctl-oomwatch-stop",
                     daemon=True).start()
    return w

"""Block devices that appear or change → re-apply per-device settings (docs/design.md#parameters-and-conversions).

``DeviceWatcher`` listens to udev (a pyudev monitor on subsystem ``block``) in a
thread of its own and reports each whole disk that was added or changed, once
the burst of events for it has settled (attaching a loop device sends three
``change`` events in a few milliseconds). ``affected_guests`` says which
running guests name that disk in their per-device config now, and
``reapply_device`` re-applies their per-device settings through the controller.

Which netlink source: ``udev`` (events after udevd ran its rules, so
``/dev/disk/by-*`` links exist) when udevd runs, else ``kernel`` (raw kernel
uevents: no udevd needed, but a by-id link may lag behind the event; the settle
delay covers the usual case, and the link's own ``add``/``change`` is not an
event, so a name udev has not linked yet is applied on the next event or apply).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from cgctl import consts
from cgctl.host import devices, runfiles
from cgctl.errors import CgctlError

log = logging.getLogger("cgctl")

UDEV_CONTROL = "/run/udev/control"   # udevd's socket: present while udevd runs
ACTIONS = ("add", "change")

Callback = Callable[[Optional[str], str, str], None]   # (device node, MAJ:MIN of the disk, action)


def default_source() -> str:
    return "udev" if os.path.exists(UDEV_CONTROL) else "kernel"


def event_disk(device) -> Optional[Tuple[Optional[str], str]]:
    """(node, whole-disk MAJ:MIN) for a pyudev block device event, None when it has no numbers."""
    number = device.device_number
    if not number:
        return None
    node = device.device_node
    if device.device_type == "partition":
        disk = device.find_parent("block", "disk")
        if disk is not None and disk.device_number:
            number, node = disk.device_number, disk.device_node or node
    return node, f"{os.major(number)}:{os.minor(number)}"


class DeviceWatcher:
    """``callback(node, majmin, action)`` for every block disk added or changed.

    The callback runs in the watcher's own thread (not the caller's): a service
    whose journal or libvirt connection belongs to another thread should hand
    the event over (a queue) rather than work in the callback. A callback that
    raises is logged; the watcher keeps going.
    """

    def __init__(self, callback: Callback, *, source: Optional[str] = None,
                 settle: float = 0.3, actions: Iterable[str] = ACTIONS, context=None):
        if devices._pyudev() is None:
            raise CgctlError("pyudev is not installed: cannot watch block devices")
        self.callback = callback
        self.source = source or default_source()
        self.settle = settle
        self.actions = tuple(actions)
        # its own context, not the starting thread's (devices.udev_context): the monitor made
        # from it is read in the observer thread, and libudev contexts are not thread-safe
        self._context = context or devices._pyudev().Context()
        self._monitor = None
        self._observer = None
        self._pending: Dict[str, Tuple[float, Optional[str], str]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._worker: Optional[threading.Thread] = None

    def start(self) -> "DeviceWatcher":
        import pyudev
        self._monitor = pyudev.Monitor.from_netlink(self._context, source=self.source)
        self._monitor.filter_by("block")
        self._stopping = False
        self._worker = threading.Thread(target=self._deliver, name="cgctl-udev-deliver",
                                        daemon=True)
        self._worker.start()
        self._observer = pyudev.MonitorObserver(self._monitor, callback=self._on_event,
                                                name="cgctl-udev")
        self._observer.start()
        log.info("watching block devices (udev source=%s)", self.source)
        return self

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.send_stop()
            self._observer.join(timeout=5)
            self._observer = None
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5)
            self._worker = None
        self._monitor = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the observer thread ---------------------------------------------------
    def _on_event(self, device) -> None:
        try:
            if device.action not in self.actions:
                return
            found = event_disk(device)
        except Exception:   # a device gone while we look at it
            log.debug("block event dropped", exc_info=True)
            return
        if found is not None:
            self.push(found[0], found[1], device.action)

    def push(self, node: Optional[str], majmin: str, action: str) -> None:
        """Queue one event (also the entry point for tests without udev)."""
        with self._cond:
            prev = self._pending.get(majmin)
            # an add followed by changes is still an add
            act = "add" if prev is not None and prev[2] == "add" else action
            self._pending[majmin] = (time.monotonic() + self.settle, node, act)
            self._cond.notify_all()

    # -- the delivery thread: one callback per disk per burst ------------------------
    def _deliver(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    due = [(mm, v) for mm, v in self._pending.items() if v[0] <= now]
                    if due:
                        for mm, _ in due:
                            del self._pending[mm]
                        break
                    wait = min((v[0] for v in self._pending.values()), default=None)
                    self._cond.wait(None if wait is None else max(0.0, wait - now))
            for majmin, (_, node, action) in due:
                try:
                    self.callback(node, majmin, action)
                except Exception:
                    log.exception("block device %s (%s): re-apply failed", node, majmin)


def affected_guests(journal, running_guests: Iterable[runfiles.Guest], majmin: str, *,
                    run_dir: Optional[str] = None) -> List[runfiles.Guest]:
    """The running guests whose journal config names a device resolving to ``majmin`` now."""
    out = []
    for g in running_guests:
        from cgctl.core import profiles
        names = sorted({dev for (_, dev) in profiles.effective(journal, g.uuid).config if dev})
        if not names:
            continue
        xml = None
        if any("/" not in n for n in names):
            xml = runfiles.status_domain_xml(g.driver, g.name, run_dir or consts.LIBVIRT_RUN_DIR)
        for n in names:
            try:
                if devices.resolve(n, guest=g.name, domain_xml=xml) == majmin:
                    out.append(g)
                    break
            except CgctlError:
                continue
    return out


def reapply_device(controller, running_guests: Iterable[runfiles.Guest], majmin: str, *,
                   command: str = "device") -> list:
    """Re-apply the per-device settings of every affected guest; one bad guest never stops
    the others. Returns the controller's outcomes."""
    outcomes = []
    for g in affected_guests(controller.journal(), running_guests, majmin,
                             run_dir=controller.run_dir):
        try:
            outcomes.append(controller.apply_devices(g, source="event", command=command))
        except CgctlError as exc:
            log.error("guest=%s device %s: re-apply failed: %s", g.name, majmin, exc)
    return outcomes

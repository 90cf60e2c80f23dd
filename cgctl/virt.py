"""The only cgctl module that talks to libvirt (and imports it: lazily, inside functions).

``import cgctl.virt`` works on a host without libvirt-python; only calling into it needs it.
Connections are short-lived (open, use, close) unless the caller passes one in. Every
libvirt error leaves this module as a cgctl error (see ``translate_error``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional

from cgctl import consts, errors
from cgctl.host import runfiles
from cgctl.model import units
from cgctl.host.runfiles import Guest  # noqa: F401  (the public home of Guest is here too)

__all__ = ["Guest", "lookup", "list_guests", "open_connection", "translate_error", "guest_from_domain",
           "start_event_loop", "event_loop_alive", "add_timer", "remove_timer", "LifecycleEvent",
           "EventConnection", "get_metadata", "set_metadata", "update_metadata", "domain_xml",
           "guest_xml"]

log = logging.getLogger("cgctl")

_handler_installed = False


def _libvirt():
    """Import libvirt-python on first use; quiet its default stderr error printer."""
    global _handler_installed
    try:
        import libvirt
    except ImportError as e:
        raise errors.LibvirtError(
            "libvirt-python is not installed (pip install 'cgctl[libvirt]', or Debian's "
            "python3-libvirt)") from e
    if not _handler_installed:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _handler_installed = True
    return libvirt


def translate_error(exc: Exception, *, guest: Optional[str] = None,
                    uri: Optional[str] = None) -> errors.CgctlError:
    """A libvirt.libvirtError as the cgctl error that says what happened."""
    libvirt = _libvirt()
    if isinstance(exc, errors.CgctlError):
        return exc
    code = exc.get_error_code() if isinstance(exc, libvirt.libvirtError) else None
    msg = (exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else None) or str(exc)
    where = f" ({uri})" if uri else ""
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return errors.GuestNotFound(f"no such guest{where}", guest=guest)
    if code == libvirt.VIR_ERR_OPERATION_INVALID and "not running" in msg:
        return errors.GuestNotRunning(f"domain is not running{where}", guest=guest)
    return errors.LibvirtError(f"libvirt{where}: {msg}", guest=guest)


def open_connection(uri: str, *, readonly: bool = True):
    """A libvirt connection to ``uri``; LibvirtError if it cannot be opened."""
    libvirt = _libvirt()
    try:
        conn = libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise translate_error(e, uri=uri) from e
    if conn is None:  # old bindings returned None instead of raising
        raise errors.LibvirtError(f"libvirt ({uri}): cannot connect")
    return conn


@contextlib.contextmanager
def _connections(uris: Iterable[str], conn=None) -> Iterator[list]:
    """(uri, connection) pairs for every URI that opens; LibvirtError if none does."""
    if conn is not None:
        yield [(conn.getURI(), conn)]
        return
    opened, failures = [], []
    try:
        for uri in uris:
            try:
                opened.append((uri, open_connection(uri)))
            except errors.LibvirtError as e:
                failures.append(str(e))
        if not opened:
            raise errors.LibvirtError("cannot connect to libvirt: " + ("; ".join(failures) or "no URI given"))
        yield opened
    finally:
        for _uri, c in opened:
            with contextlib.suppress(Exception):
                c.close()


def _driver(conn) -> str:
    return conn.getType().lower()  # "QEMU" -> qemu, "LXC" -> lxc, "Test" -> test


def guest_from_domain(dom, uri: str, conn=None) -> Guest:
    """A Guest for a libvirt domain object (its main PID from libvirt's pid file)."""
    libvirt = _libvirt()
    conn = conn or dom.connect()
    name = dom.name()
    try:
        running = bool(dom.isActive())
        persistent = bool(dom.isPersistent())
        uuid = dom.UUIDString()
    except libvirt.libvirtError as e:
        raise translate_error(e, guest=name, uri=uri) from e
    driver = _driver(conn)
    pid = None
    if running and driver in runfiles.DRIVERS:
        # QEMU: the pid file is the only place libvirt tells; LXC: the pid file holds the
        # libvirt_lxc controller, whose cgroup is the machine group (see cgctl.host.runfiles).
        with contextlib.suppress(errors.UsageError):  # a name no pid file can have
            pid = runfiles.read_pid(driver, name)
        if pid is None and driver == "lxc":
            with contextlib.suppress(libvirt.libvirtError):
                pid = dom.ID() if dom.ID() > 0 else None
    return Guest(name=name, uuid=uuid, driver=driver, uri=uri, running=running,
                 persistent=persistent, pid=pid)


def lookup(ident: str, uris: Iterable[str] = consts.DEFAULT_URIS, *, conn=None) -> Guest:
    """The guest called ``ident`` (a name or a UUID) on the first URI that knows it.

    URIs that cannot be opened are skipped; LibvirtError if none can; GuestNotFound naming
    ``ident`` if no URI knows it.
    """
    libvirt = _libvirt()
    if not isinstance(ident, str) or not ident or "\0" in ident:
        raise errors.UsageError(f"invalid guest name {ident!r}")
    uuid = units.normalize_uuid(ident)
    with _connections(uris, conn) as conns:
        for uri, c in conns:
            tries = ([(c.lookupByUUIDString, uuid)] if uuid else []) + [(c.lookupByName, ident)]
            for find, key in tries:
                try:
                    dom = find(key)
                except libvirt.libvirtError as e:
                    if e.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
                        continue
                    raise translate_error(e, guest=ident, uri=uri) from e
                return guest_from_domain(dom, uri, c)
        searched = ", ".join(uri for uri, _ in conns)
    raise errors.GuestNotFound(f"no such guest on {searched}", guest=ident)


def list_guests(uris: Iterable[str] = consts.DEFAULT_URIS, *, conn=None) -> List[Guest]:
    """Every guest (running or defined) on every URI that can be opened."""
    libvirt = _libvirt()
    out: List[Guest] = []
    with _connections(uris, conn) as conns:
        for uri, c in conns:
            try:
                domains = c.listAllDomains(0)
            except libvirt.libvirtError as e:
                raise translate_error(e, uri=uri) from e
            for dom in domains:
                try:
                    out.append(guest_from_domain(dom, uri, c))
                except errors.GuestNotFound:
                    continue  # undefined while we listed
    return out


# --------------------------------------------------------------------------- cgctl's metadata
# (cgctl.model.metadata holds the format; this is only libvirt's side of it)

def _metadata_flags(libvirt, live: bool, config: bool) -> int:
    return ((libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)
            | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0))


def get_metadata(dom, *, live: bool) -> Optional[str]:
    """cgctl's element of the live (``live=True``) or persistent copy; None if it has none."""
    from cgctl.model import metadata
    libvirt = _libvirt()
    try:
        return dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata.NS,
                            _metadata_flags(libvirt, live, not live))
    except libvirt.libvirtError as e:
        if e.get_error_code() == getattr(libvirt, "VIR_ERR_NO_DOMAIN_METADATA", 80):
            return None
        raise translate_error(e, guest=dom.name()) from e


def set_metadata(dom, text: str, *, live: bool) -> None:
    """Replace cgctl's element in the live or the persistent copy of the domain."""
    from cgctl.model import metadata
    libvirt = _libvirt()
    try:
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, text, metadata.PREFIX,
                        metadata.NS, _metadata_flags(libvirt, live, not live))
    except libvirt.libvirtError as e:
        raise translate_error(e, guest=dom.name()) from e


def update_metadata(guest: Guest, change: Callable, *, live: bool, config: bool,
                    conn=None) -> None:
    """Read, ``change(Doc or None) -> Doc``, write back cgctl's metadata of the live and/or
    persistent copy (each read and written on its own: libvirt keeps them apart).
    ``conn``: a read-write connection the caller keeps (and closes); else one of its own."""
    from cgctl.model import metadata
    libvirt = _libvirt()
    own = conn is None
    if own:
        conn = open_connection(guest.uri, readonly=False)
    try:
        try:
            dom = conn.lookupByUUIDString(guest.uuid)
        except libvirt.libvirtError as e:
            raise translate_error(e, guest=guest.name, uri=guest.uri) from e
        for flag_live, wanted in ((True, live), (False, config)):
            if wanted:
                doc = metadata.parse(get_metadata(dom, live=flag_live))
                set_metadata(dom, metadata.serialize(change(doc)), live=flag_live)
    finally:
        if own:
            with contextlib.suppress(Exception):
                conn.close()


def domain_xml(dom, *, inactive: bool = False) -> str:
    """The domain's XML: the running definition, or (``inactive``) the persistent one."""
    libvirt = _libvirt()
    try:
        return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)
    except libvirt.libvirtError as e:
        raise translate_error(e, guest=dom.name()) from e


def guest_xml(guest: Guest, *, inactive: bool = False) -> str:
    """The running (or ``inactive``: persistent) domain XML of ``guest``, read-only."""
    libvirt = _libvirt()
    conn = open_connection(guest.uri)
    try:
        try:
            dom = conn.lookupByUUIDString(guest.uuid)
        except libvirt.libvirtError as e:
            raise translate_error(e, guest=guest.name, uri=guest.uri) from e
        return domain_xml(dom, inactive=inactive)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


# --------------------------------------------------------------------------- the service's side
# Long-lived connections that deliver lifecycle events (cgctl.service.daemon). libvirt's rule: an event
# loop implementation must be registered before the connections that should use it are opened
# (keepalive and events of remote connections run on it).

_loop_lock = threading.Lock()
_loop_thread: Optional[threading.Thread] = None


def _run_event_loop(libvirt) -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception as exc:  # keep the loop alive: every event and keepalive depends on it
            log.error("libvirt event loop: %s", exc)
            time.sleep(0.1)  # not a busy loop if the error repeats


def event_loop_alive() -> bool:
    """True once ``start_event_loop()`` ran and its thread still runs."""
    return _loop_thread is not None and _loop_thread.is_alive()


def start_event_loop() -> threading.Thread:
    """Register libvirt's default event loop and run it in a daemon thread (idempotent).

    Call it before opening any connection that should deliver events or keep alive.
    """
    global _loop_thread
    libvirt = _libvirt()
    with _loop_lock:
        if _loop_thread is None:
            libvirt.virEventRegisterDefaultImpl()
            _loop_thread = threading.Thread(target=_run_event_loop, args=(libvirt,),
                                            name="libvirt-event-loop", daemon=True)
            _loop_thread.start()
        return _loop_thread


def add_timer(interval_s: float, callback: Callable[[], None]) -> int:
    """Run ``callback()`` every ``interval_s`` seconds in libvirt's event loop thread."""
    libvirt = _libvirt()

    def fire(_timer, _opaque):
        try:
            callback()
        except Exception as exc:  # a timer must not take the loop down
            log.error("libvirt event loop timer: %s", exc)
    return libvirt.virEventAddTimeout(max(1, int(interval_s * 1000)), fire, None)


def remove_timer(timer_id: int) -> None:
    with contextlib.suppress(Exception):
        _libvirt().virEventRemoveTimeout(timer_id)


@dataclass(frozen=True)
class LifecycleEvent:
    """One domain lifecycle event in words: ``event`` 'started', 'stopped', 'undefined', ...
    and ``detail`` 'booted', 'restored', 'renamed', ... (libvirt's names, lower case)."""

    uri: str
    name: str
    uuid: str
    event: str
    detail: str


def _names(libvirt, prefix: str) -> dict:
    """{value: word} of libvirt's constants PREFIX_WORD (skipping PREFIX_LAST and sub-prefixes)."""
    out = {}
    for attr in dir(libvirt):
        if attr.startswith(prefix) and not attr.endswith("_LAST"):
            word = attr[len(prefix):].lower()
            value = getattr(libvirt, attr)
            if isinstance(value, int) and value not in out:
                out[value] = word
    return out


_EVENT_NAMES: Optional[dict] = None


def _event_words(libvirt, event: int, detail: int):
    global _EVENT_NAMES
    if _EVENT_NAMES is None:
        events = {getattr(libvirt, f"VIR_DOMAIN_EVENT_{w.upper()}"): w
                  for w in ("defined", "undefined", "started", "suspended", "resumed",
                            "stopped", "shutdown", "pmsuspended", "crashed")
                  if hasattr(libvirt, f"VIR_DOMAIN_EVENT_{w.upper()}")}
        details = {v: _names(libvirt, f"VIR_DOMAIN_EVENT_{w.upper()}_") for v, w in events.items()}
        _EVENT_NAMES = {"events": events, "details": details}
    word = _EVENT_NAMES["events"].get(event, f"event-{event}")
    return word, _EVENT_NAMES["details"].get(event, {}).get(detail, f"detail-{detail}")


_CLOSE_REASONS = {0: "error", 1: "end of file (libvirtd went away)", 2: "keepalive timeout",
                  3: "closed by client"}


class EventConnection:
    """One long-lived read-only connection that reports lifecycle events and its own loss.

    ``on_event(LifecycleEvent)`` and ``on_close(reason)`` run in libvirt's event loop thread:
    they must return at once (hand work to another thread). Keepalive (interval, count) is
    asked for where the driver supports it (remote connections; not ``test:///``).
    """

    def __init__(self, uri: str, on_event: Callable[[LifecycleEvent], None],
                 on_close: Callable[[str], None], *, keepalive=(5, 3)):
        self.uri = uri
        self._on_event = on_event
        self._on_close = on_close
        self._keepalive = keepalive
        self._conn = None
        self._callback_id: Optional[int] = None
        self._closing = False
        self.version = ""
        self.keepalive = False

    def open(self) -> "EventConnection":
        """Connect, ask for keepalive, register the close callback and lifecycle events."""
        libvirt = _libvirt()
        self._conn = open_connection(self.uri, readonly=True)
        try:
            if self._keepalive:
                try:
                    self.keepalive = self._conn.setKeepAlive(*self._keepalive) == 0
                except libvirt.libvirtError:
                    self.keepalive = False  # a driver without keepalive (test:///, local)
            self._conn.registerCloseCallback(self._closed, None)
            self._callback_id = self._conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None)
            v = self._conn.getLibVersion()
            self.version = f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
        except libvirt.libvirtError as e:
            self.close()
            raise translate_error(e, uri=self.uri) from e
        return self

    # the two callbacks run in the event loop thread
    def _lifecycle(self, _conn, dom, event, detail, _opaque) -> None:
        try:
            event_word, detail_word = _event_words(_libvirt(), event, detail)
            # name() and UUIDString() are local to the domain object: no RPC here
            self._on_event(LifecycleEvent(self.uri, dom.name(), dom.UUIDString(),
                                          event_word, detail_word))
        except Exception as exc:
            log.error("%s: lifecycle event dropped: %s", self.uri, exc)

    def _closed(self, _conn, reason, _opaque) -> None:
        if self._closing:
            return
        try:
            self._on_close(_CLOSE_REASONS.get(reason, f"reason {reason}"))
        except Exception as exc:
            log.error("%s: close callback: %s", self.uri, exc)

    def _domains(self, flags: int = 0):
        libvirt = _libvirt()
        if self._conn is None:
            raise errors.LibvirtError(f"libvirt ({self.uri}): not connected")
        try:
            return self._conn.listAllDomains(flags)
        except libvirt.libvirtError as e:
            raise translate_error(e, uri=self.uri) from e

    def running_guests(self) -> List[Guest]:
        """Every active (running or paused) guest of this connection."""
        libvirt = _libvirt()
        out = []
        for dom in self._domains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            with contextlib.suppress(errors.GuestNotFound, errors.GuestNotRunning):
                g = guest_from_domain(dom, self.uri, self._conn)
                if g.running:
                    out.append(g)
        return out

    def _domain(self, uuid: str):
        libvirt = _libvirt()
        if self._conn is None:
            raise errors.LibvirtError(f"libvirt ({self.uri}): not connected")
        try:
            return self._conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            raise translate_error(e, guest=uuid, uri=self.uri) from e

    def guest(self, uuid: str) -> Guest:
        """The guest with this UUID now (GuestNotFound if it is gone)."""
        return guest_from_domain(self._domain(uuid), self.uri, self._conn)

    def domain_xml(self, uuid: str, *, inactive: bool = False) -> str:
        """The domain's live (or persistent) XML, with cgctl's metadata (cgctl/core/travel.py)."""
        return domain_xml(self._domain(uuid), inactive=inactive)

    def close(self) -> None:
        """Deregister and close; never fails (the other end may be gone already)."""
        self._closing = True
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._callback_id is not None:
            with contextlib.suppress(Exception):
                conn.domainEventDeregisterAny(self._callback_id)
            self._callback_id = None
        with contextlib.suppress(Exception):
            conn.unregisterCloseCallback()
        with contextlib.suppress(Exception):
            conn.close()

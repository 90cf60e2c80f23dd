"""The only cgctl module that talks to libvirt (and imports it: lazily, inside functions).

``import cgctl.virt`` works on a host without libvirt-python; only calling into it needs it.
Connections are short-lived (open, use, close) unless the caller passes one in. Every
libvirt error leaves this module as a cgctl error (see ``translate_error``).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, List, Optional

from cgctl import consts, errors, runtime
from cgctl.runtime import Guest  # noqa: F401  (the public home of Guest is here too)

__all__ = ["Guest", "lookup", "list_guests", "open_connection", "translate_error", "guest_from_domain"]

_handler_installed = False


def _libvirt():
    """Import libvirt-python on first use; quiet its default stderr error printer."""
    global _handler_installed
    try:
        import libvirt
    except ImportError as e:
        raise errors.LibvirtError(
            "libvirt-python is not installed (pip install 'cgctl[libvirt]')") from e
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
    if running and driver in runtime.DRIVERS:
        # QEMU: the pid file is the only place libvirt tells; LXC: the pid file holds the
        # libvirt_lxc controller, whose cgroup is the machine group (see cgctl.runtime).
        with contextlib.suppress(errors.UsageError):  # a name no pid file can have
            pid = runtime.read_pid(driver, name)
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
    uuid = runtime.normalize_uuid(ident)
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

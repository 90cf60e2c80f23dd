"""systemd's readiness and watchdog protocol (sd_notify), by hand: one datagram per message
to NOTIFY_SOCKET, no python-systemd dependency."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Optional

log = logging.getLogger("cgctl")


class Notifier:
    """systemd's sd_notify protocol by hand: datagrams to $NOTIFY_SOCKET.

    A path or an abstract socket (``@name``). Without NOTIFY_SOCKET every call is a no-op.
    ``watchdog_interval`` is half of $WATCHDOG_USEC (when $WATCHDOG_PID is unset or ours),
    else None. Sending never raises: systemd going away must not stop the service.
    """

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        self.address: Optional[str] = None
        self.watchdog_usec: Optional[int] = None
        self._sock: Optional[socket.socket] = None
        self._warned = False
        addr = environ.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            self.address = "\0" + addr[1:]
        elif addr.startswith("/"):
            self.address = addr
        elif addr:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract: not notifying", addr)
        usec, wpid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not wpid or wpid == str(os.getpid())):
            self.watchdog_usec = int(usec)

    @property
    def watchdog_interval(self) -> Optional[float]:
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as e:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"),
                            e.strerror or e)
                self._warned = True
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

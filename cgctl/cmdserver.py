"""The service's side of ``cgctl.fast``: run forwarded commands for local root clients.

One AF_UNIX stream socket in a 0700 directory, mode 0600; a peer must be the
service's own user (root), checked with SO_PEERCRED. A request is
``MAGIC, 4-byte length, journal NUL arg NUL arg...``; the answer is ``R``,
the exit status (4 bytes, signed) and two length-prefixed texts (stdout,
stderr), or ``F`` when the client should run the command itself (another
journal than the service's, a command that is not forwarded, too many
requests at once). Binary and tiny, because the client must start fast.
Each request runs ``cgctl.cli.main`` in its own thread with its output
captured, so it does exactly what the client would have done.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import threading
import time
from typing import Callable, Optional

from .fast import FORWARDED, MAGIC, _recv_exact, scan

log = logging.getLogger("cgctl")

MAX_REQUEST = 1024 * 1024
MAX_CONCURRENT = 8


def _default_runner(argv):
    from .cli import run_captured
    return run_captured(argv)


class CommandServer:
    def __init__(self, path: str, journal: str,
                 runner: Callable[[list], tuple] = _default_runner):
        self.path = path
        self.journal = os.path.abspath(journal)
        self.runner = runner
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self._stopping = threading.Event()

    # -- life ----------------------------------------------------------------------
    def start(self) -> bool:
        """Listen; False (logged) when another live service already answers on the path."""
        d = os.path.dirname(self.path)
        os.makedirs(d, mode=0o700, exist_ok=True)
        if self._someone_listens():
            log.warning("command socket %s: another service answers there; not serving it",
                        self.path)
            return False
        try:
            st = os.lstat(self.path)
            if stat.S_ISSOCK(st.st_mode):
                os.unlink(self.path)  # a stale socket of a service that died
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        s.listen(16)
        self._sock = s
        self._thread = threading.Thread(target=self._accept, name="cgctl-commands", daemon=True)
        self._thread.start()
        log.info("answering cgctl commands on %s", self.path)
        return True

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    def _someone_listens(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(0.5)
            probe.connect(self.path)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    # -- requests --------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed by stop()
            threading.Thread(target=self._serve, args=(conn,), name="cgctl-command",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                reply = self._answer(conn)
            except (EOFError, OSError) as exc:
                log.warning("command socket: a client went away mid-request: %s", exc)
                return
            except Exception as exc:  # a bug: the client gets a one-line error, the log one line
                log.error("command socket: internal error: %s: %s", type(exc).__name__, exc)
                reply = (1, "", f"cgctl: error: internal error in the service: "
                                f"{type(exc).__name__}: {exc}\n")
            try:
                conn.sendall(encode_reply(reply))
            except OSError as exc:
                log.warning("command socket: the client left before the answer: %s", exc)

    def _answer(self, conn: socket.socket):
        """(rc, out, err), or None: the client should run the command itself."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", creds)
        if uid != os.geteuid():
            log.warning("command socket: refused a client with uid %d (pid %d)", uid, pid)
            return (1, "", "cgctl: error: permission denied\n")
        if _recv_exact(conn, len(MAGIC)) != MAGIC:
            return None
        n = int.from_bytes(_recv_exact(conn, 4), "big")
        if n > MAX_REQUEST:
            return None
        fields = _recv_exact(conn, n).decode("utf-8", "surrogateescape").split("\0")
        journal, argv = fields[0], fields[1:]
        # the client says which journal the command means to it (its --journal, its
        # CGCTL_JOURNAL or the default); only the service's own is served, and named
        # explicitly, since this process's defaults are not the client's
        command, _ = scan(argv)
        if command not in FORWARDED or journal != self.journal:
            return None
        argv = ["--journal", self.journal] + argv
        if not self._slots.acquire(blocking=False):
            return None  # busy: the client runs it itself
        t0 = time.monotonic()
        try:
            rc, out, err = self.runner(argv)
        finally:
            self._slots.release()
        log.info("served for pid %d: cgctl %s -> exit %d (%.1f ms)", pid, " ".join(argv), rc,
                 (time.monotonic() - t0) * 1000)
        return rc, out, err


def encode_reply(reply) -> bytes:
    if reply is None:
        return b"F"
    rc, out, err = reply
    o, e = out.encode(), err.encode()
    return (b"R" + int(rc).to_bytes(4, "big", signed=True) + len(o).to_bytes(4, "big") + o
            + len(e).to_bytes(4, "big") + e)

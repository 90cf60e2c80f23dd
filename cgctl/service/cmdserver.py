"""The service's side of ``cgctl.cli.fast``: run forwarded commands for local root clients.

One AF_UNIX stream socket in a 0700 directory, mode 0600; a peer must be the
service's own user (root), checked with SO_PEERCRED. The bytes on it are
cgctl/wire.py's (binary and tiny, because the client must start fast).

The command line is read with the CLI's own parser (cgctl/cli/main.py), and only
a command that means exactly what it would mean in the client's process is
run here (``refusal``): one of ``FORWARDED``, no option that changes the
journal, the URIs, the config file, the logging or asks for help, and the
client's environment and config file naming this service's journal and URIs.
Anything else is answered ``F``. It runs ``cgctl.cli.main.main`` in its own thread
with its output captured and the client recorded as the one who asked
(uid from the kernel, login uid, ``SUDO_USER``: docs/operations.md).

Kept across commands (docs/performance.md, goal 4): one journal connection (``Journal`` is
thread-safe; reopened when the file at the path is another one) and, in the publisher's own
thread, the libvirt connections the metadata writes use (cgctl/service/publisher.py). A change
is answered once it is in force and committed; its metadata is written right after the answer.

Bounds: at most ``MAX_CONNECTIONS`` open connections (one more is answered
``F`` and closed before any thread is made), ``MAX_CONCURRENT`` commands
running, and ``REQUEST_DEADLINE_S`` to send a whole request (a client
dribbling bytes is cut off, not waited for one ``recv`` at a time).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import socket
import stat
import struct
import threading
import time
from typing import Callable, Optional

from cgctl import wire
from cgctl.errors import CgctlError
from cgctl.core.journal import describe_user, read_loginuid
from cgctl.wire import FORWARDED

log = logging.getLogger("cgctl")

MAX_CONCURRENT = 8  # commands running at once; more: "F", the client runs it itself
MAX_CONNECTIONS = 32  # open connections (a thread each); more are refused before a thread
REQUEST_DEADLINE_S = 5.0  # to send a whole request (a few hundred bytes, from this host)
# options of the CLI that may come with a served command (the output's form only); every
# other global option changes what the command means and sends it back to the client
SERVED_OPTIONS = frozenset({"json"})


class _Late(Exception):
    """The client did not send its whole request within the deadline."""


def _printable(argv) -> str:
    return " ".join(a.encode("utf-8", "backslashreplace").decode("utf-8") for a in argv)


def _default_uris():
    from cgctl.config import resolve
    return resolve(None).uris


class CommandServer:
    """``cli`` is the CLI module (cgctl/cli/main.py), handed in by its ``cmd_daemon``: the
    service reads a command line with its parser and runs it with its ``run_captured``, but
    never imports it (that closed the cycle cli -> service -> cli; tests/unit/test_imports.py).
    ``runner(argv, who)`` -> (exit status, stdout, stderr) replaces ``run_captured`` (tests)."""

    def __init__(self, path: str, journal: str, cli,
                 runner: Optional[Callable[[list, str], tuple]] = None, uris=None):
        self.path = path
        self.cli = cli
        self.runner = runner or (lambda argv, who: cli.run_captured(argv, who=who,
                                                                   only=FORWARDED))
        self.configure(journal, uris if uris is not None else _default_uris())
        self.max_connections = MAX_CONNECTIONS
        self.request_deadline = REQUEST_DEADLINE_S
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self._open = 0  # connections being served
        self._open_lock = threading.Lock()
        self._refused = 0
        self._refused_logged = 0.0
        self._stopping = threading.Event()
        self.publisher = None  # cgctl/service/publisher.py, from start()
        self._jlock = threading.Lock()
        self._cjournal = None  # (journal, (st_dev, st_ino)) kept for commands
        self._jusers: dict = {}  # journal -> commands using it now
        self._retired: set = set()  # replaced journals, closed when their last user is done

    def configure(self, journal: str, uris) -> None:
        """The journal and URIs requests run with (the service's; changed by SIGHUP)."""
        self._serving = (os.path.abspath(journal), tuple(uris))  # one assignment: atomic

    @property
    def journal(self) -> str:
        return self._serving[0]

    @property
    def uris(self) -> tuple:
        return self._serving[1]

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
        from cgctl.service.publisher import Publisher
        self.publisher = Publisher().start()
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
        if self.publisher is not None:
            self.publisher.stop()  # the writes still queued are made first
        with self._jlock:
            if self._cjournal is not None:
                self._retire(self._cjournal[0])
                self._cjournal = None

    # -- the journal kept for commands ----------------------------------------------------
    def _lease_journal(self, path: str):
        """The kept journal for ``path`` (opened, or reopened if the file was replaced), with
        one more user; None if it cannot be opened (the command opens its own and says why)."""
        from cgctl.core.journal import Journal
        try:
            st = os.stat(path)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        with self._jlock:
            kept = self._cjournal
            if kept is None or kept[0].path != path or kept[1] != ident or ident is None:
                if kept is not None:
                    self._retire(kept[0])
                    self._cjournal = None
                if ident is None:
                    return None  # no file yet: the command creates it, the next one keeps it
                try:
                    self._cjournal = kept = (Journal(path), ident)
                except CgctlError as exc:
                    log.info("command socket: journal %s not kept open: %s", path, exc)
                    return None
            j = kept[0]
            self._jusers[j] = self._jusers.get(j, 0) + 1
            return j

    def _release_journal(self, j) -> None:
        with self._jlock:
            self._jusers[j] -= 1
            if not self._jusers[j]:
                del self._jusers[j]
                if j in self._retired:
                    self._retired.discard(j)
                    j.close()

    def _retire(self, j) -> None:
        """Under _jlock: close ``j`` now, or when the commands using it are done."""
        if self._jusers.get(j):
            self._retired.add(j)
        else:
            j.close()

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
            with self._open_lock:
                full = self._open >= self.max_connections
                if not full:
                    self._open += 1
            if full:
                self._refuse(conn)
                continue
            try:
                threading.Thread(target=self._serve, args=(conn,), name="cgctl-command",
                                 daemon=True).start()
            except RuntimeError:  # no thread to be had: the same as full
                self._done()
                self._refuse(conn)

    def _done(self) -> None:
        with self._open_lock:
            self._open -= 1

    def _refuse(self, conn: socket.socket) -> None:
        """Over the cap: "F" (the client runs it itself) without reading or waiting, close."""
        try:
            conn.setblocking(False)
            conn.send(b"F")
        except OSError:
            pass
        conn.close()
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged > 10:  # one line per 10 s, however many
            self._refused_logged = now
            log.warning("command socket: %d connection(s) refused so far: more than %d open "
                        "at once", self._refused, self.max_connections)

    def _serve(self, conn: socket.socket) -> None:
        from cgctl.core import travel
        pending: list = []  # this command's metadata writes, made after its answer
        if self.publisher is not None:
            travel.PUBLISHER.set(self.publisher)  # this thread's own context: no reset needed
            travel.PENDING.set(pending)
        try:
            with conn:
                try:
                    reply = self._answer(conn)
                except _Late:
                    log.warning("command socket: a client did not send its request within "
                                "%g s; closed", self.request_deadline)
                    reply = None
                except (EOFError, OSError) as exc:
                    log.warning("command socket: a client went away mid-request: %s", exc)
                    return
                except Exception as exc:  # a bug: the client gets a one-line error, the log one
                    log.error("command socket: internal error: %s: %s", type(exc).__name__, exc)
                    reply = (1, "", f"cgctl: error: internal error in the service: "
                                    f"{type(exc).__name__}: {exc}\n")
                try:
                    conn.settimeout(10)
                    conn.sendall(wire.encode_reply(reply))
                except OSError as exc:
                    log.warning("command socket: the client left before the answer: %s", exc)
        finally:
            travel.release(pending)  # answered (or failed): its metadata writes may run now
            self._done()

    def _recv(self, conn: socket.socket, n: int, deadline: float) -> bytes:
        """``n`` bytes before ``deadline`` (time.monotonic()), however they trickle in."""
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Late()
            conn.settimeout(left)
            try:
                b = conn.recv(min(65536, n - len(buf)))
            except socket.timeout:
                raise _Late() from None
            if not b:
                raise EOFError("the connection closed early")
            buf += b
        return buf

    def _answer(self, conn: socket.socket):
        """(rc, out, err), or None: the client should run the command itself."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", creds)
        if uid != os.geteuid():
            log.warning("command socket: refused a client with uid %d (pid %d)", uid, pid)
            return (1, "", "cgctl: error: permission denied\n")
        deadline = time.monotonic() + self.request_deadline
        request = wire.read_request(lambda n: self._recv(conn, n, deadline))
        if request is None:
            return None  # another version of the client: it runs the command itself
        (env_journal, config_file, sudo_user, loginuid), argv = request
        journal, uris = self._serving  # one request, one configuration (SIGHUP may change it)
        why = refusal(self.cli, argv, env_journal, config_file, journal, uris)
        if why is not None:
            log.info("command socket: pid %d runs it itself: %s", pid, why)
            return None
        # who asked: the uid from the kernel, never from the client; the login uid from the
        # kernel too while the client waits (its own reading if /proc has none); SUDO_USER is
        # only in the client's environment
        luid = read_loginuid(pid)
        if luid is None and loginuid.isdigit():
            luid = int(loginuid)
        who = describe_user(uid, luid, sudo_user or None)
        run = ["--journal", journal] + [w for u in uris for w in ("-c", u)] + argv
        if not self._slots.acquire(blocking=False):
            return None  # busy: the client runs it itself
        t0 = time.monotonic()
        from cgctl.core import controller
        kept = self._lease_journal(journal)
        token = controller.SHARED_JOURNAL.set(kept)
        try:
            rc, out, err = self.runner(run, who)
        finally:
            controller.SHARED_JOURNAL.reset(token)
            if kept is not None:
                self._release_journal(kept)
            self._slots.release()
        log.info("served for pid %d (%s): cgctl %s -> exit %d (%.1f ms)", pid, who,
                 _printable(argv), rc, (time.monotonic() - t0) * 1000)
        return rc, out, err


def parse(cli, argv):
    """The CLI's own reading of ``argv`` (``cli``: cgctl/cli/main.py), printing nothing: the
    Namespace, or a reason (str) it is none of the service's business."""
    sink = io.StringIO()
    t_out, t_err = cli._OUT.set(sink), cli._ERR.set(sink)
    try:
        return cli._parser().parse_args(argv)
    except SystemExit:
        return "it asks for help or the version"
    except CgctlError as exc:
        return f"not a valid command line ({exc})"
    finally:
        cli._OUT.reset(t_out)
        cli._ERR.reset(t_err)


def _global_options(cli):
    """The CLI's options valid before and after every command word: (dest, option, default)."""
    p = argparse.ArgumentParser(add_help=False)
    cli._add_common(p, defaults=True)
    return [(a.dest, a.option_strings[-1], a.default) for a in p._actions]


def refusal(cli, argv, env_journal: str, config_file: str, journal: str,
            uris) -> Optional[str]:
    """None when ``argv`` (with the client's ``$CGCTL_JOURNAL`` and config file) means exactly
    the service's own command, on its journal and URIs; else why the client runs it itself."""
    args = parse(cli, argv)
    if isinstance(args, str):
        return args
    if args.command not in FORWARDED:
        return f"{args.command or 'no command'} is not served here"
    for dest, option, default in _global_options(cli):
        if dest not in SERVED_OPTIONS and getattr(args, dest, default) != default:
            return f"{option} given"
    if env_journal and not os.path.isabs(env_journal):
        return "a relative $CGCTL_JOURNAL"
    from cgctl.config import resolve
    try:  # what the command means in the client's process
        mine = resolve(config_file or None, None,
                       environ={"CGCTL_JOURNAL": env_journal} if env_journal else {})
    except CgctlError as exc:
        return f"its config file: {exc}"
    if mine.journal != journal:
        return f"another journal ({mine.journal})"
    if tuple(mine.uris) != tuple(uris):
        return f"other URIs ({' '.join(mine.uris)})"
    return None

"""The service's side of the hook's hand-off (docs/hook.md, "The start without Python").

While ``cgctl daemon`` runs, a thread here holds ``HOOK_RUN_DIR/service.lock`` and watches
``HOOK_RUN_DIR`` with inotify. At ``prepare begin`` the installed script sees the lock held and,
instead of starting Python, writes a request file (``request-DRIVER-NAME``: the hook's options,
a blank line, the domain XML). The service takes the guest's lock file at once and runs the same
applier as the hook's detached one (``cgctl/start/applier.py``): early apply before the vCPUs
run, then the answer to ``started begin``. A request the service does not take (stopped, busy, a lock already
held) is the hook's again: ``start begin`` finds the guest's lock free and runs the hook in
Python. Nothing here may stop the service: every failure is one log line.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from cgctl import consts
from cgctl.start.options import REQUEST_PREFIX, SERVICE_LOCK, STDIN_LIMIT

log = logging.getLogger("cgctl")


class _Log:
    """The hook's Log interface on the service's logger."""

    def __init__(self, driver, name):
        self.prefix = f"hook hand-off: {driver} guest={name}: "

    def __call__(self, msg, error=False):
        (log.error if error else log.info)("%s%s", self.prefix, msg)


def parse_request(data: bytes):
    """(options dict, domain XML bytes) of a request file; ValueError if it is not one."""
    head, sep, xml = data.partition(b"\n\n")
    if not sep:
        raise ValueError("no blank line after the header")
    fields = {}
    for line in head.decode("utf-8", "replace").splitlines():
        key, eq, value = line.partition("=")
        if not eq or key not in ("journal", "config", "strict", "early"):
            raise ValueError(f"unexpected header line {line!r}")
        fields[key] = value
    return fields, xml


def _options(fields):
    from cgctl.start.options import Options
    opts = Options()
    opts.journal = fields.get("journal") or None
    opts.config_file = fields.get("config") or consts.CONFIG_PATH
    flag = {"yes": True, "no": False}
    opts.strict = flag.get(fields.get("strict", ""))
    opts.early = flag.get(fields.get("early", ""))
    return opts


class Handoff:
    def __init__(self, run_dir: str = None):
        self.run_dir = run_dir or consts.HOOK_RUN_DIR
        self.lock_fd = None
        self.ino = None

    def open(self) -> bool:
        """Hold the service lock and watch the directory; False (logged) if another service
        holds it already."""
        import fcntl
        from cgctl.host import inotify as I
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.run_dir, SERVICE_LOCK),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            log.error("hook hand-off: another process holds %s; the hook works alone",
                      os.path.join(self.run_dir, SERVICE_LOCK))
            return False
        self.lock_fd = fd  # closed by close() also if what follows fails
        from cgctl.start.applier import holder_line
        os.ftruncate(fd, 0)
        os.write(fd, holder_line())  # the script tests "the service runs" with builtins only
        self.ino = I.Inotify()
        self.ino.add(self.run_dir, I.IN_CLOSE_WRITE | I.IN_MOVED_TO)
        for name in os.listdir(self.run_dir):  # from before this service: their starts went on
            if name.startswith(REQUEST_PREFIX):
                self._discard(os.path.join(self.run_dir, name))
        return True

    def close(self) -> None:
        if self.ino is not None:
            self.ino.close()
            self.ino = None
        if self.lock_fd is not None:
            try:
                os.ftruncate(self.lock_fd, 0)  # no holder named: the script sees no service
            except OSError:
                pass
            os.close(self.lock_fd)  # the script sees the lock free: the hook works alone again
            self.lock_fd = None

    @staticmethod
    def _discard(path):
        try:
            os.unlink(path)
        except OSError:
            pass

    def poll_once(self, timeout: float) -> list:
        """Take the requests that arrive within ``timeout``; returns the started threads."""
        threads = []
        for _wd, _mask, name in self.ino.wait(timeout):
            if name.startswith(REQUEST_PREFIX):
                t = self.take(name)
                if t is not None:
                    threads.append(t)
        return threads

    def take(self, fname: str):
        from cgctl.start.options import DRIVERS
        path = os.path.join(self.run_dir, fname)
        driver, _, name = fname[len(REQUEST_PREFIX):].partition("-")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None  # the script took it back (`start begin` came first)
        try:
            data = os.read(fd, STDIN_LIMIT)
        finally:
            os.close(fd)
        self._discard(path)
        if driver not in DRIVERS or not name:
            log.error("hook hand-off: %s is not a request; ignored", fname)
            return None
        t = threading.Thread(target=self._serve, args=(driver, name, data),
                             name=f"cgctl-handoff-{name}", daemon=True)
        t.start()
        return t

    def _serve(self, driver, name, data):
        from cgctl.start import applier
        from cgctl.start.domain import StdinDomain
        from cgctl.start.options import lock_wait_within, resolve_settings, timeouts
        hlog = _Log(driver, name)
        try:
            fields, xml = parse_request(data)
        except ValueError as e:
            hlog(f"bad request ({e}); the hook applies", error=True)
            return
        fd = applier.take(driver, name)
        if fd is None:
            return  # the hook's own applier has this start
        held = applier.Held(driver, name, fd)
        ctl = None
        try:
            t0 = time.monotonic()
            opts = _options(fields)
            dom = StdinDomain(xml, name, hlog)
            info = dom.info()
            if info is None:
                return  # logged; no lock held from now: `start begin` runs the hook
            _, early_timeout = timeouts(hlog)
            _, early_on = resolve_settings(opts, hlog)
            ctl = applier.controller(opts, lock_wait=lock_wait_within(early_timeout))
            overlay = applier.receive_metadata(driver, name, dom, opts, ctl, hlog)
            what = applier.serve(ctl, driver, name, info.uuid, info.vcpus, t0 + early_timeout,
                                 hlog, overlay, early_on, let_go=held.let_go)
            hlog(f"{what} ({(time.monotonic() - t0) * 1000:.1f} ms)")
        except Exception as e:  # noqa: BLE001  the hook falls back to Python, never the service
            hlog(f"{type(e).__name__}: {e}; the hook applies", error=True)
        finally:
            if ctl is not None:
                ctl.close()
            held.let_go()

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            self.poll_once(0.5)


def start(stopping: threading.Event, run_dir: str = None):
    """The hand-off in its own thread until ``stopping`` is set; None (one error line) if it
    cannot run: the hook then works alone."""
    h = Handoff(run_dir)
    try:
        if not h.open():
            return None
    except (OSError, AttributeError) as e:
        log.error("hook hand-off not started: %s; the hook works alone", e)
        h.close()
        return None

    def run():
        try:
            h.run(stopping)
        except Exception as e:  # noqa: BLE001  a bug here must not touch the service
            log.error("hook hand-off stopped: %s: %s", type(e).__name__, e)
        finally:
            h.close()
    threading.Thread(target=run, name="cgctl-handoff", daemon=True).start()
    return h

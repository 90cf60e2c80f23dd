"""Shared pieces of the daemon tests (unit and libvirt): a notify socket made by the test, a fake
controller, an in-process daemon on libvirt's test:///default driver, a subprocess daemon."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional

from cgctl.errors import CgctlError
from cgctl.core.journal import Journal

TEST_URI = "test:///default"
CGCTL = [sys.executable, "-m", "cgctl.cli"]


def wait_for(cond, timeout: float = 10.0, what: str = "condition", interval: float = 0.02):
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class NotifySink:
    """A real AF_UNIX datagram socket, as systemd's NOTIFY_SOCKET (a path or @abstract)."""

    def __init__(self, abstract: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dir = None
        if abstract:
            name = f"cgctl-test-{secrets.token_hex(6)}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.dir = tempfile.mkdtemp(prefix="cgn-", dir="/tmp")  # sun_path is short
            path = os.path.join(self.dir, "notify")
            self.sock.bind(path)
            self.env = path
        self.messages: List[str] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self.sock.settimeout(0.1)
        self._thread.start()

    def _read(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def lines(self) -> List[str]:
        with self._lock:
            return [line for m in self.messages for line in m.split("\n")]

    def count(self, line: str) -> int:
        return self.lines().count(line)

    def wait(self, line: str, n: int = 1, timeout: float = 20.0) -> None:
        wait_for(lambda: self.count(line) >= n, timeout, f"{n} x {line!r} on NOTIFY_SOCKET "
                 f"(got {self.lines()})")

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Call:
    what: str  # "apply" | "forget"
    name: str
    uuid: str
    source: str


@dataclass
class Recorder:
    """What the fake controllers were asked to do (shared by every one the daemon makes)."""

    journal_path: str
    calls: List[Call] = field(default_factory=list)
    fail: set = field(default_factory=set)  # guest names whose apply raises
    gate: Optional[threading.Event] = None  # the first journal read waits for it
    lock: threading.Lock = field(default_factory=threading.Lock)

    def factory(self, *, journal_path, uris):
        return FakeController(self, journal_path)

    def of(self, what: str, uuid: str) -> List[Call]:
        with self.lock:
            return [c for c in self.calls if c.what == what and c.uuid == uuid]

    def set_config(self, uuid: str, name: str, settings: dict) -> None:
        with Journal(self.journal_path) as j, j.transaction() as tx:
            tx.set_config(uuid, name, "qemu", {(k, ""): v for k, v in settings.items()})


class _Outcome:
    def __init__(self):
        self.changes, self.errors = [], []


class FakeController:
    """Records apply/forget; reads the config from a real journal file."""

    def __init__(self, rec: Recorder, journal_path: str):
        self.rec = rec
        self.journal_path = journal_path
        self._journal = None

    def journal(self, create: bool = True):
        if self.rec.gate is not None:
            self.rec.gate.wait(30)
        if self._journal is None:
            self._journal = Journal(self.journal_path)
        return self._journal

    def apply_config(self, guest, *, source, command, overlay=None, **_):
        with self.rec.lock:
            self.rec.calls.append(Call("apply", guest.name, guest.uuid, source))
        if guest.name in self.rec.fail:
            raise CgctlError("refused for the test", guest=guest.name)
        return _Outcome()

    def effective(self, uuid, journal=None):
        from cgctl.core import profiles
        return profiles.effective(journal or self.journal(), uuid)

    def forget(self, uuid, *, source, command):
        with self.rec.lock:
            self.rec.calls.append(Call("forget", "", uuid, source))
        return self.journal().forget_guest(uuid, command=command, source=source)

    def close(self):
        if self._journal is not None:
            self._journal.close()
            self._journal = None


@contextlib.contextmanager
def in_process(daemon, timeout: float = 20.0):
    """Run ``daemon.run()`` in a thread until the block ends; the daemon must come up ready."""
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", daemon.run()), daemon=True)
    t.start()
    try:
        wait_for(lambda: daemon.ready or not t.is_alive(), timeout, "the daemon to be ready")
        assert t.is_alive(), "the daemon stopped by itself"
        yield daemon
    finally:
        daemon.stop()
        t.join(15)
    assert not t.is_alive(), "the daemon did not stop"
    assert result.get("rc") == 0


def shares(guest):
    """cpu.shares of the guest's machine group now, or None while it has none."""
    pid = guest.pid
    if not pid:
        return None
    from cgctl.cgroup import hierarchy
    from cgctl.cgroup.placement import groups_for_pid
    try:
        groups = groups_for_pid(pid, hierarchy.detect(), guest=guest.name, driver=guest.driver)
        with open(os.path.join(groups.machine_dir("cpu"), "cpu.shares")) as f:
            return f.read().strip()
    except Exception:  # the guest is (re)starting: no group yet
        return None


def domain_xml(name: str, uuid: str) -> str:
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
            "<memory>65536</memory><os><type>hvm</type></os></domain>")


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
_MDWE = f"""
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0):
    sys.exit(77)  # no PR_SET_MDWE here (Linux < 6.3)
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
"""


def mdwe_wrapper() -> List[str]:
    """argv prefix running ``python ARGS...`` with PR_SET_MDWE: W+X memory refused, as under
    systemd's MemoryDenyWriteExecute=yes (kept across exec); exit status 77 if unsupported."""
    return [sys.executable, "-c", _MDWE]


class Subprocess:
    """``cgctl daemon`` as a child process; stopped by PID at the end, whatever happened."""

    def __init__(self, args, env_extra=None, log_path=None, wrapper=(), command=None, cwd=None):
        """``command``: the cgctl to run instead of this interpreter's (e.g. an installed
        ``<venv>/bin/cgctl``), with ``cwd`` away from the checkout."""
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        env.update(env_extra or {})
        # a command socket of its own (short: AF_UNIX paths stop at 107 bytes), so that tests
        # never answer on the host's /run/cgctl
        env.setdefault("CGCTL_SOCKET", os.path.join(tempfile.gettempdir(),
                                                    f"cgctl-{os.getpid()}-{id(self):x}.sock"))
        self.socket_path = env["CGCTL_SOCKET"]
        # nor take the host's hook starts (cgctl/start/handoff.py) unless a test asks for it
        env.setdefault("CGCTL_HOOK_RUN_DIR", tempfile.mkdtemp(prefix="cgctl-hookrun-"))
        self.log_path = log_path
        self._log = open(log_path, "ab")
        argv = list(command) if command else [*wrapper, *CGCTL[1:]] if wrapper else CGCTL
        self.proc = subprocess.Popen(argv + ["daemon", *args], stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_log(self, text: str, n: int = 1, timeout: float = 30.0) -> str:
        def seen():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log()}")
            return self.log().count(text) >= n
        wait_for(seen, timeout, f"{text!r} in the daemon's log:\n{self.log()}")
        return self.log()

    def signal(self, sig) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit by itself (after a signal the test sent)."""
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not go. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

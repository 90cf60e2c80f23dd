"""What the service benchmarks share (bench/events.py, bench/soak.py): ``cgctl daemon`` as a
child process, our own libvirt lifecycle listener, a probe that tells when a guest's live
cgroup values are its journal config, and /proc figures of a process.

The service runs on the shared sandbox with its own journal (a temporary file) and its command
socket in a temporary directory (``CGCTL_SOCKET``), so it never answers for anyone else; it is
stopped by PID (SIGTERM, then SIGKILL) whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from typing import Dict, Iterator, List, Optional

from bench.common import REPO  # noqa: F401  (bench.common puts the checkout on sys.path)

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- /proc figures

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------------------------------- the service

class Service:
    """``cgctl --journal J daemon`` (defaults otherwise: qemu:///system and lxc:///system, the
    udev watcher, a command socket) as a child; ``with Service(journal) as svc``."""

    def __init__(self, journal: str, workdir: str, config_text: str = ""):
        self.journal = journal
        self.workdir = workdir
        self.config_text = config_text
        self.proc = None

    def __enter__(self) -> "Service":
        from tests.daemonkit import Subprocess
        conf = os.path.join(self.workdir, "cgctl.toml")
        with open(conf, "w") as f:
            f.write(self.config_text)
        env = {"CGCTL_SOCKET": os.path.join(self.workdir, "sock", "cgctl.sock")}
        self.proc = Subprocess(["--journal", self.journal, "--config-file", conf], env_extra=env,
                               log_path=os.path.join(self.workdir, "daemon.log"))
        try:
            self.proc.wait_log("ready:", timeout=60)
        except BaseException:
            self.proc.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.rc = self.proc.stop()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.proc.log()


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[str]:
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def cgctl_config(journal: str, guest_name: str, assignments: List[str]) -> None:
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "cgctl.cli", "--journal", journal, "set",
                        guest_name, *assignments, "--config"], capture_output=True, text=True,
                       timeout=120, cwd=str(REPO))
    if r.returncode:
        raise RuntimeError(f"cgctl set {guest_name} {' '.join(assignments)} --config: "
                           f"{r.stderr.strip()}")


# --------------------------------------------------------------------------- our own listener

class Listener:
    """Lifecycle events of every domain of ``uris``, stamped with ``time.monotonic()`` in the
    callback (libvirt's event loop thread of this process, as in the service)."""

    def __init__(self, uris):
        from cgctl import virt
        virt.start_event_loop()
        self._lock = threading.Lock()
        self.events: List[tuple] = []  # (monotonic, name, event, detail)
        self.conns = [virt.EventConnection(u, on_event=self._on_event,
                                           on_close=lambda reason: None).open() for u in uris]

    def _on_event(self, ev) -> None:
        t = time.monotonic()
        with self._lock:
            self.events.append((t, ev.name, ev.event, ev.detail))

    def times(self, name: str, event: str) -> List[float]:
        with self._lock:
            return [t for t, n, e, _ in self.events if n == name and e == event]

    def wait(self, name: str, event: str, n: int, timeout: float = 30.0) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.times(name, event)
            if len(got) >= n:
                return got[n - 1]
            time.sleep(0.002)
        raise RuntimeError(f"no {event} event #{n} for {name} within {timeout:g} s")

    def close(self) -> None:
        for c in self.conns:
            c.close()


# --------------------------------------------------------------------------- the probe

class Probe:
    """Reads a running guest's live values of some parameters through cgctl's own resolver and
    backends (the same files the service writes) and says whether they are ``want``."""

    def __init__(self, driver: str, name: str, want: Dict[str, str]):
        from cgctl.cgroup import hierarchy
        from cgctl.model import params as P
        from cgctl.cgroup import Router
        self.driver, self.name = driver, name
        self.host = hierarchy.detect()
        self.router = Router(self.host)
        self.params = {k: P.lookup(k) for k in want}
        self.want = {k: P.canonical_text(p, P.parse_value(p, want[k]))
                     for k, p in self.params.items()}
        self.pidfile = f"/run/libvirt/{driver}/{name}.pid"

    def pid(self) -> Optional[int]:
        try:
            with open(self.pidfile) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def values(self, pid: Optional[int] = None) -> Optional[Dict[str, str]]:
        """The live values now (canonical text), or None while the guest has no groups."""
        from cgctl.core import live
        from cgctl.cgroup import placement
        from cgctl.model import params as P
        from cgctl.errors import CgctlError
        pid = pid or self.pid()
        if not pid:
            return None
        try:
            groups = placement.groups_for_pid(pid, self.host, guest=self.name, driver=self.driver)
            return {k: P.canonical_text(p, live.read_value(self.router, groups, p))
                    for k, p in self.params.items()}
        except (CgctlError, OSError):
            return None

    def ok(self, pid: Optional[int] = None) -> bool:
        return self.values(pid) == self.want


class Poller(threading.Thread):
    """From ``start()`` on, reads the probe every ``interval`` s; ``at`` is the monotonic time
    of the first read showing every wanted value (None if not within ``timeout``).
    ``not_pid``: a PID of the previous run, never taken for the new one."""

    def __init__(self, probe: Probe, timeout: float = 30.0, interval: float = 0.0005,
                 not_pid: Optional[int] = None):
        super().__init__(daemon=True)
        self.probe, self.timeout, self.interval, self.not_pid = probe, timeout, interval, not_pid
        self.at: Optional[float] = None
        self.reads = 0
        self.halt = False

    def run(self) -> None:
        end = time.monotonic() + self.timeout
        while not self.halt and time.monotonic() < end:
            pid = self.probe.pid()
            if pid and pid != self.not_pid:
                self.reads += 1
                if self.probe.ok(pid):
                    self.at = time.monotonic()
                    return
            time.sleep(self.interval)

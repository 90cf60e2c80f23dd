"""A real virtlogd + libvirtd for tests, started and stopped by PID (docs/design.md#the-development-machine).

Process tree (all started here, all stopped here by PID)::

    unshare -m --propagation private  ->  exec python libvirtd.py _supervise  (the "supervisor")
        supervisor: own mount namespace, /sys/fs/cgroup/unified unmounted there (LXC needs a pure
                    v1 view), PR_SET_CHILD_SUBREAPER so QEMU/LXC orphans are reaped at once
        +-- virtlogd           (foreground child)
        +-- libvirtd           (foreground child; can be killed and started again alone)
              +-- qemu-system-x86_64 / libvirt_lxc   (re-parented to the supervisor)

The supervisor publishes its children's PIDs in ``<run_dir>/children.json``; the sandbox's own
state (supervisor PID, paths) is in ``/run/cgctl-sandbox.json`` so that a demo script can
``python -m tests.harness.libvirtd start`` and ``... stop`` later from another process.

This module imports only the standard library (the supervisor runs it as a plain script);
it drives libvirt with ``virsh`` so it never depends on libvirt-python.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple
from xml.sax.saxutils import escape

QEMU_URI = "qemu:///system"
LXC_URI = "lxc:///system"
URIS = (QEMU_URI, LXC_URI)
TEST_PREFIX = "cgt-"  # every guest the harness makes is named cgt-...; stop() removes them

STATE_FILE = "/run/cgctl-sandbox.json"
RUN_DIR = "/run/cgctl-sandbox"
LOCK_FILE = "/run/cgctl-sandbox.lock"
LOG_DIR = "/var/log/libvirt"
QEMU_CONF = "/etc/libvirt/qemu.conf"
LIBVIRTD_PIDFILE = "/run/libvirtd.pid"  # libvirtd's own pid file when run as root
VIRTLOGD_SOCK = "/run/libvirt/virtlogd-sock"
UNIFIED_MOUNT = "/sys/fs/cgroup/unified"
PR_SET_CHILD_SUBREAPER = 36

BINARIES = ("libvirtd", "virtlogd", "virsh", "unshare", "umount", "qemu-system-x86_64")


class SandboxError(RuntimeError):
    """The sandbox could not be started, reached or stopped."""


# --------------------------------------------------------------------------- guest XML

def unique_name(kind: str = "qemu") -> str:
    """A fresh test guest name, e.g. ``cgt-qemu-1a2b3c4d``."""
    return f"{TEST_PREFIX}{kind}-{secrets.token_hex(4)}"


def qemu_xml(name: str, *, uuid: Optional[str] = None, memory_kib: int = 65536, vcpus: int = 1,
             extra: str = "", extra_devices: str = "") -> str:
    """A tiny TCG guest: no disk, no network, no graphics; it sits in SeaBIOS ("no bootable device").

    ``extra`` goes inside <domain> (e.g. a <cputune>), ``extra_devices`` inside <devices>.
    """
    uuid = uuid or str(uuidlib.uuid4())
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <uuid>{uuid}</uuid>
  <memory unit='KiB'>{memory_kib}</memory>
  <currentMemory unit='KiB'>{memory_kib}</currentMemory>
  <vcpu placement='static'>{vcpus}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  {extra}
  <devices>
    <emulator>{shutil.which('qemu-system-x86_64') or '/usr/bin/qemu-system-x86_64'}</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    {extra_devices}
  </devices>
</domain>
"""


def lxc_xml(name: str, *, uuid: Optional[str] = None, memory_kib: int = 65536, vcpus: int = 1,
            extra: str = "") -> str:
    """A tiny application container sharing the host's root filesystem.

    Its init is ``/bin/sh`` that waits on a ``sleep`` and exits on SIGTERM, so destroy is quick.
    """
    uuid = uuid or str(uuidlib.uuid4())
    script = "trap 'exit 0' TERM; sleep 1000000 & wait"
    return f"""<domain type='lxc'>
  <name>{escape(name)}</name>
  <uuid>{uuid}</uuid>
  <memory unit='KiB'>{memory_kib}</memory>
  <vcpu placement='static'>{vcpus}</vcpu>
  <os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg><initarg>{escape(script)}</initarg></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  {extra}
  <devices>
    <console type='pty'/>
  </devices>
</domain>
"""


@dataclass(frozen=True)
class TestGuest:
    """A guest made by ``LibvirtSandbox.new_guest``."""

    __test__ = False  # not a pytest test class

    name: str
    uuid: str
    driver: str  # 'qemu' | 'lxc'
    uri: str
    transient: bool

    @property
    def pid_file(self) -> str:
        return f"/run/libvirt/{self.driver}/{self.name}.pid"

    @property
    def pid(self) -> Optional[int]:
        """libvirt's recorded main PID (QEMU process / libvirt_lxc controller), None if stopped."""
        return read_pidfile(self.pid_file)


# --------------------------------------------------------------------------- host preparation

def missing_binaries() -> List[str]:
    return [b for b in BINARIES if shutil.which(b) is None
            and not os.path.exists(os.path.join("/usr/sbin", b))]


def skip_reason() -> Optional[str]:
    """Why the sandbox cannot run on this host, or None."""
    if os.geteuid() != 0:
        return "libvirt sandbox needs root"
    missing = missing_binaries()
    if missing:
        return "libvirt sandbox needs these binaries: " + ", ".join(missing)
    return None


def _run(argv: List[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)


def ensure_qemu_user() -> None:
    """libvirtd refuses to start until a libvirt-qemu user and group exist."""
    if _run(["getent", "group", "libvirt-qemu"]).returncode != 0:
        _run(["groupadd", "--system", "libvirt-qemu"], check=True)
    if _run(["getent", "passwd", "libvirt-qemu"]).returncode != 0:
        _run(["useradd", "--system", "-g", "libvirt-qemu", "-M", "-d", "/var/lib/libvirt",
              "-s", "/usr/sbin/nologin", "libvirt-qemu"], check=True)


def ensure_qemu_conf(path: str = QEMU_CONF) -> bool:
    """Make qemu.conf say user = "root", group = "root"; return True when the file changed."""
    want = {"user": '"root"', "group": '"root"'}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = ["# written by cgctl's test harness (tests/harness/libvirtd.py)"]
    seen = set()
    out = []
    for line in lines:
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
        if key in want:
            if key in seen:
                continue
            seen.add(key)
            line = f"{key} = {want[key]}"
        out.append(line)
    out += [f"{k} = {v}" for k, v in want.items() if k not in seen]
    if out == lines:
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".cgctl-tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, path)
    return True


def prepare_host() -> None:
    ensure_qemu_user()
    ensure_qemu_conf()
    for sub in ("qemu", "lxc"):
        os.makedirs(os.path.join(LOG_DIR, sub), exist_ok=True)


# --------------------------------------------------------------------------- small process helpers

def pid_alive(pid: Optional[int]) -> bool:
    """True if PID exists and is not a zombie."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pid_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def read_pidfile(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _wait_gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return not pid_alive(pid)


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _locked(path: str = LOCK_FILE) -> Iterator[None]:
    """Serialise start/stop between processes (tests and demo scripts may race)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the supervisor (child process)

class _Supervisor:
    """Runs inside the private mount namespace as the child subreaper of virtlogd and libvirtd."""

    SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)

    def __init__(self, children_file: str, log_dir: str):
        self.children_file = children_file
        self.log_dir = log_dir
        self.libvirtd: Optional[int] = None
        self.virtlogd: Optional[int] = None
        self.generation = 0
        self.last_exit: Optional[int] = None

    def log(self, msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} supervisor[{os.getpid()}]: {msg}", flush=True)

    def publish(self, state: str = "running") -> None:
        _write_json(self.children_file, {
            "supervisor": os.getpid(), "libvirtd": self.libvirtd, "virtlogd": self.virtlogd,
            "generation": self.generation, "libvirtd_last_exit": self.last_exit, "state": state,
        })

    def spawn(self, argv: List[str], logname: str) -> int:
        log = open(os.path.join(self.log_dir, logname), "ab")
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                close_fds=True,
                preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS))
        finally:
            log.close()
        self.log(f"started {argv[0]} as PID {proc.pid}")
        # Popen's bookkeeping is not used: we reap everything with waitpid(-1) below.
        proc.returncode = 0
        return proc.pid

    def start_libvirtd(self) -> None:
        if self.libvirtd is None:
            self.generation += 1
            self.libvirtd = self.spawn([shutil.which("libvirtd") or "/usr/sbin/libvirtd"],
                                       "cgctl-sandbox-libvirtd.log")
            self.publish()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if pid == self.libvirtd:
                self.log(f"libvirtd PID {pid} exited ({code})")
                self.libvirtd, self.last_exit = None, code
                self.publish()
            elif pid == self.virtlogd:
                self.log(f"virtlogd PID {pid} exited ({code})")
                self.virtlogd = None
                self.publish()

    def stop_child(self, pid: Optional[int], timeout: float = 15.0) -> None:
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.reap()
            if pid not in (self.libvirtd, self.virtlogd):
                return
            signal.sigtimedwait([signal.SIGCHLD], 0.05)
        self.log(f"PID {pid} ignored SIGTERM for {timeout}s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while pid in (self.libvirtd, self.virtlogd):
            signal.sigtimedwait([signal.SIGCHLD], 0.1)
            self.reap()

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        # Own mount namespace (we were exec'd by `unshare -m --propagation private`):
        # drop the empty cgroup2 mount so libvirt sees a pure v1 host (LXC refuses a hybrid one).
        with open("/proc/self/mountinfo") as f:
            if any(line.split()[4] == UNIFIED_MOUNT for line in f):
                r = _run(["umount", UNIFIED_MOUNT])
                if r.returncode != 0:
                    self.log(f"umount {UNIFIED_MOUNT} failed: {r.stderr.strip()}")
                    return 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            self.log(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")
            return 1
        self.virtlogd = self.spawn([shutil.which("virtlogd") or "/usr/sbin/virtlogd"],
                                   "cgctl-sandbox-virtlogd.log")
        self.start_libvirtd()
        stopping = False
        while not stopping:
            info = signal.sigtimedwait(self.SIGNALS, 1.0)
            self.reap()
            if info is None:
                continue
            if info.si_signo == signal.SIGUSR1:
                self.start_libvirtd()
            elif info.si_signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                stopping = True
        self.log("stopping")
        self.stop_child(self.libvirtd)
        self.stop_child(self.virtlogd)
        self.reap()
        left = [p for p in _children_of(os.getpid())]
        if left:
            # Guests still running (their libvirtd is gone): they become init's children.
            self.log(f"leaving running children {left} (not stopped: destroy guests first)")
        self.publish("stopped")
        return 0


def _children_of(ppid: int) -> List[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == ppid and fields[0] != "Z":
            kids.append(int(entry))
    return kids


# --------------------------------------------------------------------------- the sandbox (test side)

class LibvirtSandbox:
    """A real virtlogd + libvirtd on the system paths (/run/libvirt, /etc/libvirt).

    ``start()`` / ``stop()`` own the daemons; ``attach()`` finds one already started (by this
    class in another process, e.g. the CLI) and does not own it: its ``stop()`` is then a no-op
    unless ``force=True``.
    """

    def __init__(self, *, state_file: str = STATE_FILE, run_dir: str = RUN_DIR,
                 log_dir: str = LOG_DIR, ready_timeout: float = 30.0):
        self.state_file = state_file
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.ready_timeout = ready_timeout
        self.children_file = os.path.join(run_dir, "children.json")
        self.supervisor_pid: Optional[int] = None
        self.owned = False
        self.started_in: Optional[float] = None  # seconds start() took
        self._proc: Optional[subprocess.Popen] = None
        self._guests: Dict[Tuple[str, str], bool] = {}  # (uri, name) -> made by us

    # ----- lifecycle
    @classmethod
    def attach(cls, state_file: str = STATE_FILE) -> Optional["LibvirtSandbox"]:
        """The sandbox recorded in ``state_file`` if its supervisor still runs, else None."""
        state = _read_json(state_file)
        if not state or not pid_alive(state.get("supervisor")):
            return None
        sb = cls(state_file=state_file, run_dir=state["run_dir"], log_dir=state["log_dir"])
        sb.supervisor_pid = state["supervisor"]
        try:
            with open(f"/proc/{sb.supervisor_pid}/cmdline", "rb") as f:
                if b"\0_supervise\0" not in f.read():
                    return None  # PID reused by something else
        except OSError:
            return None
        return sb

    def start(self, *, detach: bool = False) -> "LibvirtSandbox":
        """Start virtlogd + libvirtd and wait until both URIs answer.

        ``detach`` starts the supervisor in its own session (for the CLI: it outlives us).
        """
        t0 = time.monotonic()
        with _locked():
            if LibvirtSandbox.attach(self.state_file):
                raise SandboxError(f"a sandbox is already running (see {self.state_file}); "
                                   "attach() to it or stop it first")
            foreign = read_pidfile(LIBVIRTD_PIDFILE)
            if pid_alive(foreign) and pid_comm(foreign) == "libvirtd":
                raise SandboxError(f"libvirtd already runs as PID {foreign}, not started by this "
                                   "sandbox; refusing to touch it")
            prepare_host()
            os.makedirs(self.run_dir, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.children_file)
            log = open(os.path.join(self.log_dir, "cgctl-sandbox-supervisor.log"), "ab")
            try:
                self._proc = subprocess.Popen(
                    ["unshare", "-m", "--propagation", "private",
                     sys.executable, os.path.abspath(__file__), "_supervise",
                     self.children_file, self.log_dir],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    close_fds=True, start_new_session=detach)
            finally:
                log.close()
            # unshare exec()s the supervisor, so the PID is the same.
            self.supervisor_pid = self._proc.pid
            self.owned = True
            _write_json(self.state_file, {
                "supervisor": self.supervisor_pid, "run_dir": self.run_dir,
                "log_dir": self.log_dir, "started": time.time(),
            })
        try:
            self._wait_children(lambda c: c.get("libvirtd") and c.get("virtlogd"))
            self.wait_ready()
        except BaseException:
            self.stop(destroy_guests=False)
            raise
        self.started_in = time.monotonic() - t0
        return self

    def stop(self, *, destroy_guests: bool = True, force: bool = False, timeout: float = 30.0) -> None:
        """Destroy+undefine the test guests, then stop libvirtd, virtlogd and the supervisor by PID."""
        if not self.owned and not force:
            self.cleanup_guests(only_ours=True)
            return
        pid = self.supervisor_pid
        if destroy_guests and pid_alive(pid) and self.libvirtd_pid:
            with contextlib.suppress(Exception):
                self.cleanup_guests(only_ours=False)
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            if not self._wait_supervisor(timeout):
                kids = self.children()
                for p in (kids.get("libvirtd"), kids.get("virtlogd"), pid):
                    if pid_alive(p):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p, signal.SIGKILL)
                self._wait_supervisor(5.0)
        with _locked():
            state = _read_json(self.state_file)
            if state and state.get("supervisor") == pid:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.state_file)
        _tidy_lxc_leftovers()
        _tidy_machine_groups()
        self.owned = False

    def _wait_supervisor(self, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        return _wait_gone(self.supervisor_pid, timeout)

    # ----- libvirtd alone (service tests)
    def children(self) -> dict:
        return _read_json(self.children_file) or {}

    @property
    def libvirtd_pid(self) -> Optional[int]:
        pid = self.children().get("libvirtd")
        return pid if pid_alive(pid) else None

    @property
    def virtlogd_pid(self) -> Optional[int]:
        pid = self.children().get("virtlogd")
        return pid if pid_alive(pid) else None

    def stop_libvirtd(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop libvirtd only (guests keep running): SIGTERM = clean stop, SIGKILL = crash."""
        pid = self.libvirtd_pid
        if pid is None:
            return
        os.kill(pid, sig)
        self._wait_children(lambda c: c.get("libvirtd") != pid, timeout)

    def start_libvirtd(self) -> int:
        """Start libvirtd again under the same supervisor; return its PID once it answers."""
        if self.libvirtd_pid:
            return self.libvirtd_pid
        old_gen = self.children().get("generation", 0)
        os.kill(self.supervisor_pid, signal.SIGUSR1)
        self._wait_children(lambda c: c.get("generation", 0) > old_gen and c.get("libvirtd"))
        self.wait_ready()
        return self.libvirtd_pid

    def restart_libvirtd(self, sig: int = signal.SIGTERM) -> int:
        self.stop_libvirtd(sig)
        return self.start_libvirtd()

    def _wait_children(self, cond, timeout: Optional[float] = None) -> dict:
        end = time.monotonic() + (timeout or self.ready_timeout)
        while time.monotonic() < end:
            kids = self.children()
            if kids and cond(kids):
                return kids
            if not pid_alive(self.supervisor_pid):
                raise SandboxError("sandbox supervisor died; see " + self._log_hint())
            time.sleep(0.02)
        raise SandboxError("sandbox did not reach the expected state; see " + self._log_hint())

    def wait_ready(self, uris=URIS, timeout: Optional[float] = None) -> None:
        end = time.monotonic() + (timeout or self.ready_timeout)
        pending = list(uris)
        last = ""
        while pending and time.monotonic() < end:
            r = self.virsh("uri", uri=pending[0], check=False)
            if r.returncode == 0:
                pending.pop(0)
                continue
            last = r.stderr.strip()
            if not self.libvirtd_pid:
                raise SandboxError(f"libvirtd exited while starting; see {self._log_hint()}")
            time.sleep(0.05)
        if pending:
            raise SandboxError(f"{pending[0]} did not answer in time ({last}); see {self._log_hint()}")
        end = time.monotonic() + 5
        while not os.path.exists(VIRTLOGD_SOCK) and time.monotonic() < end:
            time.sleep(0.02)

    def _log_hint(self) -> str:
        return os.path.join(self.log_dir, "cgctl-sandbox-{supervisor,libvirtd,virtlogd}.log")

    def status(self) -> dict:
        kids = self.children()
        return {
            "supervisor": self.supervisor_pid if pid_alive(self.supervisor_pid) else None,
            "libvirtd": self.libvirtd_pid, "virtlogd": self.virtlogd_pid,
            "generation": kids.get("generation"), "owned": self.owned,
            "state_file": self.state_file,
        }

    # ----- guests (virsh, so no libvirt-python is needed here)
    def virsh(self, *args: str, uri: str = QEMU_URI, check: bool = True,
              timeout: float = 60.0) -> subprocess.CompletedProcess:
        r = _run(["virsh", "-q", "-c", uri, *args], timeout=timeout)
        if check and r.returncode != 0:
            raise SandboxError(f"virsh -c {uri} {' '.join(args)}: {r.stderr.strip()}")
        return r

    def _with_xml(self, verb: str, xml: str, uri: str) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="cgt-") as f:
            f.write(xml)
            f.flush()
            self.virsh(verb, f.name, uri=uri)

    def define(self, xml: str, uri: str = QEMU_URI) -> str:
        name = _xml_name(xml)
        self._with_xml("define", xml, uri)
        self._guests[(uri, name)] = True
        return name

    def create_transient(self, xml: str, uri: str = QEMU_URI) -> str:
        name = _xml_name(xml)
        self._with_xml("create", xml, uri)
        self._guests[(uri, name)] = True
        return name

    def start_guest(self, name: str, uri: str = QEMU_URI) -> int:
        """Start a defined guest; return its main PID (from libvirt's pid file)."""
        self.virsh("start", name, uri=uri)
        return self.guest_pid(name, uri)

    def destroy(self, name: str, uri: str = QEMU_URI, missing_ok: bool = True) -> None:
        r = self.virsh("destroy", name, uri=uri, check=False)
        if r.returncode != 0 and not (missing_ok and _gone_or_stopped(r.stderr)):
            raise SandboxError(f"virsh destroy {name}: {r.stderr.strip()}")

    def undefine(self, name: str, uri: str = QEMU_URI, missing_ok: bool = True) -> None:
        r = self.virsh("undefine", name, uri=uri, check=False)
        if r.returncode != 0 and not (missing_ok and _gone_or_stopped(r.stderr)):
            raise SandboxError(f"virsh undefine {name}: {r.stderr.strip()}")
        self._guests.pop((uri, name), None)

    def remove(self, name: str, uri: str = QEMU_URI) -> None:
        """Destroy (if running) and undefine (if persistent); never fails on a missing guest."""
        self.destroy(name, uri)
        self.undefine(name, uri)

    def is_running(self, name: str, uri: str = QEMU_URI) -> bool:
        r = self.virsh("domstate", name, uri=uri, check=False)
        return r.returncode == 0 and r.stdout.strip() == "running"

    def guest_pid(self, name: str, uri: str = QEMU_URI) -> int:
        driver = "lxc" if uri.startswith("lxc") else "qemu"
        path = f"/run/libvirt/{driver}/{name}.pid"
        pid = read_pidfile(path)
        if pid is None:
            raise SandboxError(f"no pid file {path}")
        return pid

    def new_guest(self, kind: str = "qemu", *, start: bool = True, transient: bool = False,
                  **xml_kw) -> TestGuest:
        """Make a tiny guest (``kind`` 'qemu' or 'lxc') named cgt-KIND-XXXX; started unless
        ``start=False``; ``transient=True`` creates it with ``virsh create`` (always running).
        ``xml_kw`` go to qemu_xml / lxc_xml (vcpus, memory_kib, extra, ...)."""
        if kind not in ("qemu", "lxc"):
            raise ValueError(f"kind must be 'qemu' or 'lxc', not {kind!r}")
        uri = QEMU_URI if kind == "qemu" else LXC_URI
        name = unique_name(kind)
        uuid = xml_kw.pop("uuid", None) or str(uuidlib.uuid4())
        xml = (qemu_xml if kind == "qemu" else lxc_xml)(name, uuid=uuid, **xml_kw)
        if transient:
            self.create_transient(xml, uri)
        else:
            self.define(xml, uri)
            if start:
                try:
                    self.start_guest(name, uri)
                except BaseException:
                    # the caller never gets the guest to remove (libvirtd restarted mid-start
                    # by another session: the guest may even run): remove it here
                    with contextlib.suppress(Exception):
                        self.remove(name, uri)
                    raise
        return TestGuest(name=name, uuid=uuid, driver=kind, uri=uri, transient=transient)

    def list_names(self, uri: str = QEMU_URI) -> List[str]:
        r = self.virsh("list", "--all", "--name", uri=uri, check=False)
        return [n.strip() for n in r.stdout.splitlines() if n.strip()] if r.returncode == 0 else []

    def cleanup_guests(self, *, only_ours: bool = True) -> None:
        """Remove the guests this object made; with only_ours=False, every ``cgt-`` guest."""
        targets = set(self._guests)
        if not only_ours and self.libvirtd_pid:
            for uri in URIS:
                targets |= {(uri, n) for n in self.list_names(uri) if n.startswith(TEST_PREFIX)}
        for uri, name in sorted(targets):
            with contextlib.suppress(SandboxError, subprocess.TimeoutExpired):
                self.remove(name, uri)


def _tidy_lxc_leftovers(lxc_run: str = "/run/libvirt/lxc") -> None:
    """libvirt leaves NAME.{dev,devpts,fuse} dirs and NAME.sock behind stopped containers;
    remove those of test guests (cgt-*) that no longer run (empty dirs and sockets only)."""
    try:
        entries = list(os.scandir(lxc_run))
    except OSError:
        return
    for e in entries:
        name, dot, _ext = e.name.rpartition(".")
        if not dot or not name.startswith(TEST_PREFIX) or os.path.exists(f"{lxc_run}/{name}.pid"):
            continue
        with contextlib.suppress(OSError):
            if e.is_dir(follow_symlinks=False):
                os.rmdir(e.path)
            elif e.name.endswith(".sock"):
                os.unlink(e.path)


def _tidy_machine_groups(root: str = "/sys/fs/cgroup") -> None:
    """Remove the empty cgroups libvirt left behind test guests (cgt-*) it could not clean up
    (a container whose libvirtd was killed), then the empty ``machine`` parents. rmdir only:
    a group with a process in it stays (rmdir fails), and nothing else is touched."""
    try:
        hierarchies = [e.path for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for h in hierarchies:
        machine = os.path.join(h, "machine")
        if os.path.basename(h) == "unified" or not os.path.isdir(machine):
            continue
        for e in list(os.scandir(machine)):
            if e.is_dir(follow_symlinks=False) and f"-{TEST_PREFIX}" in e.name:
                for sub in sorted(os.listdir(e.path), reverse=True):
                    if os.path.isdir(os.path.join(e.path, sub)):
                        with contextlib.suppress(OSError):
                            os.rmdir(os.path.join(e.path, sub))
                with contextlib.suppress(OSError):
                    os.rmdir(e.path)
        with contextlib.suppress(OSError):
            os.rmdir(machine)


def _xml_name(xml: str) -> str:
    import xml.etree.ElementTree as ET
    return ET.fromstring(xml).findtext("name")


def _gone_or_stopped(stderr: str) -> bool:
    s = stderr.lower()
    return ("failed to get domain" in s or "not found" in s or "not running" in s
            or "no domain with matching" in s or "cannot undefine transient" in s)


# --------------------------------------------------------------------------- CLI

def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_supervise":
        return _Supervisor(argv[1], argv[2]).run()
    p = argparse.ArgumentParser(prog="python -m tests.harness.libvirtd",
                                description="start/stop a libvirtd + virtlogd sandbox for cgctl tests")
    p.add_argument("command", choices=["start", "stop", "status", "restart-libvirtd"])
    p.add_argument("--state-file", default=STATE_FILE)
    p.add_argument("--kill", action="store_true", help="restart-libvirtd with SIGKILL (a crash)")
    a = p.parse_args(argv)
    sb = LibvirtSandbox.attach(a.state_file)
    if a.command == "start":
        if sb:
            print(json.dumps(sb.status()))
            return 0
        reason = skip_reason()
        if reason:
            print(reason, file=sys.stderr)
            return 1
        try:
            sb = LibvirtSandbox(state_file=a.state_file).start(detach=True)
        except SandboxError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(json.dumps({**sb.status(), "started_in_s": round(sb.started_in, 3)}))
        return 0
    if sb is None:
        print(json.dumps({"supervisor": None, "state_file": a.state_file}))
        return 0 if a.command in ("status", "stop") else 1
    if a.command == "status":
        print(json.dumps(sb.status()))
    elif a.command == "restart-libvirtd":
        pid = sb.restart_libvirtd(signal.SIGKILL if a.kill else signal.SIGTERM)
        print(json.dumps(sb.status()))
    elif a.command == "stop":
        sb.stop(force=True)
        print(json.dumps({"stopped": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

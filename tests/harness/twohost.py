"""Two libvirt hosts on one machine, for real live migration tests (docs/testing.md, docs/fleet.md).

Each host is a libvirtd in its own mount and UTS namespace::

    setsid unshare -m -u --propagation private -> python twohost.py _host CFG   (the "supervisor")
        hostname hostX; /sys/fs/cgroup/unified unmounted; private directories bind-mounted over
        /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt
        /run/cgctl /var/lib/cgctl /etc/cgctl; PR_SET_CHILD_SUBREAPER
        +-- libvirtd (own pid file, distinct host_uuid, disjoint migration ports, no virtlogd)
              +-- qemu-system-x86_64 (re-parented to the supervisor)

From outside, ``virsh -c qemu+unix:///system?socket=<root>/run/libvirt/libvirt-sock`` reaches a
host; ``Host.run`` runs a command inside it (``nsenter -m -u``), so cgctl there sees that host's
libvirt runtime files, journal and hook directory. QEMU processes and cgroups are the machine's:
guests get run-unique names and host B's domain IDs are moved past A's (a throwaway guest refused
by a hook at ``prepare`` still takes an ID), so the two ``machine/qemu-ID-NAME.libvirt-qemu``
groups of a migrating guest never collide.

Everything started here is stopped here by PID (``TwoHosts.stop``, also on failure and at exit):
guests destroyed, libvirtd stopped, any QEMU left killed by the supervisor, run directories
removed. ``/var/cache/libvirt`` of each host is kept under ``BASE`` (QEMU capabilities: a cold
libvirtd probes QEMU for seconds). Run under ``flock /tmp/cgctl-libvirt.lock``.

Standard library only (the supervisor runs this file as a plain script).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid as uuidlib
from typing import Dict, List, Optional

BASE = "/var/tmp/cgctl-twohost"
BINDS = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt",
         "/var/cache/libvirt", "/run/cgctl", "/var/lib/cgctl", "/etc/cgctl")
UNIFIED_MOUNT = "/sys/fs/cgroup/unified"
PR_SET_CHILD_SUBREAPER = 36
BURN_PREFIX = "cgtburn-"
HOSTS = {"hosta": (49152, 49167), "hostb": (49168, 49183)}  # migration ports, disjoint

BURN_HOOK = f"""#!/bin/sh
# twohost harness: refuse throwaway guests at prepare (they still take a domain ID)
case "$1" in {BURN_PREFIX}*) [ "$2" = prepare ] && exit 1 ;; esac
exit 0
"""


class HostError(RuntimeError):
    pass


def _run(argv, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 120)
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children_of(ppid: int) -> List[int]:
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == ppid and fields[0] != "Z":
                out.append(int(e))
    return out


# --------------------------------------------------------------------------- supervisor (inside)

def _supervise(cfg_path: str) -> int:
    with open(cfg_path) as f:
        cfg = json.load(f)
    sigs = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    socket.sethostname(cfg["name"])
    with open("/proc/self/mountinfo") as f:
        if any(line.split()[4] == UNIFIED_MOUNT for line in f):
            r = _run(["umount", UNIFIED_MOUNT])
            if r.returncode:
                print(f"umount {UNIFIED_MOUNT}: {r.stderr.strip()}", flush=True)
                return 1
    for target in BINDS:
        src = cfg["root"] + target if target != "/var/cache/libvirt" else cfg["cache"]
        if not os.path.isdir(target):  # a mount point on the machine: removed again by stop()
            os.makedirs(target)
            with open(os.path.join(cfg["root"], "created-dirs"), "a") as f:
                f.write(target + "\n")
        r = _run(["mount", "--bind", src, target])
        if r.returncode:
            print(f"mount --bind {src} {target}: {r.stderr.strip()}", flush=True)
            return 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("prctl(PR_SET_CHILD_SUBREAPER) failed", flush=True)
        return 1
    log = open(os.path.join(cfg["root"], "libvirtd.log"), "ab")
    libvirtd = subprocess.Popen(
        [shutil.which("libvirtd") or "/usr/sbin/libvirtd", "--pid-file",
         "/run/libvirt/cgctl-twohost-libvirtd.pid"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True,
        preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)).pid
    log.close()
    print(f"{cfg['name']}: libvirtd PID {libvirtd}", flush=True)

    def reap():
        nonlocal libvirtd
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == libvirtd:
                print(f"{cfg['name']}: libvirtd exited", flush=True)
                libvirtd = None

    while True:
        info = signal.sigtimedwait(sigs, 1.0)
        reap()
        if info is not None and info.si_signo != signal.SIGCHLD:
            break
    for pid, grace in ((libvirtd, 15.0),):
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + grace
            while libvirtd and time.monotonic() < end:
                signal.sigtimedwait([signal.SIGCHLD], 0.05)
                reap()
            if libvirtd:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(libvirtd, signal.SIGKILL)
    # QEMU processes of this host that outlived libvirtd are our children (subreaper): ours
    for pid in _children_of(os.getpid()):
        print(f"{cfg['name']}: killing leftover child {pid}", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while _children_of(os.getpid()) and time.monotonic() < end:
        time.sleep(0.05)
        reap()
    reap()
    return 0


# --------------------------------------------------------------------------- one host (outside)

class Host:
    def __init__(self, name: str, run_root: str, ports, python: str = sys.executable):
        self.name = name
        self.root = os.path.join(run_root, name)
        self.cache = os.path.join(BASE, f"cache-{name}")
        self.ports = ports
        self.python = python
        self.host_uuid = str(uuidlib.uuid4())
        self.proc: Optional[subprocess.Popen] = None
        self.sock = os.path.join(self.root, "run/libvirt/libvirt-sock")
        self.uri = f"qemu+unix:///system?socket={self.sock}"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def path(self, inside: str) -> str:
        """Where a path inside the host lives outside (for the bind-mounted ones)."""
        if inside.startswith("/var/cache/libvirt"):
            return self.cache + inside[len("/var/cache/libvirt"):]
        return self.root + inside

    def prepare(self, hooks: Dict[str, str]) -> None:
        for d in BINDS:
            os.makedirs(self.path(d), exist_ok=True)
        for d in ("etc/libvirt/qemu", "etc/libvirt/hooks/qemu.d", "etc/libvirt/hooks/lxc.d",
                  "etc/libvirt/nwfilter", "etc/libvirt/secrets", "var/log/libvirt/qemu",
                  "var/lib/libvirt/qemu", "run/libvirt/qemu"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        with open(self.path("/etc/libvirt/libvirtd.conf"), "w") as f:
            f.write(f'host_uuid = "{self.host_uuid}"\nauth_unix_rw = "none"\n'
                    'auth_unix_ro = "none"\nunix_sock_group = "root"\n')
        with open(self.path("/etc/libvirt/qemu.conf"), "w") as f:
            f.write('user = "root"\ngroup = "root"\nstdio_handler = "file"\n'
                    'security_driver = "none"\n'
                    f"migration_port_min = {self.ports[0]}\nmigration_port_max = {self.ports[1]}\n")
        for fname, text in hooks.items():
            p = self.path(f"/etc/libvirt/hooks/qemu.d/{fname}")
            with open(p, "w") as f:
                f.write(text)
            os.chmod(p, 0o755)

    def start(self, hooks: Dict[str, str], timeout: float = 60.0) -> "Host":
        self.prepare(hooks)
        cfg = os.path.join(self.root, "host.json")
        with open(cfg, "w") as f:
            json.dump({"name": self.name, "root": self.root, "cache": self.cache}, f)
        log = open(os.path.join(self.root, "supervisor.log"), "ab")
        try:
            # setsid execs in place (the child is no group leader), unshare too: the Popen
            # PID is the supervisor's
            self.proc = subprocess.Popen(
                ["setsid", "unshare", "-m", "-u", "--propagation", "private", self.python,
                 os.path.abspath(__file__), "_host", cfg],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True)
        finally:
            log.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise HostError(f"{self.name}: supervisor exited; see {self.root}/*.log")
            if os.path.exists(self.sock) and self.virsh("uri", check=False).returncode == 0:
                return self
            time.sleep(0.1)
        raise HostError(f"{self.name}: libvirtd did not answer in {timeout:g} s; "
                        f"see {self.root}/libvirtd.log")

    def virsh(self, *args, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = _run(["virsh", "-q", "-c", self.uri, *args], timeout=timeout)
        if check and r.returncode:
            raise HostError(f"{self.name}: virsh {' '.join(args)}: {r.stderr.strip()}")
        return r

    def run(self, *argv, check: bool = True, input: Optional[str] = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """A command inside this host's namespaces."""
        r = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-u", "--", *argv],
                           input=input, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            raise HostError(f"{self.name}: {' '.join(argv)} -> {r.returncode}: "
                            f"{r.stderr.strip()}")
        return r

    def cgctl(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(self.python, "-m", "cgctl.cli", *args, check=check)

    def guest_pid(self, name: str) -> Optional[int]:
        try:
            with open(self.path(f"/run/libvirt/qemu/{name}.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def domain_id(self, name: str) -> int:
        return int(self.virsh("domid", name).stdout.strip())

    def burn_ids(self, count: int) -> int:
        """Take ``count`` domain IDs with guests the burn hook refuses; returns the next ID."""
        from tests.harness.libvirtd import qemu_xml
        path = os.path.join(self.root, "burn.xml")
        for _ in range(count):
            with open(path, "w") as f:
                f.write(qemu_xml(f"{BURN_PREFIX}{secrets.token_hex(4)}"))
            self.virsh("create", path, check=False)
        return count

    def stop(self) -> List[str]:
        """Destroy every guest, stop the supervisor (and libvirtd, and any QEMU) by PID."""
        problems = []
        if self.proc is None:
            return problems
        if self.proc.poll() is None:
            r = self.virsh("list", "--all", "--name", check=False, timeout=30)
            for name in [n.strip() for n in r.stdout.splitlines() if n.strip()]:
                self.virsh("destroy", name, check=False, timeout=30)
                self.virsh("undefine", name, check=False, timeout=30)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                problems.append(f"{self.name}: supervisor {self.proc.pid} ignored SIGTERM")
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        with contextlib.suppress(OSError), open(os.path.join(self.root, "created-dirs")) as f:
            for d in reversed(f.read().split()):
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # empty only: the machine's own never had anything here
        return problems


class TwoHosts:
    """``with TwoHosts(hooks_b={...}) as (a, b):`` two running hosts, stopped on exit."""

    def __init__(self, hooks_a: Optional[Dict[str, str]] = None,
                 hooks_b: Optional[Dict[str, str]] = None, burn: int = 10,
                 keep_logs: bool = False):
        self.run_root = os.path.join(BASE, f"run-{secrets.token_hex(4)}")
        self.a = Host("hosta", self.run_root, HOSTS["hosta"])
        self.b = Host("hostb", self.run_root, HOSTS["hostb"])
        self.hooks = (dict(hooks_a or {}), {"00-burn": BURN_HOOK, **(hooks_b or {})})
        self.burn = burn
        self.keep_logs = keep_logs

    def start(self):
        try:
            self.a.start(self.hooks[0])
            self.b.start(self.hooks[1])
            self.b.burn_ids(self.burn)
        except BaseException:
            self.stop()
            raise
        return self.a, self.b

    def stop(self) -> List[str]:
        problems = []
        for h in (self.b, self.a):
            try:
                problems += h.stop()
            except Exception as e:  # keep going: stop the other host too
                problems.append(f"{h.name}: {e}")
        _tidy_machine_groups()
        if not self.keep_logs:
            shutil.rmtree(self.run_root, ignore_errors=True)
        return problems

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        problems = self.stop()
        if problems and exc[0] is None:
            raise HostError("; ".join(problems))


def _tidy_machine_groups() -> None:
    """Empty machine groups of test guests libvirt left behind (see tests/harness/libvirtd.py)."""
    with contextlib.suppress(Exception):
        from tests.harness.libvirtd import _tidy_machine_groups as tidy
        tidy()


def skip_reason() -> Optional[str]:
    if os.geteuid() != 0:
        return "two hosts need root"
    for b in ("libvirtd", "virsh", "unshare", "nsenter", "setsid", "qemu-system-x86_64"):
        if not shutil.which(b) and not os.path.exists(f"/usr/sbin/{b}"):
            return f"two hosts need {b}"
    return None


if __name__ == "__main__":
    if sys.argv[1:2] == ["_host"]:
        sys.exit(_supervise(sys.argv[2]))
    print("usage: imported by tests/libvirt/test_twohost.py", file=sys.stderr)
    sys.exit(2)

"""Exposure window: from a QEMU guest's vCPU resume to its journal limits being in force.

    sudo .venv/bin/python bench/exposure.py [--runs 7] [--modes service,started,early] [--json]

Needs root and the test sandbox's libvirtd (``python -m tests.harness.libvirtd start``; started
and stopped here if none runs). It installs cgctl's hook into the real ``/etc/libvirt/hooks``
(``--hooks-dir``), restarts libvirtd once so it sees it, and removes the hook at the end.

Three ways of applying the config at start (one tiny TCG guest, config ``hard_limit=200M``):

- ``service``: ``cgctl daemon`` alone (no hook), reacting to libvirt's STARTED event;
- ``started``: the hook at ``started begin`` only (``--no-early-apply``);
- ``early``: the hook with its early applier (launched at ``prepare begin``);
- ``handoff``: the hook with ``cgctl daemon`` running: the script hands the start to the
  service, whose applier applies early (cgctl/start/handoff.py).

Clocks. *Resume*: QEMU's own timestamp of its ``RESUME`` QMP event, which QEMU emits in
``vm_prepare_start()`` right before it resumes the vCPU threads on libvirt's ``cont``; we read it
with ``virsh qemu-monitor-event --loop`` (QEMU's ``g_get_real_time()``, microseconds,
CLOCK_REALTIME). *In force*: a poller thread here reads ``memory.limit_in_bytes`` of the guest's
machine group (``memory.max`` of ``…scope/libvirt`` on a systemd v2 host) (found from ``/run/libvirt/qemu/NAME.pid`` → ``/proc/PID/cgroup``) every 0.5 ms
and takes ``time.time()`` (CLOCK_REALTIME) at the first read showing 200 MiB. Exposure = in
force − resume; a negative value means the limit was in force before the vCPUs ran (no
exposure). The poller's resolution bounds the error at ~0.5 ms plus one read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.harness.libvirtd import LibvirtSandbox  # noqa: E402

PY = os.path.join(REPO, ".venv", "bin", "python")
LIMIT = 200 * 2**20
EVENT_RE = re.compile(r"event RESUME at (\d+\.\d+) for domain '([^']+)'")


def cgctl(journal, *args, check=True):
    r = subprocess.run([PY, "-m", "cgctl.cli", "--journal", journal, *args],
                       capture_output=True, text=True, timeout=60)
    if check and r.returncode:
        raise RuntimeError(f"cgctl {' '.join(args)}: {r.stderr.strip()}")
    return r


def memory_file(pid: int):
    """The file holding the guest's memory limit, once libvirt has placed its process: v1's
    ``memory.limit_in_bytes`` of the machine group, or on a systemd v2 host ``memory.max`` of
    the scope's delegated ``libvirt/`` (tests/hostlane/inside/test_exposure.py); else None."""
    v2 = None
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                hid, ctrls, path = line.rstrip("\n").split(":", 2)
                if "memory" in ctrls.split(","):
                    if ".libvirt-qemu" not in path:
                        return None  # not placed yet
                    base = path.split(".libvirt-qemu")[0] + ".libvirt-qemu"
                    return f"/sys/fs/cgroup/memory{base}/memory.limit_in_bytes"
                if hid == "0" and ctrls == "":
                    m = re.match(r"(.*\.scope/libvirt)(/|$)", path)
                    v2 = f"/sys/fs/cgroup{m.group(1)}/memory.max" if m else None
    except OSError:
        return None
    return v2


class Poller(threading.Thread):
    """Time (CLOCK_REALTIME) at which the guest's memory limit first reads LIMIT."""

    def __init__(self, name: str, timeout: float = 30.0):
        super().__init__(daemon=True)
        self.pidfile = f"/run/libvirt/qemu/{name}.pid"
        self.timeout = timeout
        self.at = None
        self.stop = False

    def run(self):
        end = time.monotonic() + self.timeout
        path = None
        while not self.stop and time.monotonic() < end:
            if path is None:
                try:
                    with open(self.pidfile) as f:
                        path = memory_file(int(f.read().split()[0]))
                except (OSError, ValueError, IndexError):
                    path = None
            if path is not None:
                try:
                    with open(path) as f:
                        v = int(f.read())
                except (OSError, ValueError):
                    path, v = None, None
                if v == LIMIT:
                    self.at = time.time()
                    return
            time.sleep(0.0005)


class Events:
    """``virsh qemu-monitor-event --loop``: QEMU's RESUME timestamps by guest name."""

    def __init__(self):
        self.proc = subprocess.Popen(["stdbuf", "-oL", "virsh", "-c", "qemu:///system", "qemu-monitor-event",
                                      "--loop", "--event", "RESUME"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.resumes = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.5)  # registered before the first start

    def _read(self):
        for line in self.proc.stdout:
            m = EVENT_RE.search(line)
            if m:
                with self.lock:
                    self.resumes.setdefault(m.group(2), []).append(float(m.group(1)))

    def wait(self, name: str, n: int, timeout: float = 10.0) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                got = self.resumes.get(name, [])
                if len(got) >= n:
                    return got[n - 1]
            time.sleep(0.01)
        raise RuntimeError(f"no RESUME event for {name}")

    def close(self):
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def start_daemon(journal: str, log_path: str):
    """``cgctl daemon`` on the sandbox, or None (with why) if it cannot run yet."""
    if not os.path.exists(os.path.join(REPO, "cgctl", "service", "daemon.py")):
        return None, "cgctl/service/daemon.py does not exist yet"
    log = open(log_path, "w")
    p = subprocess.Popen([PY, "-m", "cgctl.cli", "--journal", journal, "daemon",
                          "--config-file", "/nonexistent"], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if p.poll() is not None:
            return None, f"cgctl daemon exited {p.returncode}: see {log_path}"
        with open(log_path) as f:
            if "ready" in f.read():
                return p, None
        time.sleep(0.1)
    stop_daemon(p)
    return None, f"cgctl daemon not ready in 30 s: see {log_path}"


def stop_daemon(p):
    if p is not None and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--modes", default="service,started,early,handoff")
    ap.add_argument("--hooks-dir", default="/etc/libvirt/hooks")
    ap.add_argument("--workdir", default="/tmp/cgctl-exposure")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    os.makedirs(a.workdir, exist_ok=True)
    journal = os.path.join(a.workdir, "journal.db")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)

    sb = LibvirtSandbox.attach()
    owned = sb is None
    if owned:
        sb = LibvirtSandbox().start()
    results, pending = {m: [] for m in modes}, {}
    guest = None
    events = None
    daemon = None
    try:
        guest = sb.new_guest("qemu", start=False)
        cgctl(journal, "set", guest.name, f"hard_limit={LIMIT}B", "--config")
        # libvirtd looks for hooks only when it starts: install first, restart once
        cgctl(journal, "hook", "install", "--hooks-dir", a.hooks_dir, "--no-early-apply")
        sb.restart_libvirtd()
        events = Events()  # after the restart: its connection must last the whole run
        n_resumes = 0
        for mode in modes:
            want_hook = {"service": None, "started": ["--no-early-apply"], "early": [],
                         "handoff": []}[mode]
            if want_hook is None:
                cgctl(journal, "hook", "uninstall", "--hooks-dir", a.hooks_dir)
                daemon, why = start_daemon(journal, os.path.join(a.workdir, "daemon.log"))
                if daemon is None:
                    pending[mode] = why
                    continue
            else:
                cgctl(journal, "hook", "install", "--hooks-dir", a.hooks_dir, *want_hook)
                if mode == "handoff":
                    daemon, why = start_daemon(journal, os.path.join(a.workdir, "daemon.log"))
                    if daemon is None:
                        pending[mode] = why
                        continue
            for _ in range(a.runs):
                poller = Poller(guest.name)
                poller.start()
                sb.start_guest(guest.name)
                n_resumes += 1
                resume = events.wait(guest.name, n_resumes)
                poller.join(10)
                poller.stop = True
                if poller.at is None:
                    results[mode].append(None)
                else:
                    results[mode].append((poller.at - resume) * 1000)
                sb.destroy(guest.name)
                time.sleep(0.2)
            if daemon is not None:
                stop_daemon(daemon)
                daemon = None
    finally:
        stop_daemon(daemon)
        if events:
            events.close()
        cgctl(journal, "hook", "uninstall", "--hooks-dir", a.hooks_dir, check=False)
        if guest is not None:
            sb.remove(guest.name, guest.uri)
        if owned:
            sb.stop()

    out = {"method": "in force (cgroup poll, CLOCK_REALTIME) - QEMU RESUME event timestamp",
           "limit": "hard_limit=200M (memory.limit_in_bytes)", "modes": {}}
    for mode in modes:
        if mode in pending:
            out["modes"][mode] = {"pending": pending[mode]}
            continue
        ms = [v for v in results[mode] if v is not None]
        out["modes"][mode] = {
            "runs_ms": [None if v is None else round(v, 2) for v in results[mode]],
            "median_ms": round(statistics.median(ms), 2) if ms else None,
            "exposure_median_ms": round(max(0.0, statistics.median(ms)), 2) if ms else None,
            "never_in_force": sum(v is None for v in results[mode]),
        }
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"method: {out['method']}; {out['limit']}")
        for mode, r in out["modes"].items():
            if "pending" in r:
                print(f"{mode:8} pending: {r['pending']}")
            else:
                print(f"{mode:8} median {r['median_ms']:+8.2f} ms  (exposure "
                      f"{r['exposure_median_ms']:.2f} ms)  runs: "
                      + " ".join("-" if v is None else f"{v:+.1f}" for v in r["runs_ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

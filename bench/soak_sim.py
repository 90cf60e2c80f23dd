"""Soak of the service's event path at 10,000 start/stop cycles (issue 16, goal 5): is the
service flat? ``python -m bench.soak_sim --cycles 10000 --every 1000 --idle 60`` (root).

Real guests are too slow for 10,000 cycles on the development machine (bench/soak.py does real
LXC ones, ~0.3 s a cycle), so this drives the real service through its real event path with a
simulated libvirt:

- **the service: real.** ``cgctl daemon`` (cgctl.cli.main, the installed command's code) in a
  process of its own, with its own journal (real SQLite, a temporary file), an empty config
  file, a temporary command socket and hook run directory, watching ``test:///default``.
- **libvirt: its test driver, in the service's process** (the test driver's state lives in the
  process that opens it). A driver thread defines G persistent domains, then for each cycle
  ``dom.create()`` / ``dom.destroy()``: libvirt's own lifecycle events, through libvirt's event
  loop, the service's callbacks, its worker and ``events.apply_started``. The test driver has
  no QEMU, so the one simulated step (as bench/reconcile_sim.py) is the guest's PID: the
  service's ``EventConnection.guest``/``running_guests`` give a driven guest the PID of a
  ``sleep`` started for that cycle.
- **cgroups: real v1.** Each start makes the guest's machine group as libvirt does without
  systemd (``PARENT/qemu-I-NAME.libvirt-qemu``, ``emulator`` and ``vcpu0`` under cpu/cpuset)
  in every hierarchy cgctl manages, under a unique ``PARENT``, and puts the ``sleep`` in it;
  each stop kills the ``sleep`` and removes the group (so every start is a fresh group with the
  kernel's defaults). A cycle passes when the three settings
  (``hard_limit=300M cpu_shares=777 global_quota=50000``) are read back from the new group's
  files (polled every 1 ms, at most ``--timeout`` s).

Sampled from outside (this process): VmRSS and the count of /proc/PID/fd every ``--every``
cycles (after 0.5 s without cycles), and utime+stime over ``--idle`` seconds before the first
cycle and again after the last. Counted in what the service holds: the driver thread and the
test driver's G domains (constant). Results in bench/results/soak_sim.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

SETTINGS = {"hard_limit": "300M", "cpu_shares": "777", "global_quota": "50000"}
WANT = {("memory", "memory.limit_in_bytes"): str(300 << 20),
        ("cpu", "cpu.shares"): "777", ("cpu", "cpu.cfs_quota_us"): "50000"}
URI = "test:///default"
PR_SET_PDEATHSIG = 1


def _die_with_parent():  # in the sleep, before exec: never outlive the service process
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# --------------------------------------------------------------------------- the service side

class Driver:
    """In the service's process: the test driver's domains and their real cgroups."""

    def __init__(self, parent_name: str, names, uuids, reply):
        from bench.reconcile_sim import hierarchies
        from cgctl.cgroup import hierarchy
        self.hier = hierarchies(hierarchy.detect())
        self.parent_name = parent_name
        self.names, self.uuids = names, uuids
        self.reply = reply
        self.pids = {}  # name -> the sleep standing for the guest's QEMU, while "running"
        self.procs = {}
        self.doms = {}

    def group_dirs(self, i: int):
        name = f"qemu-{i + 1}-{self.names[i]}.libvirt-qemu"
        return [(mount, ctrls, os.path.join(mount, self.parent_name, name))
                for mount, ctrls in self.hier]

    def setup(self) -> None:
        import libvirt
        from bench.reconcile_sim import _copy_cpuset
        for mount, ctrls in self.hier:
            top = os.path.join(mount, self.parent_name)
            os.mkdir(top)
            if "cpuset" in ctrls:
                _copy_cpuset(mount, top)
        self.conn = libvirt.open(URI)
        for name, uuid in zip(self.names, self.uuids):
            self.doms[name] = self.conn.defineXML(
                f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
                "<memory>65536</memory><os><type>hvm</type></os></domain>")

    def start(self, i: int) -> float:
        """libvirt's part of a start; returns ms until the settings were read back, or -1."""
        from bench.reconcile_sim import make_guest_group
        p = subprocess.Popen(["sleep", "3600"], preexec_fn=_die_with_parent,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        name = self.names[i]
        self.procs[name] = p
        files = []
        for mount, ctrls, base in self.group_dirs(i):
            make_guest_group(base, ctrls, p.pid)
            for (ctrl, fname), want in WANT.items():
                if ctrl in ctrls:
                    files.append((os.path.join(base, fname), want))
        self.pids[name] = p.pid
        t0 = time.monotonic()
        self.doms[name].create()  # STARTED: libvirt's event loop -> the service
        end = t0 + TIMEOUT_S
        while time.monotonic() < end:
            if all(_read(f) == want for f, want in files):
                return (time.monotonic() - t0) * 1000
            time.sleep(0.001)
        return -1.0

    def stop(self, i: int) -> None:
        name = self.names[i]
        self.doms[name].destroy()  # STOPPED
        self.pids.pop(name, None)
        p = self.procs.pop(name)
        p.kill()
        p.wait()
        from tests.realcg.conftest import _rmtree_cgroup
        for _, _, base in self.group_dirs(i):
            _rmtree_cgroup(base)

    def teardown(self) -> None:
        for name, p in list(self.procs.items()):
            p.kill()
            p.wait()
        for dom in self.doms.values():
            try:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            except Exception:
                pass
        from bench.reconcile_sim import remove_parent
        remove_parent([m for m, _ in self.hier], self.parent_name)


TIMEOUT_S = 10.0


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _patch_guest_pids(driver: Driver) -> None:
    """The one simulated step: a driven test-driver domain is a QEMU guest whose PID is its
    sleep's (the test driver has none); every other domain of test:///default is not listed."""
    from cgctl import virt
    orig_guest, orig_running = virt.EventConnection.guest, virt.EventConnection.running_guests

    def guest(self, uuid):
        g = orig_guest(self, uuid)
        pid = driver.pids.get(g.name)
        return g._replace(driver="qemu", pid=pid) if pid else g

    def running_guests(self):
        return [g._replace(driver="qemu", pid=driver.pids[g.name])
                for g in orig_running(self) if g.name in driver.pids]
    virt.EventConnection.guest = guest
    virt.EventConnection.running_guests = running_guests


def serve(a) -> int:
    """The service process: ``cgctl daemon`` in the main thread, the driver in another one
    that reads "start I" / "stop I" / "quit" from stdin and answers on fd ``a.reply_fd``."""
    reply = os.fdopen(a.reply_fd, "w", buffering=1)
    names = [f"soak-{i:03d}" for i in range(a.guests)]
    uuids = a.uuids.split(",")
    driver = Driver(a.parent, names, uuids, reply)
    _patch_guest_pids(driver)

    def drive():
        from cgctl.service import logs  # noqa: F401  (imported by the daemon anyway)
        try:
            for line in sys.stdin:
                word, *rest = line.split()
                if word == "setup":
                    driver.setup()
                    reply.write("ok\n")
                elif word == "start":
                    reply.write(f"{driver.start(int(rest[0])):.3f}\n")
                elif word == "stop":
                    driver.stop(int(rest[0]))
                    reply.write("ok\n")
                elif word == "threads":  # kernel tid -> Python thread name
                    reply.write(json.dumps({t.native_id: t.name for t in threading.enumerate()})
                                + "\n")
                elif word == "quit":
                    break
        except Exception as e:  # noqa: BLE001  the bench reads it as a failure
            reply.write(f"error {type(e).__name__}: {e}\n")
        finally:
            try:
                driver.teardown()
            finally:
                reply.write("bye\n")
                os.kill(os.getpid(), signal.SIGTERM)  # the daemon stops as under systemd
    threading.Thread(target=drive, name="soak-driver", daemon=True).start()
    from cgctl.cli.main import main
    return main(["daemon", "--journal", a.journal, "-c", URI, "--config-file", a.config])


# --------------------------------------------------------------------------- the bench side

def _proc(pid: int) -> dict:
    from bench.service import cpu_seconds, open_fds, status_kib, threads
    return {"rss_kib": status_kib(pid, "VmRSS"), "fds": open_fds(pid),
            "threads": threads(pid), "cpu_s": round(cpu_seconds(pid), 2)}


def _threads_cpu(pid: int) -> dict:
    """utime+stime (clock ticks) of each thread, by "name/tid"."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[f"{name}/{tid}"] = int(fields[11]) + int(fields[12])
    return out


def _idle(pid: int, seconds: float) -> dict:
    """The service's CPU over ``seconds`` of nothing to do, in all and by thread."""
    from bench.service import cpu_seconds
    t0 = _threads_cpu(pid)
    c0, w0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, w1 = cpu_seconds(pid), time.monotonic()
    t1 = _threads_cpu(pid)
    tck = os.sysconf("SC_CLK_TCK")
    by_thread = {k: round((v - t0.get(k, 0)) / tck, 3) for k, v in t1.items()
                 if v - t0.get(k, 0)}
    return {"seconds": round(w1 - w0, 1), "cpu_s": round(c1 - c0, 3),
            "cpu_percent": round(100 * (c1 - c0) / (w1 - w0), 3), "by_thread_s": by_thread}


def run(cycles: int, guests: int, every: int, idle: float, quiet: bool = False,
        result: str = "soak_sim") -> dict:
    """``result``: the name under bench/results/, or None to write none (the test)."""
    from bench.common import need_root, write_result
    from cgctl.core.journal import Journal
    from cgctl.model import params as P
    need_root()
    wd = tempfile.mkdtemp(prefix="cgctl-soaksim-")
    parent = f"cgctl-soaksim-{os.getpid()}-{uuidlib.uuid4().hex[:6]}"
    journal, conf = os.path.join(wd, "journal.db"), os.path.join(wd, "cgctl.toml")
    open(conf, "w").close()
    uuids = [str(uuidlib.uuid4()) for _ in range(guests)]
    names = [f"soak-{i:03d}" for i in range(guests)]
    config = {(k, ""): P.canonical_text(P.lookup(k), P.parse_value(P.lookup(k), v))
              for k, v in SETTINGS.items()}
    with Journal(journal) as j, j.transaction() as tx:
        for name, uuid in zip(names, uuids):
            tx.set_config(uuid, name, "qemu", config)
    r, w = os.pipe()
    env = dict(os.environ, CGCTL_SOCKET=os.path.join(wd, "cgctl.sock"),
               CGCTL_HOOK_RUN_DIR=os.path.join(wd, "hookrun"))
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "PYTHONDONTWRITEBYTECODE"):
        env.pop(k, None)
    log_path = os.path.join(wd, "daemon.log")
    logf = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.soak_sim", "--serve", "--parent", parent,
         "--journal", journal, "--config", conf, "--guests", str(guests),
         "--uuids", ",".join(uuids), "--reply-fd", str(w)],
        stdin=subprocess.PIPE, stdout=logf, stderr=subprocess.STDOUT, pass_fds=(w,), env=env,
        cwd=REPO, text=True)
    os.close(w)
    replies = os.fdopen(r)
    out = {"cycles": cycles, "guests": guests, "settings": SETTINGS, "samples": [],
           "cgroup_parent": parent}

    def ask(cmd: str) -> str:
        proc.stdin.write(cmd + "\n")
        proc.stdin.flush()
        answer = replies.readline().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(f"{cmd}: {answer or 'the service process ended'}")
        return answer

    def log_text() -> str:
        with open(log_path, errors="replace") as f:
            return f.read()
    try:
        end = time.monotonic() + 60
        while "ready:" not in log_text():
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"the service did not get ready:\n{log_text()}")
            time.sleep(0.05)
        ask("setup")
        time.sleep(1)
        out["samples"].append({"cycle": 0, **_proc(proc.pid)})
        if idle > 0:
            out["idle_before"] = _idle(proc.pid, idle)
        waits, failed, t0 = [], 0, time.monotonic()
        for c in range(1, cycles + 1):
            i = (c - 1) % guests
            ms = float(ask(f"start {i}"))
            if ms < 0:
                failed += 1
            else:
                waits.append(ms)
            ask(f"stop {i}")
            if c % every == 0:
                time.sleep(0.5)
                s = {"cycle": c, "t_s": round(time.monotonic() - t0, 1), **_proc(proc.pid)}
                out["samples"].append(s)
                if not quiet:
                    print(f"cycle {c}: {failed} failed; RSS {s['rss_kib']} KiB, {s['fds']} fds, "
                          f"{s['threads']} threads, CPU {s['cpu_s']} s", flush=True)
        if idle > 0:
            out["thread_names"] = json.loads(ask("threads"))
            out["idle_after"] = _idle(proc.pid, idle)
            out["idle_after"]["rss_kib"] = _proc(proc.pid)["rss_kib"]
        out["passed"], out["failed"] = len(waits), failed
        from bench.common import summary
        out["settings_seen_ms"] = summary(waits) if waits else None
        ask("quit")
        proc.stdin.close()
        out["service_exit"] = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        logf.close()
        from bench.reconcile_sim import remove_parent
        from cgctl.cgroup import hierarchy
        from bench.reconcile_sim import hierarchies
        remove_parent([m for m, _ in hierarchies(hierarchy.detect())], parent)
    log = log_text()
    out["log_tail"] = log.splitlines()[-15:]
    out["log_applied_lines"] = log.count("applied source=event")
    out["log_error_lines"] = [ln for ln in log.splitlines() if " ERROR " in ln or
                              "Traceback" in ln][:10]
    with Journal(journal, create=False) as j:
        out["journal_event_rows"] = sum(1 for h in j.history() if h.source == "event")
    s = {x["cycle"]: x for x in out["samples"]}
    base = s.get(1000) or s.get(every)
    last = out["samples"][-1]
    if base:
        out["growth_from_cycle"] = base["cycle"]
        out["rss_growth_kib"] = last["rss_kib"] - base["rss_kib"]
        out["fd_growth"] = last["fds"] - base["fds"]
    out["ok"] = (out["failed"] == 0 and out["service_exit"] == 0
                 and out["log_applied_lines"] == cycles and not out["log_error_lines"])
    shutil.rmtree(wd, ignore_errors=True)
    from bench.common import machine
    out["machine"] = machine()
    if result is None:
        return out
    path = write_result(result, out)
    if not quiet:
        print(json.dumps({k: v for k, v in out.items() if k != "samples"}, indent=1))
        print(f"(results: {path})")
    return out


def main(argv=None) -> int:
    global TIMEOUT_S
    ap = argparse.ArgumentParser(prog="python -m bench.soak_sim",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=10000)
    ap.add_argument("--guests", type=int, default=8, help="domains the cycles go round")
    ap.add_argument("--every", type=int, default=1000, help="sample the service every N cycles")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement "
                    "before the first cycle and after the last (0: none)")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    for opt in ("--parent", "--journal", "--config", "--uuids"):
        ap.add_argument(opt, help=argparse.SUPPRESS)
    ap.add_argument("--reply-fd", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    TIMEOUT_S = a.timeout
    if a.serve:
        return serve(a)
    return 0 if run(a.cycles, a.guests, a.every, a.idle)["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""The service's reconcile over N simulated running guests, in a process of its own (so that its
memory figures are this N's alone): ``python -m bench.reconcile_sim N PARENT [E]`` prints one JSON
object; with E, E more guests get a STARTED event during the first pass (``EventInjector``). Run by bench/scale.py (part C), which also removes ``PARENT`` if this process dies.

What is real and what is simulated:

- **cgroups: real.** N machine groups shaped like libvirt's without systemd
  (``PARENT/qemu-I-sim-I.libvirt-qemu``, with ``emulator`` and ``vcpu0`` in the cpu and cpuset
  hierarchies) in every v1 hierarchy cgctl manages (memory, cpu, cpuset, blkio), each with one
  ``sleep`` process of ours inside (in ``emulator`` where there is one, as QEMU's main thread).
  PARENT is a unique directory right under each hierarchy's mount, removed at the end.
- **domains: libvirt's test driver.** N running transient domains are created in this process's
  ``test:///default``; the guest list comes from a real ``cgctl.virt.EventConnection`` on it
  (``listAllDomains`` + per-domain calls, as on a real host). The test driver has no pid files,
  so each listed guest is given its ``sleep`` process's PID (the only simulated step).
- **the service's code: real.** ``cgctl.service.daemon.Daemon._reconcile`` — the very method the worker
  runs after every (re)connect — with a real ``Controller`` and a real journal holding a
  6-parameter config for each guest; its log goes to a file at level info, as in service.

Two passes: the first finds every guest new (no instance recorded) and applies its config; the
second finds every guest the same instance (PID + start time) and leaves it alone — what a
reconnect costs when nothing restarted.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

CONFIG = {"hard_limit": "512M", "soft_limit": "256M", "cpu_shares": "512",
          "global_quota": "50000", "vcpu_quota": "25000", "weight": "200"}  # as typed
WANT_HARD, WANT_VCPU_QUOTA = str(512 << 20), "25000"  # what the kernel files then hold
PR_SET_PDEATHSIG = 1
PROFILE_ENV = "CGCTL_BENCH_PROFILE"  # a path: cProfile of the first pass written there


def _profiler(label: str):
    """cProfile of the first pass when ``CGCTL_BENCH_PROFILE`` names a file (docs/performance.md)."""
    if label != "first" or not os.environ.get(PROFILE_ENV):
        return None
    import cProfile
    prof = cProfile.Profile()
    prof.enable()
    return prof


def _die_with_parent():  # in the sleep's child, before exec: never outlive this process
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def hierarchies(host):
    """(mountpoint, controllers) of each distinct v1 hierarchy cgctl manages."""
    seen, out = set(), []
    for ctrl in ("memory", "cpu", "cpuset", "io"):
        if not host.has(ctrl):
            continue
        h = host.owner(ctrl)
        if h.version != 1:
            raise SystemExit(f"{ctrl} is on cgroup v{h.version}: this simulation is for v1")
        if h.mountpoint not in seen:
            seen.add(h.mountpoint)
            out.append((h.mountpoint, set(h.controllers)))
    return out


def _copy_cpuset(src_dir: str, dst: str) -> None:
    for f in ("cpuset.cpus", "cpuset.mems"):
        with open(os.path.join(src_dir, f)) as r:
            value = r.read().strip()
        with open(os.path.join(dst, f), "w") as w:
            w.write(value)


def make_guest_group(base: str, ctrls, pid: int) -> str:
    """libvirt's v1 shape of one guest in one hierarchy (emulator/ and vcpu0/ where the CPU
    controllers are), the process placed in it; returns the group the process is in."""
    os.mkdir(base)
    if "cpuset" in ctrls:
        _copy_cpuset(os.path.dirname(base), base)
    target = base
    if ctrls & {"cpu", "cpuset", "cpuacct"}:
        for sub in ("emulator", "vcpu0"):
            os.mkdir(os.path.join(base, sub))
            if "cpuset" in ctrls:
                _copy_cpuset(base, os.path.join(base, sub))
        target = os.path.join(base, "emulator")
    with open(os.path.join(target, "cgroup.procs"), "w") as f:
        f.write(str(pid))
    return target


def remove_parent(mounts, parent_name: str) -> None:
    """Remove PARENT under each mount (its tasks must be gone; a killed one may take a moment)."""
    from tests.realcg.conftest import _rmtree_cgroup
    for mount in mounts:
        _rmtree_cgroup(os.path.join(mount, parent_name))


class SimGuests:
    def __init__(self, host, parent_name: str, n: int):
        self.hier = hierarchies(host)
        self.parent_name = parent_name
        self.n = n
        self.procs = []
        self.names = [f"sim-{i:05d}" for i in range(n)]
        self.uuids = [str(uuidlib.uuid4()) for _ in range(n)]

    def group(self, i: int) -> str:
        return f"qemu-{i + 1}-{self.names[i]}.libvirt-qemu"

    def create(self) -> None:
        for mount, ctrls in self.hier:
            top = os.path.join(mount, self.parent_name)
            os.mkdir(top)
            if "cpuset" in ctrls:
                _copy_cpuset(mount, top)
        for i in range(self.n):
            p = subprocess.Popen(["sleep", "3600"], preexec_fn=_die_with_parent,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            self.procs.append(p)
            for mount, ctrls in self.hier:
                make_guest_group(os.path.join(mount, self.parent_name, self.group(i)), ctrls, p.pid)

    def destroy(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()
        remove_parent([m for m, _ in self.hier], self.parent_name)

    def file(self, i: int, ctrl_mount_index: int, *parts: str) -> str:
        mount = self.hier[ctrl_mount_index][0]
        return os.path.join(mount, self.parent_name, self.group(i), *parts)


class TestDriverLister:
    """The running guests as libvirt's test driver lists them, each with its sleep's PID."""

    def __init__(self, econn, pids_by_name):
        self.econn = econn
        self.pids = pids_by_name

    def running_guests(self):
        return [g._replace(driver="qemu", pid=self.pids[g.name])
                for g in self.econn.running_guests() if g.name in self.pids]

    def guest(self, uuid):  # what a STARTED job looks its guest up with
        g = self.econn.guest(uuid)
        return g._replace(driver="qemu", pid=self.pids[g.name])

    def domain_xml(self, uuid, inactive=False):
        return self.econn.domain_xml(uuid, inactive=inactive)


class EventInjector:
    """STARTED events of guests *not* in the reconcile's list, queued to the worker from a
    thread of their own while the first pass runs: the k-th of E when the reconcile has begun
    guest (k+1)·N/(E+1), plus a random 0–3 ms (an event lands anywhere inside one guest's
    apply). Each one's time is from ``worker.put`` (``Job.queued``) to the end of its
    ``events.apply_started`` (cgroups written, journal committed): what the service's log
    line "applied source=event ... N ms after the event" measures, to the microsecond."""

    def __init__(self, worker, conn, guests, n, uri):
        import random
        import threading
        from cgctl.service import events
        self.worker, self.conn, self.guests, self.uri = worker, conn, guests, uri
        self.at = [(k + 1) * n // (len(guests) + 1) for k in range(len(guests))]
        self.done = 0  # guests the reconcile has begun (worker.progress calls)
        self.latency_ms = {}
        self._rand = random.Random()
        self._tick = threading.Event()
        orig_progress = worker.progress

        def progress():
            self.done += 1
            self._tick.set()
            orig_progress()
        worker.progress = progress
        orig_apply = events.apply_started

        def timed(w, job):
            orig_apply(w, job)
            self.latency_ms[job.event.name] = (time.monotonic() - job.queued) * 1000
        events.apply_started = timed
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()

    def _run(self):
        from cgctl.service import worker as W
        from cgctl.virt import LifecycleEvent
        for at, (name, uuid) in zip(self.at, self.guests):
            while self.done < at:
                self._tick.wait(0.05)
                self._tick.clear()
            time.sleep(self._rand.uniform(0, 0.003))
            ev = LifecycleEvent(self.uri, name, uuid, "started", "booted")
            self.worker.put(W.Job("started", self.uri, self.conn, 1, event=ev))

    def finish(self):
        """What the service's worker does after the reconcile: the jobs still queued."""
        self._thread.join(30)
        q = self.worker._jobs
        while not q.empty():
            self.worker._do(q.get_nowait())


def main(n: int, parent_name: str, n_events: int = 0) -> dict:
    import libvirt

    from cgctl.config import Config
    from cgctl.service import daemon as D, logs, reconcile, worker
    from cgctl.cgroup import hierarchy
    from cgctl import virt
    from cgctl.core.controller import Controller
    from cgctl.core.journal import Journal

    host = hierarchy.detect()
    sim = SimGuests(host, parent_name, n + n_events)  # the last n_events: started meanwhile
    out = {"guests": n, "parameters_per_guest": len(CONFIG)}
    tmp = tempfile.mkdtemp(prefix="cgctl-bench-rec-")
    journal = os.path.join(tmp, "journal.db")
    logfile = os.path.join(tmp, "daemon.log")
    try:
        t0 = time.perf_counter()
        sim.create()
        out["setup_groups_s"] = round(time.perf_counter() - t0, 2)

        from cgctl.model import params as P
        config = {}  # the journal's canonical spelling, as `cgctl set --config` stores it
        for k, v in CONFIG.items():
            p = P.lookup(k)
            config[(k, "")] = P.canonical_text(p, P.parse_value(p, v))
        with Journal(journal) as j, j.transaction() as tx:
            for name, uuid in zip(sim.names, sim.uuids):
                tx.set_config(uuid, name, "qemu", config)

        virt.start_event_loop()  # as the service: before any connection
        raw = libvirt.open("test:///default")  # the test driver's state lives in this process
        for name, uuid in zip(sim.names, sim.uuids):
            raw.createXML(f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
                          "<memory>65536</memory><os><type>hvm</type></os></domain>", 0)
        econn = virt.EventConnection("test:///default", on_event=lambda ev: None,
                                     on_close=lambda r: None).open()
        pids = {nm: p.pid for nm, p in zip(sim.names, sim.procs)}
        lister = TestDriverLister(econn, dict(list(pids.items())[:n]))
        t0 = time.perf_counter()
        listed = lister.running_guests()
        out["list_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        assert len(listed) == n, (len(listed), n)

        handler = logging.FileHandler(logfile)
        handler.setFormatter(logs.Formatter(False))
        logging.basicConfig(handlers=[handler], force=True)
        logs.set_level("info")
        daemon = D.Daemon(Config(journal=journal, uris=("test:///default",)),
                          install_signals=False)
        daemon.worker.ctl = Controller(journal_path=journal, uris=())
        job = worker.Job("reconcile", "test:///default", lister, 1)

        out["rss_before_kib"] = _status_kib("VmRSS")
        injector = None
        if n_events:
            injector = EventInjector(daemon.worker, TestDriverLister(econn, pids),
                                     list(zip(sim.names, sim.uuids))[n:], n, "test:///default")
        for label in ("first", "second"):
            if injector is not None and label == "first":
                injector.start()
            prof = _profiler(label)
            t0 = time.perf_counter()
            reconcile.reconcile(daemon.worker, job)
            if prof is not None:
                prof.disable()
                prof.dump_stats(os.environ[PROFILE_ENV])
            if injector is not None and label == "first":
                injector.finish()  # (after the pass's time: the service's next jobs)
                out["event_ms"] = [round(injector.latency_ms.get(nm, -1), 2)
                                   for nm in sim.names[n:]]
            out[f"{label}_pass_s"] = round(time.perf_counter() - t0, 3)
            out[f"rss_after_{label}_kib"] = _status_kib("VmRSS")
        out["hwm_kib"] = _status_kib("VmHWM")
        handler.flush()
        with open(logfile) as f:
            log = f.read()
        out["summaries"] = [line.split("cgctl: ", 1)[-1].split("]: ", 1)[-1]
                            for line in log.splitlines() if "reconcile test:///" in line]
        out["log_lines"] = log.count("\n")
        # the effect, not the call: every guest's files hold the config
        mem = next(i for i, (_, c) in enumerate(sim.hier) if "memory" in c)
        cpu = next(i for i, (_, c) in enumerate(sim.hier) if "cpu" in c)
        bad = 0
        for i in range(n + n_events):
            with open(sim.file(i, mem, "memory.limit_in_bytes")) as f:
                a = f.read().strip()
            with open(sim.file(i, cpu, "vcpu0", "cpu.cfs_quota_us")) as f:
                b = f.read().strip()
            if (a, b) != (WANT_HARD, WANT_VCPU_QUOTA):
                bad += 1
                out.setdefault("wrong_example", (sim.names[i], a, b))
        out["guests_without_their_values"] = bad
        with Journal(journal, create=False) as j:
            out["history_rows"] = len(j.history())
        daemon.worker.ctl.close()
        econn.close()
        raw.close()
    finally:
        sim.destroy()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), sys.argv[2],
                          int(sys.argv[3]) if len(sys.argv) > 3 else 0)))

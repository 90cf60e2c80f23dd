"""Soak: hundreds of real guest start/stop cycles under ``cgctl daemon``; every start must get its
settings. Also the service's idle CPU and memory, and its memory over the cycles.

    bench/soak                         # 100 cycles of an LXC container, 60 s idle first
    bench/soak --cycles 1000           # the long run (~6-8 min here)
    bench/soak --kind qemu --cycles 200 --idle 0

One guest of the sandbox (LXC by default: ~0.1 s to start) with a journal config of three
settings (``hard_limit=300M cpu_shares=777 global_quota=50000``), ``cgctl daemon`` as a child
with its own journal (bench/service.py). The service is first left alone for ``--idle`` seconds:
its CPU time (utime+stime of all threads, /proc/PID/stat) over that time and its VmRSS. Then each
cycle is ``virsh start``, wait until the guest's live cgroup values are the three journal
values (read through cgctl's resolver every 5 ms, at most ``--timeout`` s: a **pass**; else a
**fail**), ``virsh destroy``, wait for the pid file to go. Every ``--every`` cycles the service's
VmRSS, threads and open descriptors are sampled. At the end: the service's log must hold one
"applied source=event" line per cycle and no ERROR-level line, the journal one ``event`` history
row per setting per cycle, and the service must stop with exit status 0.

Exit status 0 only if every cycle passed and those checks hold. Results in bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

if __package__ in (None, ""):  # run as a file: bench/soak.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import Skip, need_root, sandbox, table, wait_libvirtd, write_result  # noqa: E402

SETTINGS = ["hard_limit=300M", "cpu_shares=777", "global_quota=50000"]


def _sample(pid: int, cycle: int, t0: float) -> dict:
    from bench.service import cpu_seconds, open_fds, status_kib, threads
    return {"cycle": cycle, "t_s": round(time.monotonic() - t0, 1),
            "rss_kib": status_kib(pid, "VmRSS"), "hwm_kib": status_kib(pid, "VmHWM"),
            "threads": threads(pid), "fds": open_fds(pid), "cpu_s": round(cpu_seconds(pid), 2)}


def _retry(action, done, attempts: int = 5) -> None:
    """``action()``; when it fails because someone restarted the shared libvirtd (other
    sessions do), wait for libvirtd and try again unless ``done()`` says it happened anyway."""
    for attempt in range(attempts):
        try:
            action()
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            wait_libvirtd()
            time.sleep(0.5)
            try:
                if done():
                    return
            except Exception:
                pass


def run(cycles: int = 100, kind: str = "lxc", idle: float = 60.0, every: int = 50,
        timeout: float = 10.0, quiet: bool = False) -> dict:
    from bench.service import Probe, Service, cgctl_config, cpu_seconds, status_kib, workdir
    from cgctl.core.journal import Journal
    need_root()
    out = {"kind": kind, "cycles": cycles, "settings": SETTINGS, "timeout_s": timeout}
    with sandbox() as sb, workdir("cgctl-soak-") as wd:
        journal = os.path.join(wd, "journal.db")
        g = sb.new_guest(kind, start=False)
        try:
            cgctl_config(journal, g.name, SETTINGS)
            probe = Probe(kind, g.name, dict(a.split("=", 1) for a in SETTINGS))
            with Service(journal, wd) as svc:
                t0 = time.monotonic()
                samples = [_sample(svc.pid, 0, t0)]
                if idle > 0:
                    c0, w0 = cpu_seconds(svc.pid), time.monotonic()
                    time.sleep(idle)
                    c1, w1 = cpu_seconds(svc.pid), time.monotonic()
                    out["idle"] = {"seconds": round(w1 - w0, 1), "cpu_s": round(c1 - c0, 3),
                                   "cpu_percent": round(100 * (c1 - c0) / (w1 - w0), 3),
                                   "rss_kib": status_kib(svc.pid, "VmRSS")}
                    samples.append(_sample(svc.pid, 0, t0))
                passed, failed, waits = 0, [], []
                for i in range(1, cycles + 1):
                    _retry(lambda: sb.start_guest(g.name, g.uri),
                           lambda: sb.is_running(g.name, g.uri))
                    ts = time.monotonic()
                    end = ts + timeout
                    ok = probe.ok()
                    while not ok and time.monotonic() < end:
                        time.sleep(0.005)
                        ok = probe.ok()
                    if ok:
                        passed += 1
                        waits.append((time.monotonic() - ts) * 1000)
                    else:
                        failed.append({"cycle": i, "values": probe.values(),
                                       "want": probe.want})
                    _retry(lambda: sb.destroy(g.name, g.uri),
                           lambda: not sb.is_running(g.name, g.uri))
                    end = time.monotonic() + 30
                    while probe.pid() is not None and time.monotonic() < end:
                        time.sleep(0.01)
                    if i % every == 0 or i == cycles:
                        samples.append(_sample(svc.pid, i, t0))
                        if not quiet:
                            s = samples[-1]
                            print(f"cycle {i}: {passed} passed, {len(failed)} failed; service "
                                  f"RSS {s['rss_kib']} KiB, {s['threads']} threads, "
                                  f"{s['fds']} fds", flush=True)
                time.sleep(2)  # quiet again
                samples.append(_sample(svc.pid, cycles, t0))
                log = svc.log()
            out["service_exit"] = svc.rc
        finally:
            try:
                sb.remove(g.name, g.uri)
            except Exception:
                wait_libvirtd()
                sb.remove(g.name, g.uri)
        with Journal(journal, create=False) as j:
            rows = [r for r in j.history(g.uuid) if r.source == "event"]
    applied_lines = log.count(f"guest={g.name} applied source=event")
    # a start while the service was reconnecting (libvirtd restarted by someone) is caught up
    # by the reconcile after the reconnect instead of the STARTED event
    reconciled = log.count("reconcile lxc:///system" if kind == "lxc" else
                           "reconcile qemu:///system") - 1
    lost = log.count("lost connection to")
    # error lines, but not the reconnect messages when someone else restarts libvirtd
    errors = [line for line in log.splitlines()
              if re.search(r"error|fail|traceback", line.replace(" 0 error(s)", "")
                           .replace(" 0 failed", ""), re.I)
              and not re.search(r"cannot connect \(attempt|lost connection to", line)]
    first_rss = next(s["rss_kib"] for s in samples if s["cycle"] >= min(every, cycles))
    out.update({
        "passed": passed, "failed": failed, "samples": samples,
        "settings_seen_ms": _summary(waits),
        "service_log_applied_lines": applied_lines, "service_log_errors": errors[:20],
        "libvirtd_connection_losses": lost, "reconciles_after_reconnect": reconciled,
        "journal_event_rows": len(rows),
        "rss_growth_kib_after_first_sample": samples[-1]["rss_kib"] - first_rss,
    })
    out["ok"] = (passed == cycles and not errors and out["service_exit"] == 0
                 and (applied_lines == cycles and len(rows) == cycles * len(SETTINGS)
                      or lost > 0 and applied_lines <= cycles))
    path = write_result("soak" if kind == "lxc" else f"soak-{kind}", out)
    if not quiet:
        print(report(out))
        print(f"(results: {path})")
    return out


def _summary(ms):
    if not ms:
        return None
    from bench.common import summary
    return summary(ms)


def report(d: dict) -> str:
    lines = [f"== soak: {d['cycles']} start/stop cycles of one {d['kind']} guest under "
             f"cgctl daemon: {d['passed']} passed, {len(d['failed'])} failed "
             f"-> {'OK' if d['ok'] else 'FAILED'}"]
    if "idle" in d:
        i = d["idle"]
        lines.append(f"idle {i['seconds']} s: {i['cpu_s']} s CPU = {i['cpu_percent']} % of one "
                     f"CPU; VmRSS {i['rss_kib']} KiB")
    if d["settings_seen_ms"]:
        s = d["settings_seen_ms"]
        lines.append(f"settings seen after virsh start returned: median {s['median_ms']} ms, "
                     f"p90 {s['p90_ms']} ms, max {s['max_ms']} ms")
    lines.append(f"service log: {d['service_log_applied_lines']} applied lines, "
                 f"{len(d['service_log_errors'])} error lines; journal: "
                 f"{d['journal_event_rows']} event history rows; service exit "
                 f"{d['service_exit']}; libvirtd connection losses {d['libvirtd_connection_losses']}"
                 f" (libvirtd restarted by another session), reconciles after reconnect "
                 f"{d['reconciles_after_reconnect']}")
    rows = [[s["cycle"], s["t_s"], s["rss_kib"], s["hwm_kib"], s["threads"], s["fds"],
             s["cpu_s"]] for s in d["samples"]]
    lines.append(table(rows, ["CYCLE", "T s", "VmRSS KiB", "VmHWM KiB", "THREADS", "FDS",
                              "CPU s"]))
    lines.append(f"VmRSS growth from the first sample after cycles began to the end: "
                 f"{d['rss_growth_kib_after_first_sample']} KiB")
    for f in d["failed"][:10]:
        lines.append(f"FAILED cycle {f['cycle']}: live {f['values']} want {f['want']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/soak", description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--kind", choices=("lxc", "qemu"), default="lxc")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle measurement first")
    ap.add_argument("--every", type=int, default=50, help="sample the service every N cycles")
    ap.add_argument("--timeout", type=float, default=10.0,
                    help="seconds a start may take to get its settings")
    a = ap.parse_args(argv)
    try:
        d = run(a.cycles, a.kind, a.idle, a.every, a.timeout)
    except Skip as e:
        print(f"skipped: {e}")
        return 0
    return 0 if d["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

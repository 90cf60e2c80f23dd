"""Benchmark 2: event → applied, and the hook's added time to ``virsh start``.

    bash bench/run events [--runs 10]

A. **Event → applied**, for a real QEMU guest and a real LXC container of the sandbox. The guest
   has a journal config of three settings (``hard_limit=300M cpu_shares=777 global_quota=50000``);
   ``cgctl daemon`` runs as a child with its own journal (bench/service.py). Each run starts the
   guest with ``virsh start`` and stops it with ``virsh destroy``. Two clocks, both
   ``time.monotonic()`` of this host:

   - *event*: our own libvirt lifecycle listener in this process (the same libvirt event loop
     code the service uses, ``cgctl.virt``) stamps the STARTED event when it arrives; the service
     gets the same event from the same libvirtd at the same moment;
   - *applied*: a poller thread reads the guest's live values of the three parameters through
     cgctl's resolver and backends every 1 ms from before ``virsh start`` and stamps the first
     read that shows all three journal values.

   event → applied = applied − event. Also recorded: the service's own figure (its log line
   "applied source=event (...): N change(s), 0 error(s), M ms after the event", from its callback
   to the journal commit) and ``virsh start``'s wall time.

B. **The hook's cost per call.** libvirtd reads its hooks directory only when it starts, and
   the sandbox's libvirtd is shared with other sessions (never restarted by a benchmark), so the
   hook is **not** measured inside a real ``virsh start`` here. Instead the installed hook script
   (``cgctl hook install --hooks-dir TMP``: the same ``/bin/sh`` script that would sit in
   ``/etc/libvirt/hooks/qemu.d/``) is run exactly as libvirt runs it — ``SCRIPT NAME OP SUBOP -``
   with the domain XML on stdin, waited for — for each call libvirt makes around a start
   (``prepare begin``, ``start begin``, ``started begin``) and a stop (``stopped end``,
   ``release end``), against a running guest with the same journal config, interleaved.
   libvirt runs these synchronously, one after the other, so the hook's added time to
   ``virsh start`` is the sum of the three start calls; ``virsh start`` of the same tiny guest
   without any hook is timed beside it for the ratio. (``bench/exposure.py`` measures with the
   hook installed in the real libvirtd, but it restarts libvirtd to do so.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Dict, List

from bench.common import (Skip, bench_env, compile_repo, interleave, need_root, sandbox, summary,
                          table, wait_libvirtd, write_result)

SETTINGS = ["hard_limit=300M", "cpu_shares=777", "global_quota=50000"]
HOOK_CALLS = [("prepare", "begin"), ("start", "begin"), ("started", "begin"),
              ("stopped", "end"), ("release", "end")]
START_CALLS = HOOK_CALLS[:3]


def _daemon_latencies(log: str, name: str) -> List[int]:
    return [int(m) for m in re.findall(
        rf"guest={re.escape(name)} applied source=event \(\w+\): .*?(\d+) ms after the event", log)]


STEP_NAMES = ("queue", "run files", "metadata", "apply", "record", "in force")


def _daemon_steps(log: str, name: str) -> Dict[str, List[float]]:
    """The service's own perf_counter_ns steps of each apply (cgctl/service/events.py), ms."""
    out: Dict[str, List[float]] = {k: [] for k in STEP_NAMES}
    pat = (rf"guest={re.escape(name)} applied source=event .*?steps ms: queue (\S+) run files "
           r"(\S+) metadata (\S+) apply (\S+) record (\S+), in force (\S+)")
    for m in re.finditer(pat, log):
        for k, v in zip(STEP_NAMES, m.groups()):
            out[k].append(float(v))
    return out


def _wait_stopped(probe, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while probe.pid() is not None and time.monotonic() < end:
        time.sleep(0.01)


def event_latency(sb, kind: str, runs: int) -> dict:
    from bench.service import Listener, Poller, Probe, Service, cgctl_config, workdir
    with workdir(f"cgctl-bench-events-{kind}-") as wd:
        journal = os.path.join(wd, "journal.db")
        g = sb.new_guest(kind, start=False)
        listener = None
        try:
            cgctl_config(journal, g.name, SETTINGS)
            probe = Probe(kind, g.name, dict(a.split("=", 1) for a in SETTINGS))
            listener = Listener([g.uri])
            rows = []
            with Service(journal, wd) as svc:
                for i in range(runs):
                    _wait_stopped(probe)
                    poller = Poller(probe, interval=0.001)
                    poller.start()
                    t0 = time.monotonic()
                    sb.start_guest(g.name, g.uri)
                    t_virsh = time.monotonic()
                    t_event = listener.wait(g.name, "started", i + 1)
                    poller.join(30)
                    poller.halt = True
                    svc.proc.wait_log(f"guest={g.name} applied source=event", n=i + 1)
                    rows.append({"virsh_start_ms": (t_virsh - t0) * 1000,
                                 "event_after_start_call_ms": (t_event - t0) * 1000,
                                 "event_to_applied_ms": None if poller.at is None
                                 else (poller.at - t_event) * 1000,
                                 "start_call_to_applied_ms": None if poller.at is None
                                 else (poller.at - t0) * 1000})
                    sb.destroy(g.name, g.uri)
                daemon_ms = _daemon_latencies(svc.log(), g.name)
                steps = _daemon_steps(svc.log(), g.name)
        finally:
            if listener is not None:
                listener.close()
            try:
                sb.remove(g.name, g.uri)
            except Exception:
                wait_libvirtd()
                sb.remove(g.name, g.uri)
    applied = [r["event_to_applied_ms"] for r in rows if r["event_to_applied_ms"] is not None]
    return {"kind": kind, "settings": SETTINGS, "runs": rows,
            "never_applied": sum(r["event_to_applied_ms"] is None for r in rows),
            "event_to_applied": summary(applied) if applied else None,
            "service_log_ms": summary(daemon_ms) if daemon_ms else None,
            "service_steps_ms": steps,  # empty lists for a tree without the stamps
            "virsh_start": summary([r["virsh_start_ms"] for r in rows]),
            "start_call_to_applied": summary([r["start_call_to_applied_ms"] for r in rows
                                              if r["start_call_to_applied_ms"] is not None])}


def hook_cost(sb, runs: int) -> dict:
    from bench.service import Probe, cgctl_config, workdir
    env = bench_env()
    with workdir("cgctl-bench-hook-") as wd:
        journal = os.path.join(wd, "journal.db")
        hooks = os.path.join(wd, "hooks")
        g = sb.new_guest("qemu", start=True)  # the guest the calls are about
        plain = sb.new_guest("qemu", start=False)  # started without any hook, for the ratio
        try:
            cgctl_config(journal, g.name, SETTINGS)
            r = subprocess.run([sys.executable, "-m", "cgctl.cli", "--journal", journal, "hook",
                                "install", "--hooks-dir", hooks, "--drivers", "qemu"],
                               capture_output=True, text=True, env=env)
            if r.returncode:
                raise RuntimeError(f"cgctl hook install: {r.stderr.strip()}")
            script = os.path.join(hooks, "qemu.d", "cgctl")
            xml = sb.virsh("dumpxml", g.name).stdout.encode()
            henv = bench_env(CGCTL_HOOK_RUN_DIR=os.path.join(wd, "run"),
                             CGCTL_CONFIG=os.path.join(wd, "none.toml"))
            probe = Probe("qemu", g.name, dict(a.split("=", 1) for a in SETTINGS))

            def call(op, subop):
                def once(_i):
                    t0 = time.perf_counter()
                    p = subprocess.run([script, g.name, op, subop, "-"], input=xml,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=henv)
                    dt = (time.perf_counter() - t0) * 1000
                    if p.returncode or p.stdout:
                        raise RuntimeError(f"hook {op} {subop}: exit {p.returncode}, stdout "
                                           f"{p.stdout[:200]!r}, stderr {p.stderr[:300]!r}")
                    return dt
                return once

            def virsh_start(_i):
                sb.destroy(plain.name)
                t0 = time.perf_counter()
                sb.start_guest(plain.name)
                return (time.perf_counter() - t0) * 1000

            contenders = {f"{op} {subop}": call(op, subop) for op, subop in HOOK_CALLS}
            contenders["virsh start (no hook)"] = virsh_start
            got = interleave(contenders, runs)
            time.sleep(0.5)  # the last early applier (detached) finishes
            applied = probe.ok()
        finally:
            for name in (g.name, plain.name):
                try:
                    sb.remove(name)
                except Exception:
                    wait_libvirtd()
                    sb.remove(name)
    calls = {k: summary(v) for k, v in got.items()}
    added = sum(calls[f"{op} {subop}"]["median_ms"] for op, subop in START_CALLS)
    return {"calls": calls, "added_to_start_ms": round(added, 1),
            "virsh_start_ms": calls["virsh start (no hook)"]["median_ms"],
            "config_in_force_after": applied,
            "method": "installed hook script run as libvirt runs it (libvirtd not restarted)"}


def run(runs: int = 10) -> dict:
    need_root()
    compile_repo()
    data: Dict[str, object] = {}
    with sandbox() as sb:
        data["event"] = {k: event_latency(sb, k, runs) for k in ("qemu", "lxc")}
        data["hook"] = hook_cost(sb, runs)
    path = write_result("events", data)
    print(report(data))
    print(f"(results: {path})")
    return data


def report(d: dict) -> str:
    rows = []
    for kind, r in d["event"].items():
        e, s = r["event_to_applied"] or {}, r["service_log_ms"] or {}
        rows.append([kind, len(r["runs"]), e.get("median_ms"), e.get("p90_ms"),
                     s.get("median_ms"), r["virsh_start"]["median_ms"],
                     r["start_call_to_applied"]["median_ms"], r["never_applied"]])
    out = ["== event -> applied (3 settings; ms; monotonic clock of this host)",
           table(rows, ["GUEST", "RUNS", "EVENT->APPLIED med", "p90", "SERVICE LOG med",
                        "virsh start med", "START CALL->APPLIED med", "NEVER"]), ""]
    h = d["hook"]
    rows = [[k, v["runs"], v["median_ms"], v["p90_ms"]] for k, v in h["calls"].items()]
    out += ["== the hook, one call as libvirt makes it (installed script, XML on stdin; ms)",
            table(rows, ["CALL", "RUNS", "median", "p90"]),
            f"added to virsh start (prepare+start+started): {h['added_to_start_ms']} ms "
            f"= {h['added_to_start_ms'] / h['virsh_start_ms']:.2f}x of virsh start without hook "
            f"({h['virsh_start_ms']} ms); config in force afterwards: {h['config_in_force_after']}"]
    return "\n".join(out)


if __name__ == "__main__":
    try:
        run(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
    except Skip as e:
        print(f"skipped: {e}")

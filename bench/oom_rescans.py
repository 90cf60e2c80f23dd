"""The OOM watcher's cost when libvirtd rewrites a running guest's status file
(``flock /tmp/cgctl-libvirt.lock .venv/bin/python -m bench.oom_rescans --runs 30``).

A running QEMU guest of the sandbox, cgctl/service/oomwatch.py's watcher in a thread of this
process (as in the service), then RUNS ``virsh memtune --live`` (each one makes libvirtd
rewrite the guest's ``/run/libvirt/qemu/NAME.xml``): the watcher's rescans and its thread's
CPU time, once as it is and once with every run-dir change rescanning (how it was before).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import qemu_guest, sandbox, time_process  # noqa: E402


def _thread_cpu_s(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(g, runs: int, every_change: bool) -> dict:
    from cgctl.service import oomwatch
    stopping = threading.Event()
    w = oomwatch.OomWatch()
    if every_change:
        w._may_start_or_stop = lambda wd, name: True
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    end = time.monotonic() + 10
    while not w.guests and time.monotonic() < end:
        time.sleep(0.05)
    r0, c0 = w.rescans, _thread_cpu_s(t.native_id)
    for i in range(runs):
        time_process(["virsh", "-q", "-c", "qemu:///system", "memtune", g.name, "--hard-limit",
                      str((300 + i % 2) * 1024), "--live"])
    time.sleep(1)
    out = {"watched": len(w.guests), "rescans": w.rescans - r0,
           "cpu_s": round(_thread_cpu_s(t.native_id) - c0, 3)}
    w.stop()
    stopping.set()
    t.join(5)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.oom_rescans")
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args(argv)
    with sandbox() as sb, qemu_guest(sb) as g:
        for label, every in (("every change rescans (before)", True), ("now", False),
                             ("every change rescans (before)", True), ("now", False)):
            print(f"{label:32s} {measure(g, a.runs, every)}  load {os.getloadavg()[0]:.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

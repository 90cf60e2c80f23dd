"""A 1,000-guest reconcile that applies, and STARTED events arriving during it, interleaved
between trees: ``.venv/bin/python -m bench.reconcile_events [--runs 3] [--guests 1000]
[--events 5] [--tree LABEL=DIR ...]`` (root; real v1 cgroups, libvirt's test driver).

Each run is one ``bench/reconcile_sim.py`` child (this checkout's file, so the event injector is
the same for every tree) run against a tree's ``cgctl`` package (default: this checkout), e.g.
``git archive HEAD~1 cgctl tests | tar -x -C /tmp/before`` then ``--tree before=/tmp/before
--tree after=.``. Reports the first pass's time (every guest applies) and, for the E events of
every run, the time from the job's queueing to its apply done (reconcile_sim.EventInjector).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import uuid as uuidlib

from bench.common import bench_env, pct, write_result

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM = os.path.join(REPO, "bench", "reconcile_sim.py")
CHILD = ("import importlib.util, json, sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; "
         "spec = importlib.util.spec_from_file_location('reconcile_sim', sys.argv[3]); "
         "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
         "print(json.dumps(m.main(int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))))")


def one(tree: str, n: int, events: int) -> dict:
    sys.path.insert(0, REPO)
    from bench import reconcile_sim
    from cgctl.cgroup import hierarchy
    mounts = [m for m, _ in reconcile_sim.hierarchies(hierarchy.detect())]
    parent = f"cgctl-bench-rec-{uuidlib.uuid4().hex[:8]}"
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(tree), REPO, SIM,
                            str(n), parent, str(events)], capture_output=True, text=True,
                           timeout=900, cwd=tree, env=bench_env())
    finally:  # the child removes its groups; this is for a child that died
        reconcile_sim.remove_parent(mounts, parent)
    if r.returncode:
        raise RuntimeError(f"reconcile_sim in {tree}: exit {r.returncode}: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(runs: int = 3, n: int = 1000, events: int = 5, trees=None) -> dict:
    trees = trees or {"this": REPO}
    got = {label: [] for label in trees}
    for i in range(runs):
        for label, tree in trees.items():
            out = one(tree, n, events)
            if out["guests_without_their_values"]:
                raise RuntimeError(f"{label}: guests without their values: {out}")
            got[label].append(out)
            print(f"run {i + 1} {label}: first pass {out['first_pass_s']} s, second "
                  f"{out['second_pass_s']} s, events ms {out.get('event_ms')}", flush=True)
    data = {}
    print(f"\n| tree | 1st pass s, median (min–max) | 2nd pass s | event → applied ms, median "
          f"| p90 | max | events |")
    print("|---|---|---|---|---|---|---|")
    for label, outs in got.items():
        first = [o["first_pass_s"] for o in outs]
        second = [o["second_pass_s"] for o in outs]
        ev = [x for o in outs for x in o.get("event_ms", [])]
        data[label] = {"first_pass_s": first, "second_pass_s": second, "event_ms": ev}
        print(f"| {label} | {statistics.median(first):.3f} ({min(first):.3f}–{max(first):.3f}) "
              f"| {statistics.median(second):.3f} | {statistics.median(ev):.1f} "
              f"| {pct(ev, 90):.1f} | {max(ev):.1f} | {len(ev)} |")
    with open("/proc/loadavg") as f:
        data["loadavg"] = f.read().split()[:3]
    print("load average", data["loadavg"])
    write_result("reconcile_events", data)
    return data


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="bench.reconcile_events")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--guests", type=int, default=1000)
    ap.add_argument("--events", type=int, default=5)
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR")
    a = ap.parse_args()
    run(a.runs, a.guests, a.events, dict(t.split("=", 1) for t in a.tree) or None)

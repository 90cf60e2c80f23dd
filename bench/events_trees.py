"""Event → applied (part A of bench/events.py, QEMU) with the service child running each tree's
``cgctl``, in alternating blocks: ``cd /tmp && REPO/.venv/bin/python REPO/bench/events_trees.py
[--blocks 2] [--runs 10] --tree before=DIR --tree after=REPO`` (root; run it from a directory
without a ``cgctl`` package: the service child's working directory comes first on its
``sys.path``, then ``PYTHONPATH`` = the tree). E.g. ``git archive HEAD~1 cgctl | tar -x -C
/tmp/before``. Prints each block and the median, p90, p99 of every tree's runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def run(trees: dict, blocks: int = 2, runs: int = 10) -> dict:
    import tests.daemonkit as dk
    from bench import events
    from bench.common import pct, sandbox, write_result
    current = {}
    init = dk.Subprocess.__init__

    def with_tree(self, args, env_extra=None, log_path=None, wrapper=()):
        init(self, args, dict(env_extra or {}, PYTHONPATH=current["tree"]), log_path, wrapper)
    dk.Subprocess.__init__ = with_tree
    got = {k: [] for k in trees}
    steps = {k: {n: [] for n in events.STEP_NAMES} for k in trees}
    try:
        with sandbox() as sb:
            for _ in range(blocks):
                for label, tree in trees.items():
                    current["tree"] = os.path.abspath(tree)
                    r = events.event_latency(sb, "qemu", runs)
                    got[label] += [x["event_to_applied_ms"] for x in r["runs"]
                                   if x["event_to_applied_ms"] is not None]
                    for n, v in r.get("service_steps_ms", {}).items():
                        steps[label][n] += v
                    print(label, r["event_to_applied"], "service log:", r["service_log_ms"],
                          flush=True)
    finally:
        dk.Subprocess.__init__ = init
    out = {}
    for label, ms in got.items():
        out[label] = {"runs": ms, "median_ms": statistics.median(ms), "p90_ms": pct(ms, 90),
                      "p99_ms": pct(ms, 99)}
        print(f"{label}: n {len(ms)} median {statistics.median(ms):.2f} p90 {pct(ms, 90):.2f} "
              f"p99 {pct(ms, 99):.2f} ms")
        for n, v in steps[label].items():  # the service's own stamps (trees that have them)
            if v:
                out[label].setdefault("service_steps", {})[n] = {
                    "median_ms": statistics.median(v), "p99_ms": pct(v, 99), "max_ms": max(v)}
                print(f"  service step {n}: median {statistics.median(v):.3f} "
                      f"p99 {pct(v, 99):.3f} max {max(v):.3f} ms")
    with open("/proc/loadavg") as f:
        out["loadavg"] = f.read().split()[:3]
    write_result("events_trees", out)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="bench.events_trees")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--tree", action="append", required=True, metavar="LABEL=DIR")
    a = ap.parse_args()
    run(dict(t.split("=", 1) for t in a.tree), a.blocks, a.runs)

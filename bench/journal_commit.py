"""The journal's commit latency: ``.venv/bin/python -m bench.journal_commit [--commits 500]``.

One transaction = one config row + one history row (what a `--config` change writes), with
``synchronous=FULL`` as cgctl runs it, then with ``synchronous=OFF`` for comparison only (cgctl
never uses it: the difference is the flush); and opening an existing journal for one read.
The journal lives in a temporary directory under /var/tmp (a real disk, not tmpfs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from bench.common import write_result
from cgctl.core.journal import Journal

UUID = "00000000-0000-4000-8000-000000000001"


def _commits(j: Journal, n: int) -> dict:
    lat = []
    for i in range(n):
        t = time.perf_counter()
        with j.transaction() as tx:
            tx.set_config(UUID, "bench", "qemu", {("hard_limit", ""): f"{i + 1}M"})
            tx.add_history(UUID, "bench", command="set", source="cli", mode="config",
                           changes=[("hard_limit", "", None, f"{i + 1}M")])
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return {"median_ms": round(statistics.median(lat), 3), "p90_ms": round(lat[int(n * .9)], 3)}


def run(n: int = 500) -> dict:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        path = os.path.join(d, "journal.db")
        j = Journal(path, create=True)
        full = _commits(j, n)
        j._db.execute("PRAGMA synchronous = OFF")   # comparison only
        off = _commits(j, n)
        j.close()
        opens = []
        for _ in range(50):
            t = time.perf_counter()
            with Journal(path, create=False) as r:
                r.get_config(UUID)
            opens.append((time.perf_counter() - t) * 1000)
    data = {"commits": n, "synchronous_full": full, "synchronous_off": off,
            "open_and_read_ms": round(statistics.median(opens), 3)}
    path = write_result("journal_commit", data)
    print(f"commit, synchronous=FULL: median {full['median_ms']} ms, p90 {full['p90_ms']} ms\n"
          f"commit, synchronous=OFF:  median {off['median_ms']} ms, p90 {off['p90_ms']} ms\n"
          f"open an existing journal + one read: {data['open_and_read_ms']} ms\n(results: {path})")
    return data


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=500)
    run(ap.parse_args().commits)

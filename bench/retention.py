"""The history retention's cost (Journal.prune_history, what the service runs hourly and
`cgctl prune` runs): a journal of 1,000 guests and 200,000 history rows in a temporary file.

    .venv/bin/python -m bench.retention

Prints the time of a prune with nothing to remove (the hourly case once the journal is within
its retention), of one removing the rows beyond 100 per guest, and of one removing the rows
older than 30 days; median of 5 runs each on fresh copies.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import uuid as uuidlib
from datetime import datetime, timedelta, timezone

from cgctl.core.journal import Journal

GUESTS, ROWS = 1000, 200_000


def build(path: str) -> None:
    start = datetime.now(timezone.utc) - timedelta(days=60)
    uuids = [str(uuidlib.uuid4()) for _ in range(GUESTS)]
    with Journal(path) as j, j.transaction() as tx:
        for i, u in enumerate(uuids):
            tx.set_config(u, f"g{i}", "qemu", {("cpu_shares", ""): "512"})
        for n in range(ROWS):
            u = uuids[n % GUESTS]
            tx.add_history(u, "g", command="drift repair", source="reconcile", mode="live",
                           changes=[("cpu_shares", "", "1", str(n % 7))], user="bench",
                           at=start + timedelta(seconds=n * 60 * 86400 // ROWS))


def timed(src: str, **kw) -> float:
    times = []
    for _ in range(5):
        d = tempfile.mkdtemp(prefix="cgctl-ret-")
        try:
            p = os.path.join(d, "j.db")
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(src + suffix):
                    shutil.copy(src + suffix, p + suffix)
            with Journal(p) as j:
                t0 = time.perf_counter()
                j.prune_history(**kw)
                times.append(time.perf_counter() - t0)
        finally:
            shutil.rmtree(d)
    return statistics.median(times) * 1000


def main() -> None:
    d = tempfile.mkdtemp(prefix="cgctl-ret-")
    try:
        src = os.path.join(d, "j.db")
        build(src)
        print(f"journal: {GUESTS} guests, {ROWS:,} history rows over 60 days")
        print(f"nothing to remove (365 days, 1,000 rows/guest): "
              f"{timed(src, keep_days=365, keep_rows=1000):.1f} ms")
        print(f"beyond 100 rows per guest (100,000 rows go): {timed(src, keep_rows=100):.1f} ms")
        print(f"older than 30 days (~100,000 rows go): {timed(src, keep_days=30):.1f} ms")
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()

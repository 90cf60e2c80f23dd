"""Where the service's slow RSS growth over many starts comes from: the journal's SQLite page
cache. ``python -m bench.journal_rss [CYCLES]`` does what one apply does to the journal
(read the config, one transaction: 3 history rows + the instance), CYCLES times (5,000) on a
temporary journal, and prints this process's VmRSS and the journal's size every 500 cycles.
RSS follows the file until SQLite's page cache reaches its ``cache_size`` (default 2,000 KiB
per connection), then stays flat."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from bench.common import REPO  # noqa: F401  (the checkout on sys.path)
from bench.service import status_kib


def main(cycles: int = 5000) -> None:
    from cgctl.core.journal import Journal
    d = tempfile.mkdtemp(prefix="cgctl-journal-rss-")
    try:
        path, uuid = os.path.join(d, "journal.db"), "6ba0895f-fa92-4fae-88dc-fcb92a3e5016"
        with Journal(path) as j:
            with j.transaction() as tx:
                tx.set_config(uuid, "g", "lxc", {("cpu_shares", ""): "777"})
            print("cycle  VmRSS KiB  journal KiB")
            for i in range(1, cycles + 1):
                j.get_config(uuid)
                with j.transaction() as tx:
                    tx.add_history(uuid, "g", command="event", source="event", mode="live",
                                   changes=[("cpu_shares", "", "1024", "777"),
                                            ("hard_limit", "", "64M", "300M"),
                                            ("global_quota", "", "-1", "50000")])
                    tx.set_instance(uuid, 1000 + i, float(i))
                if i % 500 == 0:
                    print(f"{i:5}  {status_kib(os.getpid(), 'VmRSS'):9}  "
                          f"{os.path.getsize(path) // 1024:11}", flush=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)

"""Live migration with cgctl's settings, between two real libvirt hosts on this machine:
how long `virsh migrate --live` takes and how long before the destination's vCPUs resume its
hook had the limits in force (negative exposure: none).

    .venv/bin/python -m bench.migration [--runs 5]

Each run is one run of the two-host test that migrates a guest with permanent, static and
dynamic settings (tests/libvirt/test_twohost.py, which also asserts the order); the figures are
the line it prints. Needs root and takes the libvirt test lock (/tmp/cgctl-libvirt.lock).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST = ("tests/libvirt/test_twohost.py::"
        "test_live_migration_carries_permanent_and_dynamic_settings_static_at_next_start")
LINE = re.compile(r"live migration ([\d.]+) s; .* apply -> RESUMED/MIGRATED (-?[\d.]+) ms")


def one_run() -> tuple:
    r = subprocess.run(["flock", "/tmp/cgctl-libvirt.lock", sys.executable, "-m", "pytest",
                        "-p", "no:cacheprovider", "-q", "-s", TEST], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    m = LINE.search(r.stdout)
    if r.returncode != 0 or not m:
        raise SystemExit(f"bench.migration: the two-host run failed:\n{r.stdout[-2000:]}")
    return float(m.group(1)), float(m.group(2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.migration")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    runs = [one_run() for _ in range(args.runs)]
    walls, margins = [w for w, _ in runs], [m for _, m in runs]
    print(f"{args.runs} runs: virsh migrate --live median {statistics.median(walls):.2f} s "
          f"(max {max(walls):.2f}); limits in force before the vCPUs resumed by median "
          f"{statistics.median(margins):.0f} ms (min {min(margins):.0f} ms; exposure "
          f"{max(0.0, -min(margins)):.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

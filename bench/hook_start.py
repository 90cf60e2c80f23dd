"""The hook's added time to ``virsh start``, end to end inside a real libvirtd.

    .venv/bin/python -m bench.hook_start [--runs 10] [--no-early-apply]   (root; RESTARTS libvirtd)

libvirtd reads its hooks directory only when it starts, so this benchmark restarts the
sandbox's libvirtd: run it only when the machine's libvirtd is yours (the sandbox started by
the benchmark itself, or by ``python -m tests.harness.libvirtd start``, with no other tests on
it). Blocks, alternated to cancel drift: without the hook, with it (``cgctl hook install`` into
/etc/libvirt/hooks, libvirtd restarted), without, with; each block times ``virsh start`` of the
tiny QEMU guest (config of three settings in the journal) ``runs`` times, with ``virsh destroy``
between. With the hook installed, every start is also checked to have its settings in force
when ``virsh start`` returns. The hook is uninstalled and libvirtd restarted at the end, even
on failure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench.common import bench_env, compile_repo, need_root, sandbox, summary, table, write_result
from bench.service import Probe, cgctl_config, workdir

SETTINGS = ["hard_limit=300M", "cpu_shares=777", "global_quota=50000"]


def _cgctl(*args, env):
    r = subprocess.run([sys.executable, "-m", "cgctl.cli", *args], capture_output=True,
                       text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"cgctl {' '.join(args)}: {r.stderr.strip()}")
    return r


def _block(sb, guest, runs, probe=None):
    times, missed = [], 0
    for _ in range(runs):
        sb.destroy(guest.name)
        t0 = time.perf_counter()
        sb.start_guest(guest.name)
        times.append((time.perf_counter() - t0) * 1000)
        if probe is not None and not probe.ok():
            missed += 1
    sb.destroy(guest.name)
    return times, missed


def run(runs: int = 10, early: bool = True) -> dict:
    need_root()
    compile_repo()
    env = bench_env()
    with sandbox() as sb, workdir("cgctl-bench-hookstart-") as wd:
        journal = os.path.join(wd, "journal.db")
        guest = sb.new_guest("qemu", start=False)
        probe = Probe("qemu", guest.name, dict(a.split("=", 1) for a in SETTINGS))
        plain, hooked, missed = [], [], 0
        try:
            cgctl_config(journal, guest.name, SETTINGS)
            for _round in range(2):
                plain += _block(sb, guest, runs)[0]
                _cgctl("hook", "install", "--journal", journal, "--drivers", "qemu",
                       *([] if early else ["--no-early-apply"]), env=env)
                sb.restart_libvirtd()
                t, m = _block(sb, guest, runs, probe)
                hooked += t
                missed += m
                _cgctl("hook", "uninstall", "--drivers", "qemu", env=env)
                sb.restart_libvirtd()
        finally:
            subprocess.run([sys.executable, "-m", "cgctl.cli", "hook", "uninstall", "--drivers",
                            "qemu"], capture_output=True, env=env)
            sb.restart_libvirtd()
            sb.remove(guest.name)
    data = {"runs_per_block": runs, "early_applier": early, "without_hook": summary(plain), "with_hook": summary(hooked),
            "starts_without_settings": missed}
    data["added_ms"] = round(data["with_hook"]["median_ms"] - data["without_hook"]["median_ms"], 1)
    path = write_result("hook_start" if early else "hook_start-no-early", data)
    rows = [["virsh start, no hook", data["without_hook"]["median_ms"],
             data["without_hook"]["p90_ms"]],
            ["virsh start, cgctl hook installed", data["with_hook"]["median_ms"],
             data["with_hook"]["p90_ms"]]]
    print(table(rows, ["HOW", "median ms", "p90 ms"]))
    print(f"added by the hook: {data['added_ms']} ms; starts with a setting missing when "
          f"virsh start returned: {missed} of {len(hooked)}\n(results: {path})")
    return data


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-early-apply", action="store_true",
                    help="install the hook without its early applier (started begin only)")
    a = ap.parse_args()
    run(a.runs, early=not a.no_early_apply)

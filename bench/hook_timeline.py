"""Where a ``virsh start`` spends its time when the cgctl hook is installed, from libvirt itself.

    .venv/bin/python -m bench.hook_timeline [--runs 6] [--no-early-apply] [--settings P=V ...]
    (root; RESTARTS libvirtd)

Two tiny extra hook scripts, ``00-ts`` and ``zz-ts``, sit beside cgctl's in
/etc/libvirt/hooks/qemu.d: libvirt runs a directory's scripts in name order for each call, so
they stamp the time just before and just after cgctl's part of every call. Together with
stamps around ``virsh start`` that gives, per start: how long each hook call takes inside real
libvirt (prepare, start, started begin), and the gap between ``start begin`` and
``started begin`` (libvirt launching QEMU), which shows whether the early applier, running
detached in that gap, slows the launch. Unlike bench/hook_start.py (blocks of starts with and
without the hook, sensitive to drift on a shared machine), every figure here comes from the
same start. The hook and the stamps are removed and libvirtd restarted at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from bench.common import bench_env, compile_repo, need_root, sandbox, table, write_result
from bench.service import cgctl_config, workdir

HOOKS = "/etc/libvirt/hooks/qemu.d"
SETTINGS = ["hard_limit=300M", "cpu_shares=777", "global_quota=50000"]


def _stamps(log: str):
    for name, tag in (("00-ts", "in"), ("zz-ts", "out")):
        path = os.path.join(HOOKS, name)
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\necho "$(date +%s.%N) {tag} $2 $3" >> {log}\n')
        os.chmod(path, 0o755)


def _parse(log: str):
    starts, cur = [], None
    with open(log) as f:
        for line in f:
            t, *what = line.split()
            t, what = float(t), " ".join(what)
            if what == "VIRSH-START":
                cur = {"t0": t}
                starts.append(cur)
            elif cur is not None:
                cur.setdefault(what, t)
    out = []
    for s in starts:
        t0 = s["t0"]
        try:
            out.append({
                "prepare_ms": (s["out prepare begin"] - s["in prepare begin"]) * 1000,
                "start_ms": (s["out start begin"] - s["in start begin"]) * 1000,
                "started_ms": (s["out started begin"] - s["in started begin"]) * 1000,
                "launch_gap_ms": (s["in started begin"] - s["out start begin"]) * 1000,
                "virsh_start_ms": (s["VIRSH-DONE"] - t0) * 1000,
            })
        except KeyError:
            continue  # a start the stamps did not fully see
    return out


def run(runs: int = 6, early: bool = True, settings=None) -> dict:
    settings = list(settings or SETTINGS)
    need_root()
    compile_repo()
    env = bench_env()
    cg = [sys.executable, "-m", "cgctl.cli"]
    with sandbox() as sb, workdir("cgctl-bench-timeline-") as wd:
        journal, log = os.path.join(wd, "journal.db"), os.path.join(wd, "stamps.log")
        guest = sb.new_guest("qemu", start=False)
        try:
            cgctl_config(journal, guest.name, settings)
            subprocess.run(cg + ["hook", "install", "--journal", journal, "--drivers", "qemu"]
                           + ([] if early else ["--no-early-apply"]), check=True,
                           capture_output=True, env=env)
            _stamps(log)
            sb.restart_libvirtd()
            for _ in range(runs):
                sb.destroy(guest.name)
                with open(log, "a") as f:
                    f.write(f"{time.time():.6f} VIRSH-START\n")
                sb.start_guest(guest.name)
                with open(log, "a") as f:
                    f.write(f"{time.time():.6f} VIRSH-DONE\n")
            rows = _parse(log)
        finally:
            subprocess.run(cg + ["hook", "uninstall", "--drivers", "qemu"], capture_output=True,
                           env=env)
            for name in ("00-ts", "zz-ts"):
                try:
                    os.unlink(os.path.join(HOOKS, name))
                except FileNotFoundError:
                    pass
            sb.restart_libvirtd()
            sb.remove(guest.name)
    med = {k: round(statistics.median(r[k] for r in rows), 1) for k in rows[0]} if rows else {}
    data = {"early_applier": early, "settings": settings, "starts": len(rows), "median": med,
            "runs": rows}
    name = "hook_timeline" + ("" if early else "-no-early") + \
        ("" if settings == SETTINGS else "-" + "-".join(a.split("=")[0] for a in settings))
    path = write_result(name, data)
    print(table([[k, v] for k, v in med.items()], ["median over starts", "ms"]))
    print(f"early applier: {early}; starts: {len(rows)}\n(results: {path})")
    return data


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--no-early-apply", action="store_true")
    ap.add_argument("--settings", nargs="+", metavar="PARAM=VALUE",
                    help=f"the guest's journal config (default: {' '.join(SETTINGS)})")
    a = ap.parse_args()
    run(a.runs, early=not a.no_early_apply, settings=a.settings)

"""Benchmark 3: how time and memory grow with the number of guests.

A. ``cgctl list``, ``show`` and ``history`` against a journal holding 10, 100 and 1,000 guests and
   100,000 history rows in all (made with the journal API in a temporary file); the guest that
   ``show`` reads is a real running QEMU guest whose config is in the same journal. Wall time and
   the child's peak RSS (``wait4`` rusage).
B. Applying a config to 10, 100 and 1,000 simulated guests: real v1 cgroup groups shaped like
   libvirt's (``qemu-N-NAME.libvirt-qemu/{emulator,vcpu0}``) under a unique parent, written with
   the engine (``live.set_live``), removed afterwards.
C. The service reconciling 10, 100 and 1,000 running guests: real cgroup groups each holding a
   process, the domains from libvirt's ``test:///default`` driver, and the service's own
   ``Daemon._reconcile`` with a real Controller and journal; one child process per N
   (bench/reconcile_sim.py says exactly what is real), time and memory of two passes.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from typing import Dict, List

from bench.common import (REPO, VENV_CGCTL, Skip, bench_env, compile_repo, need_root, qemu_guest,
                          sandbox, summary, table, write_result)

SIZES = (10, 100, 1000)
HISTORY_ROWS = 100_000


def _measure(argv, env, runs=5):
    """(median wall ms, max peak RSS KiB) of a command. The RSS comes from GNU time, a small C
    parent: a child forked from this big Python process would report this process's RSS (Linux
    carries the high-water mark across exec)."""
    ts, rss = [], []
    with tempfile.NamedTemporaryFile("r", prefix="cgctl-rss-") as out:
        for _ in range(runs):
            t0 = time.perf_counter()
            r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out.name, *argv], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            ts.append((time.perf_counter() - t0) * 1000)
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: "
                                   f"{r.stderr.decode(errors='replace').strip()}")
            out.seek(0)
            rss.append(int(out.read().split()[-1]))
    return statistics.median(ts), max(rss)


def _fill_journal(path: str, n: int, real) -> None:
    from cgctl.core.journal import Journal
    rows_per_guest = HISTORY_ROWS // (n + 1)
    with Journal(path) as j:
        guests = [(str(uuidlib.uuid4()), f"sim-{i:05d}") for i in range(n)] + [real]
        for uuid, name in guests:
            with j.transaction() as tx:
                # the journal's canonical spelling (a bare memory number would mean KiB)
                tx.set_config(uuid, name, "qemu", {("hard_limit", ""): "1G",
                                                   ("cpu_shares", ""): "512",
                                                   ("device_read_bytes_sec", "/dev/vda"): "10M"})
                tx.add_history(uuid, name, command="set", source="cli", mode="live+config",
                               changes=[("cpu_shares", "", str(i), str(i + 1))
                                        for i in range(rows_per_guest)])
        with j.transaction() as tx:  # top up to exactly HISTORY_ROWS
            left = HISTORY_ROWS - rows_per_guest * len(guests)
            tx.add_history(real[0], real[1], command="set", source="cli", mode="live",
                           changes=[("hard_limit", "", "1", "2")] * left)
        assert len(j.history()) == HISTORY_ROWS


def cli_scale(env) -> List[dict]:
    out = []
    with sandbox() as sb, qemu_guest(sb) as g, tempfile.TemporaryDirectory(prefix="cgctl-scale-") as tmp:
        for n in SIZES:
            path = os.path.join(tmp, f"journal-{n}.db")
            _fill_journal(path, n, (g.uuid, g.name))
            base = [str(VENV_CGCTL), "--journal", path]
            row = {"guests": n, "history_rows": HISTORY_ROWS,
                   "journal_mib": round(os.path.getsize(path) / 2**20, 1)}
            for label, args in (("list", ["list"]), ("list --json", ["--json", "list"]),
                                ("show", ["show", g.name]),
                                ("history GUEST --limit 50", ["history", g.name, "--limit", "50"]),
                                ("history --limit 1000", ["history", "--limit", "1000"])):
                ms, rss = _measure(base + args, env)
                row[label] = {"ms": round(ms, 1), "peak_rss_mib": round(rss / 1024, 1)}
            out.append(row)
    return out


# -- B: the engine on many simulated guests ------------------------------------------------

def _mk(path):
    os.mkdir(path)
    return path


def _rm_tree(path):
    if not os.path.isdir(path):
        return
    for d, subdirs, _ in os.walk(path, topdown=False):
        for s in subdirs:
            os.rmdir(os.path.join(d, s))
    os.rmdir(path)


def engine_scale() -> List[dict]:
    from cgctl.cgroup import hierarchy
    from cgctl.core import live
    from cgctl.model import params as P
    from cgctl.cgroup import Router
    from cgctl.cgroup.groups import GuestGroups
    host = hierarchy.detect()
    mounts = {c: host.owner(c).mountpoint for c in ("memory", "cpu", "io") if host.has(c)}
    if any(host.owner(c).version != 1 for c in mounts):
        raise Skip("engine scale is written for v1 hierarchies (the development machine)")
    router = Router(host)
    settings = P.parse_assignments(["hard_limit=512M", "soft_limit=256M", "cpu_shares=512",
                                    "global_quota=50000", "vcpu_quota=25000", "weight=200"])
    parent_name = f"cgctl-bench-{uuidlib.uuid4().hex[:8]}"
    parents = {c: os.path.join(m, parent_name) for c, m in mounts.items()}
    out = []
    try:
        for p in parents.values():
            _mk(p)
        for n in SIZES:
            t0 = time.perf_counter()
            groups = []
            for i in range(n):
                gname = f"qemu-{i + 1}-sim{n}-{i}.libvirt-qemu"
                machine = {}
                for c, p in parents.items():
                    d = _mk(os.path.join(p, gname))
                    if c == "cpu":
                        _mk(os.path.join(d, "emulator"))
                        _mk(os.path.join(d, "vcpu0"))
                    machine[c] = (mounts[c], d)
                groups.append(GuestGroups(guest=f"sim{n}-{i}", driver="qemu", machine=machine))
            made = time.perf_counter() - t0
            per = []
            t0 = time.perf_counter()
            for gg in groups:
                t = time.perf_counter()
                live.set_live(router, gg, settings)
                per.append((time.perf_counter() - t) * 1000)
            total = time.perf_counter() - t0
            with open(os.path.join(groups[-1].machine_dir("cpu"), "vcpu0", "cpu.cfs_quota_us")) as f:
                assert f.read().strip() == "25000"
            t0 = time.perf_counter()
            for c, p in parents.items():
                for gg in groups:
                    _rm_tree(gg.machine_dir(c))
            removed = time.perf_counter() - t0
            out.append({"guests": n, "apply_total_s": round(total, 3),
                        "apply_per_guest": summary(per),
                        "groups_made_s": round(made, 2), "groups_removed_s": round(removed, 2)})
    finally:
        for p in parents.values():
            _rm_tree(p)
    return out


# -- C: the service's reconcile over many simulated running guests ----------------------------

def reconcile_scale(sizes=SIZES) -> List[dict]:
    import json
    from bench import reconcile_sim
    from cgctl.cgroup import hierarchy
    mounts = [m for m, _ in reconcile_sim.hierarchies(hierarchy.detect())]
    out = []
    for n in sizes:
        parent = f"cgctl-bench-rec-{uuidlib.uuid4().hex[:8]}"
        try:
            r = subprocess.run([sys.executable, "-m", "bench.reconcile_sim", str(n), parent],
                               capture_output=True, text=True, timeout=600, cwd=str(REPO),
                               env=bench_env())
        finally:  # the child removes its groups; this is for a child that died
            reconcile_sim.remove_parent(mounts, parent)
        if r.returncode:
            raise RuntimeError(f"reconcile_sim {n}: exit {r.returncode}: {r.stderr.strip()[-2000:]}")
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def run(parts=("cli", "engine", "reconcile")) -> dict:
    need_root()
    if not os.access("/usr/bin/time", os.X_OK):
        raise Skip("needs GNU time (/usr/bin/time, Debian package 'time') for peak RSS")
    compile_repo()
    env = bench_env()
    data = {}
    if "cli" in parts:
        data["cli"] = cli_scale(env)
    if "engine" in parts:
        data["engine"] = engine_scale()
    if "reconcile" in parts:
        data["reconcile"] = reconcile_scale()
    path = write_result("scale" if set(parts) >= {"cli", "engine", "reconcile"}
                        else "scale-" + "-".join(parts), data)
    print(report(data))
    print(f"(results: {path})")
    return data


def report(d: dict) -> str:
    labels = ["list", "list --json", "show", "history GUEST --limit 50", "history --limit 1000"]
    rows = []
    for r in d.get("cli", []):
        for lab in labels:
            rows.append([r["guests"], lab, r[lab]["ms"], r[lab]["peak_rss_mib"]])
    out = []
    if rows:
        out += [f"== cgctl reads: journal with N guests and {HISTORY_ROWS:,} history rows "
                "(median of 5)", table(rows, ["GUESTS", "COMMAND", "MS", "PEAK RSS MiB"]), ""]
    rows = [[r["guests"], r["apply_total_s"], r["apply_per_guest"]["median_ms"],
             r["apply_per_guest"]["p90_ms"]] for r in d.get("engine", [])]
    if rows:
        out += ["== applying a 6-parameter config with the engine to N simulated guests "
                "(real v1 groups)", table(rows, ["GUESTS", "TOTAL s", "PER GUEST median ms",
                                                 "p90 ms"])]
    rows = [[r["guests"], r["list_ms"], r["first_pass_s"],
             round(r["first_pass_s"] * 1000 / r["guests"], 2), r["second_pass_s"],
             round(r["second_pass_s"] * 1000 / r["guests"], 2),
             round(r["rss_before_kib"] / 1024, 1), round(r["rss_after_first_kib"] / 1024, 1),
             round(r["rss_after_second_kib"] / 1024, 1), r["guests_without_their_values"]]
            for r in d.get("reconcile", [])]
    if rows:
        out += ["", "== the service's reconcile (Daemon._reconcile) over N running guests: "
                "real groups + processes, test:///default domains, 6 parameters each",
                table(rows, ["GUESTS", "LIST ms", "1st PASS s", "ms/guest", "2nd PASS s",
                             "ms/guest", "RSS before MiB", "after 1st", "after 2nd", "WRONG"])]
    for r in d.get("reconcile", []):
        out += [f"  {r['guests']}: {s}" for s in r["summaries"]]
    return "\n".join(out)


if __name__ == "__main__":  # python -m bench.scale [cli] [engine] [reconcile]
    run(tuple(sys.argv[1:]) or ("cli", "engine", "reconcile"))

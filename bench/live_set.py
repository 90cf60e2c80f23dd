"""Benchmark 1: one live memory limit change on a real running QEMU guest, four ways.

    cgctl set GUEST hard_limit=V --live          (whole process; installed layout and dev venv;
                                                  and handed to a running `cgctl daemon`)
    virsh memtune GUEST --hard-limit V --live
    cgset -r memory.limit_in_bytes=V machine/qemu-ID-GUEST.libvirt-qemu
    sh -c 'echo V > .../memory.limit_in_bytes'    (and an in-process os.write: the floor)

Then where cgctl's time goes: interpreter start, imports (``-X importtime``), the work itself
(``cli.main`` in a warm process), and the journal's commit (fsync).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

from bench.common import (REPO, VENV_CGCTL, VENV_PY, Skip, bench_env, compile_repo,
                          installed_cgctl, interleave, qemu_guest, sandbox, summary, table,
                          time_process, write_result)

GOAL = 0.6  # cgctl at most 0.6x virsh's time (the goal in docs/performance.md)
VALUES_MIB = (300, 310)  # alternate, so every run is a real change


def _memory_group(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if "memory" in ctrls.split(","):
                return path.lstrip("/")
    raise Skip("the guest has no v1 memory group (this benchmark is for a cgroup v1 host such as the development machine)")


def _median_process(argv, env, runs) -> float:
    return statistics.median(time_process(argv, env=env) for _ in range(runs))


def _importtime(py, argv, env) -> Dict[str, object]:
    r = subprocess.run([py, "-X", "importtime", *argv], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    mods = []
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            mods.append((m.group(4), int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2))
    top = [(name, cum) for name, _self, cum, depth in mods if depth == 0]
    own = sorted(((name, s) for name, s, _c, _d in mods), key=lambda x: -x[1])
    return {"modules": len(mods), "names": sorted(n for n, *_ in mods),
            "top_level_cumulative_us": sorted(top, key=lambda x: -x[1])[:12],
            "self_us_top": own[:15],
            "total_self_us": sum(s for _n, s, _c, _d in mods)}


def _warm_main_ms(py, guest, journal, env, runs) -> float:
    """cgctl's own work: cli.main() in a process whose imports are already done."""
    code = f"""
import time, statistics, sys, io, contextlib
import cgctl.cli.main as cli, cgctl.core.controller as controller
ts = []
for i in range({runs}):
    argv = ["--journal", {journal!r}, "set", {guest!r}, "hard_limit=%dM" % (320 + i % 2), "--live"]
    with contextlib.redirect_stdout(io.StringIO()):
        t = time.perf_counter(); rc = cli.main(argv); ts.append((time.perf_counter() - t) * 1000)
    assert rc == 0, rc
print(statistics.median(ts))
"""
    r = subprocess.run([py, "-c", code], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return float(r.stdout.strip())


def _commit_ms(journal_dir, runs) -> Dict[str, float]:
    """One journal transaction with one history row, as a --live change makes it (fsync'd)."""
    from cgctl.core.journal import Journal
    path = os.path.join(journal_dir, "commit.db")
    t_open = []
    t_commit = []
    for i in range(runs):
        t0 = time.perf_counter()
        j = Journal(path)
        t1 = time.perf_counter()
        with j.transaction() as tx:
            tx.upsert_guest("3a1d4c2e-0000-4000-8000-000000000001", "bench", "qemu")
            tx.add_history("3a1d4c2e-0000-4000-8000-000000000001", "bench", command="set",
                           source="cli", mode="live", changes=[("hard_limit", "", "1", str(i))])
        t2 = time.perf_counter()
        j.close()
        t_open.append((t1 - t0) * 1000)
        t_commit.append((t2 - t1) * 1000)
    return {"open_ms": round(statistics.median(t_open), 3),
            "commit_ms": round(statistics.median(t_commit), 3)}


def _raw_write_us(path, runs) -> float:
    ts = []
    for i in range(runs):
        data = str(VALUES_MIB[i % 2] << 20).encode()
        t = time.perf_counter()
        fd = os.open(path, os.O_WRONLY)
        os.write(fd, data)
        os.close(fd)
        ts.append((time.perf_counter() - t) * 1e6)
    return statistics.median(ts)


def run(runs: int = 40) -> dict:
    compile_repo()
    env = bench_env()
    with sandbox() as sb, qemu_guest(sb) as g, installed_cgctl() as inst, \
            tempfile.TemporaryDirectory(prefix="cgctl-bench-") as tmp:
        pid = sb.guest_pid(g.name)
        group = _memory_group(pid)
        limit_file = os.path.join("/sys/fs/cgroup/memory", group, "memory.limit_in_bytes")
        journal = os.path.join(tmp, "journal.db")
        inst_py, inst_cgctl = str(inst / "bin" / "python3"), str(inst / "bin" / "cgctl")

        def v(i):
            return VALUES_MIB[i % 2]

        contenders = {
            "cgctl (installed)": lambda i: time_process(
                [inst_cgctl, "--journal", journal, "set", g.name, f"hard_limit={v(i)}M", "--live"],
                env=env),
            "cgctl (dev venv, editable)": lambda i: time_process(
                [str(VENV_CGCTL), "--journal", journal, "set", g.name, f"hard_limit={v(i) + 1}M",
                 "--live"], env=env),
            "virsh memtune --live": lambda i: time_process(
                ["virsh", "-q", "-c", "qemu:///system", "memtune", g.name, "--hard-limit",
                 str((v(i) + 2) * 1024), "--live"], env=env),
            "cgset -r": lambda i: time_process(
                ["cgset", "-r", f"memory.limit_in_bytes={(v(i) + 3) << 20}", group], env=env),
            "sh -c 'echo > file'": lambda i: time_process(
                ["sh", "-c", f"echo {(v(i) + 4) << 20} > {limit_file}"], env=env),
        }
        # the same command while the service runs: bin/cgctl hands it over its socket
        # (cgctl/cli/fast.py) and the service, with everything imported, makes the change
        sock = os.path.join(tmp, "cmd.sock")
        # the journal by $CGCTL_JOURNAL: a `--journal` on the command line is not served (the
        # service runs only what means its own journal: cgctl/service/cmdserver.py refusal)
        svc_env = bench_env(CGCTL_SOCKET=sock, CGCTL_JOURNAL=journal)
        with open(os.path.join(tmp, "daemon.log"), "w") as daemon_log:
            daemon = subprocess.Popen([inst_cgctl, "daemon", "--journal", journal, "--config-file",
                                       os.path.join(tmp, "none.toml")], env=svc_env,
                                      stdout=daemon_log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while not os.path.exists(sock):
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError("the service did not open its command socket")
                time.sleep(0.05)
            contenders["cgctl via the service (cgctl daemon running)"] = lambda i: time_process(
                [inst_cgctl, "set", g.name, f"hard_limit={v(i) + 5}M", "--live"], env=svc_env)
            times = interleave(contenders, runs)
        finally:
            daemon.terminate()
            daemon.wait(20)
        with open(os.path.join(tmp, "daemon.log")) as f:
            served = f.read().count("served for pid")
        raw_us = _raw_write_us(limit_file, 1000)

        # where cgctl's time goes
        start = {}
        for label, py in (("dev venv", str(VENV_PY)), ("installed", inst_py)):
            start[label] = {
                "python -S -I -c pass": _median_process([py, "-S", "-I", "-c", "pass"], env, runs),
                "python -I -c pass": _median_process([py, "-I", "-c", "pass"], env, runs),
                "python -c pass": _median_process([py, "-c", "pass"], env, runs),
                "python -c 'import cgctl.cli.main as cli, cgctl.core.controller as controller'": _median_process(
                    [py, "-c", "import cgctl.cli.main as cli, cgctl.core.controller as controller"], env, runs),
            }
        imports = _importtime(inst_py, ["-m", "cgctl.cli", "--journal", journal, "set", g.name,
                                        "hard_limit=330M", "--live"], env)
        warm = _warm_main_ms(inst_py, g.name, journal, env, runs)
        commit = _commit_ms(tmp, runs)
        leaked = [n for n in imports["names"] if n.split(".")[0] in ("libvirt", "libvirtmod",
                                                                     "psutil", "pyudev")]
    res = {k: summary(t) for k, t in times.items()}
    virsh = res["virsh memtune --live"]["median_ms"]
    for k, r in res.items():
        r["ratio_vs_virsh"] = round(r["median_ms"] / virsh, 2)
    res["os.write in-process (open+write+close)"] = {"runs": 1000, "median_ms": round(raw_us / 1000, 4),
                                                     "p90_ms": None,
                                                     "ratio_vs_virsh": round(raw_us / 1000 / virsh, 4)}
    inst_med = res["cgctl (installed)"]["median_ms"]
    svc_med = res["cgctl via the service (cgctl daemon running)"]["median_ms"]
    data = {
        "runs": runs, "guest": g.name, "memory_group": group, "results": res,
        "served_by_the_service": served,
        "goal": f"cgctl <= {GOAL} x virsh", "goal_met": inst_med <= GOAL * virsh,
        "goal_met_with_service": svc_med <= GOAL * virsh,
        "startup_ms": {k: {n: round(x, 2) for n, x in d.items()} for k, d in start.items()},
        "importtime": {k: imports[k] for k in ("modules", "top_level_cumulative_us", "self_us_top",
                                              "total_self_us")},
        "warm_main_ms": round(warm, 2),
        "journal": commit,
        "live_set_imports_libvirt_psutil_pyudev": leaked,
    }
    path = write_result("live_set", data)
    print(report(data))
    print(f"(results: {path})")
    return data


def report(d: dict) -> str:
    rows = [[k, f"{r['median_ms']:.2f}", "-" if r["p90_ms"] is None else f"{r['p90_ms']:.2f}",
             f"{r['ratio_vs_virsh']:.2f}x"] for k, r in d["results"].items()]
    out = [f"== live memory limit change on a running QEMU guest ({d['runs']} runs each, interleaved)",
           table(rows, ["HOW", "MEDIAN ms", "P90 ms", "VS VIRSH"]),
           f"goal {d['goal']}: alone {'met' if d['goal_met'] else 'NOT met'}, with the service "
           f"{'met' if d.get('goal_met_with_service') else 'NOT met'} "
           f"({d.get('served_by_the_service', 0)} runs served by the service)", "",
           "== where cgctl's time goes (medians, ms)"]
    st = d["startup_ms"]
    rows = [[n, f"{st['installed'][n]:.1f}", f"{st['dev venv'][n]:.1f}"] for n in st["installed"]]
    rows.append(["cli.main() set --live, imports done", f"{d['warm_main_ms']:.1f}", ""])
    rows.append(["journal open (existing file)", f"{d['journal']['open_ms']:.2f}", ""])
    rows.append(["journal commit (1 history row, fsync)", f"{d['journal']['commit_ms']:.2f}", ""])
    out.append(table(rows, ["STEP", "INSTALLED", "DEV VENV"]))
    out.append("top-level imports (cumulative ms, -X importtime): " + ", ".join(
        f"{n} {us / 1000:.1f}" for n, us in d["importtime"]["top_level_cumulative_us"][:8]))
    out.append("libvirt/psutil/pyudev imported by set --live: "
               + (", ".join(d["live_set_imports_libvirt_psutil_pyudev"]) or "none"))
    return "\n".join(out)


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 40)

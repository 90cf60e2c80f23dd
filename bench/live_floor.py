"""How low can a Python client of the service go? (issue 16, goal 4: ``cgctl set --live``
through the service at most 0.6x ``virsh memtune --live``, whole process, same run.)

    flock /tmp/cgctl-libvirt.lock .venv/bin/python -m bench.live_floor --runs 40

A running 64 MiB QEMU guest of the sandbox, ``cgctl daemon`` (dev venv) with its own journal
and command socket, and, round-robin in one run (each a whole process, fork to wait):

- ``virsh memtune G --hard-limit V --live`` (the yardstick);
- ``bin/cgctl set G hard_limit=V --live`` handed to the service (what operators run);
- the same client code (``cgctl.cli.fast.main``) started by ``python3 -I -S``: no ``site``,
  the fastest a Python client of this socket can start (nothing but the interpreter's core);
- ``python3 -I -S -c pass`` and ``/bin/true``: the interpreter's floor and the timer's own.

The ratio a Python client cannot go under is ``python3 -I -S -c pass`` / virsh; bench/live_set.py
has the rest (no service, cgset, raw writes, imports). ``--profile``: cProfile of the
service's work per request (``cli.main`` with imports done). Results in bench/results/live_floor.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (REPO, VENV_CGCTL, bench_env, interleave, need_root, pct, qemu_guest,  # noqa: E402
                          sandbox, summary, table, time_process, write_result)

PY = "/usr/bin/python3"  # the venv's python is this one; -S skips the venv's site anyway
FAST = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
        "from cgctl.cli.fast import main; sys.exit(main())")


def _start_service(tmp: str, name: str, tree: str = None):
    """``cgctl daemon`` with its own journal, socket and log; ``tree``: run that source tree's
    cgctl (``--before``) instead of this one. (process, env for its clients, log path)"""
    d = os.path.join(tmp, name)
    os.makedirs(d)
    sock, journal = os.path.join(d, "cmd.sock"), os.path.join(d, "journal.db")
    env = bench_env(CGCTL_SOCKET=sock, CGCTL_JOURNAL=journal)
    denv = dict(env, PYTHONPATH=tree) if tree else env
    cmd = ([sys.executable, "-m", "cgctl.cli"] if tree else [str(VENV_CGCTL)]) + \
        ["daemon", "--config-file", os.path.join(d, "none.toml")]
    log_path = os.path.join(d, "daemon.log")
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(cmd, env=denv, stdout=log, stderr=subprocess.STDOUT,
                                  cwd=tree or None)
    end = time.monotonic() + 30
    while not os.path.exists(sock):
        if time.monotonic() > end or daemon.poll() is not None:
            daemon.terminate()
            raise RuntimeError(f"the service ({name}) did not open its command socket")
        time.sleep(0.05)
    return daemon, env, log_path


def _service_ms(log_path: str):
    """The service's own time per request (its log: argument parsing to the answer)."""
    import re
    with open(log_path) as f:
        text = f.read()
    return [float(m) for m in re.findall(r"served for pid .* \(([0-9.]+) ms\)", text)]


def run(runs: int, before: str = None) -> dict:
    need_root()
    with sandbox() as sb, qemu_guest(sb) as g, \
            tempfile.TemporaryDirectory(prefix="cgctl-bench-floor-") as tmp:
        services = {"after": _start_service(tmp, "after")}
        try:
            if before:
                services["before"] = _start_service(tmp, "before", before)
            env = services["after"][1]

            def mib(i, k):
                return 300 + 2 * k + i % 2  # every run a real change
            contenders = {
                "virsh memtune --live": lambda i: time_process(
                    ["virsh", "-q", "-c", "qemu:///system", "memtune", g.name, "--hard-limit",
                     str(mib(i, 0) * 1024), "--live"], env=env),
                "bin/cgctl set --live (service)": lambda i: time_process(
                    [str(VENV_CGCTL), "set", g.name, f"hard_limit={mib(i, 1)}M", "--live"],
                    env=env),
                "python3 -I -S, fast.main (service)": lambda i: time_process(
                    [PY, "-I", "-S", "-c", FAST, "set", g.name, f"hard_limit={mib(i, 2)}M",
                     "--live"], env=env),
                "python3 -I -S -c pass": lambda i: time_process([PY, "-I", "-S", "-c", "pass"],
                                                                 env=env),
                "/bin/true": lambda i: time_process(["/bin/true"], env=env),
            }
            if before:  # the same client, handed to the other tree's service
                benv = services["before"][1]
                contenders["bin/cgctl set --live (service, --before tree)"] = \
                    lambda i: time_process([str(VENV_CGCTL), "set", g.name,
                                            f"hard_limit={mib(i, 3)}M", "--live"], env=benv)
            load0 = os.getloadavg()
            times = interleave(contenders, runs)
            load1 = os.getloadavg()
        finally:
            for daemon, _env, _log in services.values():
                daemon.terminate()
                daemon.wait(20)
        service_ms = {k: _service_ms(v[2]) for k, v in services.items()}
    res = {k: summary(t) for k, t in times.items()}
    for k, t in times.items():
        res[k]["p99_ms"] = round(pct(t, 99), 3)
    virsh = res["virsh memtune --live"]["median_ms"]
    for r in res.values():
        r["ratio_vs_virsh"] = round(r["median_ms"] / virsh, 2)
    own = {k: dict(summary(v), p99_ms=round(pct(v, 99), 3)) for k, v in service_ms.items() if v}
    data = {"runs": runs, "results": res, "served_by_the_service": len(service_ms["after"]),
            "service_own_ms": own, "before_tree": before,
            "expected_served": 2 * (runs + 2), "load_before": load0, "load_after": load1}
    path = write_result("live_floor", data)
    rows = [[k, f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
             f"{r['ratio_vs_virsh']:.2f}x"] for k, r in res.items()]
    print(table(rows, ["HOW", "MEDIAN ms", "P90 ms", "P99 ms", "VS VIRSH"]))
    for k, so in own.items():
        print(f"the service's own time per request ({k}, its log): median {so['median_ms']} "
              f"ms, p90 {so['p90_ms']} ms, p99 {so['p99_ms']} ms ({so['runs']} requests)")
    print(f"load average {load0[0]:.1f} -> {load1[0]:.1f}\n(results: {path})")
    return data


def profile(runs: int) -> None:
    """Where the service's time per request goes: ``cli.main`` as the service runs it (its
    URIs, imports done), ``runs`` times under cProfile on a running guest."""
    import contextlib
    import cProfile
    import io
    import pstats
    import statistics
    need_root()
    with sandbox() as sb, qemu_guest(sb) as g, \
            tempfile.TemporaryDirectory(prefix="cgctl-bench-floor-") as tmp:
        import cgctl.cli.main as cli
        import cgctl.core.controller  # noqa: F401  (the service has it imported)
        journal = os.path.join(tmp, "journal.db")

        def one(i):
            with contextlib.redirect_stdout(io.StringIO()):
                return cli.main(["--journal", journal, "-c", "qemu:///system", "-c",
                                 "lxc:///system", "set", g.name, f"hard_limit={300 + i % 2}M",
                                 "--live"])
        for i in range(3):
            assert one(i) == 0
        ts = []
        for i in range(runs):
            t = time.perf_counter()
            one(i)
            ts.append((time.perf_counter() - t) * 1000)
        pr = cProfile.Profile()
        pr.enable()
        for i in range(runs):
            one(i)
        pr.disable()
    print(f"cli.main set --live, warm: median {statistics.median(ts):.2f} ms; load "
          f"{os.getloadavg()[0]:.1f}")
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(15)
    print(out.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.live_floor",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--before", metavar="DIR",
                    help="also a service run from this source tree (e.g. `git archive` of the "
                         "commit before), handed the same client, interleaved")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile of the service's work per request instead")
    a = ap.parse_args(argv)
    if a.profile:
        profile(a.runs)
    else:
        run(a.runs, a.before)
    return 0


if __name__ == "__main__":
    sys.exit(main())

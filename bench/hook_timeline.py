"""Where a ``virsh start`` spends its time when the cgctl hook is installed, from libvirt itself.

    .venv/bin/python -m bench.hook_timeline [--runs 6] [--no-early-apply] [--settings P=V ...]
        [--service] [--floor]    (root; RESTARTS libvirtd)

``--service``: every start is done twice, interleaved: once with ``cgctl daemon`` running (the
script hands the start to it, cgctl/start/handoff.py) and once without (the hook alone); the
service is started and stopped between the two. The hook's added time of a start is the sum of
its three calls (prepare, start, started begin) as the stamps see them (an over-estimate by the
stamp script's own start, ~1 ms).

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
            if what.startswith("VIRSH-START"):
                cur = {"t0": t, "mode": what.split()[1] if " " in what else "hook"}
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
                "mode": s.get("mode", "hook"),
            })
            r = out[-1]
            r["hook_added_ms"] = r["prepare_ms"] + r["start_ms"] + r["started_ms"]
        except KeyError:
            continue  # a start the stamps did not fully see
    return out


def _answers(log: str):
    """(find, apply, answer) ms of each `started begin` the service answered
    (cgctl/start/applier.py logs them)."""
    import re
    out = []
    try:
        with open(log) as f:
            for line in f:
                m = re.search(r"find/apply/answer ms: ([\d.]+)/([\d.]+)/([\d.]+)", line)
                if m:
                    out.append(tuple(float(x) for x in m.groups()))
    except FileNotFoundError:
        pass
    return out


def _daemon(journal: str, log: str):
    import signal
    p = subprocess.Popen([sys.executable, "-m", "cgctl.cli", "--journal", journal, "daemon",
                          "--config-file", "/nonexistent"], stdin=subprocess.DEVNULL,
                         stdout=open(log, "a"), stderr=subprocess.STDOUT, env=bench_env())
    end = time.monotonic() + 60
    while time.monotonic() < end:
        with open(log) as f:
            if f.read().count("ready:") > _daemon.n:
                _daemon.n += 1
                return p
        if p.poll() is not None:
            raise RuntimeError(f"cgctl daemon exited: see {log}")
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    raise RuntimeError(f"cgctl daemon not ready: see {log}")


_daemon.n = 0


def _stop(p) -> None:
    import signal
    if p is not None and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# `--floor`: cgctl's script swapped (same path; libvirt execs it by name at each call) for one
# that only reads its stdin as the no-op calls do: what any hook script costs, measured the
# same way, stamps included. What cgctl adds is the difference.
FLOOR = "#!/bin/sh\n[ -t 0 ] || while IFS= read -r _l; do :; done\nexit 0\n"


def run(runs: int = 6, early: bool = True, settings=None, service: bool = False,
        floor: bool = False) -> dict:
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
            daemon = None
            script = os.path.join(HOOKS, "cgctl")
            with open(script) as f:
                installed = f.read()
            for _ in range(runs):
                for mode in (("alone", "service") if service else ("hook",)) + \
                        (("floor",) if floor else ()):
                    if mode == "service":
                        daemon = _daemon(journal, os.path.join(wd, "daemon.log"))
                    with open(script, "w") as f:
                        f.write(FLOOR if mode == "floor" else installed)
                    sb.destroy(guest.name)
                    with open(log, "a") as f:
                        f.write(f"{time.time():.6f} VIRSH-START {mode}\n")
                    sb.start_guest(guest.name)
                    with open(log, "a") as f:
                        f.write(f"{time.time():.6f} VIRSH-DONE\n")
                    _stop(daemon)
                    daemon = None
            rows = _parse(log)
            answers = _answers(os.path.join(wd, "daemon.log"))
        finally:
            _stop(locals().get("daemon"))
            if locals().get("installed"):  # cgctl's own again, or uninstall would keep it
                with open(script, "w") as f:
                    f.write(installed)
            subprocess.run(cg + ["hook", "uninstall", "--drivers", "qemu"], capture_output=True,
                           env=env)
            for name in ("00-ts", "zz-ts"):
                try:
                    os.unlink(os.path.join(HOOKS, name))
                except FileNotFoundError:
                    pass
            sb.restart_libvirtd()
            sb.remove(guest.name)
            # its last start's go and result files: `release end` ran with no script installed
            from cgctl import consts
            for ext in ("go", "result"):
                try:
                    os.unlink(os.path.join(consts.HOOK_RUN_DIR, f"early-qemu-{guest.name}.{ext}"))
                except FileNotFoundError:
                    pass
    from bench.common import pct
    modes = sorted({r["mode"] for r in rows})
    keys = [k for k in (rows[0] if rows else {}) if k != "mode"]
    med = {m: {k: round(statistics.median(r[k] for r in rows if r["mode"] == m), 1)
               for k in keys} for m in modes}
    p99 = {m: {k: round(pct([r[k] for r in rows if r["mode"] == m], 99), 1) for k in keys}
           for m in modes}
    data = {"early_applier": early, "settings": settings, "starts": len(rows), "median": med,
            "p99": p99, "load": os.getloadavg(), "runs": rows, "service_answers": answers}
    name = "hook_timeline" + ("-service" if service else "") + ("" if early else "-no-early") + \
        ("" if settings == SETTINGS else "-" + "-".join(a.split("=")[0] for a in settings))
    path = write_result(name, data)
    print(table([[k] + [f"{med[m][k]} / {p99[m][k]}" for m in modes] for k in keys],
                ["ms: median / p99"] + modes))
    if answers:  # the service's applier: find the guest / apply again / write the answer
        cols = list(zip(*answers))
        print("service's answer to `started begin`, ms median (p99): " + ", ".join(
            f"{k} {statistics.median(c):.2f} ({pct(c, 99):.2f})"
            for k, c in zip(("find", "apply", "answer"), cols)))
    print(f"early applier: {early}; starts: {len(rows)}\n(results: {path})")
    return data


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--no-early-apply", action="store_true")
    ap.add_argument("--service", action="store_true",
                    help="interleave starts with and without cgctl daemon running")
    ap.add_argument("--floor", action="store_true",
                    help="also interleave starts with cgctl's script replaced by an empty one")
    ap.add_argument("--settings", nargs="+", metavar="PARAM=VALUE",
                    help=f"the guest's journal config (default: {' '.join(SETTINGS)})")
    a = ap.parse_args()
    run(a.runs, early=not a.no_early_apply, settings=a.settings, service=a.service,
        floor=a.floor)

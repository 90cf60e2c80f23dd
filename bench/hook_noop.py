"""What the installed hook script costs per call, before and after it stopped ``exec``-ing cgctl.

    .venv/bin/python -m bench.hook_noop [--runs 40]      (no root, no libvirt needed)

Before the installed script decided the exit status itself the script was ``exec PYTHON -m cgctl.hook ... qemu "$@"``: every call,
even one cgctl does nothing for, started Python. Now (cgctl/hook/install.py) the shell answers
those calls itself and, for the four it passes on, stays to map cgctl's exit status
(docs/hook.md). Both scripts are run exactly as libvirt runs them, ``/bin/sh SCRIPT NAME OP
SUBOP -`` with a 4 KiB domain XML on stdin, waited for, interleaved: ``stopped end`` (a no-op)
and ``reconnect begin`` of a guest that is not running (Python starts, finds nothing, exits 0:
the script's own overhead on a call it passes on). The journal and libvirt's run directory are
empty temporary ones, so nothing on the machine is read or changed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from bench.common import bench_env, interleave, summary, table, time_process, write_result
from bench.service import workdir

NAME = "cgt-bench-noop"


def _xml() -> str:
    pad = "<!-- " + "x" * 3900 + " -->"  # a real domain XML is a few KiB
    return (f"<domain type='qemu'><name>{NAME}</name>"
            f"<uuid>6f1c1a8e-58c5-4c8e-9b0e-3a3d2d1b7e01</uuid>{pad}</domain>")


def run(runs: int = 40) -> dict:
    from cgctl.hook import install as hookinstall
    from cgctl.start import options as hookoptions
    with workdir("cgctl-bench-hooknoop-") as wd:
        run_dir = os.path.join(wd, "run")
        for d in ("qemu", "lxc"):
            os.makedirs(os.path.join(run_dir, d))
        opts = hookoptions.Options()
        opts.journal = os.path.join(wd, "journal.db")
        command = [sys.executable, "-m", "cgctl.hook", *opts.argv()]
        before = os.path.join(wd, "before.sh")
        with open(before, "w") as f:  # the script as `cgctl hook install` wrote it before
            f.write("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in command)
                    + ' qemu "$@"\n')
        hookinstall.install(os.path.join(wd, "hooks"), command, ("qemu",), opts)
        after = os.path.join(wd, "hooks", "qemu.d", hookinstall.SCRIPT_NAME)
        catted = os.path.join(wd, "cat.sh")  # the same script draining stdin with cat(1)
        with open(after) as f, open(catted, "w") as g:
            g.write(f.read().replace("[ -t 0 ] || while IFS= read -r _l; do :; done",
                                     "[ -t 0 ] || cat >/dev/null 2>&1"))
        # `start begin` while an applier holds the guest's lock: answered by the script
        import fcntl
        os.makedirs(os.path.join(wd, "h"), exist_ok=True)
        held = os.open(os.path.join(wd, "h", f"early-qemu-{NAME}.lock"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(held, fcntl.LOCK_EX)
        from cgctl.start.applier import holder_line
        os.write(held, holder_line())  # named as a real applier names itself: no flock(1)
        # the same, the file not naming its holder: the script asks flock(1), as it always did
        unnamed = os.open(os.path.join(wd, "h", f"early-qemu-{NAME}-u.lock"),
                          os.O_RDWR | os.O_CREAT)
        fcntl.flock(unnamed, fcntl.LOCK_EX)
        env = bench_env(CGCTL_LIBVIRT_RUN_DIR=run_dir, CGCTL_HOOK_RUN_DIR=os.path.join(wd, "h"))
        xml = _xml().encode()

        def call(script, op, subop, name=NAME):
            return lambda _i: time_process(["/bin/sh", script, name, op, subop, "-"], env=env,
                                           input=xml, cwd=wd)

        times = interleave({
            "stopped end, before (exec python)": call(before, "stopped", "end"),
            "stopped end, sh + cat (before this change)": call(catted, "stopped", "end"),
            "stopped end, now (answered by sh)": call(after, "stopped", "end"),
            "start begin, an applier holds the lock, named (sh only)": call(after, "start",
                                                                             "begin"),
            "start begin, an applier holds the lock, unnamed (sh + flock)": call(
                after, "start", "begin", NAME + "-u"),
            "reconnect begin, before (exec python)": call(before, "reconnect", "begin"),
            "reconnect begin, now (sh runs python)": call(after, "reconnect", "begin"),
        }, runs)
        os.close(held)
        os.close(unnamed)
    from bench.common import pct
    data = {k: dict(summary(v), p99_ms=round(pct(v, 99), 3)) for k, v in times.items()}
    data["load"] = os.getloadavg()
    path = write_result("hook_noop", data)
    print(table([[k, v["median_ms"], v["p90_ms"], v["p99_ms"]] for k, v in data.items()
                 if k != "load"], ["CALL, SCRIPT", "median ms", "p90 ms", "p99 ms"]))
    print(f"load average {data['load']}")
    print(f"(results: {path})")
    return data


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    run(ap.parse_args().runs)

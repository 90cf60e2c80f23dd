"""The Python side of one hook call: ``python -m cgctl.hook ... started begin``, wall time and imports.

    .venv/bin/python -m bench.hook_pystart [--runs 40] [--tree LABEL=DIR ...]   (no root, no libvirt)

Runs the hook as the installed script does (``python -m cgctl.hook --journal J --no-early-apply
qemu NAME started begin -``, a 4 KiB domain XML on stdin) against a temporary journal holding
three settings for the guest and an empty libvirt run directory: the hook parses its options and
the XML, opens the journal, finds the config, finds no running guest, logs that and exits 0
(not strict). That is every import and file of a real ``started begin`` but the cgroup writes.
Each ``--tree`` is a checkout whose ``cgctl`` package is run (default: this one), interleaved,
so a before/after of a refactoring is one run: ``git archive REV cgctl | tar -x -C /tmp/before``
then ``--tree before=/tmp/before --tree after=.``. Also reports, from ``-X importtime``, the
number of modules imported and their summed self time (median of ``runs // 4`` runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from bench.common import bench_env, interleave, summary, table, time_process, write_result
from bench.service import workdir

NAME = "cgt-bench-pystart"
UUID = "6f1c1a8e-58c5-4c8e-9b0e-3a3d2d1b7e02"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _xml() -> bytes:
    pad = "<!-- " + "x" * 3900 + " -->"  # a real domain XML is a few KiB
    return (f"<domain type='qemu'><name>{NAME}</name><uuid>{UUID}</uuid>"
            f"<vcpu placement='static'>1</vcpu>{pad}</domain>").encode()


def _journal(path: str) -> None:
    from cgctl.core.journal import Journal
    with Journal(path) as j, j.transaction() as tx:
        tx.set_config(UUID, NAME, "qemu", {("cpu_shares", ""): "777",
                                          ("hard_limit", ""): "314572800",
                                          ("global_quota", ""): "50000"})


def _imports(argv, env, cwd, xml) -> tuple:
    """(modules imported, summed self time in ms) of one run, from -X importtime."""
    r = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, cwd=cwd, input=xml,
                       capture_output=True)
    n, us = 0, 0
    for line in r.stderr.decode(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line and "self [us]" not in line:
            n += 1
            us += int(line.split(":", 1)[1].split("|")[0])
    return n, us / 1000.0


def run(runs: int = 40, trees=None) -> dict:
    trees = trees or {"this": REPO}
    xml = _xml()
    with workdir("cgctl-bench-pystart-") as wd:
        journal = os.path.join(wd, "journal.db")
        _journal(journal)
        run_dir = os.path.join(wd, "run")
        for d in ("qemu", "lxc"):
            os.makedirs(os.path.join(run_dir, d))
        env = bench_env(CGCTL_LIBVIRT_RUN_DIR=run_dir, CGCTL_HOOK_RUN_DIR=os.path.join(wd, "h"),
                        CGCTL_CONFIG=os.path.join(wd, "none.toml"), CGCTL_HOOK_SCRIPT="1")
        argv = [sys.executable, "-m", "cgctl.hook", "--journal", journal, "--no-early-apply",
                "qemu", NAME, "started", "begin", "-"]
        for tree in trees.values():  # byte-compile each tree as an install would
            subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(tree, "cgctl")],
                           check=True)

        # the working directory comes first on sys.path under `python -m`: it picks the tree
        def call(tree):
            return lambda _i: time_process(argv, env=env, input=xml, cwd=tree)

        times = interleave({label: call(tree) for label, tree in trees.items()}, runs)
        imports = {}
        for label, tree in trees.items():
            got = [_imports(argv, env, tree, xml) for _ in range(max(runs // 4, 3))]
            imports[label] = {"modules": got[0][0],
                              "import_self_ms": round(statistics.median(g[1] for g in got), 2)}
    data = {label: dict(summary(times[label]), **imports[label]) for label in trees}
    path = write_result("hook_pystart", data)
    print(table([[k, v["median_ms"], v["p90_ms"], v["modules"], v["import_self_ms"]]
                 for k, v in data.items()],
                ["TREE", "median ms", "p90 ms", "modules", "import self ms"]))
    print(f"(results: {path})")
    return data


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR")
    a = ap.parse_args()
    run(a.runs, dict(t.split("=", 1) for t in a.tree) or None)

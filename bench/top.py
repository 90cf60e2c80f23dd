"""Benchmark: what ``cgctl top`` costs on a host with many guests (docs/observability.md).

The guests are fake: tests/fakecg.py's v1 (or v2) kernel tree, libvirt's run files and /proc
entries, written as REAL files in a temporary directory (not pyfakefs: its overhead would be
measured instead of cgctl's), and ``cgctl top`` pointed at them with the CGCTL_* path
variables. Real files on tmpfs/ext4 cost about what cgroupfs reads cost (both are a small
read through the VFS). Measured: the CPU time (user + system, the children's os.times) of a whole
``cgctl top --interval I --count K --json`` process, per refresh, and as a share of one CPU
at the default 2 s interval.

    .venv/bin/python -m bench.top [--guests 100 300 1000] [--version 1|2] [--count 10] [--io]

Every guest has IO counted on two disks. ``--io`` measures ``cgctl top`` and ``cgctl top
--io`` (per-device rates, device names from the journal once per guest) one after the other
for each size, so that both see the same load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

from bench.common import REPO, VENV_PY, bench_env, table, write_result

sys.path.insert(0, str(REPO))
from tests import fakecg  # noqa: E402

STATUS = """<domstatus state='running' reason='booted' pid='{pid}'>
  <domain type='kvm' id='{id}'>
    <name>{name}</name>
    <uuid>{uuid}</uuid>
    <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
  </domain>
</domstatus>
"""


class _Obj:
    def __init__(self, path):
        self.path = path

    def set_contents(self, text):
        with open(self.path, "w") as f:
            f.write(text)

    @property
    def contents(self):
        with open(self.path) as f:
            return f.read()


class RealFS:
    """The part of pyfakefs' FakeFilesystem that tests/fakecg.py uses, on the real disk."""

    def exists(self, path):
        return os.path.lexists(path)

    def get_object(self, path):
        return _Obj(path)

    def create_dir(self, path):
        os.makedirs(path, exist_ok=True)

    def create_file(self, path, contents="", st_mode=None):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(contents or "")
        if st_mode is not None:
            os.chmod(path, stat.S_IMODE(st_mode) | 0o200)

    def create_symlink(self, link, target):
        os.symlink(target, link)


def build(base: str, n: int, version: int) -> dict:
    fs = RealFS()
    cg, proc, run, etc = (os.path.join(base, d) for d in ("cgroup", "proc", "run", "etc"))
    if version == 1:
        fakecg.make_v1_host(fs, cg, proc_root=proc)
    else:
        fakecg.make_v2_host(fs, cg, proc_root=proc)
    fs.create_file(os.path.join(proc, "uptime"), "1000.00 1900.00\n")
    tck = os.sysconf("SC_CLK_TCK")
    for i in range(1, n + 1):
        name, uuid = f"g{i:04d}", f"00000000-0000-4000-8000-{i:012d}"
        if version == 1:
            m = fakecg.make_v1_machine(fs, cg, name, id=i, proc_root=proc, run_dir=run)
        else:
            m = fakecg.make_systemd_v2_machine(fs, name, id=i, root=cg, proc_root=proc,
                                               run_dir=run)
        fs.create_file(os.path.join(run, "qemu", f"{name}.xml"),
                       STATUS.format(pid=m.pid, id=i, name=name, uuid=uuid))
        pdir = os.path.join(proc, str(m.pid))
        argv = ["/usr/bin/qemu-system-x86_64", "-name", f"guest={name}", "-uuid", uuid]
        fs.create_file(os.path.join(pdir, "cmdline"), "".join(a + "\0" for a in argv))
        fs.create_file(os.path.join(pdir, "stat"), f"{m.pid} (qemu) S 1 " + " ".join(["0"] * 17)
                       + f" {int(900 * tck)} 0 0\n")
        fs.create_symlink(os.path.join(pdir, "exe"), argv[0])
        fs.create_file(os.path.join(pdir, "status"), "Uid:\t0\t0\t0\t0\n")
        fs.create_file(os.path.join(etc, "qemu", f"{name}.xml"), "<domain/>")
        _io_counted(fs, m, version)
    return {"CGCTL_CGROUP_ROOT": cg, "CGCTL_PROC_ROOT": proc, "CGCTL_LIBVIRT_RUN_DIR": run,
            "CGCTL_LIBVIRT_ETC_DIR": etc}


def _io_counted(fs, m, version: int) -> None:
    """IO on two disks (254:0, 8:16) in the machine group's files, as a busy guest has."""
    if version == 1:
        d = m.machine["blkio"]
        for f, word in (("io_service_bytes", "4096"), ("io_serviced", "1")):
            text = "".join(f"{mm} {op} {word}\n" for mm in ("254:0", "8:16")
                           for op in ("Read", "Write", "Sync", "Async", "Discard", "Total"))
            for suffix in ("", "_recursive"):
                fs.get_object(os.path.join(d, f"blkio.throttle.{f}{suffix}")).set_contents(
                    text + "Total 8192\n")
    else:
        fs.get_object(os.path.join(m.machine, "io.stat")).set_contents(
            "".join(f"{mm} rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
                    for mm in ("254:0", "8:16")))


def measure(env: dict, count: int, interval: float, io: bool = False) -> dict:
    argv = [str(VENV_PY), "-m", "cgctl.cli", "top", "--json", "--interval", str(interval),
            "--count", str(count)] + (["--io"] if io else [])
    t0 = time.monotonic()
    p = subprocess.Popen(argv, env=bench_env(**env), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    out, err = p.communicate()
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(f"cgctl top: exit {p.returncode}: {err.decode().strip()}")
    return {"out": out, "wall_s": wall}


def run_one(n: int, version: int, count: int, io: bool = False, base: str = None) -> dict:
    own = base is None
    base = base or tempfile.mkdtemp(prefix="cgctl-bench-top-")
    try:
        env = build(base, n, version) if own else _env(base)
        _fresh_pidfiles(env["CGCTL_LIBVIRT_RUN_DIR"])
        env["CGCTL_JOURNAL"] = os.path.join(base, "journal.db")  # absent: no names configured
        # CPU of the child: RUSAGE_CHILDREN before and after (one child at a time here)
        before = os.times()
        r1 = measure(env, 1, 0.01, io)  # start-up + one refresh
        mid = os.times()
        rk = measure(env, count + 1, 0.01, io)  # start-up + count+1 refreshes
        after = os.times()
        one = (mid.children_user + mid.children_system) - (before.children_user +
                                                           before.children_system)
        many = (after.children_user + after.children_system) - (mid.children_user +
                                                                mid.children_system)
        import json
        rows = json.loads(r1["out"].decode().splitlines()[-1])
        assert len(rows) == n, f"top saw {len(rows)} guests of {n}"
        per_refresh = (many - one) / count
        if io:
            assert all(len(r["io"]) == 2 for r in rows), "top --io saw no per-device rows"
        return {"guests": n, "cgroup": f"v{version}", "io": io,
                "startup_plus_first_s": round(one, 3),
                "cpu_per_refresh_ms": round(per_refresh * 1000, 2),
                "cpu_share_at_2s_percent": round(100 * per_refresh / 2.0, 2)}
    finally:
        if own:
            shutil.rmtree(base, ignore_errors=True)


def _fresh_pidfiles(run: str) -> None:
    """The fake processes started 100 s before now (their /proc stat): a pid file older than
    that reads as a reused PID (cgctl/host/runfiles.py), so a tree built minutes ago (a
    loaded machine, a second run on the same tree) gets its pid files' mtime set to now."""
    for driver in ("qemu", "lxc"):
        d = os.path.join(run, driver)
        for f in os.listdir(d) if os.path.isdir(d) else ():
            if f.endswith(".pid"):
                os.utime(os.path.join(d, f))


def _env(base: str) -> dict:
    return {"CGCTL_CGROUP_ROOT": os.path.join(base, "cgroup"),
            "CGCTL_PROC_ROOT": os.path.join(base, "proc"),
            "CGCTL_LIBVIRT_RUN_DIR": os.path.join(base, "run"),
            "CGCTL_LIBVIRT_ETC_DIR": os.path.join(base, "etc")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.top")
    ap.add_argument("--guests", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--version", type=int, choices=[1, 2], default=1)
    ap.add_argument("--count", type=int, default=20, help="refreshes measured per size")
    ap.add_argument("--io", action="store_true",
                    help="also measure `top --io`, interleaved with plain `top`")
    args = ap.parse_args(argv)
    results = []
    for n in args.guests:
        if not args.io:
            results.append(run_one(n, args.version, args.count))
            continue
        base = tempfile.mkdtemp(prefix="cgctl-bench-top-")
        try:
            build(base, n, args.version)
            for io in (False, True, False, True):  # A B A B: the same load for both
                results.append(run_one(n, args.version, args.count, io, base))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print(table([[r["guests"], r["cgroup"], "--io" if r["io"] else "", r["startup_plus_first_s"],
                  r["cpu_per_refresh_ms"], r["cpu_share_at_2s_percent"]] for r in results],
                ["GUESTS", "CGROUP", "VIEW", "START+1ST (s CPU)", "CPU/REFRESH (ms)",
                 "CPU % AT 2 s"]))
    print("wrote", write_result(f"top_v{args.version}", {"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every benchmark shares: timing, statistics, results files, the guest sandbox.

Figures are medians and 90th percentiles of many runs, interleaved (A B C A B C ...) so that the
noise of this shared machine falls on every contender alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
VENV_PY = REPO / ".venv" / "bin" / "python"
VENV_CGCTL = REPO / ".venv" / "bin" / "cgctl"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class Skip(Exception):
    """A benchmark cannot run here; the message says why."""


def bench_env(**extra) -> Dict[str, str]:
    """The environment a real operator has: bytecode caches on, no debugging switches."""
    env = dict(os.environ)
    for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "CGCTL_DEBUG", "PYTHONPROFILEIMPORTTIME"):
        env.pop(k, None)
    env.update(extra)
    return env


def pct(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(ms: Sequence[float]) -> dict:
    return {"runs": len(ms), "median_ms": round(statistics.median(ms), 3),
            "p90_ms": round(pct(ms, 90), 3), "min_ms": round(min(ms), 3),
            "max_ms": round(max(ms), 3)}


LIBVIRT_SOCK = "/run/libvirt/libvirt-sock"


def wait_libvirtd(timeout: float = 90.0) -> None:
    """Other sessions on this machine restart the shared libvirtd; wait for it to answer again."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = subprocess.run(["virsh", "-q", "-c", "qemu:///system", "version"],
                           capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError("libvirtd did not come back")


def time_process(argv: List[str], env=None, check=True, **kw) -> float:
    """Wall time of one whole process, in ms (fork + exec + run + exit + wait). A run that
    could not reach libvirtd (restarted by someone else) is run again once it is back."""
    for attempt in range(3):
        t0 = time.perf_counter()
        r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
        dt = (time.perf_counter() - t0) * 1000.0
        if r.returncode != 0 and b"connect" in r.stderr and attempt < 2:
            wait_libvirtd()
            continue
        break
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: exit {r.returncode}: "
                           f"{r.stderr.decode(errors='replace').strip()}")
    return dt


def interleave(contenders: Dict[str, Callable[[int], float]], runs: int,
               warmup: int = 2) -> Dict[str, List[float]]:
    """Run each contender ``runs`` times, round-robin; each call gets the run index, returns ms."""
    out: Dict[str, List[float]] = {k: [] for k in contenders}
    for i in range(-warmup, runs):
        for name, fn in contenders.items():
            ms = fn(i)
            if i >= 0:
                out[name].append(ms)
    return out


def machine() -> dict:
    load = os.getloadavg()
    return {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "loadavg": [round(x, 2) for x in load],
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_result(name: str, data: dict) -> pathlib.Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = dict(data, machine=machine(), command=" ".join(sys.argv))
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def table(rows: List[List[object]], header: List[str]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def need_root() -> None:
    if os.geteuid() != 0:
        raise Skip("needs root (real cgroups and a real libvirtd)")


@contextlib.contextmanager
def sandbox() -> Iterator[object]:
    """The running libvirt sandbox (tests/harness/libvirtd.py): attached if one runs, else
    started here and stopped at the end (by PID)."""
    need_root()
    from tests.harness.libvirtd import LibvirtSandbox, skip_reason
    reason = skip_reason()
    if reason:
        raise Skip(reason)
    sb = LibvirtSandbox.attach()
    owned = sb is None
    if owned:
        sb = LibvirtSandbox().start()
    try:
        yield sb
    finally:
        sb.stop()  # owned: stops the daemons; attached: removes only the guests made here


@contextlib.contextmanager
def qemu_guest(sb, **kw) -> Iterator[object]:
    g = sb.new_guest("qemu", **kw)
    try:
        yield g
    finally:
        try:
            sb.remove(g.name)
        except Exception:
            wait_libvirtd()
            sb.remove(g.name)


@contextlib.contextmanager
def installed_cgctl() -> Iterator[pathlib.Path]:
    """cgctl laid out as a package install puts it (a venv whose site-packages holds a copy of
    the package and a ``cgctl`` console script), without the editable-install finder that the
    development venv loads at every start. Its dependencies come from the development venv
    through a plain path line (no .pth code runs). Removed afterwards."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="cgctl-bench-venv-"))
    try:
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(base)], check=True)
        site = next(base.glob("lib/python3*/site-packages"))
        shutil.copytree(REPO / "cgctl", site / "cgctl",
                        ignore=shutil.ignore_patterns("__pycache__"))
        dev_site = next((REPO / ".venv").glob("lib/python3*/site-packages"))
        (site / "zz-cgctl-deps.pth").write_text(str(dev_site) + "\n")
        script = VENV_CGCTL.read_text().split("\n", 1)[1]
        (base / "bin" / "cgctl").write_text(f"#!{base}/bin/python3\n{script}")
        (base / "bin" / "cgctl").chmod(0o755)
        subprocess.run([str(base / "bin" / "python3"), "-m", "compileall", "-q", str(site / "cgctl")],
                       check=True, env=bench_env(), stdout=subprocess.DEVNULL)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def compile_repo() -> None:
    """Byte-compile the package as an install would (the dev shell may set PYTHONDONTWRITEBYTECODE)."""
    subprocess.run([str(VENV_PY), "-m", "compileall", "-q", str(REPO / "cgctl")], check=True,
                   env=bench_env(), stdout=subprocess.DEVNULL)


def cgctl_has(*words: str) -> Optional[str]:
    """None if ``cgctl WORDS --help`` works, else why not (for benchmarks of parts not built yet)."""
    r = subprocess.run([str(VENV_PY), "-m", "cgctl.cli", *words, "--help"], capture_output=True,
                       text=True, env=bench_env(PYTHONPATH=str(REPO)), cwd=str(REPO))
    if r.returncode != 0:
        return (r.stderr.strip() or r.stdout.strip()).splitlines()[-1] if (r.stderr or r.stdout) \
            else f"exit {r.returncode}"
    return None

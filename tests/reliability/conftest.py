"""Shared pieces of the reliability tests (docs/reliability.md).

- the libvirt fixtures of tests/libvirt (a real libvirtd; guests made here are removed at the end);
- ``reliability_guests`` (session): one running and one defined-but-stopped tiny QEMU guest;
- ``run_cgctl``: the real command as an operator runs it (``python -m cgctl.cli``, a new process);
- ``snapshot_cgroups`` / ``snapshot_journal``: what "nothing changed" is compared on;
- ``scratch_guest`` and friends from tests/realcg (real v1 groups under a unique parent).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# the same fixtures as tests/libvirt and tests/realcg (imported, so they are defined once)
from tests.libvirt.conftest import (_GuestMaker, libvirt_sandbox, make_guest,  # noqa: E402,F401
                                    _stop_quietly)
from tests.realcg.conftest import real_host, router, scratch_guest, ScratchGuest  # noqa: E402,F401

PYTHON = sys.executable
CGROUP_ROOT = "/sys/fs/cgroup"
# files whose content moves by itself (counters, usage) or that are not settings
_VOLATILE = ("tasks", "cgroup.procs", "cgroup.event_control", "memory.force_empty",
             "memory.pressure_level", "memory.oom_control", "cgroup.clone_children",
             "notify_on_release", "memory.move_charge_at_immigrate")
_VOLATILE_PARTS = ("usage", "failcnt", "stat", "pressure")


def cgctl_env(**extra) -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("CGCTL_DEBUG", None)  # the operator's view: no tracebacks
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run_cgctl(args: List[str], *, journal: Optional[str] = None, prefix: List[str] = (),
              timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """``[prefix...] python -m cgctl.cli [--journal J] ARGS`` in a new process."""
    argv = list(prefix) + [PYTHON, "-m", "cgctl.cli"]
    if journal is not None:
        argv += ["--journal", str(journal)]
    return subprocess.run(argv + list(args), capture_output=True, text=True, timeout=timeout,
                          env=cgctl_env(), cwd=str(REPO), **kw)


@dataclass
class RelGuests:
    running: object   # tests.harness.libvirtd.TestGuest, running
    stopped: object   # defined, not running
    sandbox: object

    def pid(self) -> int:
        return self.sandbox.guest_pid(self.running.name)


@pytest.fixture(scope="session")
def reliability_guests(libvirt_sandbox):
    maker = _GuestMaker(libvirt_sandbox)
    try:
        running = maker("qemu")
        stopped = maker("qemu", start=False)
        yield RelGuests(running, stopped, libvirt_sandbox)
    finally:
        maker.cleanup()


def guest_group_dirs(pid: int) -> List[str]:
    """Every directory of the guest's machine groups (memory, cpu, cpuset, blkio), subgroups included."""
    from cgctl.cgroup.placement import parse_proc_cgroup, split_path
    with open(f"/proc/{pid}/cgroup") as f:
        entries = parse_proc_cgroup(f.read())
    dirs = []
    for _, ctrls, path in entries:
        for c in ("memory", "cpu", "cpuset", "blkio"):
            if c in ctrls:
                base = os.path.join(CGROUP_ROOT, c, split_path(path)[0].lstrip("/"))
                for d, _, _ in os.walk(base):
                    dirs.append(d)
    return sorted(set(dirs))


def snapshot_cgroups(pid: int) -> Dict[str, str]:
    """{path: content} of every readable, writable setting file of the guest's groups."""
    out = {}
    for d in guest_group_dirs(pid):
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            if name in _VOLATILE or any(p in name for p in _VOLATILE_PARTS):
                continue
            st = os.stat(path)
            if not (st.st_mode & 0o200) or not os.path.isfile(path):
                continue
            try:
                with open(path) as f:
                    out[path] = f.read()
            except OSError:
                continue  # write-only (devices.allow ...)
    assert out, f"no cgroup files found for PID {pid}"
    return out


def snapshot_journal(path) -> dict:
    """The journal file (and its -wal) as bytes digests, plus a SQL dump when it is a database."""
    path = str(path)
    snap = {}
    for p in (path, path + "-wal", path + "-shm", path + "-journal"):
        if os.path.isfile(p):
            with open(p, "rb") as f:
                snap[os.path.basename(p)] = hashlib.sha256(f.read()).hexdigest()
        elif os.path.lexists(p):
            snap[os.path.basename(p)] = "not a regular file"
    if os.path.isfile(path) and os.access(path, os.R_OK):
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
            try:
                snap["dump"] = "\n".join(db.iterdump())
            finally:
                db.close()
        except sqlite3.Error as e:
            snap["dump"] = f"(not readable as SQLite: {e})"
    return snap


def assert_one_line_error(r: subprocess.CompletedProcess) -> str:
    err = r.stderr
    assert "Traceback" not in err, err
    assert "cgctl: error: internal error" not in err, err  # (libvirt's own texts may say it)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("cgctl: error: "), lines[0]
    return lines[0]

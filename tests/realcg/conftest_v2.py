"""Helpers and fixtures for tests that need a real, pure cgroup v2 kernel.

These run only inside the v2 lane (tests/v2lane/run), which boots a real kernel
with cgroup2 mounted at /sys/fs/cgroup, sets CGCTL_V2LANE=1 and names a scratch
block device in CGCTL_SCRATCH_DISK.  Import what you need from here in a test
module (this file is deliberately not named conftest.py: tests/conftest.py
belongs to the lead):

    try:
        from .conftest_v2 import v2_parent, requires_v2lane
    except ImportError:
        from conftest_v2 import v2_parent, requires_v2lane

Every group a test makes lives under one unique parent directly below
/sys/fs/cgroup; the fixture kills whatever is left in it and removes it.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterable, Sequence, Tuple

import pytest

CGROOT = Path("/sys/fs/cgroup")


def is_pure_v2(root: Path = CGROOT) -> bool:
    """True if `root` is a cgroup2 mount (not a tmpfs of v1 hierarchies)."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                fields = pre.split()
                if len(fields) >= 5 and fields[4] == str(root) and post.split()[0] == "cgroup2":
                    return True
    except OSError:
        pass
    return False


def in_v2lane() -> bool:
    return os.environ.get("CGCTL_V2LANE") == "1" and os.geteuid() == 0 and is_pure_v2()


requires_v2lane = pytest.mark.skipif(
    not in_v2lane(),
    reason="needs the cgroup v2 lane (run tests/v2lane/run): CGCTL_V2LANE=1, root, "
           "cgroup2 at /sys/fs/cgroup",
)


# ----------------------------------------------------------------- file helpers
def read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def write(path: Path, value: str) -> None:
    """One write(2) of `value`, exactly like cgctl does; OSError carries the errno."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def write_errno(path: Path, value: str) -> int:
    """Write and return 0 on success or the errno the kernel answered."""
    try:
        write(path, value)
    except OSError as e:
        return e.errno
    return 0


def keyed(path: Path) -> dict:
    """Parse a flat-keyed file (memory.events, cpu.stat, ...)."""
    out = {}
    for line in read(path).splitlines():
        k, _, v = line.partition(" ")
        out[k] = int(v) if v.lstrip("-").isdigit() else v
    return out


def enable(group: Path, controllers: Iterable[str]) -> None:
    want = " ".join("+" + c for c in controllers)
    if want:
        write(group / "cgroup.subtree_control", want)


def mkgroup(parent: Path, name: str, controllers: Iterable[str] = ()) -> Path:
    """Create `parent/name` and enable `controllers` for its children."""
    g = parent / name
    g.mkdir()
    enable(g, controllers)
    return g


def procs(group: Path) -> list:
    return [int(p) for p in read(group / "cgroup.procs").split()]


def start_in(group: Path, argv: Sequence[str], **kw) -> subprocess.Popen:
    """Start `argv` as a child that is inside `group` before it execs."""
    target = str(group / "cgroup.procs")

    def enter():
        fd = os.open(target, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    return subprocess.Popen(argv, preexec_fn=enter, **kw)


def python_in(group: Path, code: str, **kw) -> subprocess.Popen:
    return start_in(group, [sys.executable, "-c", code], **kw)


def kill_all(group: Path) -> None:
    """Kill every process in `group` and below (cgroup.kill, else SIGKILL one by one)."""
    if (group / "cgroup.kill").exists():
        try:
            write(group / "cgroup.kill", "1")
        except OSError:
            pass
    for sub in sorted(group.rglob("cgroup.procs"), key=lambda p: -len(p.parts)):
        try:
            for pid in procs(sub.parent):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        except OSError:
            pass


def remove_tree(group: Path, timeout: float = 10.0) -> None:
    """Remove `group` and every group below it, deepest first."""
    if not group.exists():
        return
    kill_all(group)
    deadline = time.monotonic() + timeout
    dirs = sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for d in dirs + [group]:
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                kill_all(d)
                time.sleep(0.05)


def available_controllers(root: Path = CGROOT) -> list:
    return read(root / "cgroup.controllers").split()


# ----------------------------------------------------------------- fixtures
@pytest.fixture
def v2_parent():
    """A unique group right below the cgroup2 root with every controller enabled
    for its children; removed (with everything below it) afterwards."""
    if not in_v2lane():
        pytest.skip("needs the cgroup v2 lane (tests/v2lane/run)")
    parent = CGROOT / f"cgctl-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    parent.mkdir()
    try:
        enable(parent, available_controllers(parent))
        yield parent
    finally:
        remove_tree(parent)


@pytest.fixture
def scratch_disk() -> Tuple[str, str]:
    """(path, 'MAJ:MIN') of the lane's scratch block device; skips without one."""
    dev = os.environ.get("CGCTL_SCRATCH_DISK", "")
    if not dev or not os.path.exists(dev):
        pytest.skip("no scratch disk (CGCTL_SCRATCH_DISK)")
    st = os.stat(dev)
    return dev, f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"

"""Facts about a real cgroup v2 kernel that cgctl's fake v2 cgroupfs must copy.

Run them with tests/v2lane/run (they skip anywhere else).  Each test makes its
own groups under a unique parent below /sys/fs/cgroup (fixture v2_parent) and
removes them.  Every fact is an assertion: if a kernel behaves differently, the
test fails and the fake (and docs/design.md#parameters-and-conversions) must be revisited.

Recorded on Debian's 6.1 kernel (linux-image-amd64, 6.1.0-56-amd64); the value
each test pins is in its docstring.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:  # package layout (tests/realcg/__init__.py exists)
    from .conftest_v2 import (CGROOT, enable, keyed, mkgroup, python_in, read,
                              requires_v2lane, scratch_disk, start_in, v2_parent,
                              write, write_errno)
except ImportError:  # rootdir layout: tests/realcg is on sys.path
    from conftest_v2 import (CGROOT, enable, keyed, mkgroup, python_in, read,  # type: ignore
                             requires_v2lane, scratch_disk, start_in, v2_parent,
                             write, write_errno)

pytestmark = [pytest.mark.realcg, requires_v2lane]

__all__ = ["v2_parent", "scratch_disk"]  # fixtures used by name below

BUSY = ["/bin/sh", "-c", "while :; do :; done"]
MiB = 1 << 20


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(timeout=30)


# ---------------------------------------------------------------------- cpu
def test_cpu_weight_range_is_1_to_10000_else_erange(v2_parent):
    """cpu.weight: default "100"; 0 and 10001 -> ERANGE; 1 and 10000 accepted."""
    g = mkgroup(v2_parent, "w")
    assert read(g / "cpu.weight") == "100\n"
    assert write_errno(g / "cpu.weight", "0") == errno.ERANGE
    assert write_errno(g / "cpu.weight", "10001") == errno.ERANGE
    assert write_errno(g / "cpu.weight", "1") == 0
    assert read(g / "cpu.weight") == "1\n"
    assert write_errno(g / "cpu.weight", "10000") == 0
    assert read(g / "cpu.weight") == "10000\n"
    # not a number at all
    assert write_errno(g / "cpu.weight", "max") == errno.EINVAL


def test_cpu_max_values(v2_parent):
    """cpu.max: default "max 100000"; quota < 1000 us -> EINVAL; "-1" -> EINVAL;
    "max" alone keeps the period; period outside [1000, 1000000] -> EINVAL."""
    g = mkgroup(v2_parent, "m")
    f = g / "cpu.max"
    assert read(f) == "max 100000\n"
    assert write_errno(f, "500 100000") == errno.EINVAL
    assert write_errno(f, "-1") == errno.EINVAL
    assert write_errno(f, "-1 100000") == errno.EINVAL
    assert write_errno(f, "1000 100000") == 0
    assert read(f) == "1000 100000\n"
    assert write_errno(f, "50000 200000") == 0
    assert read(f) == "50000 200000\n"
    assert write_errno(f, "max") == 0  # the period is kept
    assert read(f) == "max 200000\n"
    assert write_errno(f, "20000") == 0  # a quota alone keeps the period too
    assert read(f) == "20000 200000\n"
    # a period that does not parse is ignored: "max -1" is "max" (period kept)
    assert write_errno(f, "max -1") == 0
    assert read(f) == "max 200000\n"
    assert write_errno(f, "max 999") == errno.EINVAL
    assert write_errno(f, "max 1000001") == errno.EINVAL
    assert write_errno(f, "max 100000") == 0
    assert read(f) == "max 100000\n"


def test_busy_loop_is_throttled_by_cpu_max(v2_parent):
    """A busy loop in a group with cpu.max "10000 100000" gets nr_throttled > 0
    and far less than the wall time of CPU."""
    g = mkgroup(v2_parent, "busy")
    write(g / "cpu.max", "10000 100000")
    p = start_in(g, BUSY)
    try:
        time.sleep(1.5)
    finally:
        _stop(p)
    stat = keyed(g / "cpu.stat")
    assert stat["nr_periods"] > 0
    assert stat["nr_throttled"] > 0, stat
    assert stat["throttled_usec"] > 0, stat
    assert stat["usage_usec"] < 0.5 * 1.5e6, stat


# ---------------------------------------------------------------------- memory
def test_memory_max_values(v2_parent):
    """memory.max: default "max"; "-1" -> EINVAL; "max" reads "max"; suffixes
    accepted; bytes rounded down to whole pages."""
    g = mkgroup(v2_parent, "mem")
    f = g / "memory.max"
    assert read(f) == "max\n"
    assert write_errno(f, "-1") == errno.EINVAL
    assert write_errno(f, "unlimited") == errno.EINVAL
    assert write_errno(f, "67108864") == 0
    assert read(f) == "67108864\n"
    assert write_errno(f, "max") == 0
    assert read(f) == "max\n"
    assert write_errno(f, "64M") == 0
    assert read(f) == "67108864\n"
    assert write_errno(f, "1000000") == 0
    assert read(f) == f"{1000000 // os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PAGE_SIZE')}\n"
    write(f, "max")
    # the other limits share the syntax
    for name in ("memory.high", "memory.swap.max"):
        assert write_errno(g / name, "-1") == errno.EINVAL, name
        assert read(g / name) == "max\n", name
    for name in ("memory.min", "memory.low"):
        assert read(g / name) == "0\n", name


def test_memory_swap_files_exist_without_swap(v2_parent):
    """With swap accounting compiled in but no swap device, memory.swap.* exist."""
    g = mkgroup(v2_parent, "swap")
    assert "SwapTotal:             0 kB" in read(Path("/proc/meminfo"))
    assert (g / "memory.swap.max").exists()
    assert (g / "memory.swap.high").exists()
    assert read(g / "memory.swap.current") == "0\n"


def test_exceeding_memory_max_is_oom_killed(v2_parent):
    """A process that touches more than memory.max (no swap) is SIGKILLed by
    the OOM killer and memory.events counts oom and oom_kill."""
    g = mkgroup(v2_parent, "oom")
    write(g / "memory.max", str(32 * MiB))
    p = python_in(g, "x = b'a' * (128 << 20); print('survived')",
                  stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == -9, (p.returncode, out)
    assert b"survived" not in out
    ev = keyed(g / "memory.events")
    assert ev["oom_kill"] >= 1, ev
    assert ev["oom"] >= 1, ev
    assert ev["max"] >= 1, ev


def test_memory_max_below_usage_succeeds_and_oom_kills(v2_parent):
    """Writing memory.max below current (unreclaimable, no swap) usage does NOT
    fail with EBUSY as v1 does: the write succeeds after reclaim fails, and the
    OOM killer kills the process holding the memory."""
    g = mkgroup(v2_parent, "shrink")
    p = python_in(g, "import sys, time\n"
                     "x = b'a' * (64 << 20)\n"
                     "print('ready', flush=True)\n"
                     "time.sleep(300)\n",
                  stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        before = int(read(g / "memory.current"))
        assert before > 64 * MiB
        assert write_errno(g / "memory.max", str(16 * MiB)) == 0
        assert read(g / "memory.max") == f"{16 * MiB}\n"
        assert p.wait(timeout=60) == -9
        ev = keyed(g / "memory.events")
        assert ev["oom_kill"] >= 1, ev
        assert int(read(g / "memory.current")) <= 16 * MiB
    finally:
        _stop(p)


def test_memory_max_below_unkillable_usage_still_succeeds(v2_parent):
    """Usage nothing can reclaim or kill (tmpfs pages of an exited process, no
    swap): the write still succeeds, memory.current stays above memory.max and
    memory.events counts an oom without an oom_kill."""
    g = mkgroup(v2_parent, "shm")
    path = f"/dev/shm/cgctl-v2facts-{os.getpid()}"
    try:
        p = start_in(g, ["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=32"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert p.wait(timeout=120) == 0
        assert int(read(g / "memory.current")) >= 32 * MiB
        assert write_errno(g / "memory.max", str(8 * MiB)) == 0
        assert read(g / "memory.max") == f"{8 * MiB}\n"
        assert int(read(g / "memory.current")) >= 32 * MiB
        ev = keyed(g / "memory.events")
        assert ev["oom"] >= 1, ev
        assert ev["oom_kill"] == 0, ev
    finally:
        if os.path.exists(path):
            os.unlink(path)


# ---------------------------------------------------------------------- io
def test_io_max_format_and_all_max_reads_empty(v2_parent, scratch_disk):
    """io.max: a line per limited device, every key shown; all keys "max" removes
    the line (reads back empty); 0 -> ERANGE (v1's "0 removes" does not carry
    over); unknown device -> ENODEV."""
    dev, mm = scratch_disk
    g = mkgroup(v2_parent, "io")
    f = g / "io.max"
    assert read(f) == ""
    assert write_errno(f, f"{mm} rbps=max wbps=max riops=max wiops=max") == 0
    assert read(f) == ""
    assert write_errno(f, f"{mm} wbps=1048576") == 0
    assert read(f) == f"{mm} rbps=max wbps=1048576 riops=max wiops=max\n"
    assert write_errno(f, f"{mm} riops=100") == 0  # keys merge
    assert read(f) == f"{mm} rbps=max wbps=1048576 riops=100 wiops=max\n"
    assert write_errno(f, f"{mm} wbps=0") == errno.ERANGE
    assert write_errno(f, f"{mm} rbps=1") == errno.EINVAL
    assert write_errno(f, f"{mm} bogus=5") == errno.EINVAL
    assert write_errno(f, "259:12345 wbps=1048576") == errno.ENODEV
    assert write_errno(f, f"{mm} rbps=max wbps=max riops=max wiops=max") == 0
    assert read(f) == ""
    # iops are clamped to UINT_MAX, which *is* "max": the line disappears
    assert write_errno(f, f"{mm} riops=99999999999") == 0
    assert read(f) == ""
    # a device without any key
    assert write_errno(f, f"{mm}") == errno.EINVAL


def test_io_max_throttles_direct_writes(v2_parent, scratch_disk):
    """2 MiB of O_DIRECT writes at wbps=1 MiB/s take well over a second."""
    dev, mm = scratch_disk
    g = mkgroup(v2_parent, "iothrottle")
    write(g / "io.max", f"{mm} wbps={MiB}")
    t0 = time.monotonic()
    p = start_in(g, ["dd", "if=/dev/zero", f"of={dev}", "bs=64k", "count=32", "oflag=direct"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert p.wait(timeout=120) == 0
    elapsed = time.monotonic() - t0
    assert elapsed > 1.0, elapsed
    assert keyed_io_stat(g, mm)["wbytes"] >= 2 * MiB


def keyed_io_stat(g: Path, mm: str) -> dict:
    for line in read(g / "io.stat").splitlines():
        head, *kv = line.split()
        if head == mm:
            return {k: int(v) for k, v in (x.split("=") for x in kv)}
    return {}


def test_io_weight_per_device_needs_iocost(v2_parent, scratch_disk):
    """io.weight: default "default 100"; "default N" works anywhere; a per-device
    weight -> EOPNOTSUPP (95) until io.cost.qos enables iocost on that disk;
    out-of-range weights -> EINVAL (cpu.weight says ERANGE)."""
    dev, mm = scratch_disk
    qos = CGROOT / "io.cost.qos"
    g = mkgroup(v2_parent, "iow")
    f = g / "io.weight"
    assert read(f) == "default 100\n"
    assert write_errno(f, "default 500") == 0
    assert read(f) == "default 500\n"
    assert write_errno(f, "500") == 0  # bare number = default
    assert read(f) == "default 500\n"
    # range 1..10000 like cpu.weight, but out of range is EINVAL here, not ERANGE
    assert write_errno(f, "default 0") == errno.EINVAL
    assert write_errno(f, "default 10001") == errno.EINVAL
    assert write_errno(f, "default 10000") == 0
    write(f, "default 500")
    already = any(line.split()[0] == mm for line in read(qos).splitlines())
    if not already:  # iocost stays attached to a disk once initialised
        assert write_errno(f, f"{mm} 200") == errno.EOPNOTSUPP
        assert errno.EOPNOTSUPP == errno.ENOTSUP == 95
    try:
        assert write_errno(qos, f"{mm} enable=1") == 0
        assert write_errno(f, f"{mm} 200") == 0
        assert read(f) == f"default 500\n{mm} 200\n"
        assert write_errno(f, f"{mm} default") == 0  # removes the device line
        assert read(f) == "default 500\n"
    finally:
        write_errno(qos, f"{mm} enable=0")


def _scheduler(dev: str) -> Path:
    return Path("/sys/block") / os.path.basename(dev) / "queue" / "scheduler"


def test_io_bfq_weight_per_device_needs_bfq_scheduler(v2_parent, scratch_disk):
    """io.bfq.weight appears once bfq is loaded; default "default 100"; range
    1..1000; a per-device weight -> EOPNOTSUPP unless the disk's scheduler is bfq."""
    dev, mm = scratch_disk
    if subprocess.run(["modprobe", "bfq"], capture_output=True).returncode != 0:
        pytest.fail("modprobe bfq failed")
    sched = _scheduler(dev)
    old = read(sched).split("[")[1].split("]")[0]
    g = mkgroup(v2_parent, "bfq")
    f = g / "io.bfq.weight"
    assert f.exists()
    assert read(f) == "default 100\n"
    assert write_errno(f, "default 1000") == 0
    assert write_errno(f, "default 1001") == errno.ERANGE
    assert write_errno(f, "default 0") == errno.ERANGE
    assert write_errno(f, "300") == 0
    assert read(f) == "default 300\n"
    try:
        if old != "bfq":
            write(sched, "mq-deadline" if old == "none" else old)
            assert write_errno(f, f"{mm} 200") == errno.EOPNOTSUPP
        write(sched, "bfq")
        assert write_errno(f, f"{mm} 200") == 0
        assert read(f) == f"default 300\n{mm} 200\n"
    finally:
        write(sched, old)


# ---------------------------------------------------------------------- cpuset, pids
def test_cpuset_and_pids_values(v2_parent):
    """cpuset.cpus/mems read empty until set (the .effective files are inherited);
    a CPU beyond the possible ones -> ERANGE; a missing NUMA node -> EINVAL;
    pids.max "-1" -> EINVAL ("max" only)."""
    g = mkgroup(v2_parent, "cs")
    possible = read(Path("/sys/devices/system/cpu/possible")).strip()
    last = int(possible.split("-")[-1])
    assert read(g / "cpuset.cpus") == "\n"
    assert read(g / "cpuset.mems") == "\n"
    assert read(g / "cpuset.cpus.effective") == read(CGROOT / "cpuset.cpus.effective")
    assert write_errno(g / "cpuset.cpus", f"0-{last + 1}") == errno.ERANGE
    assert write_errno(g / "cpuset.cpus", str(last)) == 0
    assert read(g / "cpuset.cpus") == f"{last}\n"
    assert read(g / "cpuset.cpus.effective") == f"{last}\n"
    nodes = read(Path("/sys/devices/system/node/possible")).strip()
    missing = int(nodes.split("-")[-1]) + 1
    assert write_errno(g / "cpuset.mems", str(missing)) == errno.EINVAL
    assert write_errno(g / "cpuset.mems", "0") == 0
    assert read(g / "pids.max") == "max\n"
    assert write_errno(g / "pids.max", "-1") == errno.EINVAL
    assert write_errno(g / "pids.max", "64") == 0
    assert read(g / "pids.max") == "64\n"


# ---------------------------------------------------------------------- threaded vcpu groups
def test_threaded_vcpu_groups_under_libvirt(v2_parent):
    """machine.slice/machine-qemu\\x2d1\\x2dNAME.scope/libvirt/{emulator,vcpu0}:
    - "threaded" into vcpu0/cgroup.type fails (EOPNOTSUPP) while libvirt has
      domain controllers (memory, io) enabled in its subtree_control;
    - with only threaded ones (cpu, cpuset, pids) or none it succeeds; libvirt
      becomes "domain threaded", a still-domain sibling becomes "domain invalid";
    - libvirt may then enable cpu/cpuset/pids but not memory/io (EOPNOTSUPP);
    - vcpu0 gets cpu.max but no memory.max; a thread can be moved into vcpu0 only
      from a process inside the libvirt subtree, and cpu.max throttles it."""
    slice_ = mkgroup(v2_parent, "machine.slice", ["cpu", "cpuset", "memory", "io", "pids"])
    scope = mkgroup(slice_, r"machine-qemu\x2d1\x2dguest.scope",
                    ["cpu", "cpuset", "memory", "io", "pids"])
    lv = mkgroup(scope, "libvirt", ["cpu", "cpuset", "memory", "io", "pids"])
    emu = mkgroup(lv, "emulator")
    vcpu = mkgroup(lv, "vcpu0")
    assert read(vcpu / "cgroup.type") == "domain\n"
    assert (vcpu / "memory.max").exists()

    # domain controllers enabled below libvirt: cannot go threaded
    assert write_errno(vcpu / "cgroup.type", "threaded") == errno.EOPNOTSUPP
    write(lv / "cgroup.subtree_control", "-memory -io")
    assert read(lv / "cgroup.subtree_control").split() == ["cpuset", "cpu", "pids"]
    assert write_errno(vcpu / "cgroup.type", "threaded") == 0
    assert read(vcpu / "cgroup.type") == "threaded\n"
    assert read(lv / "cgroup.type") == "domain threaded\n"
    assert read(emu / "cgroup.type") == "domain invalid\n"
    assert write_errno(vcpu / "cgroup.type", "domain") == errno.EINVAL  # no way back
    assert write_errno(emu / "cgroup.type", "threaded") == 0
    assert read(emu / "cgroup.type") == "threaded\n"

    # which controllers a threaded subtree can have
    assert write_errno(lv / "cgroup.subtree_control", "+memory") == errno.EOPNOTSUPP
    assert write_errno(lv / "cgroup.subtree_control", "+io") == errno.EOPNOTSUPP
    assert write_errno(lv / "cgroup.subtree_control", "+cpu +cpuset +pids") == 0
    assert read(vcpu / "cgroup.controllers").split() == ["cpuset", "cpu", "pids"]
    assert (vcpu / "cpu.max").exists() and (vcpu / "cpu.weight").exists()
    assert (vcpu / "cpuset.cpus").exists()
    assert not (vcpu / "memory.max").exists()
    assert not (vcpu / "io.max").exists()
    assert (lv / "memory.max").exists() and (lv / "io.max").exists()
    assert write_errno(vcpu / "cpu.max", "10000 100000") == 0

    # reading cgroup.procs of a threaded group is refused, cgroup.threads works
    with pytest.raises(OSError) as ei:
        read(vcpu / "cgroup.procs")
    assert ei.value.errno == errno.EOPNOTSUPP

    # a thread from outside the subtree cannot be put into vcpu0 directly
    p = start_in(lv, BUSY)
    q = subprocess.Popen(BUSY)  # in pytest's own group, outside the machine
    try:
        assert write_errno(vcpu / "cgroup.threads", str(q.pid)) == errno.EOPNOTSUPP
        assert p.pid in [int(x) for x in read(lv / "cgroup.procs").split()]
        assert write_errno(vcpu / "cgroup.threads", str(p.pid)) == 0
        assert [int(x) for x in read(vcpu / "cgroup.threads").split()] == [p.pid]
        # the process still shows up in the thread root's cgroup.procs
        assert p.pid in [int(x) for x in read(lv / "cgroup.procs").split()]
        with open(f"/proc/{p.pid}/cgroup") as fh:
            assert fh.read().strip().endswith("/libvirt/vcpu0")
        time.sleep(1.5)
        stat = keyed(vcpu / "cpu.stat")
        assert stat["nr_throttled"] > 0, stat
    finally:
        _stop(p)
        _stop(q)

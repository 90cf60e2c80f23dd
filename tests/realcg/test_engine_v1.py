"""The engine against the real cgroup v1 kernel files of this machine."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from cgctl.core import live
from cgctl.model import params as P
from cgctl.errors import KernelRefused, Unsupported, UsageError
from cgctl.cgroup.placement import groups_for_pid

pytestmark = pytest.mark.realcg


@pytest.fixture(autouse=True)
def _memory_on_v1(real_host):
    """These tests use v1's files; tests/realcg/test_engine_v2.py has the v2 twins."""
    if real_host.owner("memory").version != 1:
        pytest.skip("the memory controller is on cgroup v2 here: see test_engine_v2.py")


def _v1_only(host, ctrl):
    if host.owner(ctrl).version != 1:
        pytest.skip(f"{ctrl} is not on cgroup v1 here")


def groups(g):
    return groups_for_pid(g.proc.pid, g.host, guest=g.name, driver="qemu")


def settings(*items):
    return P.parse_assignments(items)


def test_resolver_finds_machine_group(scratch_guest):
    gg = groups(scratch_guest)
    assert gg.machine_dir("memory") == scratch_guest.dirs("memory")
    # the process sits in .../emulator for cpu; the machine group is its parent
    assert gg.machine_dir("cpu") == scratch_guest.dirs("cpu")
    assert gg.vcpu_dirs("cpu") == [os.path.join(scratch_guest.dirs("cpu"), "vcpu0")]


def test_memory_limits_written_and_read_back(scratch_guest, router):
    _v1_only(scratch_guest.host, "memory")
    gg = groups(scratch_guest)
    changes, _ = live.set_live(router, gg, settings("hard_limit=512M", "soft_limit=256M",
                                                 "swap_hard_limit=1G"))
    assert scratch_guest.read("memory", "memory.limit_in_bytes") == str(512 * 2**20)
    assert scratch_guest.read("memory", "memory.soft_limit_in_bytes") == str(256 * 2**20)
    assert scratch_guest.read("memory", "memory.memsw.limit_in_bytes") == str(2**30)
    by = {c.param: c for c in changes}
    assert by["hard_limit"].old == "unlimited" and by["hard_limit"].new == "512M"
    assert live.read_value(router, gg, P.BY_NAME["hard_limit"]) == 512 * 2**20
    # lowering both: the engine must write RAM before memsw or v1 says EINVAL
    live.set_live(router, gg, settings("hard_limit=128M", "swap_hard_limit=256M", "soft_limit=64M"))
    assert scratch_guest.read("memory", "memory.memsw.limit_in_bytes") == str(256 * 2**20)
    # raising both: memsw first
    live.set_live(router, gg, settings("hard_limit=2G", "swap_hard_limit=3G"))
    assert scratch_guest.read("memory", "memory.limit_in_bytes") == str(2 * 2**30)
    # back to unlimited reads as unlimited (PAGE_COUNTER_MAX)
    live.set_live(router, gg, settings("swap_hard_limit=unlimited", "hard_limit=-1"))
    assert live.read_value(router, gg, P.BY_NAME["hard_limit"]) == float("inf")


def test_cpu_shares_and_bandwidth(scratch_guest, router):
    _v1_only(scratch_guest.host, "cpu")
    gg = groups(scratch_guest)
    live.set_live(router, gg, settings("cpu_shares=512", "global_period=50000", "global_quota=150%"))
    assert scratch_guest.read("cpu", "cpu.shares") == "512"
    assert scratch_guest.read("cpu", "cpu.cfs_period_us") == "50000"
    assert scratch_guest.read("cpu", "cpu.cfs_quota_us") == "75000"
    live.set_live(router, gg, settings("vcpu_quota=20000", "emulator_quota=10ms"))
    assert scratch_guest.read("cpu", "cpu.cfs_quota_us", "vcpu0") == "20000"
    assert scratch_guest.read("cpu", "cpu.cfs_quota_us", "emulator") == "10000"
    live.set_live(router, gg, settings("global_quota=unlimited"))
    assert scratch_guest.read("cpu", "cpu.cfs_quota_us") == "-1"


def test_cpuset_moves_children_with_parent(scratch_guest, router):
    _v1_only(scratch_guest.host, "cpuset")
    if os.cpu_count() < 2:
        pytest.skip("needs two CPUs")
    gg = groups(scratch_guest)
    live.set_live(router, gg, settings("cpuset_cpus=1"))
    assert scratch_guest.read("cpuset", "cpuset.cpus") == "1"
    assert scratch_guest.read("cpuset", "cpuset.cpus", "vcpu0") == "1"
    live.set_live(router, gg, settings("cpuset_cpus=0"))   # disjoint: widen, children, narrow
    assert scratch_guest.read("cpuset", "cpuset.cpus") == "0"
    assert scratch_guest.read("cpuset", "cpuset.cpus", "emulator") == "0"


def test_block_weight(scratch_guest, router):
    _v1_only(scratch_guest.host, "io")
    gg = groups(scratch_guest)
    live.set_live(router, gg, settings("weight=300"))
    assert scratch_guest.read("io", "blkio.bfq.weight") == "300"


def test_ebusy_rolls_back_every_file(scratch_guest, router):
    _v1_only(scratch_guest.host, "memory")
    gg = groups(scratch_guest)
    live.set_live(router, gg, settings("cpu_shares=700", "soft_limit=900M"))
    before = {f: scratch_guest.read(c, f) for c, f in
              [("memory", "memory.limit_in_bytes"), ("memory", "memory.soft_limit_in_bytes"),
               ("cpu", "cpu.shares"), ("memory", "memory.memsw.limit_in_bytes")]}
    code = ("import time,sys; sys.stdin.readline(); b=bytearray(64*1024*1024);"
            "b[::4096]=b'x'*len(b[::4096]); print('ok',flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    try:
        with open(scratch_guest.file("memory", "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
        # swap accounting off would make memory.limit_in_bytes reclaim; there is
        # no swap here, so a limit below usage is refused with EBUSY
        p.stdin.write(b"go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == b"ok"
        with pytest.raises(KernelRefused) as ei:
            live.set_live(router, gg, settings("cpu_shares=100", "soft_limit=1M",
                                               "hard_limit=8M"))
        assert ei.value.errno == errno.EBUSY
        assert "uses" in str(ei.value)
        after = {f: scratch_guest.read(c, f) for c, f in
                 [("memory", "memory.limit_in_bytes"), ("memory", "memory.soft_limit_in_bytes"),
                  ("cpu", "cpu.shares"), ("memory", "memory.memsw.limit_in_bytes")]}
        assert after == before
    finally:
        p.kill()
        p.wait()


def test_impossible_combination_writes_nothing(scratch_guest, router):
    gg = groups(scratch_guest)
    live.set_live(router, gg, settings("swap_hard_limit=1G", "hard_limit=512M"))
    with pytest.raises(UsageError):
        live.set_live(router, gg, settings("hard_limit=2G"))  # above memsw 1G
    assert scratch_guest.read("memory", "memory.limit_in_bytes") == str(512 * 2**20)


def test_v1_unsupported_parameter_is_clear(scratch_guest, router):
    _v1_only(scratch_guest.host, "memory")
    gg = groups(scratch_guest)
    with pytest.raises(Unsupported) as ei:
        live.set_live(router, gg, settings("min_guarantee=100M"))
    assert "v1" in str(ei.value)


def test_cpuset_refusal_rolls_back(scratch_guest, router):
    gg = groups(scratch_guest)
    before = scratch_guest.read("cpuset", "cpuset.cpus")
    with pytest.raises(KernelRefused) as ei:
        live.set_live(router, gg, settings("cpu_shares=300", "cpuset_cpus=0-63"))
    assert ei.value.errno in (errno.EINVAL, errno.ERANGE)
    assert "does not have" in str(ei.value)
    assert scratch_guest.read("cpuset", "cpuset.cpus") == before
    assert scratch_guest.read("cpu", "cpu.shares") == "1024"


def test_native_v2_parameters_on_the_real_v1_kernel(scratch_guest, router):
    """cpu_weight through systemd's mapping into cpu.shares; memory_low refused with the reason;
    "no limit" as this kernel reads it back (its page size's PAGE_COUNTER_MAX)."""
    _v1_only(scratch_guest.host, "cpu")
    gg = groups(scratch_guest)
    live.set_live(router, gg, settings("cpu_weight=100"))
    assert scratch_guest.read("cpu", "cpu.shares") == "1024"
    live.set_live(router, gg, settings("cpu_weight=39"))
    assert scratch_guest.read("cpu", "cpu.shares") == "399"
    assert live.read_value(router, gg, P.BY_NAME["cpu_weight"]) == 39
    changes, _ = live.set_live(router, gg, settings("cpu_weight=39"))
    assert (changes[0].old, changes[0].new) == ("39", "39")
    with pytest.raises(Unsupported, match="no reclaim protection"):
        live.set_live(router, gg, settings("memory_low=64M"))
    if scratch_guest.host.owner("memory").version == 1:
        live.set_live(router, gg, settings("hard_limit=-1"))
        raw = int(scratch_guest.read("memory", "memory.limit_in_bytes"))
        from cgctl.model import convert
        assert raw == convert.page_counter_max(os.sysconf("SC_PAGE_SIZE"))
        assert live.read_value(router, gg, P.BY_NAME["hard_limit"]) == float("inf")


def test_one_set_checks_each_directory_once(scratch_guest, router, monkeypatch):
    """docs/performance.md, section 3 E: a set of six parameters (~20 files in three
    hierarchies) walks each directory on the way once, and every value is in force."""
    _v1_only(scratch_guest.host, "cpu")
    gg = groups(scratch_guest)
    calls = []
    real = os.lstat
    monkeypatch.setattr(os, "lstat", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    live.set_live(router, gg, settings("hard_limit=512M", "soft_limit=256M", "cpu_shares=512",
                                       "global_quota=50000", "vcpu_quota=25000", "weight=200"))
    monkeypatch.undo()
    dirs = [p for p in calls if os.path.isdir(p)]
    assert dirs and len(dirs) == len(set(dirs))
    assert scratch_guest.read("memory", "memory.limit_in_bytes") == str(512 << 20)
    assert scratch_guest.read("cpu", "cpu.cfs_quota_us", "vcpu0") == "25000"
    assert scratch_guest.read("cpu", "cpu.cfs_quota_us") == "50000"

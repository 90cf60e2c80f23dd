"""cgctl/cgroup/v1.py on a faked v1 host (tests/fakecg.py): write order where the v1 kernel
refuses the other one, the files and spellings of each parameter, and clear errors for what
v1 or this host lacks. ``V1Kernel`` below refuses what a v1 kernel refuses, so a wrong order
fails here as on a real host (tests/realcg/test_engine_v1.py checks the same on one)."""

from __future__ import annotations

import errno
import os

import pytest

from cgctl.cgroup import hierarchy
from cgctl.core import live
from cgctl.model import params as P
from cgctl.cgroup import Router
from cgctl.cgroup import fs as cgfs
from cgctl.errors import KernelRefused, Unsupported
from cgctl.cgroup.placement import groups_for_pid
from cgctl.model.units import UNLIMITED
from tests import fakecg

G = 2**30
DISK = "252:16"


def read(path):
    with open(path) as f:
        return f.read().strip()


def _cpus(text):
    out = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    return out


class V1Kernel:
    """What a v1 kernel refuses, for the order tests: memsw below the memory limit (EINVAL,
    both ways round), a cpuset wider than its parent's (EINVAL) or narrower than a child's
    (EBUSY). "-1" reads back as PAGE_COUNTER_MAX. Records every write."""

    def __init__(self, monkeypatch, fail_on=None):
        self.writes = []
        self.fail_on = fail_on or {}
        monkeypatch.setattr(cgfs, "write", self.write)

    def write(self, path, data):
        self.writes.append((path, data))
        name, d = os.path.basename(path), data.strip()
        if name in self.fail_on:
            raise OSError(self.fail_on[name], os.strerror(self.fail_on[name]), path)
        here = os.path.dirname(path)
        if name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
            value = fakecg.V1_UNLIMITED if d == "-1" else d
            other = "memory.memsw.limit_in_bytes" if name == "memory.limit_in_bytes" \
                else "memory.limit_in_bytes"
            if os.path.exists(os.path.join(here, other)):
                o = int(read(os.path.join(here, other)))
                mem, memsw = (int(value), o) if name == "memory.limit_in_bytes" else (o, int(value))
                if memsw < mem:
                    raise OSError(errno.EINVAL, "Invalid argument", path)
            d = value
        elif name == "cpuset.cpus":
            want = _cpus(d)
            if not want <= _cpus(read(os.path.join(os.path.dirname(here), name))):
                raise OSError(errno.EINVAL, "Invalid argument", path)
            for c in os.listdir(here):
                f = os.path.join(here, c, name)
                if os.path.exists(f) and not _cpus(read(f)) <= want:
                    raise OSError(errno.EBUSY, "Device or resource busy", path)
        with open(path, "w") as f:
            f.write(d + "\n")


def v1(fs, monkeypatch, *, vcpus=2, cpus="0-3", **host):
    fakecg.make_v1_host(fs, cpus=cpus, **host)
    m = fakecg.make_v1_machine(fs, name="old1", vcpus=vcpus)
    kernel = V1Kernel(monkeypatch)
    h = hierarchy.detect("/proc")
    groups = groups_for_pid(m.pid, h, guest="old1", driver="qemu", proc_root="/proc")
    return m, Router(h), groups, kernel


def setl(router, groups, *items, devnums=None):
    return live.set_live(router, groups, P.parse_assignments(items), devnums)


def names(kernel):
    return [os.path.basename(p) for p, _ in kernel.writes]


# --------------------------------------------------------------------------- memory

def test_raising_both_limits_writes_memsw_first(fs, monkeypatch):
    m, router, groups, kernel = v1(fs, monkeypatch)
    setl(router, groups, "hard_limit=1G", "swap_hard_limit=2G")
    kernel.writes.clear()
    setl(router, groups, "hard_limit=4G", "swap_hard_limit=8G")
    assert names(kernel) == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    d = m.libvirt["memory"]
    assert (read(f"{d}/memory.limit_in_bytes"), read(f"{d}/memory.memsw.limit_in_bytes")) == \
        (str(4 * G), str(8 * G))


def test_lowering_both_limits_writes_memory_first(fs, monkeypatch):
    m, router, groups, kernel = v1(fs, monkeypatch)
    setl(router, groups, "hard_limit=4G", "swap_hard_limit=8G")
    kernel.writes.clear()
    setl(router, groups, "hard_limit=1G", "swap_hard_limit=2G")
    assert names(kernel) == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    d = m.libvirt["memory"]
    assert (read(f"{d}/memory.limit_in_bytes"), read(f"{d}/memory.memsw.limit_in_bytes")) == \
        (str(G), str(2 * G))


def test_unlimited_is_minus_one_and_reads_back_unlimited(fs, monkeypatch):
    m, router, groups, kernel = v1(fs, monkeypatch)
    setl(router, groups, "hard_limit=1G", "soft_limit=512M")
    setl(router, groups, "hard_limit=unlimited", "soft_limit=-1", "global_quota=unlimited")
    assert ("memory.limit_in_bytes" in names(kernel)
            and (f"{m.libvirt['memory']}/memory.limit_in_bytes", "-1") in kernel.writes)
    assert (f"{m.libvirt['memory']}/memory.soft_limit_in_bytes", "-1") in kernel.writes
    assert (f"{m.libvirt['cpu']}/cpu.cfs_quota_us", "-1") in kernel.writes
    for name in ("hard_limit", "soft_limit", "global_quota"):
        assert live.read_value(router, groups, P.BY_NAME[name]) == UNLIMITED


# --------------------------------------------------------------------------- cpu

def test_period_before_quota_and_a_share_at_the_new_period(fs, monkeypatch):
    m, router, groups, kernel = v1(fs, monkeypatch)
    setl(router, groups, "global_quota=150%", "global_period=50000")
    d = m.libvirt["cpu"]
    assert kernel.writes == [(f"{d}/cpu.cfs_period_us", "50000"),
                             (f"{d}/cpu.cfs_quota_us", "75000")]


def test_vcpu_bandwidth_goes_to_every_vcpu_group(fs, monkeypatch):
    m, router, groups, kernel = v1(fs, monkeypatch, vcpus=2)
    setl(router, groups, "vcpu_period=20000", "vcpu_quota=10000")
    v0, v1_ = m.vcpus["cpu"]
    assert kernel.writes == [(f"{v0}/cpu.cfs_period_us", "20000"),
                             (f"{v0}/cpu.cfs_quota_us", "10000"),
                             (f"{v1_}/cpu.cfs_period_us", "20000"),
                             (f"{v1_}/cpu.cfs_quota_us", "10000")]
    assert read(f"{m.libvirt['cpu']}/cpu.cfs_quota_us") == "-1"   # the guest's own: untouched


def test_cpu_shares_in_the_machine_group(fs, monkeypatch):
    m, router, groups, kernel = v1(fs, monkeypatch)
    setl(router, groups, "cpu_shares=512")
    assert kernel.writes == [(f"{m.machine['cpu']}/cpu.shares", "512")]


# --------------------------------------------------------------------------- cpuset

def test_cpuset_narrowing_then_moving_widens_the_parent_first(fs, monkeypatch):
    m, router, groups, kernel = v1(fs, monkeypatch, cpus="0-3")
    top = m.libvirt["cpuset"]
    kids = [m.emulator["cpuset"], *m.vcpus["cpuset"]]
    setl(router, groups, "cpuset_cpus=0-1")
    assert [read(f"{k}/cpuset.cpus") for k in kids] == ["0-1"] * 3
    assert read(f"{top}/cpuset.cpus") == "0-1"
    kernel.writes.clear()
    setl(router, groups, "cpuset_cpus=2-3")      # disjoint: only a wider parent lets it through
    assert kernel.writes[0] == (f"{top}/cpuset.cpus", "0-3")
    assert kernel.writes[-1] == (f"{top}/cpuset.cpus", "2-3")
    assert sorted(p for p, _ in kernel.writes[1:-1]) == sorted(f"{k}/cpuset.cpus" for k in kids)
    assert [read(f"{k}/cpuset.cpus") for k in kids] == ["2-3"] * 3
    assert read(f"{top}/cpuset.cpus") == "2-3"


def test_cpuset_refused_rolls_back_every_group(fs, monkeypatch):
    m, router, groups, kernel = v1(fs, monkeypatch, cpus="0-3")
    setl(router, groups, "cpuset_cpus=0-1")
    kernel.fail_on = {"cpuset.cpus": errno.EINVAL}
    with pytest.raises(KernelRefused):
        setl(router, groups, "cpuset_cpus=2-3")
    kernel.fail_on = {}
    assert read(f"{m.libvirt['cpuset']}/cpuset.cpus") == "0-1"
    assert read(f"{m.vcpus['cpuset'][0]}/cpuset.cpus") == "0-1"


# --------------------------------------------------------------------------- block IO

def _scheduler(fs, sched):
    fs.create_file(f"/sys/dev/block/{DISK}/queue/scheduler",
                   contents=" ".join(f"[{s}]" if s == sched else s
                                     for s in ("none", "mq-deadline", "bfq", "cfq")) + "\n")
    fs.create_file(f"/sys/dev/block/{DISK}/uevent", contents="DEVNAME=sdb\n")


@pytest.mark.parametrize("scheduler, weight_file, device_file, clear", [
    ("bfq", "blkio.bfq.weight", "blkio.bfq.weight_device", "default"),
    ("cfq", "blkio.weight", "blkio.weight_device", "0"),
])
def test_weights_bfq_or_not(fs, monkeypatch, scheduler, weight_file, device_file, clear):
    m, router, groups, kernel = v1(fs, monkeypatch, blkio_weight=scheduler)
    _scheduler(fs, scheduler)
    d = m.machine["blkio"]
    setl(router, groups, "weight=300", "device_weight=/dev/sdb,500", devnums={"/dev/sdb": DISK})
    assert sorted(kernel.writes) == sorted([(f"{d}/{weight_file}", "300"),
                                            (f"{d}/{device_file}", f"{DISK} 500")])
    assert live.read_value(router, groups, P.BY_NAME["weight"]) == 300
    assert live.read_value(router, groups, P.BY_NAME["device_weight"]) == {DISK: 500}
    kernel.writes.clear()
    setl(router, groups, "device_weight=/dev/sdb,0", devnums={"/dev/sdb": DISK})
    assert kernel.writes == [(f"{d}/{device_file}", f"{DISK} {clear}")]


def test_throttle_unlimited_clears_the_device(fs, monkeypatch):
    m, router, groups, kernel = v1(fs, monkeypatch)
    f = f"{m.machine['blkio']}/blkio.throttle.read_bps_device"
    setl(router, groups, "device_read_bytes_sec=/dev/sdb,10M", devnums={"/dev/sdb": DISK})
    assert read(f) == f"{DISK} {10 * 2**20}"
    setl(router, groups, "device_read_bytes_sec=/dev/sdb,unlimited", devnums={"/dev/sdb": DISK})
    assert kernel.writes[-1] == (f, f"{DISK} 0")


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("assignment", ["min_guarantee=1G", "swap_soft_limit=1G"])
def test_v2_only_parameters_are_refused_before_writing(fs, monkeypatch, assignment):
    m, router, groups, kernel = v1(fs, monkeypatch)
    with pytest.raises(Unsupported) as exc:
        setl(router, groups, "hard_limit=1G", assignment)
    assert "not available on cgroup v1" in str(exc.value)
    assert exc.value.param == assignment.split("=")[0]
    assert kernel.writes == []


def test_no_swap_accounting_names_the_file_and_the_boot_option(fs, monkeypatch):
    m, router, groups, kernel = v1(fs, monkeypatch, memsw=False)
    with pytest.raises(Unsupported) as exc:
        setl(router, groups, "hard_limit=1G", "swap_hard_limit=2G")
    assert "memory.memsw.limit_in_bytes does not exist" in str(exc.value)
    assert "swapaccount=1" in str(exc.value)
    assert kernel.writes == []
    assert live.read_value(router, groups, P.BY_NAME["hard_limit"]) == UNLIMITED


def test_no_weight_file_says_load_bfq(fs, monkeypatch):
    m, router, groups, kernel = v1(fs, monkeypatch, blkio_weight="none")
    with pytest.raises(Unsupported) as exc:
        setl(router, groups, "weight=300")
    assert "blkio.bfq.weight does not exist" in str(exc.value) and "BFQ" in str(exc.value)
    assert kernel.writes == []


def test_a_file_written_twice_is_restored_to_what_it_held_before_the_set(fs, monkeypatch):
    """cgctl/cgroup/apply.py reads each file once, before the first write: the machine group's
    cpuset.cpus is written twice (widened, then narrowed); a refusal after both puts back what
    it held before the set, not the widened value."""
    m, router, groups, kernel = v1(fs, monkeypatch, cpus="0-3")
    setl(router, groups, "cpuset_cpus=0-1")
    top = f"{m.libvirt['cpuset']}/cpuset.cpus"
    real = kernel.write
    seen = []

    def refuse_the_narrowing(path, data):
        seen.append(path)
        if path == top and seen.count(top) == 2:  # widen 0-3 passes, narrow to 2-3 refused
            raise OSError(errno.EINVAL, "Invalid argument", path)
        real(path, data)
    monkeypatch.setattr(cgfs, "write", refuse_the_narrowing)
    with pytest.raises(KernelRefused):
        setl(router, groups, "cpuset_cpus=2-3")
    assert read(top) == "0-1"
    assert [read(f"{k}/cpuset.cpus") for k in m.vcpus["cpuset"]] == ["0-1"] * len(m.vcpus["cpuset"])

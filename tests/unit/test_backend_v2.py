"""The v2 backend on a faked systemd cgroup2 host (this machine has no usable v2).

The same claims are checked on a real kernel in the v2 lane (tests/v2lane)."""

from __future__ import annotations

import errno
import os

import pytest

from cgctl.cgroup import hierarchy
from cgctl.core import live
from cgctl.model import params as P
from cgctl.cgroup import Router
from cgctl.errors import KernelRefused, Unsupported, UsageError
from cgctl.cgroup.placement import groups_for_pid
from tests import fakecg
from tests.fakekernel import FakeKernel

INF = float("inf")


def read(path):
    with open(path) as f:
        return f.read().strip()


@pytest.fixture
def v2(fs, monkeypatch):
    fakecg.make_v2_host(fs, bfq=False)
    m = fakecg.make_systemd_v2_machine(fs, "web1", id=3, vcpus=2)
    kernel = FakeKernel(monkeypatch)
    host = hierarchy.detect("/proc")
    groups = groups_for_pid(m.pid, host, guest="web1", driver="qemu", proc_root="/proc")
    return m, Router(host), groups, kernel


def s(*items):
    return P.parse_assignments(items)


def test_resolves_systemd_layout(v2):
    m, router, groups, _ = v2
    assert groups.machine_dir("memory") == m.machine
    assert groups.libvirt_dir("memory") == m.libvirt
    assert groups.vcpu_dirs("cpu") == list(m.vcpus)
    assert groups.v2_controllers == {"memory", "cpu", "cpuset", "io"}


def test_memory_goes_to_libvirt_group_with_memsw_conversion(v2):
    m, router, groups, kernel = v2
    live.set_live(router, groups, s("hard_limit=1G", "swap_hard_limit=3G", "soft_limit=512M",
                                    "min_guarantee=256M"))
    assert read(f"{m.libvirt}/memory.max") == str(2**30)
    assert read(f"{m.libvirt}/memory.swap.max") == str(2 * 2**30)
    assert read(f"{m.libvirt}/memory.high") == str(512 * 2**20)
    assert read(f"{m.libvirt}/memory.min") == str(256 * 2**20)
    # swap.max is written before memory.max (docs/design.md#parameters-and-conversions)
    names = [os.path.basename(p) for p, _ in kernel.writes]
    assert names.index("memory.swap.max") < names.index("memory.max")
    assert live.read_value(router, groups, P.BY_NAME["swap_hard_limit"]) == 3 * 2**30
    # moving hard_limit keeps RAM+swap where it was
    live.set_live(router, groups, s("hard_limit=2G"))
    assert read(f"{m.libvirt}/memory.swap.max") == str(2**30)
    live.set_live(router, groups, s("swap_hard_limit=unlimited", "hard_limit=unlimited"))
    assert read(f"{m.libvirt}/memory.max") == "max"
    assert read(f"{m.libvirt}/memory.swap.max") == "max"


def test_cpu_weight_and_bandwidth(v2):
    m, router, groups, _ = v2
    live.set_live(router, groups, s("cpu_shares=2048", "global_quota=50%", "vcpu_quota=20000",
                                    "emulator_period=50000"))
    assert read(f"{m.machine}/cpu.weight") == "174"        # weights on the scope itself
    assert read(f"{m.libvirt}/cpu.max") == "50000 100000"
    for v in m.vcpus:
        assert read(f"{v}/cpu.max") == "20000 100000"
    assert read(f"{m.emulator}/cpu.max") == "max 50000"
    # the conversion is many-to-one: reading back gives the smallest shares for weight 174
    shares = P.BY_NAME["cpu_shares"]
    assert live.read_value(router, groups, shares) == 2045
    assert router.backend("cpu").normalize(shares, 2048) == 2045
    live.set_live(router, groups, s("global_quota=unlimited"))
    assert read(f"{m.libvirt}/cpu.max") == "max 100000"


def test_io_weight_converted_without_bfq(v2):
    m, router, groups, _ = v2
    live.set_live(router, groups, s("weight=500"))
    assert read(f"{m.machine}/io.weight") == "default 4950"
    assert live.read_value(router, groups, P.BY_NAME["weight"]) == 500


def test_per_device_io_weight_needs_iocost(v2):
    m, router, groups, kernel = v2
    with pytest.raises(KernelRefused) as ei:
        live.set_live(router, groups, s("weight=300", "device_weight=/dev/x,500"),
                      devnums={"/dev/x": "8:0"})
    assert ei.value.errno == errno.EOPNOTSUPP and "io.cost.qos" in str(ei.value)
    assert read(f"{m.machine}/io.weight") == "default 100"   # rolled back
    kernel.iocost.add("8:0")
    live.set_live(router, groups, s("device_weight=/dev/x,500"), devnums={"/dev/x": "8:0"})
    assert "8:0 4950" in read(f"{m.machine}/io.weight")


def test_io_max_keys_and_rollback(v2):
    m, router, groups, kernel = v2
    dev = {"/dev/vdb": "252:16"}
    live.set_live(router, groups, s("device_read_bytes_sec=/dev/vdb,10M",
                                    "device_write_iops_sec=/dev/vdb,300"), devnums=dev)
    assert read(f"{m.libvirt}/io.max") == "252:16 rbps=10485760 wbps=max riops=max wiops=300"
    assert live.read_value(router, groups, P.BY_NAME["device_write_iops_sec"]) == {"252:16": 300}
    kernel.fail_on["memory.max"] = errno.EBUSY
    with pytest.raises(KernelRefused):
        live.set_live(router, groups, s("device_read_bytes_sec=/dev/vdb,1M", "hard_limit=1G"),
                      devnums=dev)
    assert read(f"{m.libvirt}/io.max") == "252:16 rbps=10485760 wbps=max riops=max wiops=300"
    del kernel.fail_on["memory.max"]
    live.set_live(router, groups, s("device_read_bytes_sec=/dev/vdb,0",
                                    "device_write_iops_sec=/dev/vdb,unlimited"), devnums=dev)
    assert read(f"{m.libvirt}/io.max") == ""    # all max: the kernel drops the line


def test_kernel_refusal_restores_everything(v2):
    m, router, groups, kernel = v2
    kernel.fail_on["cpu.max"] = errno.EINVAL
    with pytest.raises(KernelRefused) as ei:
        live.set_live(router, groups, s("hard_limit=1G", "cpu_shares=100", "global_quota=5000"))
    assert ei.value.errno == errno.EINVAL and "1000us" in str(ei.value)
    assert read(f"{m.libvirt}/memory.max") == "max"
    assert read(f"{m.machine}/cpu.weight") == "100"


def test_no_swap_accounting_is_unsupported(fs, monkeypatch):
    fakecg.make_v2_host(fs, swap=False)
    m = fakecg.make_systemd_v2_machine(fs, "db", id=1)
    FakeKernel(monkeypatch)
    host = hierarchy.detect("/proc")
    groups = groups_for_pid(m.pid, host, guest="db", driver="qemu", proc_root="/proc")
    router = Router(host)
    with pytest.raises(Unsupported) as ei:
        live.set_live(router, groups, s("hard_limit=1G", "swap_hard_limit=2G"))
    assert "memory.swap.max" in str(ei.value)
    live.set_live(router, groups, s("hard_limit=1G"))   # hard alone needs no swap file
    assert read(f"{m.libvirt}/memory.max") == str(2**30)


def test_swap_below_hard_is_refused_before_writing(v2):
    m, router, groups, kernel = v2
    with pytest.raises(UsageError):
        live.set_live(router, groups, s("hard_limit=2G", "swap_hard_limit=1G"))
    assert kernel.writes == []


def test_v1_systemd_layout_resolves(fs, monkeypatch):
    fakecg.make_v1_host(fs)
    m = fakecg.make_v1_machine(fs, name="vm1", id=2, layout="systemd")
    host = hierarchy.detect("/proc")
    groups = groups_for_pid(m.pid, host, guest="vm1", driver="qemu", proc_root="/proc")
    assert groups.machine_dir("memory") == m.machine["memory"]
    assert groups.libvirt_dir("cpu") == m.libvirt["cpu"]
    live.set_live(Router(host), groups, s("cpu_shares=300", "hard_limit=1G"))
    assert read(os.path.join(m.machine["cpu"], "cpu.shares")) == "300"
    assert read(os.path.join(m.libvirt["memory"], "memory.limit_in_bytes")) == str(2**30)


def test_limit_below_usage_is_refused_not_oom_killed(v2):
    m, router, groups, kernel = v2
    with open(f"{m.libvirt}/memory.current", "w") as f:
        f.write(str(600 * 2**20) + "\n")
    with pytest.raises(KernelRefused) as ei:
        live.set_live(router, groups, s("cpu_shares=100", "hard_limit=512M"))
    assert ei.value.errno == errno.EBUSY and "600M" in str(ei.value)
    assert kernel.writes == []
    live.set_live(router, groups, s("hard_limit=1G"))


def test_cpuset_beyond_the_host_rolls_back(v2):
    """As on the real kernel (tests/realcg/test_engine_v2.py): ERANGE for CPUs
    the host lacks, after memory.max and cpu.weight were written."""
    m, router, groups, _ = v2
    with pytest.raises(KernelRefused) as ei:
        live.set_live(router, groups, s("hard_limit=1G", "cpu_shares=300", "cpuset_cpus=0-63"))
    assert ei.value.errno == errno.ERANGE and "does not have" in str(ei.value)
    assert read(f"{m.libvirt}/memory.max") == "max"
    assert read(f"{m.machine}/cpu.weight") == "100"
    with pytest.raises(KernelRefused) as ei:
        live.set_live(router, groups, s("cpu_shares=300", "cpuset_mems=1"))
    assert ei.value.errno == errno.EINVAL
    live.set_live(router, groups, s("cpuset_cpus=1", "cpuset_mems=0"))
    assert read(f"{m.libvirt}/cpuset.cpus") == "1"


def test_iocost_stays_attached_after_enable_0(v2):
    """Seen on 6.1: once io.cost.qos named a disk, per-device io.weight works on
    it for the rest of the boot, even after "enable=0"."""
    m, router, groups, kernel = v2
    dev = {"/dev/x": "8:0"}
    with pytest.raises(KernelRefused):
        live.set_live(router, groups, s("device_weight=/dev/x,500"), devnums=dev)
    from cgctl.cgroup import fs as cgfs
    cgfs.write("/sys/fs/cgroup/io.cost.qos", "8:0 enable=1")
    cgfs.write("/sys/fs/cgroup/io.cost.qos", "8:0 enable=0")
    live.set_live(router, groups, s("device_weight=/dev/x,500"), devnums=dev)
    assert "8:0 4950" in read(f"{m.machine}/io.weight")


def test_systemd_scope_is_noted(v2, fs):
    from cgctl.core.reading import systemd_notes
    m, router, groups, _ = v2
    assert "daemon-reload" in systemd_notes(groups)[0]
    fakecg.make_v1_host(fs, root="/v1", proc_root="/proc9")
    v1m = fakecg.make_v1_machine(fs, root="/v1", name="vm9", id=9, layout="nosystemd",
                                 proc_root="/proc9")
    host = hierarchy.detect("/proc9")
    g1 = groups_for_pid(v1m.pid, host, guest="vm9", driver="qemu", proc_root="/proc9")
    assert systemd_notes(g1) == []

"""The engine against a real cgroup v2 kernel: the claims of test_engine_v1.py
(and of the faked tests/unit/test_backend_v2.py) on real v2 semantics.

They run inside the v2 lane (tests/v2lane/run) and skip anywhere the memory
controller is not on cgroup v2. Each test gets a scratch guest in the layout of
libvirt >= 7.1 with systemd-machined (conftest.V2ScratchGuest):

    <parent>/machine.slice/machine-qemu\\x2d1\\x2dNAME.scope/libvirt/{emulator,vcpu0}

and drives it through the real resolver (groups_for_pid on our process) and
the real engine (live.set_live). Some state lasts for the rest of one boot (the
bfq module, iocost on the scratch scratch_disk): tests cope with either.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from cgctl.core import live
from cgctl.model import params as P
from cgctl.errors import KernelRefused, UsageError
from cgctl.cgroup.placement import groups_for_pid

try:  # package layout (tests/realcg/__init__.py exists)
    from .conftest_v2 import keyed, python_in, scratch_disk, start_in, write, write_errno
except ImportError:  # rootdir layout: tests/realcg is on sys.path
    from conftest_v2 import (keyed, python_in, scratch_disk, start_in,  # type: ignore
                             write, write_errno)


def _memory_on_v2() -> bool:
    try:
        from cgctl.cgroup import hierarchy
        return os.geteuid() == 0 and hierarchy.detect().owner("memory").version == 2
    except Exception:  # no memory controller at all, /proc unreadable...
        return False


pytestmark = [
    pytest.mark.realcg,
    pytest.mark.skipif(not _memory_on_v2(),
                       reason="needs root and the memory controller on cgroup v2 "
                              "(run it in the v2 lane: tests/v2lane/run)"),
]

__all__ = ["scratch_disk"]  # a fixture, used by name below

MiB = 1 << 20
BUSY = ["/bin/sh", "-c", "while :; do :; done"]


def groups(g):
    return groups_for_pid(g.proc.pid, g.host, guest=g.name, driver="qemu")


def settings(*items):
    return P.parse_assignments(items)


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(timeout=30)


def _hold_memory(group: str, mib: int) -> subprocess.Popen:
    """A process in ``group`` holding ``mib`` MiB of anonymous memory; it prints
    "ready" once the memory is touched."""
    p = python_in(Path(group), f"import time\nx = b'a' * ({mib} << 20)\n"
                               "print('ready', flush=True)\ntime.sleep(600)\n",
                  stdout=subprocess.PIPE)
    return p


def _scheduler(dev: str) -> Path:
    return Path("/sys/block") / os.path.basename(dev) / "queue" / "scheduler"


def _iocost_attached(mm: str) -> bool:
    """Once io.cost.qos was written for a disk, per-device io.weight works on it
    for the rest of the boot, even after "enable=0"."""
    qos = Path("/sys/fs/cgroup/io.cost.qos").read_text()
    return any(line.split()[0] == mm for line in qos.splitlines())


def _bfq_loaded(g) -> bool:
    return os.path.exists(g.file("io", "io.bfq.weight"))


def _without_bfq(g) -> None:
    """Unload bfq (a test before may have loaded it), or skip."""
    if _bfq_loaded(g):
        subprocess.run(["modprobe", "-r", "bfq"], capture_output=True)
        if _bfq_loaded(g):
            pytest.skip("bfq is loaded (and in use) in this boot: io.weight is not used")


def _device_weight_set_and_cleared(router, gg, g, dev, mm, weight, fname, default, shown):
    """device_weight=DEV,weight shows as "MAJ:MIN shown" in the scope's ``fname``
    and reads back as ``weight``; DEV,0 removes the line again."""
    live.set_live(router, gg, settings(f"device_weight={dev},{weight}"), devnums={dev: mm})
    assert g.read("io", fname) == f"{default}\n{mm} {shown}"
    assert live.read_value(router, gg, P.BY_NAME["device_weight"]) == {mm: weight}
    live.set_live(router, gg, settings(f"device_weight={dev},0"), devnums={dev: mm})
    assert g.read("io", fname) == default


# ---------------------------------------------------------------------- resolution
def test_resolver_finds_the_scope_and_where_to_write(scratch_guest):
    g = scratch_guest
    with open(f"/proc/{g.proc.pid}/cgroup") as f:
        assert f.read().strip().endswith(r"\x2d1\x2d" + g.name + ".scope/libvirt/emulator")
    assert g.read("cpu", "cgroup.type", "libvirt") == "domain threaded"
    assert g.read("cpu", "cgroup.type", "libvirt/vcpu0") == "threaded"
    gg = groups(g)
    assert gg.v2_controllers >= {"memory", "cpu", "cpuset", "io"}
    for ctrl in ("memory", "cpu", "cpuset", "io"):
        assert gg.machine_dir(ctrl) == g.scope
        assert gg.libvirt_dir(ctrl) == g.libvirt
    assert gg.vcpu_dirs("cpu") == g.vcpu_dirs
    assert gg.emulator_dir("cpu") == g.emulator
    # where each parameter goes: weights on the scope, the rest in libvirt/...
    where = {name: gg.dirs(P.BY_NAME[name]) for name in
             ("cpu_shares", "weight", "hard_limit", "global_quota", "cpuset_cpus",
              "device_read_bytes_sec", "vcpu_quota", "emulator_quota")}
    assert where["cpu_shares"] == where["weight"] == [g.scope]
    for name in ("hard_limit", "global_quota", "cpuset_cpus", "device_read_bytes_sec"):
        assert where[name] == [g.libvirt], name
    assert where["vcpu_quota"] == g.vcpu_dirs
    assert where["emulator_quota"] == [g.emulator]


# ---------------------------------------------------------------------- memory
def test_memory_limits_written_and_read_back(scratch_guest, router):
    g = scratch_guest
    gg = groups(g)
    changes, _ = live.set_live(router, gg, settings(
        "hard_limit=512M", "soft_limit=256M", "swap_hard_limit=1G", "min_guarantee=64M",
        "swap_soft_limit=128M"))
    assert g.read("memory", "memory.max", "libvirt") == str(512 * MiB)
    assert g.read("memory", "memory.high", "libvirt") == str(256 * MiB)
    assert g.read("memory", "memory.min", "libvirt") == str(64 * MiB)
    assert g.read("memory", "memory.swap.high", "libvirt") == str(128 * MiB)
    # memsw 1G with RAM 512M: swap.max is the difference
    assert g.read("memory", "memory.swap.max", "libvirt") == str(512 * MiB)
    assert g.read("memory", "memory.max") == "max"      # nothing on the scope itself
    by = {c.param: c for c in changes}
    assert by["hard_limit"].old == "unlimited" and by["hard_limit"].new == "512M"
    assert by["swap_hard_limit"].old == "unlimited"
    assert by["min_guarantee"].old == "0B"
    assert live.read_value(router, gg, P.BY_NAME["hard_limit"]) == 512 * MiB
    assert live.read_value(router, gg, P.BY_NAME["swap_hard_limit"]) == 1024 * MiB
    # lowering both, then raising both: no order trap on v2, swap.max follows
    live.set_live(router, gg, settings("hard_limit=128M", "swap_hard_limit=256M",
                                       "soft_limit=64M"))
    assert g.read("memory", "memory.max", "libvirt") == str(128 * MiB)
    assert g.read("memory", "memory.swap.max", "libvirt") == str(128 * MiB)
    live.set_live(router, gg, settings("hard_limit=2G", "swap_hard_limit=3G"))
    assert g.read("memory", "memory.swap.max", "libvirt") == str(1024 * MiB)
    # hard_limit alone keeps RAM+swap where it was
    live.set_live(router, gg, settings("hard_limit=1G"))
    assert g.read("memory", "memory.swap.max", "libvirt") == str(2048 * MiB)
    assert live.read_value(router, gg, P.BY_NAME["swap_hard_limit"]) == 3 * 1024 * MiB
    # unlimited is written (and read) as "max", never -1
    live.set_live(router, gg, settings("swap_hard_limit=unlimited", "hard_limit=-1",
                                       "soft_limit=unlimited"))
    for name in ("memory.max", "memory.swap.max", "memory.high"):
        assert g.read("memory", name, "libvirt") == "max", name
    assert live.read_value(router, gg, P.BY_NAME["hard_limit"]) == float("inf")
    # unlimited swap with a limited RAM is "unlimited" memsw
    live.set_live(router, gg, settings("hard_limit=1G"))
    assert live.read_value(router, gg, P.BY_NAME["swap_hard_limit"]) == float("inf")


def test_impossible_combination_writes_nothing(scratch_guest, router):
    g = scratch_guest
    gg = groups(g)
    live.set_live(router, gg, settings("swap_hard_limit=1G", "hard_limit=512M"))
    with pytest.raises(UsageError):
        live.set_live(router, gg, settings("hard_limit=2G"))   # above memsw 1G
    assert g.read("memory", "memory.max", "libvirt") == str(512 * MiB)
    assert g.read("memory", "memory.swap.max", "libvirt") == str(512 * MiB)


def test_limit_below_usage_is_refused_where_the_kernel_would_oom_kill(scratch_guest, router):
    """v2 accepts memory.max below usage and OOM-kills (test_v2_kernel_facts);
    the engine refuses it with EBUSY, as v1 does, writing nothing. Then the
    kernel's own behaviour, written directly: the holder is OOM-killed."""
    g = scratch_guest
    gg = groups(g)
    p = _hold_memory(g.libvirt, 64)
    try:
        assert p.stdout.readline() == b"ready\n"
        assert int(g.read("memory", "memory.current", "libvirt")) > 64 * MiB
        with pytest.raises(KernelRefused) as ei:
            live.set_live(router, gg, settings("cpu_shares=100", "soft_limit=8M",
                                               "hard_limit=16M"))
        assert ei.value.errno == errno.EBUSY
        assert "OOM-kill" in str(ei.value) and "uses" in str(ei.value)
        assert g.read("memory", "memory.max", "libvirt") == "max"
        assert g.read("memory", "memory.high", "libvirt") == "max"
        assert g.read("cpu", "cpu.weight") == "100"
        time.sleep(0.2)
        assert p.poll() is None, "the engine's refusal must leave the guest alive"
        assert keyed(Path(g.libvirt) / "memory.events")["oom_kill"] == 0
        # a limit above usage is fine
        live.set_live(router, gg, settings("hard_limit=512M"))
        assert p.poll() is None
        # the same limit written directly: the kernel takes it and kills
        write(Path(g.libvirt) / "memory.max", str(16 * MiB))
        assert p.wait(timeout=60) == -9
        ev = keyed(Path(g.libvirt) / "memory.events")
        assert ev["oom_kill"] >= 1, ev
        assert int(g.read("memory", "memory.current", "libvirt")) <= 16 * MiB
    finally:
        _stop(p)


def test_process_over_memory_max_is_oom_killed(scratch_guest, router):
    """Enforcement seen once: with no swap, a process touching more than the
    hard_limit the engine wrote is SIGKILLed by the OOM killer."""
    if _swap_total() != 0:
        pytest.skip("swap is on: the process would swap instead")
    g = scratch_guest
    live.set_live(router, groups(g), settings("hard_limit=32M"))
    p = python_in(Path(g.libvirt), "x = b'a' * (128 << 20); print('survived')",
                  stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == -9, (p.returncode, out)
    assert b"survived" not in out
    ev = keyed(Path(g.libvirt) / "memory.events")
    assert ev["oom_kill"] >= 1 and ev["max"] >= 1, ev
    assert g.proc.poll() is None     # the OOM killer chose the big one


def _swap_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("SwapTotal:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------- cpu
def test_cpu_weight_and_bandwidth(scratch_guest, router):
    g = scratch_guest
    gg = groups(g)
    live.set_live(router, gg, settings("cpu_shares=2048", "global_period=50000",
                                       "global_quota=150%"))
    assert g.read("cpu", "cpu.weight") == "174"                 # on the scope
    assert g.read("cpu", "cpu.weight", "libvirt") == "100"
    assert g.read("cpu", "cpu.max", "libvirt") == "75000 50000"  # 1.5 CPUs
    assert g.read("cpu", "cpu.max") == "max 100000"
    shares = P.BY_NAME["cpu_shares"]
    assert live.read_value(router, gg, shares) == 2045           # many-to-one
    assert router.backend("cpu").normalize(shares, 2048) == 2045
    for s, w in ((2, "1"), (512, "59"), (1024, "100"), (4096, "303"), (262144, "10000")):
        live.set_live(router, gg, settings(f"cpu_shares={s}"))
        assert g.read("cpu", "cpu.weight") == w, s
    # per-vCPU and emulator bandwidth, in the threaded groups
    live.set_live(router, gg, settings("vcpu_quota=20000", "emulator_quota=10ms"))
    assert g.read("cpu", "cpu.max", "libvirt/vcpu0") == "20000 100000"
    assert g.read("cpu", "cpu.max", "libvirt/emulator") == "10000 100000"
    live.set_live(router, gg, settings("vcpu_period=50000", "vcpu_quota=50%"))
    assert g.read("cpu", "cpu.max", "libvirt/vcpu0") == "25000 50000"
    assert live.read_value(router, gg, P.BY_NAME["vcpu_quota"]) == 25000
    # unlimited (and "max") is written "max", keeping the period
    live.set_live(router, gg, settings("global_quota=unlimited"))
    assert g.read("cpu", "cpu.max", "libvirt") == "max 50000"
    live.set_live(router, gg, settings("vcpu_quota=max", "emulator_quota=-1"))
    assert g.read("cpu", "cpu.max", "libvirt/vcpu0") == "max 50000"
    assert g.read("cpu", "cpu.max", "libvirt/emulator") == "max 100000"
    assert live.read_value(router, gg, P.BY_NAME["global_quota"]) == float("inf")


def test_busy_loops_are_throttled_by_cpu_max(scratch_guest, router):
    """Enforcement seen once: cpu.max written by the engine throttles a busy
    loop in libvirt's group (global_quota) and one in vcpu0 (vcpu_quota)."""
    g = scratch_guest
    gg = groups(g)
    live.set_live(router, gg, settings("global_quota=10%", "vcpu_quota=5ms"))
    assert g.read("cpu", "cpu.max", "libvirt") == "10000 100000"
    assert g.read("cpu", "cpu.max", "libvirt/vcpu0") == "5000 100000"
    a = start_in(Path(g.libvirt), BUSY)
    b = start_in(Path(g.libvirt), BUSY)
    try:
        write(Path(g.vcpu_dirs[0]) / "cgroup.threads", str(b.pid))
        time.sleep(1.5)
    finally:
        _stop(a)
        _stop(b)
    for sub in ("libvirt", "libvirt/vcpu0"):
        stat = keyed(Path(g.scope) / sub / "cpu.stat")
        assert stat["nr_throttled"] > 0, (sub, stat)
        # unthrottled, the two busy loops would use up to 2 CPUs for every 100 ms period the
        # group was active (a loaded TCG VM stretches the 1.5 s: count periods, not seconds);
        # a 10% / 5% quota keeps them far below a quarter of that
        assert stat["usage_usec"] < 0.25 * 2 * stat["nr_periods"] * 100000, (sub, stat)


# ---------------------------------------------------------------------- cpuset
def test_cpuset_cpus_and_mems(scratch_guest, router):
    g = scratch_guest
    gg = groups(g)
    last = int(Path("/sys/devices/system/cpu/online").read_text().strip().split("-")[-1])
    live.set_live(router, gg, settings(f"cpuset_cpus={last}", "cpuset_mems=0"))
    assert g.read("cpuset", "cpuset.cpus", "libvirt") == str(last)
    assert g.read("cpuset", "cpuset.mems", "libvirt") == "0"
    # v2 needs no parent-first dance: the children follow through .effective
    assert g.read("cpuset", "cpuset.cpus.effective", "libvirt/vcpu0") == str(last)
    assert g.read("cpuset", "cpuset.cpus", "libvirt/vcpu0") == ""
    live.set_live(router, gg, settings("cpuset_cpus=0"))
    assert g.read("cpuset", "cpuset.cpus.effective", "libvirt/emulator") == "0"
    assert live.read_value(router, gg, P.BY_NAME["cpuset_cpus"]) == "0"


def test_erange_mid_set_rolls_back_every_file(scratch_guest, router):
    """cpuset.cpus naming CPUs the host does not have is refused (ERANGE) after
    memory.max and cpu.weight were written: both are restored."""
    g = scratch_guest
    gg = groups(g)
    live.set_live(router, gg, settings("cpu_shares=700", "soft_limit=900M"))
    files = [("memory", "memory.max", "libvirt"), ("memory", "memory.high", "libvirt"),
             ("cpu", "cpu.weight", ""), ("cpuset", "cpuset.cpus", "libvirt")]
    before = {f: g.read(*f) for f in files}
    with pytest.raises(KernelRefused) as ei:
        live.set_live(router, gg, settings("hard_limit=1G", "cpu_shares=300",
                                           "cpuset_cpus=0-63"))
    assert ei.value.errno == errno.ERANGE
    assert "does not have" in str(ei.value)
    assert {f: g.read(*f) for f in files} == before


def test_einval_mid_set_rolls_back_every_file(scratch_guest, router):
    """A NUMA node that does not exist is refused (EINVAL) after cpu.max."""
    g = scratch_guest
    gg = groups(g)
    nodes = Path("/sys/devices/system/node/possible").read_text().strip()
    missing = int(nodes.split("-")[-1]) + 1
    files = [("cpu", "cpu.max", "libvirt"), ("cpu", "cpu.weight", ""),
             ("cpuset", "cpuset.mems", "libvirt")]
    before = {f: g.read(*f) for f in files}
    with pytest.raises(KernelRefused) as ei:
        live.set_live(router, gg, settings("global_quota=50000", "cpu_shares=300",
                                           f"cpuset_mems={missing}"))
    assert ei.value.errno == errno.EINVAL
    assert "online CPUs/nodes" in str(ei.value)
    assert {f: g.read(*f) for f in files} == before


# ---------------------------------------------------------------------- io
def test_io_weight_is_converted_without_bfq(scratch_guest, router):
    g = scratch_guest
    _without_bfq(g)
    gg = groups(g)
    live.set_live(router, gg, settings("weight=500"))
    assert g.read("io", "io.weight") == "default 4950"           # on the scope
    assert g.read("io", "io.weight", "libvirt") == "default 100"
    assert live.read_value(router, gg, P.BY_NAME["weight"]) == 500
    live.set_live(router, gg, settings("weight=1000"))
    assert g.read("io", "io.weight") == "default 10000"


def test_per_device_io_weight_needs_iocost(scratch_guest, router, scratch_disk):
    g = scratch_guest
    _without_bfq(g)
    dev, mm = scratch_disk
    gg = groups(g)
    qos = Path("/sys/fs/cgroup/io.cost.qos")
    if not _iocost_attached(mm):    # iocost stays attached to a disk once initialised
        with pytest.raises(KernelRefused) as ei:
            live.set_live(router, gg, settings("weight=300", f"device_weight={dev},500"),
                          devnums={dev: mm})
        assert ei.value.errno == errno.EOPNOTSUPP
        assert "iocost" in str(ei.value) and "io.cost.qos" in str(ei.value)
        assert g.read("io", "io.weight") == "default 100"      # rolled back
    try:
        write(qos, f"{mm} enable=1")
        _device_weight_set_and_cleared(router, gg, g, dev, mm, 500, "io.weight",
                                       "default 100", "4950")
    finally:
        write_errno(qos, f"{mm} enable=0")


def test_io_max_on_the_scratch_disk(scratch_guest, router, scratch_disk):
    g = scratch_guest
    dev, mm = scratch_disk
    gg = groups(g)
    live.set_live(router, gg, settings(f"device_read_bytes_sec={dev},10M",
                                       f"device_write_iops_sec={dev},300"), devnums={dev: mm})
    assert g.read("io", "io.max", "libvirt") == f"{mm} rbps=10485760 wbps=max riops=max wiops=300"
    assert g.read("io", "io.max") == ""
    assert live.read_value(router, gg, P.BY_NAME["device_write_iops_sec"]) == {mm: 300}
    # one key at a time: the others stay
    changes, _ = live.set_live(router, gg, settings(f"device_write_bytes_sec={dev},1M"),
                               devnums={dev: mm})
    assert changes[0].old is None
    assert g.read("io", "io.max", "libvirt") == \
        f"{mm} rbps=10485760 wbps=1048576 riops=max wiops=300"
    # enforcement: 2 MiB of O_DIRECT writes at 1 MiB/s take over a second
    t0 = time.monotonic()
    p = start_in(Path(g.libvirt), ["dd", "if=/dev/zero", f"of={dev}", "bs=64k", "count=32",
                                   "oflag=direct"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert p.wait(timeout=120) == 0
    assert time.monotonic() - t0 > 1.0
    # clearing: 0 and unlimited remove a key ("max"), all-max drops the line
    live.set_live(router, gg, settings(f"device_read_bytes_sec={dev},0",
                                       f"device_write_bytes_sec={dev},unlimited"),
                  devnums={dev: mm})
    assert g.read("io", "io.max", "libvirt") == f"{mm} rbps=max wbps=max riops=max wiops=300"
    live.set_live(router, gg, settings(f"device_write_iops_sec={dev},0"), devnums={dev: mm})
    assert g.read("io", "io.max", "libvirt") == ""
    assert live.read_value(router, gg, P.BY_NAME["device_write_iops_sec"]) == {}


def test_io_max_rolls_back_on_a_later_refusal(scratch_guest, router, scratch_disk):
    g = scratch_guest
    dev, mm = scratch_disk
    gg = groups(g)
    live.set_live(router, gg, settings(f"device_read_iops_sec={dev},100"), devnums={dev: mm})
    before = g.read("io", "io.max", "libvirt")
    with pytest.raises(KernelRefused) as ei:
        live.set_live(router, gg, settings(f"device_read_iops_sec={dev},200",
                                           f"device_write_bytes_sec={dev},5M",
                                           "cpuset_cpus=0-63"), devnums={dev: mm})
    assert ei.value.errno == errno.ERANGE
    assert g.read("io", "io.max", "libvirt") == before


def test_io_bfq_weight_after_modprobe_bfq(scratch_guest, router, scratch_disk):
    """With bfq loaded, weight goes raw into io.bfq.weight (on the scope), and a
    per-device weight needs the disk's scheduler set to bfq."""
    g = scratch_guest
    dev, mm = scratch_disk
    r = subprocess.run(["modprobe", "bfq"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"modprobe bfq failed: {r.stderr.strip()}")
    assert _bfq_loaded(g)    # the files appear in groups that exist already
    gg = groups(g)
    live.set_live(router, gg, settings("weight=300"))
    assert g.read("io", "io.bfq.weight") == "default 300"
    assert g.read("io", "io.weight") == "default 100"          # untouched
    assert live.read_value(router, gg, P.BY_NAME["weight"]) == 300
    sched = _scheduler(dev)
    old = sched.read_text().split("[")[1].split("]")[0]
    try:
        if old != "bfq":
            # a disk off bfq takes its weight from iocost's io.weight: refused
            # until iocost was attached to the disk (it stays attached for the boot)
            if _iocost_attached(mm):
                _device_weight_set_and_cleared(router, gg, g, dev, mm, 200, "io.weight",
                                               "default 100", "1920")
                assert g.read("io", "io.bfq.weight") == "default 300"
            else:
                with pytest.raises(KernelRefused) as ei:
                    live.set_live(router, gg, settings(f"device_weight={dev},200"),
                                  devnums={dev: mm})
                assert ei.value.errno == errno.EOPNOTSUPP
                assert "scheduler set to bfq" in str(ei.value)
        write(sched, "bfq")
        _device_weight_set_and_cleared(router, gg, g, dev, mm, 200, "io.bfq.weight",
                                       "default 300", "200")
    finally:
        write(sched, old)
        # best effort: later tests of io.weight need bfq gone (fails if still in use)
        subprocess.run(["modprobe", "-r", "bfq"], capture_output=True)


# ---------------------------------------------------------------------- swap
@pytest.fixture
def swap_on(scratch_disk):
    """Real swap on the scratch disk for one test; swapoff afterwards."""
    dev, _ = scratch_disk
    for tool in ("mkswap", "swapon", "swapoff"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            pytest.skip(f"no {tool}")
    if _swap_total() != 0:
        pytest.skip("swap is on already")
    subprocess.run(["mkswap", dev], check=True, capture_output=True)
    try:
        subprocess.run(["swapon", dev], check=True, capture_output=True)
        assert _swap_total() > 0
        yield dev
    finally:
        subprocess.run(["swapoff", dev], capture_output=True)
        assert _swap_total() == 0


def test_memsw_becomes_swap_max_with_real_swap(scratch_guest, router, swap_on):
    """With swap: hard_limit 32M + swap_hard_limit 128M lets a 64 MiB process
    live, part of it in swap (swap.max = 96M); swap_hard_limit = hard_limit
    (swap.max 0) leaves no room, and the next one is OOM-killed."""
    g = scratch_guest
    gg = groups(g)
    live.set_live(router, gg, settings("hard_limit=32M", "swap_hard_limit=128M"))
    assert g.read("memory", "memory.swap.max", "libvirt") == str(96 * MiB)
    p = _hold_memory(g.libvirt, 64)
    try:
        assert p.stdout.readline() == b"ready\n"
        assert int(g.read("memory", "memory.swap.current", "libvirt")) > 16 * MiB
        assert int(g.read("memory", "memory.current", "libvirt")) <= 32 * MiB
    finally:
        _stop(p)
    live.set_live(router, gg, settings("swap_hard_limit=32M"))
    assert g.read("memory", "memory.swap.max", "libvirt") == "0"
    assert live.read_value(router, gg, P.BY_NAME["swap_hard_limit"]) == 32 * MiB
    p = python_in(Path(g.libvirt), "x = b'a' * (64 << 20); print('survived')",
                  stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == -9, (p.returncode, out)

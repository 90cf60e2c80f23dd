"""cgroup v2's own knobs (cpu_weight, io_weight, memory_low) on both versions, show in the
operator's unit (no phantom change, a default shown as the default), and the kernel's units
and ranges (page size, v1's and libvirt's "unlimited", 32-bit IOPS, BFQ weights).

On the faked kernels of tests/fakecg.py (v2: tests/fakekernel.py refuses what 6.1 refuses);
docs/cgroup-v1-v2.md#formulas has the mappings tested here."""

from __future__ import annotations

import pytest

from cgctl.cgroup import Router, hierarchy
from cgctl.cgroup.placement import groups_for_pid
from cgctl.core import live
from cgctl.errors import Unsupported, UsageError
from cgctl.model import convert, units
from cgctl.model import params as P
from tests import fakecg
from tests.fakekernel import FakeKernel


def read(path):
    with open(path) as f:
        return f.read().strip()


def s(*items):
    return P.parse_assignments(items)


@pytest.fixture
def v2(fs, monkeypatch):
    fakecg.make_v2_host(fs, bfq=False)
    m = fakecg.make_systemd_v2_machine(fs, "web1", id=3, vcpus=1)
    FakeKernel(monkeypatch)
    host = hierarchy.detect("/proc")
    return m, Router(host), groups_for_pid(m.pid, host, guest="web1", driver="qemu",
                                           proc_root="/proc")


@pytest.fixture
def v2bfq(fs, monkeypatch):
    fakecg.make_v2_host(fs, bfq=True)
    m = fakecg.make_systemd_v2_machine(fs, "web1", id=3, vcpus=1)
    FakeKernel(monkeypatch)
    host = hierarchy.detect("/proc")
    return m, Router(host), groups_for_pid(m.pid, host, guest="web1", driver="qemu",
                                           proc_root="/proc")


def _v1(fs, blkio):
    fakecg.make_v1_host(fs, blkio_weight=blkio)
    m = fakecg.make_v1_machine(fs, name="vm", vcpus=1)
    host = hierarchy.detect("/proc")
    return m, Router(host), groups_for_pid(m.pid, host, guest="vm", driver="qemu",
                                           proc_root="/proc")


# -- 1. native v2 parameters ----------------------------------------------------------------
def test_v2_native_values_are_written_as_given(v2):
    m, router, groups = v2
    live.set_live(router, groups, s("cpu_weight=1024", "io_weight=5000", "memory_low=256M"))
    assert read(f"{m.machine}/cpu.weight") == "1024"        # what libvirt's <shares>1024 writes
    assert read(f"{m.machine}/io.weight") == "default 5000"
    assert read(f"{m.libvirt}/memory.low") == str(256 * 2**20)
    for name, want in (("cpu_weight", 1024), ("io_weight", 5000), ("memory_low", 256 * 2**20)):
        assert live.read_value(router, groups, P.BY_NAME[name]) == want


def test_v2_io_weight_on_bfq_takes_1_to_1000(v2bfq):
    m, router, groups = v2bfq
    live.set_live(router, groups, s("io_weight=700"))
    assert read(f"{m.machine}/io.bfq.weight") == "default 700"
    with pytest.raises(UsageError, match=r"io.bfq.weight.*1\.\.1000"):
        live.set_live(router, groups, s("io_weight=5000"))
    assert read(f"{m.machine}/io.bfq.weight") == "default 700"


def test_memory_low_cannot_exceed_hard_limit(v2):
    _, router, groups = v2
    live.set_live(router, groups, s("hard_limit=1G"))
    with pytest.raises(UsageError, match="memory_low"):
        live.set_live(router, groups, s("memory_low=2G"))


def test_a_v1_shaped_and_a_native_parameter_for_one_file_are_refused_together():
    with pytest.raises(UsageError, match="same kernel file"):
        s("cpu_shares=2048", "cpu_weight=200")
    with pytest.raises(UsageError, match="same kernel file"):
        s("weight=500", "io_weight=200")


def test_v1_cpu_weight_is_systemds_mapping_and_reads_back_exactly(fs):
    m, router, groups = _v1(fs, "bfq")
    for weight, shares in ((100, 1024), (1, 10), (10000, 102400), (39, 399)):
        live.set_live(router, groups, s(f"cpu_weight={weight}"))
        assert read(f"{m.machine['cpu']}/cpu.shares") == str(shares)
        assert live.read_value(router, groups, P.BY_NAME["cpu_weight"]) == weight
    assert all(convert.shares_to_cpu_weight(convert.cpu_weight_to_shares(w)) == w
               for w in range(1, 10001))


def test_v1_io_weight_bfq_as_given_cfq_converted(fs):
    m, router, groups = _v1(fs, "bfq")
    live.set_live(router, groups, s("io_weight=300"))
    assert read(f"{m.machine['blkio']}/blkio.bfq.weight") == "300"
    with pytest.raises(UsageError, match=r"1\.\.1000"):
        live.set_live(router, groups, s("io_weight=2000"))


def test_v1_io_weight_on_cfq_is_converted_back(fs):
    m, router, groups = _v1(fs, "cfq")
    live.set_live(router, groups, s("io_weight=4950"))
    assert read(f"{m.machine['blkio']}/blkio.weight") == "500"   # 500 → 4950 on v2
    assert live.read_value(router, groups, P.BY_NAME["io_weight"]) == 4950


def test_v1_memory_low_is_unsupported_with_the_reason(fs):
    _, router, groups = _v1(fs, "bfq")
    with pytest.raises(Unsupported, match="no reclaim protection"):
        live.set_live(router, groups, s("memory_low=1G"))


def test_virsh_has_no_option_for_the_native_parameters():
    opts = {o for os_ in P.virsh_options().values() for o in os_}
    assert not {"cpu-weight", "io-weight", "memory-low", ""} & opts
    assert P.lookup("cpu-weight").name == "cpu_weight"   # `cgctl set` takes both spellings


# -- 2. show in the operator's unit ------------------------------------------------------------
def test_setting_cpu_shares_twice_on_v2_records_no_change(v2):
    _, router, groups = v2
    changes, _ = live.set_live(router, groups, s("cpu_shares=300"))
    assert changes[0].old == "1024"                 # the untouched default, not 1012
    changes, _ = live.set_live(router, groups, s("cpu_shares=300"))
    assert (changes[0].old, changes[0].new) == ("300", "300")   # not 295 -> 300


def test_v2_defaults_read_as_the_defaults(v2):
    m, router, groups = v2
    assert read(f"{m.machine}/cpu.weight") == "100"
    assert read(f"{m.machine}/io.weight") == "default 100"
    assert live.read_value(router, groups, P.BY_NAME["cpu_shares"]) == 1024   # not 1012
    assert live.read_value(router, groups, P.BY_NAME["weight"]) == 100       # not 20
    assert live.read_value(router, groups, P.BY_NAME["cpu_weight"]) == 100


def test_weight_converted_twice_on_v2_records_no_change(v2):
    _, router, groups = v2
    live.set_live(router, groups, s("weight=20"))
    changes, _ = live.set_live(router, groups, s("weight=20"))
    assert (changes[0].old, changes[0].new) == ("20", "20")


# -- 3. units and ranges as the kernel has them ------------------------------------------------
def test_iops_limits_stop_at_32_bits():
    assert P.parse_assignments(["device_read_iops_sec=/dev/vda,4294967294"])
    for name in ("device_read_iops_sec", "device_write_iops_sec"):
        with pytest.raises(UsageError, match="out of range"):
            P.parse_assignments([f"{name}=/dev/vda,4294967295"])


def test_memory_is_rounded_to_the_running_kernels_page(monkeypatch):
    monkeypatch.setattr(units, "PAGE_SIZE", 65536)
    assert P.parse_value(P.BY_NAME["hard_limit"], "100000K") == 100000 * 1024 // 65536 * 65536
    monkeypatch.setattr(units, "PAGE_SIZE", 4096)
    assert P.parse_value(P.BY_NAME["hard_limit"], "100001K") == 100000 * 1024


def test_v1_unlimited_depends_on_the_page_size(monkeypatch):
    assert convert.page_counter_max(4096) == 9223372036854771712
    assert convert.page_counter_max(65536) == 9223372036854710272
    monkeypatch.setattr(units, "PAGE_SIZE", 65536)
    assert convert.v1_memory_read("9223372036854710272\n") == units.UNLIMITED
    monkeypatch.setattr(units, "PAGE_SIZE", 4096)
    assert convert.v1_memory_read("9223372036854710272\n") == 9223372036854710272
    assert convert.v1_memory_read("9223372036854771712\n") == units.UNLIMITED


@pytest.mark.parametrize("text", ["9007199254740991", "9223372036854771712B", "unlimited", "-1"])
def test_libvirts_unlimited_is_unlimited_with_a_stable_round_trip(text):
    p = P.BY_NAME["hard_limit"]
    v = P.parse_value(p, text)
    assert v == units.UNLIMITED
    assert P.canonical_text(p, v) == "unlimited"
    assert P.from_text("hard_limit", "", P.canonical_text(p, v)).value == v


def test_above_libvirts_unlimited_is_out_of_range():
    with pytest.raises(UsageError, match="out of range"):
        P.parse_value(P.BY_NAME["hard_limit"], "9007199254740992")


def test_bfq_weights_take_1_to_1000_cfq_and_iocost_from_10(fs, monkeypatch):
    m, router, groups = _v1(fs, "bfq")
    live.set_live(router, groups, s("weight=5"))
    assert read(f"{m.machine['blkio']}/blkio.bfq.weight") == "5"


def test_cfq_weight_below_10_is_refused(fs):
    m, router, groups = _v1(fs, "cfq")
    with pytest.raises(UsageError, match=r"blkio.weight.*10\.\.1000"):
        live.set_live(router, groups, s("weight=5"))
    assert read(f"{m.machine['blkio']}/blkio.weight") == "500"


def test_iocost_weight_below_10_is_refused(v2):
    m, router, groups = v2
    with pytest.raises(UsageError, match=r"io.weight.*10\.\.1000"):
        live.set_live(router, groups, s("weight=5"))
    assert read(f"{m.machine}/io.weight") == "default 100"

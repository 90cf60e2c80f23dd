"""Value parsing, the catalogue and the conversions (pure code)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from cgctl.model import convert, units
from cgctl.model import params as P
from cgctl.errors import UsageError

INF = units.UNLIMITED


@pytest.mark.parametrize("text,expected", [
    ("512M", 512 * 2**20), ("2G", 2 * 2**30), ("1.5GiB", 3 * 2**29), ("1048576", 2**30),
    ("4KiB", 4096), ("1GB", 999997440), ("unlimited", INF), ("-1", INF),
    ("9223372036854771712B", INF), ("5000B", 4096),
])
def test_memory_values(text, expected):
    assert P.parse_value(P.BY_NAME["hard_limit"], text) == expected


@pytest.mark.parametrize("text", [
    "", "abc", "-5M", "1.5.5G", "12Q", "18446744073709551616G", "1e3", "0x10", "1\n0", "M",
    "nan", "inf", " - 1",
])
def test_bad_memory_values(text):
    with pytest.raises(UsageError) as ei:
        P.parse_value(P.BY_NAME["hard_limit"], text)
    assert ei.value.param == "hard_limit"


def test_overflow_2_64_is_refused():
    with pytest.raises(UsageError, match="out of range"):
        P.parse_value(P.BY_NAME["hard_limit"], str(2**64 // 1024) + "0")
    with pytest.raises(UsageError, match="out of range"):
        P.parse_value(P.BY_NAME["device_read_bytes_sec"], str(2**64))


@pytest.mark.parametrize("name,text,expected", [
    ("cpu_shares", "1024", 1024), ("global_period", "100ms", 100000),
    ("global_quota", "150%", "150%"), ("global_quota", "-1", INF), ("vcpu_quota", "5000", 5000),
    ("cpuset_cpus", "3,0-1,2", "0-3"), ("cpuset_mems", "0", "0"), ("weight", "500", 500),
])
def test_other_values(name, text, expected):
    assert P.parse_value(P.BY_NAME[name], text) == expected


@pytest.mark.parametrize("name,text", [
    ("cpu_shares", "1"), ("cpu_shares", "262145"), ("cpu_shares", "-1"), ("global_period", "999"),
    ("global_period", "2s"), ("global_quota", "999"), ("global_quota", "0%"), ("weight", "0"), ("weight", "1001"),
    ("weight", "1001"), ("cpuset_cpus", "3-1"), ("cpuset_cpus", ""), ("cpuset_cpus", "a"),
    ("global_quota", "abc%"),
])
def test_out_of_range(name, text):
    with pytest.raises(UsageError):
        P.parse_value(P.BY_NAME[name], text)


def test_assignments_and_aliases():
    s = P.parse_assignments(["hard-limit=1G", "device_read_bytes_sec=/dev/vda,10M,/dev/vdb,0"])
    assert s[("hard_limit", "")].value == 2**30
    assert s[("device_read_bytes_sec", "/dev/vda")].value == 10 * 2**20
    assert s[("device_read_bytes_sec", "/dev/vdb")].removes
    with pytest.raises(UsageError, match="unknown parameter"):
        P.parse_assignments(["bogus=1"])
    with pytest.raises(UsageError, match="PARAM=VALUE"):
        P.parse_assignments(["hard_limit"])
    with pytest.raises(UsageError, match="DEVICE,VALUE"):
        P.parse_assignments(["device_weight=500"])
    with pytest.raises(UsageError, match="twice"):
        P.parse_assignments(["hard_limit=1G", "hard_limit=2G"])


def test_merged_rules():
    with pytest.raises(UsageError, match="swap_hard_limit"):
        P.validate_merged({"hard_limit": 2 * 2**30, "swap_hard_limit": 2**30}, ["hard_limit"])
    with pytest.raises(UsageError, match="soft"):
        P.validate_merged({"hard_limit": 2**30, "soft_limit": 2 * 2**30}, ["soft_limit"])
    with pytest.raises(UsageError):  # unlimited RAM but finite RAM+swap
        P.validate_merged({"hard_limit": INF, "swap_hard_limit": 2**30}, ["hard_limit"])
    P.validate_merged({"hard_limit": 2**30, "soft_limit": INF, "swap_hard_limit": INF},
                      ["hard_limit"])
    # an old odd state does not block an unrelated change
    P.validate_merged({"hard_limit": 2**30, "soft_limit": 2 * 2**30}, ["cpu_shares"])


@pytest.mark.parametrize("shares,weight", [
    (0, 0), (2, 1), (512, 59), (1024, 100), (2048, 174), (4096, 303), (65536, 3023),
    (262144, 10000),
])
def test_shares_to_weight_published_vectors(shares, weight):
    assert convert.shares_to_weight(shares) == weight


@pytest.mark.parametrize("w,io", [(10, 1), (500, 4950), (1000, 10000), (100, 910)])
def test_blkio_weight_vectors(w, io):
    assert convert.blkio_weight_to_io_weight(w) == io


def test_memsw():
    assert convert.memsw_to_swap_max(INF, INF) == INF
    assert convert.memsw_to_swap_max(3 * 2**30, 2**30) == 2 * 2**30
    with pytest.raises(UsageError):
        convert.memsw_to_swap_max(2**29, 2**30)
    assert convert.v1_memory_read("9223372036854771712") == INF
    assert convert.v2_write(INF) == "max"
    assert convert.cpu_max_format(INF, 100000) == "max 100000"


@given(st.integers(min_value=2, max_value=262144))
def test_shares_round_trip(shares):
    w = convert.shares_to_weight(shares)
    assert 1 <= w <= 10000
    back = convert.weight_to_shares(w)
    assert convert.shares_to_weight(back) == w


@given(st.integers(min_value=10, max_value=1000))
def test_blkio_round_trip(w):
    assert convert.io_weight_to_blkio_weight(convert.blkio_weight_to_io_weight(w)) == w


@given(st.integers(min_value=0, max_value=2**40))
def test_size_format_round_trip(n):
    n = n * 4096
    assert P.parse_value(P.BY_NAME["hard_limit"], units.format_bytes(n)) == n


@given(st.sets(st.integers(min_value=0, max_value=300), min_size=1))
def test_cpulist_round_trip(cpus):
    text = units.format_cpulist(cpus)
    assert units.cpulist_to_set(units.parse_cpulist(text)) == cpus


def test_catalogue_complete():
    names = {p.name for p in P.CATALOGUE}
    assert {"hard_limit", "soft_limit", "swap_hard_limit", "min_guarantee", "swap_soft_limit",
            "cpu_shares", "global_period", "global_quota", "vcpu_period", "vcpu_quota",
            "emulator_period", "emulator_quota", "cpuset_cpus", "cpuset_mems", "weight",
            "device_weight", "device_read_bytes_sec", "device_write_bytes_sec",
            "device_read_iops_sec", "device_write_iops_sec",
            "cpu_weight", "io_weight", "memory_low", "device_io_weight"} == names
    for p in P.CATALOGUE:
        assert p.doc and (p.v1_file or p.v1_note) and (p.v2_file or p.v2_note)
        assert not math.isnan(p.maximum)


@given(st.sampled_from(P.CATALOGUE), st.integers(min_value=0, max_value=2**50))
def test_canonical_text_reads_back_the_same(param, n):
    try:
        value = P.parse_value(param, str(n) + ("B" if param.kind == P.BYTES else ""))
    except UsageError:
        return
    assert P.parse_value(param, P.canonical_text(param, value)) == value

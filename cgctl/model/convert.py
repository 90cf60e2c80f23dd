"""Every v1 <-> v2 value conversion, in one place. Pure: no I/O.

The formulas are the container ecosystem's current ones (runc >= 1.3.2,
crun >= 1.23), so a guest gets the same weight whichever tool set it.
"""

from __future__ import annotations

import math
from typing import Tuple

from cgctl.errors import UsageError
from cgctl.model.units import UNLIMITED, Number

from cgctl.model import units

LONG_MAX = 2**63 - 1


def page_counter_max(page_size: int = None) -> int:
    """What v1 reads back for "no limit": the kernel's PAGE_COUNTER_MAX (LONG_MAX pages on
    64-bit, capped so the byte count fits) is LONG_MAX rounded down to a whole page, so it
    depends on the page size: 9223372036854771712 with 4 KiB pages, ...710272 with 64 KiB."""
    ps = page_size or units.PAGE_SIZE
    return LONG_MAX // ps * ps


# with the running kernel's page size; bytes at or above it mean "no limit" everywhere
PAGE_COUNTER_MAX = page_counter_max()

#: libvirt's "unlimited" for memtune (VIR_DOMAIN_MEMORY_PARAM_UNLIMITED), in KiB: what
#: `virsh memtune` prints and takes for no limit; read as unlimited.
LIBVIRT_UNLIMITED_KIB = 9007199254740991


def is_unlimited_bytes(v: int) -> bool:
    """A byte count that means "no limit": the running kernel's PAGE_COUNTER_MAX (what v1
    reads back after "-1") and above, libvirt's 2^53-1 KiB included."""
    return v >= page_counter_max()


def shares_to_weight(shares: int) -> int:
    """cpu.shares [2..262144] → cpu.weight [1..10000]; 0 means unset."""
    if shares == 0:
        return 0
    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    l = math.log2(shares)
    exponent = (l * l + 125 * l) / 612.0 - 7.0 / 34.0
    return int(math.ceil(10 ** exponent))


def weight_to_shares(weight: int) -> int:
    """Inverse of shares_to_weight: the smallest shares value mapping to ``weight``.

    Used to show a v2 cpu.weight in the operator's cpu_shares unit; the
    round trip shares → weight → shares is exact for weights the formula
    produces, and a hand-written weight reads as the nearest shares. The
    kernel's default weight 100 reads as the default 1024 (which maps to 100),
    never as the smallest shares with weight 100 (1012).
    """
    if weight == CPU_WEIGHT_DEFAULT:
        return CPU_SHARES_DEFAULT
    if weight <= 1:
        return 2
    if weight >= 10000:
        return 262144
    lo, hi = 2, 262144
    while lo < hi:  # shares_to_weight is monotonic
        mid = (lo + hi) // 2
        if shares_to_weight(mid) < weight:
            lo = mid + 1
        else:
            hi = mid
    return lo


CPU_SHARES_DEFAULT, CPU_WEIGHT_DEFAULT, IO_WEIGHT_DEFAULT = 1024, 100, 100


def cpu_weight_to_shares(weight: int) -> int:
    """cpu_weight [1..10000] → v1 cpu.shares: systemd's mapping (CPUWeight= on a v1 host),
    rounded: 100 → 1024 (both defaults), 1 → 10, 10000 → 102400. Injective, and
    ``shares_to_cpu_weight`` gives every weight back exactly."""
    return max(2, int(round(weight * CPU_SHARES_DEFAULT / CPU_WEIGHT_DEFAULT)))


def shares_to_cpu_weight(shares: int) -> int:
    """v1 cpu.shares → cpu_weight, the inverse of ``cpu_weight_to_shares`` (clamped)."""
    return min(10000, max(1, int(round(shares * CPU_WEIGHT_DEFAULT / CPU_SHARES_DEFAULT))))


def blkio_weight_to_io_weight(weight: int) -> int:
    """blkio weight [10..1000] → io.weight [1..10000] (only where io.bfq.weight is absent)."""
    return 1 + (weight - 10) * 9999 // 990


def io_weight_to_blkio_weight(weight: int) -> int:
    """Inverse of blkio_weight_to_io_weight, exact on its image. The kernel's default
    io.weight 100 (not in the image: 19 → 91, 20 → 101) reads as the default weight 100,
    as libvirt and BFQ show it, not as 20."""
    if weight == IO_WEIGHT_DEFAULT:
        return 100
    if weight <= 1:
        return 10
    w = 10 + ((weight - 1) * 990 + 9998) // 9999
    # step down while the smaller weight still maps to at least ``weight``
    while w > 10 and blkio_weight_to_io_weight(w - 1) >= weight:
        w -= 1
    return min(w, 1000)


def memsw_to_swap_max(memsw: Number, memory: Number) -> Number:
    """v1's RAM+swap limit → v2's swap-only memory.swap.max."""
    if memsw == UNLIMITED:
        return UNLIMITED
    if memory == UNLIMITED:
        # v1 refuses a finite memsw above an unlimited memory limit as well
        raise UsageError("swap_hard_limit needs a finite hard_limit", param="swap_hard_limit")
    if memsw < memory:
        raise UsageError(f"swap_hard_limit ({memsw}) is below hard_limit ({memory})",
                         param="swap_hard_limit")
    return memsw - memory


def swap_max_to_memsw(swap_max: Number, memory: Number) -> Number:
    if swap_max == UNLIMITED or memory == UNLIMITED:
        return UNLIMITED
    return memory + swap_max


def v1_memory_write(value: Number) -> str:
    return "-1" if value == UNLIMITED else str(int(value))


def v1_memory_read(text: str) -> Number:
    v = int(text.strip())
    return UNLIMITED if v < 0 or is_unlimited_bytes(v) else v


def v2_write(value: Number) -> str:
    """v2 spells unlimited as 'max' everywhere ('-1' is EINVAL in memory.max and cpu.max)."""
    return "max" if value == UNLIMITED else str(int(value))


def v2_read(text: str) -> Number:
    t = text.strip()
    return UNLIMITED if t == "max" else int(t)


def v1_quota_write(value: Number) -> str:
    return "-1" if value == UNLIMITED else str(int(value))


def v1_quota_read(text: str) -> Number:
    v = int(text.strip())
    return UNLIMITED if v < 0 else v


def cpu_max_format(quota: Number, period: int) -> str:
    return f"{v2_write(quota)} {int(period)}"


def cpu_max_parse(text: str) -> Tuple[Number, int]:
    parts = text.split()
    quota = v2_read(parts[0])
    period = int(parts[1]) if len(parts) > 1 else 100000
    return quota, period

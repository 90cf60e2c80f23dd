"""The kernel's own files as ``show`` reports them beside cgctl's values: each file's unit and
the content a fresh group has (the kernel's default), so a default is shown as the default and
never as a converted number (docs/cgroup-v1-v2.md#what-show-reports-beside-cgctls-values).

Pure: no I/O (the backends read the files: ``Backend.native``)."""

from __future__ import annotations

from typing import Optional

from cgctl.model.convert import PAGE_COUNTER_MAX

_V1_NO_LIMIT = str(PAGE_COUNTER_MAX)   # what v1 prints for "no limit" (page-size dependent)

# file -> (unit of its number, the content a fresh group has; None: no fixed default)
FILES = {
    # v1
    "memory.limit_in_bytes": ("bytes", _V1_NO_LIMIT),
    "memory.soft_limit_in_bytes": ("bytes", _V1_NO_LIMIT),
    "memory.memsw.limit_in_bytes": ("bytes (RAM + swap)", _V1_NO_LIMIT),
    "cpu.shares": ("shares (2..262144)", "1024"),
    "cpu.cfs_period_us": ("microseconds", "100000"),
    "cpu.cfs_quota_us": ("microseconds (-1: no limit)", "-1"),
    "blkio.bfq.weight": ("weight (1..1000)", "100"),
    "blkio.weight": ("weight (10..1000)", "500"),          # CFQ's default
    "blkio.bfq.weight_device": ("MAJ:MIN weight (1..1000)", None),
    "blkio.weight_device": ("MAJ:MIN weight (10..1000)", None),
    "blkio.throttle.read_bps_device": ("MAJ:MIN bytes/s", None),
    "blkio.throttle.write_bps_device": ("MAJ:MIN bytes/s", None),
    "blkio.throttle.read_iops_device": ("MAJ:MIN IO/s", None),
    "blkio.throttle.write_iops_device": ("MAJ:MIN IO/s", None),
    # v2
    "memory.max": ("bytes", "max"),
    "memory.high": ("bytes", "max"),
    "memory.low": ("bytes", "0"),
    "memory.min": ("bytes", "0"),
    "memory.swap.max": ("bytes (swap only)", "max"),
    "memory.swap.high": ("bytes (swap only)", "max"),
    "cpu.weight": ("weight (1..10000)", "100"),
    "cpu.max": ("microseconds: QUOTA PERIOD", "max 100000"),
    "io.weight": ("weight (1..10000)", "default 100"),
    "io.bfq.weight": ("weight (1..1000)", "default 100"),
    "io.max": ("MAJ:MIN rbps= wbps= riops= wiops=", None),
    # both: a fresh group's cpuset is its parent's (checked by the caller)
    "cpuset.cpus": ("CPU list", None),
    "cpuset.mems": ("NUMA node list", None),
}


def unit(filename: str) -> Optional[str]:
    return FILES.get(filename, (None, None))[0]


def is_default(filename: str, raw: str) -> Optional[bool]:
    """True if ``raw`` (the file's content, stripped) is what a fresh group holds; None when
    the file has no fixed default (cpusets, per-device files)."""
    default = FILES.get(filename, (None, None))[1]
    if default is None:
        return None
    return " ".join(raw.split()) == default


def main_line(raw: str) -> str:
    """The group-wide part of a weight file that also holds per-device lines (``default N``)."""
    lines = [ln.strip() for ln in raw.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("default"):
            return ln
    return lines[0] if lines else ""

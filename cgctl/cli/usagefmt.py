"""Usage figures as text: the USED column of ``cgctl show`` and its usage lines, and the
cells of ``cgctl top`` (docs/observability.md). Pure: dicts from cgctl/cgroup/usage.py in,
strings out."""

from __future__ import annotations

from typing import List, Optional

_MEMORY_PARAMS = ("hard_limit", "soft_limit", "min_guarantee")
_SWAP_PARAMS = ("swap_hard_limit", "swap_soft_limit")
_QUOTA_PARAMS = ("global_quota", "vcpu_quota", "emulator_quota", "cpu_shares")
_IO = {"device_read_bytes_sec": "rbytes", "device_write_bytes_sec": "wbytes",
       "device_read_iops_sec": "rios", "device_write_iops_sec": "wios"}


def size(n: Optional[float]) -> str:
    """1536 → 1.5K; None → '-'."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"  # pragma: no cover


def count(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return "-"  # pragma: no cover


def seconds(usec: Optional[int]) -> str:
    return "-" if usec is None else f"{usec / 1e6:.1f}s"


def device_label(r: dict) -> str:
    """An IO row's device: the operator's name where the config names it, else the kernel's
    MAJ:MIN with its /dev node where there is one."""
    if r.get("device"):
        return r["device"]
    return f"{r['majmin']} ({r['node']})" if r.get("node") else r["majmin"]


def beside(param: str, usage: Optional[dict]) -> str:
    """The usage figure that belongs next to ``param``'s limit in ``cgctl show``."""
    if not usage:
        return ""
    mem, cpu, io = usage.get("memory") or {}, usage.get("cpu") or {}, usage.get("io") or []
    if param in _MEMORY_PARAMS and mem:
        return f"{size(mem.get('current'))} (peak {size(mem.get('peak'))})"
    if param in _SWAP_PARAMS and mem:
        return size(mem.get("swap"))
    if param in _QUOTA_PARAMS and cpu:
        text = f"cpu {seconds(cpu.get('usage_usec'))}"
        if param != "cpu_shares" and cpu.get("nr_throttled") is not None:
            text += (f", throttled {cpu['nr_throttled']}/{cpu.get('nr_periods')} periods "
                     f"{seconds(cpu.get('throttled_usec'))}")
        return text
    if param in _IO and io:
        key = _IO[param]
        fmt = size if key.endswith("bytes") else count
        return ", ".join(f"{device_label(r)}={fmt(r[key])}" for r in io if r[key]) \
            or "0"
    return ""


def lines(usage: Optional[dict]) -> List[str]:
    """The usage block under the table of ``cgctl show``."""
    if not usage:
        return []
    out = []
    mem = usage.get("memory")
    if mem:
        ev = mem.get("events") or {}
        out.append(f"memory: {size(mem.get('current'))} in use, peak {size(mem.get('peak'))}, "
                   f"swap {size(mem.get('swap'))}; anon {size(mem.get('anon'))}, "
                   f"file {size(mem.get('file'))}, kernel {size(mem.get('kernel'))}")
        out.append("memory events: " + ", ".join(
            f"{k} {ev[k] if ev.get(k) is not None else '-'}" for k in ("high", "max", "oom",
                                                                      "oom_kill")))
    cpu = usage.get("cpu")
    if cpu:
        out.append(f"cpu: {seconds(cpu.get('usage_usec'))} used (user "
                   f"{seconds(cpu.get('user_usec'))}, system {seconds(cpu.get('system_usec'))}); "
                   f"throttled in {count(cpu.get('nr_throttled'))} of "
                   f"{count(cpu.get('nr_periods'))} periods, "
                   f"{seconds(cpu.get('throttled_usec'))}")
    for r in usage.get("io") or []:
        name = f"{r['device']} ({r['majmin']})" if r.get("device") else device_label(r)
        out.append(f"io {name}: read {size(r['rbytes'])} in {count(r['rios'])} ops, "
                   f"written {size(r['wbytes'])} in {count(r['wios'])} ops")
    for c, p in sorted((usage.get("pressure") or {}).items()):
        out.append(f"pressure {c}: " + "; ".join(
            f"{k} avg10={v.get('avg10', 0):.2f} avg60={v.get('avg60', 0):.2f} "
            f"total={v.get('total', 0)}us" for k, v in p.items()))
    acct = usage.get("accounting") or {}
    if acct.get("note"):
        out.append(f"(usage: {acct['note']})")
    return out

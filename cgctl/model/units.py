"""Human values in, canonical numbers out. Pure: no I/O.

Memory follows virsh: a bare number is KiB; single-letter and IEC suffixes
are binary (``M`` = ``MiB`` = 2**20), ``KB``/``MB``/``GB`` are decimal;
``-1`` and ``unlimited`` mean no limit.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Optional, Union

from cgctl.errors import UsageError

#: The one "no limit" value inside cgctl. ``inf`` compares above every
#: number, so ``hard_limit <= swap_hard_limit`` needs no special case.
UNLIMITED = math.inf

Number = Union[int, float]  # an int, or UNLIMITED

import os as _os

#: The running kernel's page size (64 KiB pages exist: arm64, ppc64le): memory limits
#: are rounded down to whole pages, and v1's "no limit" depends on it (convert.py).
PAGE_SIZE = _os.sysconf("SC_PAGE_SIZE") if hasattr(_os, "sysconf") else 4096

_BINARY = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50, "e": 2**60}
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15, "e": 10**18}

_NUMBER_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$", re.ASCII)


def is_unlimited_word(text: str) -> bool:
    return text.strip().lower() in ("unlimited", "-1", "max", "none")


def _split(text: str, what: str):
    m = _NUMBER_RE.match(text)
    if not m:
        raise UsageError(f"{text!r} is not a {what}")
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:  # pragma: no cover - the regex already ruled this out
        raise UsageError(f"{text!r} is not a {what}") from None
    return number, m.group(2)


def _scale(suffix: str, bare_unit: int, text: str, what: str) -> int:
    s = suffix.lower()
    if s in ("", ):
        return bare_unit
    if s in ("b", "byte", "bytes"):
        return 1
    if len(s) == 1 and s in _BINARY:
        return _BINARY[s]
    if len(s) == 3 and s.endswith("ib") and s[0] in _BINARY:
        return _BINARY[s[0]]
    if len(s) == 2 and s.endswith("b") and s[0] in _DECIMAL:
        return _DECIMAL[s[0]]
    raise UsageError(f"{text!r} has an unknown unit {suffix!r} for a {what}"
                     " (use B, K/KiB, M/MiB, G/GiB, T/TiB, or KB/MB/GB for powers of 1000)")


def parse_size(text: str, *, bare_unit: int = 1024, allow_unlimited: bool = True,
               what: str = "size") -> Number:
    """Parse a memory size or byte rate; return bytes (int) or UNLIMITED.

    ``bare_unit`` is what a number without suffix counts: KiB for memory
    (virsh), bytes for rates.
    """
    text = str(text)
    if is_unlimited_word(text):
        if not allow_unlimited:
            raise UsageError(f"{text!r}: this parameter has no 'unlimited'")
        return UNLIMITED
    if text.strip().startswith("-"):
        raise UsageError(f"{text!r} is negative; a {what} must be 0 or more (or 'unlimited')")
    number, suffix = _split(text, what)
    value = number * _scale(suffix, bare_unit, text, what)
    if value != value.to_integral_value():
        # 1.5K of a bare-byte unit: refuse rather than guess how to round
        raise UsageError(f"{text!r} is not a whole number of bytes")
    return int(value)


def parse_int(text: str, *, what: str = "number", allow_unlimited: bool = False) -> Number:
    text = str(text).strip()
    if allow_unlimited and is_unlimited_word(text):
        return UNLIMITED
    if not re.fullmatch(r"[+-]?\d+", text, re.ASCII):
        raise UsageError(f"{text!r} is not a whole number of {what}")
    return int(text)


def parse_time_us(text: str, *, allow_unlimited: bool = False, what: str = "time") -> Number:
    """Microseconds; accepts a bare number (us) or ``us``/``ms``/``s`` suffixes."""
    text = str(text).strip()
    if allow_unlimited and is_unlimited_word(text):
        return UNLIMITED
    if text.startswith("-"):
        raise UsageError(f"{text!r} is negative; a {what} must be positive (or 'unlimited')")
    number, suffix = _split(text, what)
    scale = {"": 1, "us": 1, "ms": 1000, "s": 1_000_000}.get(suffix.lower())
    if scale is None:
        raise UsageError(f"{text!r} has an unknown unit {suffix!r} for a {what} (use us, ms or s)")
    value = number * scale
    if value != value.to_integral_value():
        raise UsageError(f"{text!r} is not a whole number of microseconds")
    return int(value)


def parse_cpulist(text: str, *, what: str = "CPU list") -> str:
    """Validate a list ("0-3,5,7-8") and return it in the kernel's canonical form.

    libvirt's exclusions are taken too: ``0-7,^3`` is 0-2,4-7 (every ``^N``/``^N-M`` is taken
    out of what the other parts name, wherever it stands)."""
    text = str(text).strip()
    if not text:
        raise UsageError(f"an empty {what} would leave the guest nowhere to run")
    items, excluded = set(), set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\^)?\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part, re.ASCII)
        if not m:
            raise UsageError(f"{text!r} is not a {what} (expected e.g. 0-3,6 or 0-7,^3)")
        lo = int(m.group(2))
        hi = int(m.group(3)) if m.group(3) is not None else lo
        if hi < lo:
            raise UsageError(f"{text!r}: range {lo}-{hi} runs backwards")
        if hi > 65535:
            raise UsageError(f"{text!r}: {hi} is beyond any CPU or node number")
        (excluded if m.group(1) else items).update(range(lo, hi + 1))
    items -= excluded
    if not items:
        raise UsageError(f"{text!r} leaves an empty {what}: the guest would have nowhere to run")
    return format_cpulist(items)


def cpulist_to_set(text: str) -> set:
    out = set()
    for part in text.strip().split(","):
        if not part.strip():
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def format_cpulist(items) -> str:
    nums = sorted(set(items))
    runs = []
    for n in nums:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def format_bytes(value: Number) -> str:
    """Short human form, exact: 1G, 1536M, 4096K, 1000B."""
    if value == UNLIMITED:
        return "unlimited"
    value = int(value)
    for suffix, scale in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if value and value % scale == 0:
            return f"{value // scale}{suffix}"
    return f"{value}B"


def describe_bytes(value: Number) -> str:
    """For messages: ``format_bytes`` when that is short (1G, 1536M), else the value in the
    largest unit it reaches, with the exact count after it: ``3.00G (3221348928 bytes)``;
    never a bare run of digits the reader has to count."""
    if value == UNLIMITED or int(value) % 1024 == 0 or int(value) < 1024:
        return format_bytes(value)
    value = int(value)
    for suffix, scale in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if value >= scale:
            return f"{value / scale:.2f}{suffix} ({value} bytes)"
    return format_bytes(value)  # pragma: no cover - < 1024 returned above


def format_number(value: Number) -> str:
    return "unlimited" if value == UNLIMITED else str(int(value))


from cgctl.model.ident import normalize_uuid  # noqa: E402,F401  (one place: ident.py)

"""Does a live value hold what a setting puts in force? One answer for `show` and for drift.

A value read back is not always the value written: the kernel and the v1→v2 conversions
are lossy (cpu.shares 2048 reads back as 2045 on v2), so the wanted value goes through the
backend's ``normalize`` first; a quota given as a share of CPUs ("150%") means microseconds
at the period in force, so it needs that period; a per-device value of 0 (or unlimited)
means "no entry for the device".
"""

from __future__ import annotations

from typing import Callable, Optional

from cgctl.model import params as P

# (param, value) -> what reading that value back after writing it gives
Normalize = Callable[[P.Param, P.Value], P.Value]


def normalizer(router, groups) -> Normalize:
    """The normalize of the backend that holds each parameter for this guest."""
    return lambda p, v: router.backend(p.controller).normalize(p, v, groups)


def in_force(p: P.Param, want: P.Value, live, normalize: Optional[Normalize] = None,
             period=None) -> Optional[bool]:
    """True if ``live`` holds ``want``, False if not, None when it cannot be told.

    ``live``: the value read back; for a per-device parameter one device's entry (None:
    the device has none). ``period``: the live value of ``p.period`` (a quota only),
    needed for a share of CPUs; None when it could not be read."""
    if p.per_device and (want == 0 or want == P.UNLIMITED):
        return live is None   # a clear: the entry is gone
    if live is None:
        return False
    if p.period and isinstance(want, str):
        if not isinstance(period, int):
            return None
        want = P.quota_us(want, period)
    return live == (normalize(p, want) if normalize else want)

"""cgctl/core/compare.py: the one "does the live value hold the setting" for show and drift."""

from __future__ import annotations

from cgctl.core.compare import in_force
from cgctl.model import params as P

Q, W, RATE, SHARES = (P.BY_NAME[n] for n in ("global_quota", "device_weight",
                                              "device_read_bytes_sec", "cpu_shares"))


def test_a_share_of_cpus_is_taken_at_the_period_in_force():
    assert in_force(Q, "50%", 50000, period=100000) is True
    assert in_force(Q, "50%", 50000, period=200000) is False
    assert in_force(Q, "50%", 50000, period=None) is None   # period unreadable: not judged
    assert in_force(Q, 20000, 20000) is True


def test_lossy_conversions_compare_as_read_back():
    v2_shares = lambda p, v: {2048: 2045}.get(v, v)   # noqa: E731  (v2: many-to-one)
    assert in_force(SHARES, 2048, 2045, v2_shares) is True
    assert in_force(SHARES, 2048, 2045) is False


def test_per_device_entries_and_clears():
    assert in_force(W, 500, 500) is True
    assert in_force(W, 500, None) is False            # no entry for the device
    assert in_force(W, 0, None) is True               # a clear: no entry is right
    assert in_force(W, 0, 500) is False
    assert in_force(RATE, P.UNLIMITED, None) is True

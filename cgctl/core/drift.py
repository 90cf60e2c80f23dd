"""Drift: a running guest's cgroup no longer holds what cgctl last wrote to it.

What cgctl wrote to *this run* of a guest is in the journal's history: every live write
(``set --live``/``--perm``, an apply at start, a reconcile, a repair) since the guest's
process started. Something else may rewrite a file afterwards: systemd rewrites a scope's
weights on ``daemon-reload`` (systemd#17938), a script ``echo``s into a file, libvirt applies
its own XML tunables again. ``find`` compares, ``repair`` writes cgctl's values back (and
records that in the history, so they stay the reference). A ``--live`` change made with cgctl
is a write cgctl made: it is the reference, never drift.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional

from cgctl.core import compare, live
from cgctl.host import runfiles
from cgctl.model import params as P
from cgctl.errors import CgctlError

REPAIR_COMMAND = "drift repair"


class Drift(NamedTuple):
    param: str
    device: str
    expected: str            # the journal's text of the last value cgctl wrote
    live: Optional[str]      # what the cgroup holds now (None: no entry for the device)

    def to_dict(self) -> dict:
        return {"param": self.param, "device": self.device or None, "expected": self.expected,
                "live": self.live}


def expected(journal, guest) -> Dict[P.Key, str]:
    """(param, device) → the last value cgctl wrote to this run of the guest."""
    started = runfiles.started_at(guest.pid)
    out: Dict[P.Key, str] = {}
    for row in journal.history(guest.uuid, since=started):   # oldest first
        if row.mode not in ("live", "live+config") or row.outcome != "ok":
            continue
        if row.param not in P.BY_NAME or row.device.startswith("stale:"):
            continue
        if row.new_value is None:
            out.pop((row.param, row.device), None)
        else:
            out[(row.param, row.device)] = row.new_value
            # the other parameter of its kernel file (cpu_shares/cpu_weight, weight/io_weight)
            # is overwritten by this write: its older value is no reference any more
            other = P.same_file_partner((row.param, row.device))
            if other is not None:
                out.pop(other, None)
    return out


def find(ctl, guest, journal=None) -> List[Drift]:
    """Every parameter whose live value differs from what cgctl last wrote to this run."""
    journal = journal or ctl.journal(create=False)
    want = expected(journal, guest)
    if not want:
        return []
    groups = ctl.groups(guest)
    router = ctl.router
    normalize = compare.normalizer(router, groups)
    cache: Dict[str, object] = {}

    def now(p: P.Param):
        if p.name not in cache:
            try:
                cache[p.name] = live.read_value(router, groups, p)
            except CgctlError:
                cache[p.name] = None   # unreadable here (unsupported, gone): not judged
        return cache[p.name]

    devnums = {}
    for (name, device) in want:
        if device:
            try:
                devnums[device] = ctl.device_numbers(
                    guest, [P.Setting(P.BY_NAME[name], device, 0)])[device]
            except CgctlError:
                pass   # the device is not there now: the udev watcher re-applies when it is
    drifts = []
    for (name, device), text in sorted(want.items()):
        p = P.BY_NAME[name]
        try:
            value = P.parse_value(p, text)
        except CgctlError:
            continue
        got = now(p)
        if got is None:
            continue
        if p.per_device:
            majmin = devnums.get(device)
            if majmin is None:
                continue
            got = got.get(majmin)   # this device's entry, None: it has none
        period = now(P.BY_NAME[p.period]) if p.period else None
        if compare.in_force(p, value, got, normalize, period) is False:
            drifts.append(Drift(name, device, text,
                                None if got is None else P.canonical_text(p, got)))
    return drifts


def repair(ctl, guest, drifts: List[Drift], *, source: str) -> "object":
    """Write cgctl's values back; returns the controller's Outcome (changes, errors).

    Under the guest's lock, and only where the reference is still what ``find`` saw: a
    ``set`` or an apply that landed between ``find`` and here wrote a newer value, which
    is the reference now and must not be overwritten with the older one."""
    with ctl.locked(guest):
        journal = ctl.journal(create=False)
        now = expected(journal, guest)
        settings = {(d.param, d.device): P.from_text(d.param, d.device, d.expected)
                    for d in drifts if now.get((d.param, d.device)) == d.expected}
        return ctl.apply_settings(guest, settings, source=source, command=REPAIR_COMMAND,
                                  journal=journal)

"""The vocabulary of a change: its modes (``--live``, ``--config``, both, ``--current``), what
it did to one guest (``Outcome``), and the one line logged per changed parameter."""

from __future__ import annotations

from typing import Iterable, List, Optional

from cgctl import log
from cgctl.core.live import Change
from cgctl.errors import CgctlError, GuestNotRunning, GuestTransient
from cgctl.host.runfiles import Guest
from cgctl.model import params as P


LIVE, CONFIG, BOTH, CURRENT = "live", "config", "live+config", "current"


class Outcome:
    """What one change or apply did to one guest."""

    def __init__(self, guest: Guest, mode: str, changes: Optional[List[Change]] = None,
                 errors: Optional[List[CgctlError]] = None):
        self.guest = guest
        self.mode = mode
        self.changes: List[Change] = changes or []
        self.errors: List[CgctlError] = errors or []  # per-parameter failures (apply)
        self.warnings: List[str] = []  # done, but something beside it was not (metadata)
        self.written_ns = 0  # perf_counter_ns when the writes were done (before the record)

    def to_dict(self) -> dict:
        return {
            "guest": self.guest.name, "uuid": self.guest.uuid, "driver": self.guest.driver,
            "mode": self.mode,
            "changes": [change_dict(c) for c in self.changes],
            "errors": [e.to_dict() for e in self.errors],
            "warnings": list(self.warnings),
        }


def change_dict(c) -> dict:
    """One change for --json: the display texts and, beside them, plain numbers in ``unit``
    (None: unlimited, a CPU list, a share of CPUs; params.number)."""
    unit = P.number_unit(P.BY_NAME[c.param]) if c.param in P.BY_NAME else None
    return {"param": c.param, "device": c.device or None, "old": c.old, "new": c.new,
            "old_number": P.number_of_text(c.param, c.device or "", c.old),
            "new_number": P.number_of_text(c.param, c.device or "", c.new), "unit": unit}


def resolve_mode(mode: str, guest: Guest) -> str:
    """--current → live or config; refuse what libvirt would refuse."""
    if mode == CURRENT:
        return LIVE if guest.running else CONFIG
    if mode in (LIVE, BOTH) and not guest.running:
        raise GuestNotRunning("domain is not running (use --config to change its next start)",
                              guest=guest.name)
    if mode in (CONFIG, BOTH) and not guest.persistent:
        raise GuestTransient("cannot change the persistent config of a transient domain "
                             "(use --live)", guest=guest.name)
    return mode


def log_changes(guest: Guest, changes: Iterable[Change], source: str, mode: str,
                level: int = log.INFO) -> None:
    if not log.enabled(level):  # nothing formatted when the level is off
        return
    for c in changes:
        dev = f"[{c.device}]" if c.device else ""
        log.log(level, "guest=%s param=%s%s %s -> %s mode=%s source=%s", guest.name, c.param, dev,
                 c.old if c.old is not None else "-", c.new if c.new is not None else "-",
                 mode, source)

"""Live values of a running guest: read them, and change a set all-or-nothing.

Cross-parameter rules and write order live here, above the backends
(as libvirt's domain_cgroup.c sits above vircgroup).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from cgctl.model import params as P
from cgctl.model import units
from cgctl.cgroup import Router
from cgctl.cgroup.apply import apply_writes, rollback
from cgctl.cgroup.backend import PlanContext, Write
from cgctl.cgroup.groups import GuestGroups
from cgctl.cgroup import fs
from cgctl.core import compare
from cgctl.errors import CgctlError, Unsupported
from cgctl.host import systemd

# what else a change must know to be validated and converted: the memory limits checked
# against each other (params.validate_merged), and the other half of a CPU bandwidth pair
_RELATED = (("hard_limit", "swap_hard_limit", "soft_limit", "min_guarantee", "memory_low"),) + tuple(
    (period.name, quota.name) for period, quota in P.BANDWIDTH)


class Change(NamedTuple):
    """One parameter moved from ``old`` to ``new`` (canonical texts)."""

    param: str
    device: str
    old: Optional[str]
    new: Optional[str]


def read_value(router: Router, groups: GuestGroups, param: P.Param):
    return router.backend(param.controller).read(param, groups)


def read_all(router: Router, groups: GuestGroups,
             names: Iterable[str] = None) -> Dict[str, object]:
    """Live value of each parameter; an unsupported one maps to its error."""
    out: Dict[str, object] = {}
    for p in P.CATALOGUE:
        if names is not None and p.name not in names:
            continue
        try:
            out[p.name] = read_value(router, groups, p)
        except CgctlError as exc:
            out[p.name] = exc
    return out


def _related(settings: Iterable[P.Setting]) -> List[str]:
    names = set()
    for s in settings:
        n = s.param.name
        for group in _RELATED:
            if n in group:
                names.update(group)
    return sorted(names)


def _old_values(router: Router, groups: GuestGroups, names: Iterable[str]) -> Dict[str, P.Value]:
    old = {}
    for n in dict.fromkeys(names):  # each once (the related set holds the settings too)
        try:
            old[n] = read_value(router, groups, P.BY_NAME[n])
        except Unsupported:
            continue  # e.g. no swap accounting: the rule that needs it cannot apply
    return old


def set_live(router: Router, groups: GuestGroups, settings: Mapping[P.Key, P.Setting],
             devnums: Mapping[str, str] = None) -> Tuple[List[Change], List[Write]]:
    """Write ``settings`` into the guest's groups, all or nothing.

    Returns what changed (old → new) and the writes made, which ``undo``
    reverses (used when the journal cannot record the change). Raises a
    CgctlError, with every file as it was, when anything is refused.
    """
    with fs.one_pass():  # each directory checked once for this set (cgctl/cgroup/fs.py)
        return _set_live(router, groups, settings, dict(devnums or {}))


def _set_live(router, groups, settings, devnums):
    plain = [s for s in settings.values() if not s.param.per_device]
    old = _old_values(router, groups, _related(plain) + [s.param.name for s in plain])
    new = dict(old)
    new.update({s.param.name: s.value for s in plain})
    P.validate_merged(new, [s.param.name for s in plain], guest=groups.guest)

    by_backend: Dict[int, List[P.Setting]] = {}
    backends = {}
    for s in settings.values():
        b = router.backend(s.param.controller)
        backends[id(b)] = b
        by_backend.setdefault(id(b), []).append(s)
    writes: List[Write] = []
    for key, subset in by_backend.items():
        ctx = PlanContext(groups=groups, old=old, new=new, changed=subset, devnums=devnums)
        writes += backends[key].plan(ctx, subset)

    olds = _change_olds(router, groups, settings, old, devnums)
    mem = router.backend("memory") if groups.machine.get("memory") else None
    apply_writes(writes, guest=groups.guest,
                 usage=(lambda: mem.usage(groups)) if mem else (lambda: "unknown"))
    # weights in a systemd scope: tell systemd too, or daemon-reload undoes them
    systemd.tell([w.path for w in writes], fs.read, groups.guest)
    return ([Change(s.param.name, s.device, olds.get(s.key), s.text())
             for s in settings.values()], writes)


def undo(writes: List[Write], guest: str = None) -> None:
    rollback(writes, guest)
    systemd.tell([w.path for w in writes], fs.read, guest)  # systemd learns the old values


def _change_olds(router, groups, settings, old, devnums) -> Dict[P.Key, Optional[str]]:
    """What each setting replaced, in the operator's unit. A live value that already holds
    the new one (after the backend's lossy conversion: cpu.weight 115 is cpu_shares 300,
    which reads back as 295) is recorded as the new value: setting it twice changes nothing."""
    out = {}
    normalize = compare.normalizer(router, groups)
    for s in settings.values():
        if not s.param.per_device:
            v = old.get(s.param.name)
            if v is not None and compare.in_force(s.param, s.value, v, normalize,
                                                  old.get(s.param.period)) is True:
                out[s.key] = s.text()
                continue
            out[s.key] = None if v is None else P.canonical_text(s.param, v)
            continue
        try:
            per_dev = read_value(router, groups, s.param)
        except CgctlError:
            per_dev = {}
        v = per_dev.get(devnums.get(s.device, ""))
        out[s.key] = None if v is None else P.canonical_text(s.param, v)
    return out


def format_value(param: P.Param, value) -> str:
    """An operator's reading of a live or journal value."""
    if isinstance(value, CgctlError):
        return "n/a"
    if isinstance(value, dict):
        return ", ".join(f"{d}={format_value(param, v)}" for d, v in sorted(value.items())) or "-"
    if isinstance(value, str):
        return value
    if param.kind == P.BYTES:
        return units.format_bytes(value)
    return units.format_number(value)

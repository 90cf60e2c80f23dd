"""What ``show``, ``list`` and ``history`` report: live beside config (cgctl/core/compare.py
decides "in force"), usage beside limits, the journal's rows; reads only."""

from __future__ import annotations

import os
from typing import Dict, List, Optional

from cgctl.core import compare, live
from cgctl.errors import CgctlError, GuestNotFound
from cgctl.host import devices, runfiles
from cgctl.model import params as P


def show(ctl, ident: str) -> dict:
    guest = ctl.find_guest(ident)
    eff = ctl.effective(guest.uuid)
    config = eff.config
    live_values: Dict[str, object] = {}
    groups = None
    names: Dict[str, List[str]] = {}
    if guest.running:
        groups = ctl.groups(guest)
        live_values = live.read_all(ctl.router, groups)
        names = ctl.device_names(guest, [d for (_, d) in config])
    normalize = compare.normalizer(ctl.router, groups) if guest.running else None
    written = _written(ctl, guest) if guest.running else {}
    if written:   # the devices cgctl wrote this run, beside the config's
        names = ctl.device_names(guest, [d for (_, d) in config] + [d for (_, d) in written])
    rows = []
    for p in P.CATALOGUE:
        cfg = {d: v for (n, d), v in config.items() if n == p.name}
        lv = live_values.get(p.name)
        rows.append(_show_row(p, lv, cfg, guest.running, normalize, names, live_values))
        rows[-1]["from_profile"] = any(eff.from_profile(k) for k in config if k[0] == p.name)
        if guest.running:
            _kernel_side(ctl, groups, p, rows[-1], written, live_values, normalize, names)
    notes = systemd_notes(groups) if groups is not None else []
    if eff.problem:
        notes.append(eff.problem + ("; the values its metadata carried apply"
                                    if eff.origin == "carried" else ""))
    return {"guest": guest.name, "uuid": guest.uuid, "driver": guest.driver,
            "running": guest.running, "persistent": guest.persistent,
            "groups": groups.to_dict() if groups is not None else {}, "notes": notes,
            "profile": eff.profile, "profile_origin": eff.origin or None,
            "profile_reference": eff.reference, "params": rows,
            "libvirt_tunables": _libvirt_tunables(ctl, guest),
            "usage": _usage(ctl, groups, names)}

# where the value in the kernel came from (``set_by``):
# docs/cgroup-v1-v2.md#what-show-reports-beside-cgctls-values
CGCTL, DEFAULT, ELSEWHERE = "cgctl", "default", "elsewhere"
ELSEWHERE_TEXT = "set elsewhere (libvirt, systemd or by hand)"


def _written(ctl, guest) -> Dict[P.Key, str]:
    """The last value cgctl wrote to this run of the guest, per (param, device): drift's
    reference (cgctl/core/drift.py), so show and drift repair judge alike; {} if unreadable."""
    from cgctl.core import drift
    try:
        return drift.expected(ctl.journal(create=False), guest)
    except (CgctlError, OSError):
        return {}


def _same_file_keys(key: P.Key) -> List[P.Key]:
    """The key, and the other parameter's that writes the same kernel file or entry."""
    other = P.same_file_partner(key)
    return [key] + ([other] if other else [])


def _holds_written(p: P.Param, text: str, live_value, normalize, live_values) -> Optional[bool]:
    try:
        want = P.parse_value(p, text)
    except CgctlError:
        return None
    return compare.in_force(p, want, live_value, normalize,
                            (live_values or {}).get(p.period) if p.period else None)


def _kernel_side(ctl, groups, p: P.Param, row: dict, written, live_values, normalize,
                 names) -> None:
    """The kernel's native file and value beside cgctl's (``kernel``), and who put that value
    there (``set_by``): cgctl (what it last wrote to this run holds), the kernel's default,
    or someone else (libvirt, systemd, a hand):
    docs/cgroup-v1-v2.md#what-show-reports-beside-cgctls-values."""
    row["kernel"] = None
    row["set_by"] = None
    lv = live_values.get(p.name)
    if isinstance(lv, CgctlError) or lv is None:
        return
    try:
        nat = ctl.router.backend(p.controller).native(p, groups)
    except (CgctlError, OSError):
        return
    row["kernel"] = nat.to_dict()
    if p.per_device:
        from cgctl.cgroup.backend import parse_device_file
        lines = parse_device_file(nat.raw)
        for d in row.get("devices", []):
            d["kernel_raw"] = lines.get(d["majmin"]) if d["majmin"] else None
            if d["live"] is None:
                d["set_by"] = None
                continue
            mine = [k for n in names.get(d["majmin"], [])
                    for k in _same_file_keys((p.name, n)) if k in written]
            # the value read back in the parameter's own unit is compared in the writer's
            held = [_holds_written(P.BY_NAME[k[0]], written[k],
                                   (live_values.get(k[0]) or {}).get(d["majmin"])
                                   if isinstance(live_values.get(k[0]), dict) else None,
                                   normalize, None) for k in mine]
            d["set_by"] = CGCTL if any(held) else ELSEWHERE
        row["set_by"] = ELSEWHERE if any(d.get("set_by") == ELSEWHERE
                                         for d in row.get("devices", [])) else \
            (CGCTL if any(d.get("set_by") == CGCTL for d in row.get("devices", [])) else
             DEFAULT)
        return
    for name, _ in _same_file_keys((p.name, "")):
        if (name, "") in written:
            q = P.BY_NAME[name]
            held = _holds_written(q, written[(name, "")], live_values.get(name), normalize,
                                  live_values)
            if held is not None:
                row["set_by"] = CGCTL if held else ELSEWHERE
                return
    row["set_by"] = {True: DEFAULT, False: ELSEWHERE, None: None}[nat.default]


def _libvirt_tunables(ctl, guest) -> Dict[str, str]:
    """{param: text} of libvirt's own <memtune>/<cputune>/<blkiotune> (cgctl/model/tunables.py):
    the running guest's XML, else the persistent one; {} when none can be read."""
    from cgctl.model import tunables
    return tunables.by_param(ctl.libvirt_tunables(guest, persistent=not guest.running))


def _usage(ctl, groups, names) -> Optional[dict]:
    """What the guest uses, beside its limits (cgctl/cgroup/usage.py); None if stopped."""
    from cgctl.cgroup import usage
    # the operator's name only where the config names the device; else MAJ:MIN and its node
    return None if groups is None else usage.read(
        groups, ctl.host, lambda mm: (names.get(mm) or [None])[0], devices.node_name)

def list_guests(ctl) -> List[dict]:
    out = []
    try:
        alive = runfiles.all_running(ctl.run_dir)
    except CgctlError:
        alive = {}
    for g in ctl.journal(create=False).guests():
        if g.deleted:
            continue
        running = g.uuid in alive
        out.append({"guest": g.name, "uuid": g.uuid, "driver": g.driver,
                    "state": "running" if running else "shut off",
                    "settings": g.settings, "last_change": g.last_change})
    return out

def history(ctl, ident: Optional[str] = None, limit: Optional[int] = None) -> List[dict]:
    j = ctl.journal(create=False)
    uuid = None
    if ident:
        row = j.find_guest(ident)
        if row is None:
            raise GuestNotFound("the journal has no history for this guest", guest=ident)
        uuid = row.uuid
    return [_history_dict(r) for r in j.history(uuid, limit=limit)]


def _history_dict(r) -> dict:
    """One history row for --json: the journal's columns (``name`` kept), ``guest`` as in
    every other command, and numbers beside the old/new texts."""
    d = r._asdict()
    unit = P.number_unit(P.BY_NAME[r.param]) if r.param in P.BY_NAME else None
    d.update(guest=r.name, unit=unit,
             old_number=P.number_of_text(r.param, r.device or "", r.old_value),
             new_number=P.number_of_text(r.param, r.device or "", r.new_value))
    return d


def systemd_notes(groups) -> List[str]:
    """What an operator should know about a guest whose machine group is a systemd scope."""
    if any(os.path.basename(d).endswith(".scope") for _, d in groups.machine.values()):
        # systemd rewrites a scope's own files on daemon-reload (systemd#17938); cgctl tells
        # systemd the weights it writes there (cgctl/host/systemd.py), all but BFQ's
        return ["the guest's machine group is a systemd scope: cgctl tells systemd the "
                "weights it writes there, so 'systemctl daemon-reload' keeps them; a BFQ weight "
                "(io.bfq.weight), or one systemd could not be told (a warning says so), is put "
                "back by drift repair ('cgctl verify --repair' by hand)"]
    return []


def _show_row(p: P.Param, live_value, cfg: Dict[str, str], running: bool, normalize=None,
              names: Dict[str, List[str]] = None, live_values=None) -> dict:
    """One parameter of ``show``: live beside config, and whether they differ (None: no
    config, not running, or not to be told; cgctl/core/compare.py decides)."""
    devs = None
    if p.per_device:
        live_text = live.format_value(p, live_value) if running else None
        config_text = ", ".join(f"{d}={v}" for d, v in sorted(cfg.items())) or None
        differs = None
        if running and isinstance(live_value, dict):
            devs = _device_rows(p, live_value, cfg, names or {}, normalize)
            live_text = ", ".join(
                f"{r['device']} ({r['majmin']})={r['live']}" if r["device"] else
                f"{r['majmin']} ({r['node']})={r['live']}" if r.get("node") else
                f"{r['majmin']}={r['live']}" for r in devs if r["live"] is not None) or "-"
            if cfg:
                differs = any(r["differs"] for r in devs if r["config"] is not None)
    else:
        live_text = live.format_value(p, live_value) if running else None
        config_value = cfg.get("")
        config_text = None
        differs = None
        if config_value is not None:
            pv = P.parse_value(p, config_value)
            config_text = live.format_value(p, pv)
            if running and not isinstance(live_value, CgctlError) and live_value is not None:
                held = compare.in_force(p, pv, live_value, normalize,
                                        (live_values or {}).get(p.period))
                differs = None if held is None else not held
    row = {"param": p.name, "live": live_text, "config": config_text, "differs": differs,
           "unsupported": str(live_value) if isinstance(live_value, CgctlError) else None,
           # numbers beside the display texts (per-device: in "devices")
           "live_number": None if p.per_device or not running else P.number(p, live_value),
           "config_number": None if p.per_device or cfg.get("") is None else
           P.number_of_text(p.name, "", cfg.get("")),
           "unit": P.number_unit(p),
           # the kernel's own file and value, and who put it there (_kernel_side)
           "kernel": None, "set_by": None}
    if devs is not None:
        row["devices"] = devs
    return row


def _device_rows(p: P.Param, live_value: Dict[str, object], cfg: Dict[str, str],
                 names: Dict[str, List[str]], normalize=None) -> List[dict]:
    """One row per device: the operator's name (where the config names it) beside MAJ:MIN;
    a configured device with no live entry, or that resolves to nothing now, differs."""
    rows = []
    seen = set()
    for majmin, value in sorted(live_value.items()):
        for n in [n for n in names.get(majmin, []) if n in cfg] or [None]:
            seen.add(n)
            ctext = cfg.get(n) if n else None
            rows.append({"device": n, "majmin": majmin,
                         # a value the config does not name: the kernel's node beside MAJ:MIN
                         "node": None if n else devices.node_name(majmin),
                         "live": P.canonical_text(p, value),
                         "config": ctext, "live_number": P.number(p, value),
                         "config_number": P.number_of_text(p.name, n or "", ctext),
                         "differs": None if ctext is None else
                         not compare.in_force(p, P.parse_value(p, ctext), value, normalize)})
    for n, ctext in sorted(cfg.items()):
        if n not in seen:
            majmin = next((mm for mm, ns in names.items() if n in ns), None)
            rows.append({"device": n, "majmin": majmin, "node": None, "live": None,
                         "config": ctext,
                         "live_number": None,
                         "config_number": P.number_of_text(p.name, n, ctext), "differs": True})
    return rows

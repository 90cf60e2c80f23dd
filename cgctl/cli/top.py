"""``cgctl top``: every running guest, one line each, refreshed in place (docs/observability.md).

Cheap by design, for hosts with hundreds of guests: libvirt's run files are read again only
when a run directory changed (its mtime) or a guest's process is gone; a guest's groups are
resolved once per process; each refresh reads a handful of cgroup files per guest
(cgctl/cgroup/usage.py) and no libvirt, no journal. Rates (CPU %, throttled %, IO/s) are
the difference of two samples over the time between them: ``--once`` takes two samples
``--interval`` apart.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Dict, List, Optional

from cgctl import consts
from cgctl.cgroup import placement, usage
from cgctl.cli import usagefmt
from cgctl.core import live
from cgctl.errors import CgctlError
from cgctl.host import runfiles
from cgctl.model import params as P
from cgctl.model.convert import PAGE_COUNTER_MAX

SORT_KEYS = {  # --sort NAME → the row's field, and whether biggest first
    "name": ("guest", False), "mem": ("mem_bytes", True), "cpu": ("cpu_percent", True),
    "throttle": ("throttled_percent", True), "io": ("io_bytes_per_s", True),
    "oom": ("oom_kills", True),
}
HEADER = ["GUEST", "DRIVER", "MEM", "LIMIT", "MEM%", "CPU%", "THROTTLED%", "READ/s", "WRITE/s",
          "OOM"]
IO_HEADER = ["GUEST", "DEVICE", "READ/s", "WRITE/s", "READS/s", "WRITES/s"]
_IO_KEYS = (("rbytes", "read_bytes_per_s"), ("wbytes", "write_bytes_per_s"),
            ("rios", "read_ops_per_s"), ("wios", "write_ops_per_s"))


class Sampler:
    """Samples of every running guest; keeps what it needs between two refreshes."""

    def __init__(self, host, run_dir: str, *, clock=time.monotonic, names_of=None):
        """``names_of(guest)``: MAJ:MIN → the operator's names for the guest's devices (its
        config); given, every row carries ``io``, one entry per device with its rates
        (``--io``). Asked once per guest process, as its groups are."""
        self.host = host
        self.run_dir = run_dir
        self.clock = clock
        self.names_of = names_of
        self._names: Dict[tuple, Dict[str, List[str]]] = {}  # (uuid, pid) -> names_of(guest)
        self._nodes: Dict[str, Optional[str]] = {}  # MAJ:MIN -> /dev node (devices.node_name)
        self._last_io: Dict[str, Dict[str, tuple]] = {}  # uuid -> {MAJ:MIN: counters}
        self._router = None
        self._stamp = None  # (driver dir, mtime) pairs the guest list was read at
        self._guests: Dict[str, runfiles.Guest] = {}
        self._groups: Dict[tuple, object] = {}  # (uuid, pid) -> GuestGroups
        self._last: Dict[str, tuple] = {}  # uuid -> (t, cpu usec, periods, throttled, r, w)

    def _dir_stamp(self):
        out = []
        for d in runfiles.DRIVERS:
            try:
                out.append((d, os.stat(os.path.join(self.run_dir, d)).st_mtime_ns))
            except OSError:
                out.append((d, None))
        return tuple(out)

    def guests(self) -> Dict[str, runfiles.Guest]:
        stamp = self._dir_stamp()
        if stamp != self._stamp or any(
                not os.path.exists(os.path.join(consts.PROC_ROOT, str(g.pid)))
                for g in self._guests.values() if g.pid):
            try:
                self._guests = runfiles.all_running(self.run_dir)
            except CgctlError:
                self._guests = {}
            self._stamp = stamp
            alive = {(g.uuid, g.pid) for g in self._guests.values()}
            self._groups = {k: v for k, v in self._groups.items() if k in alive}
            self._names = {k: v for k, v in self._names.items() if k in alive}
            self._last = {k: v for k, v in self._last.items() if k in self._guests}
            self._last_io = {k: v for k, v in self._last_io.items() if k in self._guests}
        return self._guests

    def _groups_of(self, g):
        key = (g.uuid, g.pid)
        if key not in self._groups:
            self._groups[key] = placement.groups_for_pid(g.pid, self.host, guest=g.name,
                                                         driver=g.driver)
        return self._groups[key]

    def sample(self) -> List[dict]:
        from cgctl.cgroup import Router
        if self._router is None:
            self._router = Router(self.host)
        rows = []
        for uuid, g in sorted(self.guests().items(), key=lambda kv: kv[1].name):
            try:
                groups = self._groups_of(g)
                mem = usage.memory(groups) or {}
                cpu = usage.cpu(groups, self.host) or {}
                io = usage.io(groups) or []
                try:
                    limit = live.read_value(self._router, groups, P.lookup("hard_limit"))
                except CgctlError:
                    limit = None
            except CgctlError:
                self._stamp = None  # the guest stopped or moved: read the run files again
                continue
            now = self.clock()
            rd = sum(r["rbytes"] for r in io)
            wr = sum(r["wbytes"] for r in io)
            cur = (now, cpu.get("usage_usec"), cpu.get("nr_periods"), cpu.get("nr_throttled"),
                   rd, wr)
            prev = self._last.get(uuid)
            self._last[uuid] = cur
            limit = None if not isinstance(limit, int) or limit >= PAGE_COUNTER_MAX else limit
            row = {"guest": g.name, "uuid": uuid, "driver": g.driver,
                   "mem_bytes": mem.get("current"), "mem_limit_bytes": limit,
                   "mem_percent": (round(100.0 * mem["current"] / limit, 1)
                                   if limit and mem.get("current") is not None else None),
                   "cpu_usec": cpu.get("usage_usec"), "nr_throttled": cpu.get("nr_throttled"),
                   "oom_kills": (mem.get("events") or {}).get("oom_kill"),
                   "read_bytes": rd, "write_bytes": wr,
                   "cpu_percent": None, "throttled_percent": None,
                   "read_bytes_per_s": None, "write_bytes_per_s": None, "io_bytes_per_s": None}
            if prev is not None and now > prev[0]:
                dt = now - prev[0]
                row["cpu_percent"] = _rate(cur[1], prev[1], dt * 1e4)  # usec/s / 1e6 * 100
                dp = _diff(cur[2], prev[2])
                dthr = _diff(cur[3], prev[3])
                row["throttled_percent"] = (round(100.0 * dthr / dp, 1) if dp else
                                            (0.0 if dp == 0 else None))
                row["read_bytes_per_s"] = _rate(rd, prev[4], dt)
                row["write_bytes_per_s"] = _rate(wr, prev[5], dt)
                row["io_bytes_per_s"] = (row["read_bytes_per_s"] or 0) + \
                    (row["write_bytes_per_s"] or 0)
            if self.names_of is not None:
                row["io"] = self._devices(g, io, prev[0] if prev else None, now)
            rows.append(row)
        return rows

    def _devices(self, g, io: List[dict], then: Optional[float], now: float) -> List[dict]:
        """Per device: the operator's name where the guest's config names it, else the
        kernel's MAJ:MIN and /dev node; counters and their rates since the last sample."""
        key = (g.uuid, g.pid)
        if key not in self._names:
            try:
                self._names[key] = self.names_of(g) or {}
            except CgctlError:
                self._names[key] = {}
        names = self._names[key]
        prev = self._last_io.get(g.uuid, {})
        cur, out = {}, []
        for r in io:
            mm = r["majmin"]
            cur[mm] = tuple(r[k] for k, _ in _IO_KEYS)
            if mm not in self._nodes:
                from cgctl.host import devices
                self._nodes[mm] = devices.node_name(mm)
            d = {"majmin": mm, "device": (names.get(mm) or [None])[0], "node": self._nodes[mm],
                 **{k: r[k] for k, _ in _IO_KEYS}}
            p = prev.get(mm)
            for i, (_, rate) in enumerate(_IO_KEYS):
                d[rate] = (_rate(cur[mm][i], p[i], now - then)
                           if p is not None and then is not None and now > then else None)
            out.append(d)
        self._last_io[g.uuid] = cur
        return out


def _diff(a, b) -> Optional[int]:
    return None if a is None or b is None else max(a - b, 0)


def _rate(a, b, per) -> Optional[float]:
    d = _diff(a, b)
    return None if d is None else round(d / per, 1)


def sort_rows(rows: List[dict], key: str) -> List[dict]:
    field, desc = SORT_KEYS[key]
    present = [r for r in rows if r.get(field) is not None]
    absent = [r for r in rows if r.get(field) is None]
    return sorted(present, key=lambda r: (r[field], r["guest"]) if not desc
                  else (-r[field], r["guest"])) + sorted(absent, key=lambda r: r["guest"])


def render(rows: List[dict], sort: str) -> List[str]:
    cells = [[r["guest"], r["driver"], usagefmt.size(r["mem_bytes"]),
              usagefmt.size(r["mem_limit_bytes"]) if r["mem_limit_bytes"] else "max",
              _pct(r["mem_percent"]), _pct(r["cpu_percent"]), _pct(r["throttled_percent"]),
              usagefmt.size(r["read_bytes_per_s"]), usagefmt.size(r["write_bytes_per_s"]),
              "-" if r["oom_kills"] is None else str(r["oom_kills"])] for r in rows]
    widths = [max(len(c[i]) for c in cells + [HEADER]) for i in range(len(HEADER))]
    fmt = lambda c: "  ".join(x.ljust(w) if i < 2 else x.rjust(w)  # noqa: E731
                              for i, (x, w) in enumerate(zip(c, widths))).rstrip()
    return [fmt(HEADER)] + [fmt(c) for c in cells] + (
        [] if rows else ["(no running guest)"])


def render_io(rows: List[dict]) -> List[str]:
    """``--io``: one line per guest and device, in the guests' order."""
    cells = [[r["guest"], usagefmt.device_label(d), usagefmt.size(d["read_bytes_per_s"]),
              usagefmt.size(d["write_bytes_per_s"]), usagefmt.count(d["read_ops_per_s"]),
              usagefmt.count(d["write_ops_per_s"])] for r in rows for d in r.get("io") or []]
    widths = [max(len(c[i]) for c in cells + [IO_HEADER]) for i in range(len(IO_HEADER))]
    fmt = lambda c: "  ".join(x.ljust(w) if i < 2 else x.rjust(w)  # noqa: E731
                              for i, (x, w) in enumerate(zip(c, widths))).rstrip()
    return [fmt(IO_HEADER)] + [fmt(c) for c in cells] + (
        [] if cells else ["(no IO counted)" if rows else "(no running guest)"])


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def run(args, ctl, out) -> int:
    """``cgctl top``: ``out(text)`` prints; returns the exit status."""
    names_of = None
    if getattr(args, "io", False):  # the operator's device names: the journal, per guest
        def names_of(g):
            config = ctl.effective(g.uuid).config
            return ctl.device_names(g, [d for (_, d) in config])
    sampler = Sampler(ctl.host, ctl.run_dir, names_of=names_of)
    draw = (lambda rows, sort: render_io(rows)) if names_of else render
    interval = args.interval
    if args.once:
        sampler.sample()
        time.sleep(interval)
        rows = sort_rows(sampler.sample(), args.sort)
        if args.json:
            import json
            out(json.dumps(rows, indent=2, sort_keys=True))
        else:
            out("\n".join(draw(rows, args.sort)))
        return 0
    tty = sys.stdout.isatty() and not args.json
    n = 0
    while args.count is None or n < args.count:
        rows = sort_rows(sampler.sample(), args.sort)
        if args.json:
            import json
            out(json.dumps(rows, sort_keys=True))  # one JSON array per line, per refresh
        else:
            head = (f"cgctl top - {time.strftime('%H:%M:%S')}  {len(rows)} running  "
                    f"sorted by {args.sort}  every {interval:g}s")
            text = "\n".join([head] + draw(rows, args.sort))
            out(("\x1b[H\x1b[2J" + text) if tty else text + "\n")
        if hasattr(sys.stdout, "flush"):
            sys.stdout.flush()
        n += 1
        if args.count is None or n < args.count:
            time.sleep(interval)
    return 0

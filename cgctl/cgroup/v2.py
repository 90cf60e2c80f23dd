"""cgroup v2: one unified hierarchy; conversions from libvirt's v1-shaped units.

File names come from the catalogue row (``Param.v2_files``); this module knows the
order of writes, the value spellings and io.max's keys."""

from __future__ import annotations

import errno
import os
from typing import List, Optional

from cgctl.model import convert
from cgctl.host import devices
from cgctl.model import params as P
from cgctl.model import units
from cgctl.errors import KernelRefused
from cgctl.cgroup import fs
from cgctl.cgroup.backend import (Backend, PlanContext, Write, check_weight_range, device_line,
                                  parse_device_file)
from cgctl.cgroup.groups import GuestGroups

_MEMORY = ("hard_limit", "soft_limit", "min_guarantee", "memory_low",
           "swap_soft_limit")  # one file each
_IO_KEYS = {"device_read_bytes_sec": "rbps", "device_write_bytes_sec": "wbps",
            "device_read_iops_sec": "riops", "device_write_iops_sec": "wiops"}


class IoMaxWrite(Write):
    """io.max takes one key at a time; undo restores that key only."""

    def __init__(self, param, path, dev, key, value):
        super().__init__(param, path, f"{dev} {key}={value}", device=dev,
                         absent_restore=f"{dev} {key}=max")
        self.key = key

    def compute_restore(self, old_content: str) -> str:
        line = device_line(old_content, self.device)
        for item in (line or "").split()[1:]:
            k, _, v = item.partition("=")
            if k == self.key:
                return f"{self.device} {k}={v}"
        return self.absent_restore


class V2Backend(Backend):
    version = 2
    usage_file = "memory.current"

    def missing_hint(self, param: P.Param, filename: str) -> str:
        if filename.startswith("memory.swap"):
            return " (kernel without swap accounting)"
        if "bfq" in filename:
            return " (BFQ not loaded: modprobe bfq)"
        if filename.startswith(("cpu.", "io.", "memory.", "cpuset.")):
            return (f" (is the {filename.split('.')[0]} controller enabled in the parent's"
                    " cgroup.subtree_control?)")
        return ""

    def _has_bfq(self, groups: GuestGroups) -> bool:
        """BFQ's weight file (the weight rows' first alternative) is in the machine group."""
        weight = P.BY_NAME["weight"]
        return fs.exists(os.path.join(groups.dirs(weight)[0], weight.v2_files[0]))

    def _weight_file(self, groups: GuestGroups, param: P.Param, bfq: bool) -> str:
        return param.v2_files[0] if bfq else param.v2_files[1]

    # -- reading ---------------------------------------------------------------
    def read(self, param: P.Param, groups: GuestGroups):
        name = param.name
        d = groups.dirs(param)[0]
        if name in _MEMORY:
            return convert.v2_read(fs.read(self.require(groups, param, d)))
        if name == "swap_hard_limit":
            # memory.swap.max holds swap only; libvirt's value counts RAM too
            hard = P.BY_NAME["hard_limit"]
            swap = convert.v2_read(fs.read(self.require(groups, param, d)))
            mem = convert.v2_read(fs.read(self.require(groups, hard, d)))
            return convert.swap_max_to_memsw(swap, mem)
        if name == "cpu_shares":
            return convert.weight_to_shares(int(fs.read(self.require(groups, param, d))))
        if name == "cpu_weight":   # native: as the kernel has it
            return int(fs.read(self.require(groups, param, d)))
        if param.kind in (P.PERIOD, P.QUOTA):
            quota, period = convert.cpu_max_parse(fs.read(self.require(groups, param, d)))
            return period if param.kind == P.PERIOD else quota
        if param.kind == P.CPULIST:
            return fs.read(self.require(groups, param, d)).strip()
        if name in ("weight", "device_weight", "io_weight", "device_io_weight"):
            bfq = self._has_bfq(groups)
            text = fs.read(self.require(groups, param, d, self._weight_file(groups, param, bfq)))
            native = name in ("io_weight", "device_io_weight")
            conv = (lambda w: w) if bfq or native else convert.io_weight_to_blkio_weight
            if name in ("weight", "io_weight"):
                for line in text.splitlines():
                    if line.startswith("default"):
                        return conv(int(line.split()[1]))
                return conv(100)
            out = {dev: conv(int(v)) for dev, v in parse_device_file(text).items()}
            iocost = os.path.join(d, param.v2_files[1])
            if bfq and fs.exists(iocost):
                # disks off bfq take their weight from iocost's io.weight
                for dev, v in parse_device_file(fs.read(iocost)).items():
                    out.setdefault(dev, int(v) if native else
                                   convert.io_weight_to_blkio_weight(int(v)))
            return out
        key = _IO_KEYS[name]
        out = {}
        for dev, rest in parse_device_file(fs.read(self.require(groups, param, d))).items():
            for item in rest.split():
                k, _, v = item.partition("=")
                if k == key and v != "max":
                    out[dev] = int(v)
        return out

    def normalize(self, param: P.Param, value, groups: GuestGroups = None):
        # shares → weight → shares is many-to-one: 2048 reads back as 2045
        if param.name == "cpu_shares" and isinstance(value, int):
            return convert.weight_to_shares(convert.shares_to_weight(value))
        if param.name == "weight" and isinstance(value, int) and groups is not None \
                and not self._has_bfq(groups):
            return convert.io_weight_to_blkio_weight(convert.blkio_weight_to_io_weight(value))
        return value

    # -- planning ----------------------------------------------------------------
    def plan(self, ctx: PlanContext, settings: List[P.Setting]) -> List[Write]:
        self.refuse_unsupported(ctx.groups, settings)
        by_name = {s.param.name: s for s in settings if not s.param.per_device}
        g = ctx.groups
        writes: List[Write] = []
        # memory.swap.max depends on hard_limit too: recompute it when either moves,
        # and write it before memory.max (docs/design.md#parameters-and-conversions)
        swap_hard = ctx.new.get("swap_hard_limit", units.UNLIMITED)
        if "swap_hard_limit" in by_name or ("hard_limit" in by_name and swap_hard != units.UNLIMITED):
            p = P.BY_NAME["swap_hard_limit"]
            swap = convert.memsw_to_swap_max(swap_hard, ctx.new.get("hard_limit", units.UNLIMITED))
            writes.append(Write(p.name, self.require(g, p, g.dirs(p)[0]), convert.v2_write(swap)))
        if "hard_limit" in by_name:
            self._refuse_oom(g, by_name["hard_limit"].value)
        for name in _MEMORY:
            if name in by_name:
                p = by_name[name].param
                writes.append(Write(name, self.require(g, p, g.dirs(p)[0]),
                                    convert.v2_write(by_name[name].value)))
        for name in ("cpu_shares", "cpu_weight"):   # cpu_weight: native, as given
            if name in by_name:
                s = by_name[name]
                value = convert.shares_to_weight(s.value) if name == "cpu_shares" else s.value
                writes.append(Write(s.param.name, self.require(g, s.param, g.dirs(s.param)[0]),
                                    str(value)))
        for pp, qp in P.BANDWIDTH:   # cpu.max holds both: "QUOTA PERIOD"
            if pp.name in by_name or qp.name in by_name:
                period = int(ctx.new.get(pp.name, 100000))
                quota = P.quota_us(ctx.new.get(qp.name, units.UNLIMITED), period)
                p = qp if qp.name in by_name else pp
                for d in g.dirs(p):
                    writes.append(Write(p.name, self.require(g, p, d),
                                        convert.cpu_max_format(quota, period)))
        for name in ("cpuset_cpus", "cpuset_mems"):
            if name in by_name:
                s = by_name[name]
                writes.append(Write(name, self.require(g, s.param, g.dirs(s.param)[0]), s.value))
        for name in ("weight", "io_weight"):
            if name in by_name:
                s = by_name[name]
                bfq = self._has_bfq(g)
                fname = self._weight_file(g, s.param, bfq)
                check_weight_range(s, bfq, fname, s.value)
                value = s.value if bfq or name == "io_weight" \
                    else convert.blkio_weight_to_io_weight(s.value)
                writes.append(Write(name, self.require(g, s.param, g.dirs(s.param)[0], fname),
                                    f"default {value}"))
        writes += self.plan_devices(ctx, settings)
        return writes

    def _refuse_oom(self, g: GuestGroups, limit) -> None:
        """v1 refuses a limit below usage (EBUSY); v2 accepts it and OOM-kills the
        guest. Refuse it here the way v1 does, so the operator's guest survives."""
        if limit == units.UNLIMITED:
            return
        try:
            current = int(fs.read(os.path.join(g.libvirt_dir("memory"), self.usage_file)))
        except (OSError, ValueError):
            return
        if limit < current:
            raise KernelRefused(
                f"the guest uses {units.describe_bytes(current)} now, more than the new limit "
                f"{units.describe_bytes(limit)}; cgroup v2 would OOM-kill it instead of refusing, "
                "so cgctl refuses (lower it in steps, or let the guest free memory first)",
                guest=g.guest, param="hard_limit", errno=errno.EBUSY,
                path=os.path.join(g.libvirt_dir("memory"), P.BY_NAME["hard_limit"].v2_file))

    def _plan_device(self, ctx: PlanContext, s: P.Setting) -> Optional[Write]:
        g = ctx.groups
        dev = ctx.devnums[s.device]
        d = g.dirs(s.param)[0]
        if s.param.name in ("device_weight", "device_io_weight"):
            # per disk: BFQ when the disk uses it, else iocost (io.weight, which the
            # kernel refuses with EOPNOTSUPP until io.cost.qos enables the disk)
            bfq = self._has_bfq(g) and devices.io_scheduler(dev)[0] in ("bfq", None)
            fname = self._weight_file(g, s.param, bfq)
            path = self.require(g, s.param, d, fname)
            if s.removes:
                if dev not in parse_device_file(fs.read(path)):
                    return None  # nothing to clear
                value = "default"
            else:
                check_weight_range(s, bfq, fname, s.value)
                native = s.param.name == "device_io_weight"   # as given (io.weight 1..10000)
                value = str(s.value if bfq or native
                            else convert.blkio_weight_to_io_weight(s.value))
            return Write(s.param.name, path, f"{dev} {value}",
                         device=dev, absent_restore=f"{dev} default")
        value = "max" if s.removes else str(int(s.value))
        return IoMaxWrite(s.param.name, self.require(g, s.param, d), dev,
                          _IO_KEYS[s.param.name], value)

"""cgroup v1: one hierarchy per controller, libvirt's files and spellings.

File names come from the catalogue row (``Param.v1_files``); this module knows the
order of writes and the value spellings."""

from __future__ import annotations

import os
from typing import Dict, List, Optional

from cgctl.model import convert
from cgctl.host import devices
from cgctl.model import params as P
from cgctl.model import units
from cgctl.cgroup import fs
from cgctl.cgroup.backend import (Backend, PlanContext, Write, check_weight_range,
                                  parse_device_file)
from cgctl.cgroup.groups import GuestGroups

class V1Backend(Backend):
    version = 1
    usage_file = "memory.usage_in_bytes"

    def missing_hint(self, param: P.Param, filename: str) -> str:
        if filename.startswith("memory.memsw"):
            return " (swap accounting is off: boot with swapaccount=1)"
        if "bfq" in filename or filename.startswith("blkio.weight"):
            return " (no proportional block-IO scheduler: load BFQ)"
        return ""

    # -- reading ---------------------------------------------------------------
    def read(self, param: P.Param, groups: GuestGroups):
        # the first of the row's files the group has (weights: BFQ's, else CFQ's)
        path = self.require(groups, param, groups.dirs(param)[0], self.pick(groups, param))
        if param.per_device:
            out = {dev: _int_or_unlimited(v) for dev, v in parse_device_file(fs.read(path)).items()}
            if param.name == "device_io_weight" and not self._is_bfq(path, param):
                out = {d: convert.blkio_weight_to_io_weight(v) for d, v in out.items()}
            return out
        if param.name in ("weight", "io_weight"):
            w = int(fs.read(path).split()[-1])
            if param.name == "io_weight" and not self._is_bfq(path, param):
                return convert.blkio_weight_to_io_weight(w)   # CFQ's 10..1000
            return w
        text = fs.read(path)
        if param.name == "cpu_weight":
            return convert.shares_to_cpu_weight(int(text.strip()))
        if param.kind == P.BYTES:
            return convert.v1_memory_read(text)
        if param.kind == P.QUOTA:
            return convert.v1_quota_read(text)
        if param.kind == P.CPULIST:
            return text.strip()
        return int(text.strip())

    # -- planning ----------------------------------------------------------------
    def plan(self, ctx: PlanContext, settings: List[P.Setting]) -> List[Write]:
        self.refuse_unsupported(ctx.groups, settings)
        by_name = {s.param.name: s for s in settings if not s.param.per_device}
        writes: List[Write] = []
        writes += self._plan_memory(ctx, by_name)
        for name in ("cpu_shares", "cpu_weight", "weight", "io_weight"):
            if name in by_name:
                s = by_name[name]
                path = self.require(ctx.groups, s.param, ctx.groups.dirs(s.param)[0],
                                    self.pick(ctx.groups, s.param))
                writes.append(Write(name, path, str(self._kernel_weight(s, path))))
        for period, quota in P.BANDWIDTH:
            writes += self._plan_bandwidth(ctx, by_name, period, quota)
        for name in ("cpuset_cpus", "cpuset_mems"):
            if name in by_name:
                writes += self._plan_cpuset(ctx, by_name[name])
        writes += self.plan_devices(ctx, settings)
        return writes

    @staticmethod
    def _is_bfq(path: str, param: P.Param) -> bool:
        return os.path.basename(path) == param.v1_files[0]

    def _kernel_weight(self, s: P.Setting, path: str) -> int:
        """What a weight row writes into its v1 file (docs/cgroup-v1-v2.md#formulas)."""
        v = s.value
        if s.param.name == "cpu_weight":
            return convert.cpu_weight_to_shares(v)
        if s.param.kind == P.WEIGHT or s.param.kind == P.IO_WEIGHT:
            bfq = self._is_bfq(path, s.param)
            if s.param.name == "io_weight" and not bfq:
                return convert.io_weight_to_blkio_weight(v)
            check_weight_range(s, bfq, os.path.basename(path), v)
        return v

    def normalize(self, param: P.Param, value, groups: GuestGroups = None):
        # io_weight through CFQ's blkio.weight (10..1000) is many-to-one
        if param.name in ("io_weight", "device_io_weight") and isinstance(value, int) \
                and value and groups is not None \
                and not self._is_bfq(self.pick(groups, param), param):
            return convert.blkio_weight_to_io_weight(convert.io_weight_to_blkio_weight(value))
        return value

    def _plan_memory(self, ctx: PlanContext, by_name: Dict[str, P.Setting]) -> List[Write]:
        mem = [n for n in ("hard_limit", "swap_hard_limit") if n in by_name]
        if len(mem) == 2 and ctx.new["hard_limit"] < ctx.old.get("hard_limit", units.UNLIMITED):
            order = ["hard_limit", "swap_hard_limit"]   # lowering: RAM first, memsw stays >= it
        else:
            order = ["swap_hard_limit", "hard_limit"]   # raising: memsw first
        order.append("soft_limit")
        writes = []
        for name in order:
            if name in by_name:
                s = by_name[name]
                path = self.require(ctx.groups, s.param, ctx.groups.dirs(s.param)[0])
                writes.append(Write(name, path, convert.v1_memory_write(s.value)))
        return writes

    def _plan_bandwidth(self, ctx: PlanContext, by_name, period: P.Param,
                        quota: P.Param) -> List[Write]:
        if period.name not in by_name and quota.name not in by_name:
            return []
        writes = []
        for d in ctx.groups.dirs(period):
            if period.name in by_name:   # period before quota
                writes.append(Write(period.name, self.require(ctx.groups, period, d),
                                    str(by_name[period.name].value)))
            if quota.name in by_name:
                us = P.quota_us(by_name[quota.name].value, ctx.new.get(period.name, 100000))
                writes.append(Write(quota.name, self.require(ctx.groups, quota, d),
                                    convert.v1_quota_write(us)))
        return writes

    def _plan_cpuset(self, ctx: PlanContext, s: P.Setting) -> List[Write]:
        """v1 cpusets nest strictly: a child must stay within its parent, so
        widen the parent first, then set the children, then the parent."""
        fname = self.file_for(s.param)
        top = ctx.groups.dirs(s.param)[0]
        path = self.require(ctx.groups, s.param, top, fname)
        children = [os.path.join(top, c, fname) for c in fs.subdirs(top)
                    if fs.exists(os.path.join(top, c, fname))]
        writes = []
        old = units.cpulist_to_set(fs.read(path))
        new = units.cpulist_to_set(s.value)
        if children and new != old:
            # the parent first holds both sets, so every child write fits inside it
            writes.append(Write(s.param.name, path, units.format_cpulist(old | new)))
        for c in children:
            writes.append(Write(s.param.name, fs.check_beneath(ctx.groups.mount("cpuset"), c),
                                s.value))
        if not writes or writes[0].data != s.value:
            writes.append(Write(s.param.name, path, s.value))
        return writes

    def _plan_device(self, ctx: PlanContext, s: P.Setting) -> Optional[Write]:
        dev = ctx.devnums[s.device]
        fname = self.pick(ctx.groups, s.param)
        path = self.require(ctx.groups, s.param, ctx.groups.dirs(s.param)[0], fname)
        if s.param.name in ("device_weight", "device_io_weight"):
            bfq = fname == s.param.v1_files[0]
            clear = "default" if bfq else "0"   # the kernel: bfq says ERANGE to "0"
            if s.removes:
                if dev not in parse_device_file(fs.read(path)):
                    return None  # nothing to clear (and off-bfq the kernel refuses even that)
                value = clear
            else:
                w = s.value
                if s.param.name == "device_io_weight" and not bfq:
                    w = convert.io_weight_to_blkio_weight(w)  # CFQ's 10..1000 (formulas)
                check_weight_range(s, bfq, fname, w)
                devices.check_scheduler(dev, "bfq" if bfq else "cfq", device=s.device,
                                        param=s.param.name, guest=ctx.groups.guest)
                value = str(w)
        else:
            clear = "0"
            value = "0" if s.removes else str(int(s.value))
        return Write(s.param.name, path, f"{dev} {value}", device=dev,
                     absent_restore=f"{dev} {clear}")



def _int_or_unlimited(text: str):
    t = text.strip()
    return units.UNLIMITED if t in ("max", "") else int(t.split()[-1])

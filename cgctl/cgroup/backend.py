"""What v1 and v2 backends share: the write record, the plan context, device files."""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, NamedTuple, Optional

from cgctl.model import params as P
from cgctl.errors import CgctlError, Unsupported, UsageError
from cgctl.cgroup import fs
from cgctl.cgroup.groups import GuestGroups


class Write:
    """One write(2) into one cgroup file, and how to undo it."""

    __slots__ = ("param", "path", "data", "device", "absent_restore", "restore")

    def __init__(self, param: str, path: str, data: str, device: Optional[str] = None,
                 absent_restore: Optional[str] = None):
        self.param = param
        self.path = path
        self.data = data
        self.device = device                  # MAJ:MIN for per-device files
        self.absent_restore = absent_restore  # what undoes it when the device had no entry
        self.restore: Optional[str] = None    # filled in by apply_writes before writing

    def __repr__(self) -> str:
        return f"Write({self.param!r}, {self.path!r}, {self.data!r})"

    def compute_restore(self, old_content: str) -> str:
        if self.device is None:
            return old_content.strip()
        line = device_line(old_content, self.device)
        return line if line is not None else self.absent_restore


def device_line(content: str, majmin: str) -> Optional[str]:
    for line in content.splitlines():
        if line.split(" ", 1)[0] == majmin:
            return line.strip()
    return None


def parse_device_file(content: str) -> Dict[str, str]:
    """``MAJ:MIN value...`` lines → {MAJ:MIN: rest}; a ``default N`` line is skipped."""
    out = {}
    for line in content.splitlines():
        head, _, rest = line.strip().partition(" ")
        if head and head != "default" and ":" in head:
            out[head] = rest.strip()
    return out


def check_weight_range(s: P.Setting, bfq: bool, filename: str, value: int) -> None:
    """BFQ's files take 1..1000; CFQ's blkio.weight and a weight converted for io.weight
    take 10..1000 (the catalogue's range is the widest; the file decides), io_weight on
    io.weight 1..10000. Refused before anything is written, naming the file."""
    if s.param.kind == P.IO_WEIGHT and not bfq:
        return
    lo, hi = (1, 1000) if bfq else (10, 1000)
    if not lo <= value <= hi:
        raise UsageError(f"{value} is out of range for {filename} on this host ({lo}..{hi})",
                         param=s.param.name)


class PlanContext:
    """What a backend needs to plan a set: the groups, old and merged values, devices."""

    def __init__(self, groups: GuestGroups, old: Mapping[str, P.Value],
                 new: Mapping[str, P.Value], changed: List[P.Setting],
                 devnums: Optional[Mapping[str, str]] = None):
        self.groups = groups
        self.old = old            # live values before the change (non-device params)
        self.new = new            # merged values after it
        self.changed = changed
        self.devnums = devnums or {}  # device name -> MAJ:MIN


class Backend:
    version = 0
    usage_file = ""  # the guest's memory use now, for "the guest uses X" in an EBUSY message

    # -- file names: only from the catalogue row (cgctl/model/params.py) ----------
    def files_for(self, param: P.Param, guest: str = None) -> tuple:
        """The row's files for this version; Unsupported with the row's note when none."""
        files = param.files(self.version)
        if not files:
            raise Unsupported(f"not available on cgroup v{self.version} "
                              f"({param.note(self.version).rstrip('.')})",
                              guest=guest, param=param.name)
        return files

    def file_for(self, param: P.Param) -> str:
        return self.files_for(param)[0]

    def pick(self, groups: GuestGroups, param: P.Param) -> str:
        """The first of the row's alternatives (BFQ's file, then the older one) that the
        guest's group has; the first when none is there, so that ``require`` names it."""
        files = self.files_for(param, groups.guest)
        d = groups.dirs(param)[0]
        return next((f for f in files if fs.exists(os.path.join(d, f))), files[0])

    def refuse_unsupported(self, groups: GuestGroups, settings: List[P.Setting]) -> None:
        """Before any write: a parameter this version has no file for is refused."""
        for s in settings:
            self.files_for(s.param, groups.guest)

    def require(self, groups: GuestGroups, param: P.Param, directory: str,
                filename: str = None) -> str:
        """The file's path, or Unsupported naming the parameter and the missing file.
        ``filename`` is one of the row's files (an alternative, or another row's)."""
        name = filename or self.file_for(param)
        path = os.path.join(directory, name)
        checked = fs.check_beneath(groups.mount(param.controller), path)
        if not fs.exists(checked):
            raise Unsupported(f"unsupported on this host: {path} does not exist"
                              f"{self.missing_hint(param, name)}", guest=groups.guest,
                              param=param.name, path=path)
        return checked

    def missing_hint(self, param: P.Param, filename: str) -> str:
        return ""

    # implemented by v1 / v2
    def read(self, param: P.Param, groups: GuestGroups):
        raise NotImplementedError

    def plan(self, ctx: PlanContext, settings: List[P.Setting]) -> List[Write]:
        raise NotImplementedError

    def plan_devices(self, ctx: PlanContext, settings: List[P.Setting]) -> List[Write]:
        """The per-device writes of a set (a clear with nothing to clear writes nothing)."""
        writes = []
        for s in settings:
            if s.param.per_device:
                w = self._plan_device(ctx, s)
                if w is not None:
                    writes.append(w)
        return writes

    def _plan_device(self, ctx: PlanContext, s: P.Setting) -> Optional[Write]:
        raise NotImplementedError

    def usage(self, groups: GuestGroups) -> str:
        from cgctl.model import units
        try:
            path = os.path.join(groups.libvirt_dir("memory"), self.usage_file)
            return units.format_bytes(int(fs.read(path)))
        except (OSError, ValueError, CgctlError):
            return "unknown"

    def normalize(self, param: P.Param, value, groups: GuestGroups = None):
        """What reading ``value`` back after writing it gives (lossy conversions)."""
        return value

    def native(self, param: P.Param, groups: GuestGroups) -> "Native":
        """The kernel file ``read`` takes this parameter from, as the kernel has it (no
        conversion): the file's name, its content, whether that is a fresh group's
        (cgctl/model/kernelfiles.py; a cpuset: its parent's). Unsupported as ``read``."""
        from cgctl.model import kernelfiles
        d = groups.dirs(param)[0]
        name = self.pick(groups, param)
        path = self.require(groups, param, d, name)
        raw = fs.read(path).strip()
        if param.per_device:
            return Native(name, raw, None)
        raw = kernelfiles.main_line(raw)
        default = kernelfiles.is_default(name, raw)
        if param.kind == P.CPULIST:
            try:   # a fresh group's cpuset is its parent's
                parent = os.path.join(os.path.dirname(d), name)
                default = " ".join(fs.read(parent).split()) == " ".join(raw.split())
            except (OSError, CgctlError):
                default = None
        return Native(name, raw, default)


class Native(NamedTuple):
    file: str               # e.g. cpu.weight
    raw: str                # its content, stripped (a weight file: its "default N" line)
    default: Optional[bool]  # what a fresh group holds; None: cannot be told

    def to_dict(self) -> dict:
        from cgctl.model import kernelfiles
        return {"file": self.file, "raw": self.raw, "unit": kernelfiles.unit(self.file),
                "default": self.default}

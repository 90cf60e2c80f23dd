"""The parameter catalogue: what each setting means, its unit, range and files.

Pure code, no I/O. Names are libvirt's (``virsh memtune``, ``schedinfo``,
``blkiotune``) so operators feel at home.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union, NamedTuple

from cgctl.model import units
from cgctl.errors import UsageError
from cgctl.model import convert
from cgctl.model.convert import PAGE_COUNTER_MAX
from cgctl.model.units import UNLIMITED, Number

# kinds of value
BYTES = "bytes"        # memory, in bytes; bare CLI number = KiB
SHARES = "shares"      # cpu.shares
PERIOD = "period"      # microseconds
QUOTA = "quota"        # microseconds, unlimited, or a share of CPUs ("150%")
CPULIST = "cpulist"    # kernel list syntax
WEIGHT = "weight"      # block-IO weight (libvirt's, v1-shaped)
CPU_WEIGHT = "cpu_weight"  # v2's cpu.weight, native
IO_WEIGHT = "io_weight"    # v2's io.weight (io.bfq.weight), native
RATE = "rate"          # per-device bytes/s; bare number = bytes
IOPS = "iops"          # per-device IO/s

# where a parameter is written (docs/design.md#finding-a-guests-cgroups)
LIBVIRT = "libvirt"    # the libvirt-owned group (".../libvirt" when it exists)
MACHINE = "machine"    # the machine group itself: weights are relative to siblings
VCPUS = "vcpus"        # every vcpuN group (QEMU only)
EMULATOR = "emulator"  # the emulator group (QEMU only)



class Param(NamedTuple):
    """One row of the catalogue: everything about a parameter that is not code.

    A parameter goes from the command line (``name``, or ``virsh`` under its ``family``
    command) through this row to the backend of its cgroup version, which writes the
    row's file for that version (``v1_files``/``v2_files``: the first that the host has,
    in order), or refuses with the row's note when there is none (tests/unit/
    test_catalogue_contract.py holds every backend to that)."""

    name: str
    family: str              # virsh command family: memtune, schedinfo, cpuset, blkiotune
    virsh: str               # its option under that command (``virsh memtune --hard-limit``);
    #                          "" when virsh has none (v2-native parameters: `cgctl set` only)
    controller: str          # v2 controller name (v1's blkio is "io" here)
    kind: str
    minimum: int
    maximum: int
    unlimited: bool
    per_device: bool
    target: str
    v1_files: Tuple[str, ...]  # what v1 writes, alternatives in order; (): unsupported
    v2_files: Tuple[str, ...]  # the same for v2
    doc: str
    qemu_only: bool = False
    v1_note: str = ""        # why v1 refuses it (no files), else how it is written
    v2_note: str = ""
    period: str = ""         # a quota's period parameter: the quota is "per period of <period>"

    @property
    def v1_file(self) -> Optional[str]:
        return self.v1_files[0] if self.v1_files else None

    @property
    def v2_file(self) -> Optional[str]:
        return self.v2_files[0] if self.v2_files else None

    def files(self, version: int) -> Tuple[str, ...]:
        return self.v1_files if version == 1 else self.v2_files

    def note(self, version: int) -> str:
        return self.v1_note if version == 1 else self.v2_note

    def unit(self) -> str:
        return {
            BYTES: "bytes (bare number: KiB)", SHARES: "shares", PERIOD: "microseconds",
            QUOTA: "microseconds or % of one CPU", CPULIST: "CPU/node list",
            WEIGHT: "weight", RATE: "bytes/s", IOPS: "IO/s",
            CPU_WEIGHT: "cpu.weight", IO_WEIGHT: "io.weight",
        }[self.kind]

    def range_text(self) -> str:
        if self.kind == CPULIST:
            return "e.g. 0-3,6"
        hi = "unlimited" if self.unlimited else str(self.maximum)
        return f"{self.minimum}..{hi}"


_MEM_MAX = PAGE_COUNTER_MAX
_IOPS_MAX = 2**32 - 2  # the kernel keeps IOPS limits in 32 bits (v1 truncates, v2: "max")
_QUOTA_MAX = 17592186044415  # kernel: max_cfs_quota_period-bound quota (2^44 - 1 us)
_V1_PERIOD, _V1_QUOTA, _V2_CPU_MAX = ("cpu.cfs_period_us",), ("cpu.cfs_quota_us",), ("cpu.max",)

CATALOGUE: Tuple[Param, ...] = (
    Param("hard_limit", "memtune", "hard-limit", "memory", BYTES, 0, _MEM_MAX, True, False,
          LIBVIRT, ("memory.limit_in_bytes",), ("memory.max",),
          "Most RAM the guest may use; above it the kernel reclaims, then OOM-kills."),
    Param("soft_limit", "memtune", "soft-limit", "memory", BYTES, 0, _MEM_MAX, True, False,
          LIBVIRT, ("memory.soft_limit_in_bytes",), ("memory.high",),
          "Point to which the guest is reclaimed when the host is short of memory.",
          v2_note="memory.high THROTTLES the guest above it, even with free host memory."),
    Param("swap_hard_limit", "memtune", "swap-hard-limit", "memory", BYTES, 0, _MEM_MAX, True,
          False, LIBVIRT, ("memory.memsw.limit_in_bytes",), ("memory.swap.max",),
          "Most RAM plus swap the guest may use; must be >= hard_limit.",
          v2_note="written as memory.swap.max = swap_hard_limit - hard_limit."),
    Param("min_guarantee", "memtune", "min-guarantee", "memory", BYTES, 0, _MEM_MAX, True, False,
          LIBVIRT, (), ("memory.min",),
          "RAM protected from reclaim.", v1_note="cgroup v1 has no memory guarantee."),
    Param("memory_low", "memtune", "", "memory", BYTES, 0, _MEM_MAX, True, False,
          LIBVIRT, (), ("memory.low",),
          "RAM protected from reclaim while the host can reclaim elsewhere (best effort); "
          "no virsh option.",
          v1_note="cgroup v1 has no reclaim protection; soft_limit is a reclaim target, "
                  "not a protection, so it is not used instead."),
    Param("swap_soft_limit", "memtune", "swap-soft-limit", "memory", BYTES, 0, _MEM_MAX, True,
          False, LIBVIRT, (), ("memory.swap.high",),
          "Swap use above which the guest is throttled.",
          v1_note="cgroup v1 has no swap throttle point."),
    Param("cpu_shares", "schedinfo", "cpu-shares", "cpu", SHARES, 2, 262144, False, False,
          MACHINE, ("cpu.shares",), ("cpu.weight",),
          "Relative CPU weight against other guests (1024 = default).",
          v2_note="converted to cpu.weight (1..10000) by the runc/crun formula."),
    Param("cpu_weight", "schedinfo", "", "cpu", CPU_WEIGHT, 1, 10000, False, False,
          MACHINE, ("cpu.shares",), ("cpu.weight",),
          "cgroup v2's own CPU weight (100 = default), written as given; no virsh option.",
          v1_note="written as cpu.shares = round(weight * 1024 / 100), systemd's mapping."),
    Param("global_period", "schedinfo", "global-period", "cpu", PERIOD, 1000, 1000000, False,
          False, LIBVIRT, _V1_PERIOD, _V2_CPU_MAX,
          "Bandwidth period of the whole guest, microseconds."),
    Param("global_quota", "schedinfo", "global-quota", "cpu", QUOTA, 1000, _QUOTA_MAX, True,
          False, LIBVIRT, _V1_QUOTA, _V2_CPU_MAX,
          "CPU time the whole guest may use per period; '150%' = 1.5 CPUs.",
          period="global_period"),
    Param("vcpu_period", "schedinfo", "vcpu-period", "cpu", PERIOD, 1000, 1000000, False, False,
          VCPUS, _V1_PERIOD, _V2_CPU_MAX, "Bandwidth period of each vCPU.", qemu_only=True),
    Param("vcpu_quota", "schedinfo", "vcpu-quota", "cpu", QUOTA, 1000, _QUOTA_MAX, True, False,
          VCPUS, _V1_QUOTA, _V2_CPU_MAX, "CPU time each vCPU may use per period.",
          qemu_only=True, period="vcpu_period"),
    Param("emulator_period", "schedinfo", "emulator-period", "cpu", PERIOD, 1000, 1000000, False,
          False, EMULATOR, _V1_PERIOD, _V2_CPU_MAX, "Bandwidth period of QEMU's own threads.",
          qemu_only=True),
    Param("emulator_quota", "schedinfo", "emulator-quota", "cpu", QUOTA, 1000, _QUOTA_MAX, True,
          False, EMULATOR, _V1_QUOTA, _V2_CPU_MAX,
          "CPU time QEMU's own threads may use per period.", qemu_only=True,
          period="emulator_period"),
    Param("cpuset_cpus", "cpuset", "cpus", "cpuset", CPULIST, 0, 0, False, False, LIBVIRT,
          ("cpuset.cpus",), ("cpuset.cpus",), "Host CPUs the guest may run on."),
    Param("cpuset_mems", "cpuset", "mems", "cpuset", CPULIST, 0, 0, False, False, LIBVIRT,
          ("cpuset.mems",), ("cpuset.mems",), "NUMA nodes the guest may allocate from."),
    # BFQ's files where the host has them, else the older CFQ (v1) / iocost (v2) ones
    Param("weight", "blkiotune", "weight", "io", WEIGHT, 1, 1000, False, False, MACHINE,
          ("blkio.bfq.weight", "blkio.weight"), ("io.bfq.weight", "io.weight"),
          "Relative block-IO weight against other guests.",
          v1_note="BFQ's file takes 1..1000, CFQ's blkio.weight 10..1000.",
          v2_note="io.bfq.weight takes 1..1000; io.weight takes it converted "
                  "1 + (w-10)*9999//990, from 10."),
    Param("io_weight", "blkiotune", "", "io", IO_WEIGHT, 1, 10000, False, False, MACHINE,
          ("blkio.bfq.weight", "blkio.weight"), ("io.bfq.weight", "io.weight"),
          "cgroup v2's own block-IO weight (100 = default), written as given; no virsh option.",
          v1_note="blkio.bfq.weight as given (1..1000); CFQ's blkio.weight (10..1000) takes "
                  "the smallest w with 1 + (w-10)*9999//990 >= io_weight.",
          v2_note="io.bfq.weight as given (1..1000), else io.weight (1..10000)."),
    Param("device_weight", "blkiotune", "device-weights", "io", WEIGHT, 1, 1000, False, True,
          MACHINE, ("blkio.bfq.weight_device", "blkio.weight_device"),
          ("io.bfq.weight", "io.weight"),
          "Block-IO weight on one disk: DEV,W (0 removes).",
          v1_note="BFQ's file takes 1..1000, CFQ's blkio.weight_device 10..1000.",
          v2_note="io.weight for a disk off BFQ, which needs io.cost.qos; there from 10."),
    Param("device_io_weight", "blkiotune", "", "io", IO_WEIGHT, 1, 10000, False, True,
          MACHINE, ("blkio.bfq.weight_device", "blkio.weight_device"),
          ("io.bfq.weight", "io.weight"),
          "cgroup v2's own block-IO weight on one disk: DEV,W (0 removes), written as given; "
          "no virsh option.",
          v1_note="blkio.bfq.weight_device as given (1..1000); CFQ's blkio.weight_device "
                  "(10..1000) takes the smallest w with 1 + (w-10)*9999//990 >= W.",
          v2_note="io.bfq.weight 'MAJ:MIN W' as given (1..1000) for a disk on BFQ, else "
                  "io.weight 'MAJ:MIN W' (1..10000), which needs io.cost.qos."),
    Param("device_read_bytes_sec", "blkiotune", "device-read-bytes-sec", "io", RATE, 0,
          2**64 - 2, True, True, LIBVIRT, ("blkio.throttle.read_bps_device",), ("io.max",),
          "Read bytes/s on one disk: DEV,N."),
    Param("device_write_bytes_sec", "blkiotune", "device-write-bytes-sec", "io", RATE, 0,
          2**64 - 2, True, True, LIBVIRT, ("blkio.throttle.write_bps_device",), ("io.max",),
          "Write bytes/s on one disk: DEV,N."),
    Param("device_read_iops_sec", "blkiotune", "device-read-iops-sec", "io", IOPS, 0, _IOPS_MAX,
          True, True, LIBVIRT, ("blkio.throttle.read_iops_device",), ("io.max",),
          "Read IO/s on one disk: DEV,N."),
    Param("device_write_iops_sec", "blkiotune", "device-write-iops-sec", "io", IOPS, 0,
          _IOPS_MAX, True, True, LIBVIRT, ("blkio.throttle.write_iops_device",), ("io.max",),
          "Write IO/s on one disk: DEV,N."),
)

BY_NAME: Dict[str, Param] = {p.name: p for p in CATALOGUE}
FAMILIES: Tuple[str, ...] = tuple(dict.fromkeys(p.family for p in CATALOGUE))
# (period, quota) of each CPU bandwidth pair: written together (v2's cpu.max holds both)
BANDWIDTH: Tuple[Tuple[Param, Param], ...] = tuple(
    (BY_NAME[p.period], p) for p in CATALOGUE if p.period)

# spellings operators bring: virsh's options (the catalogue's ``virsh`` column), and a few more
ALIASES = {
    "shares": "cpu_shares", "cpuset": "cpuset_cpus", "blkio_weight": "weight",
    "device-weight": "device_weight",
    **{p.virsh: p.name for p in CATALOGUE if p.virsh},
}

Value = Union[int, float, str]   # int/UNLIMITED for numbers, str for cpu lists and "150%"
Key = Tuple[str, str]            # (parameter name, device name or "")


def lookup(name: str) -> Param:
    canon = ALIASES.get(name, name.replace("-", "_"))
    try:
        return BY_NAME[canon]
    except KeyError:
        raise UsageError(f"unknown parameter {name!r} (see 'cgctl params')", param=name) from None


class Setting(NamedTuple):
    """One parsed value for one parameter (and, for per-device ones, one device)."""

    param: Param
    device: str
    value: Value

    @property
    def key(self) -> Key:
        return (self.param.name, self.device)

    @property
    def removes(self) -> bool:
        """True for a per-device value that clears the device's entry (0 or unlimited)."""
        return self.param.per_device and (self.value == 0 or self.value == UNLIMITED)

    def text(self) -> str:
        """Canonical text, as the journal keeps it."""
        return canonical_text(self.param, self.value)


def canonical_text(param: Param, value: Value) -> str:
    """The journal's spelling: exact, and read back the same by ``parse_value``
    (sizes carry a unit, since a bare memory number would mean KiB)."""
    if isinstance(value, str):
        return value
    if param.kind in (BYTES, RATE):
        return units.format_bytes(value)
    return units.format_number(value)


def parse_value(param: Param, text: str) -> Value:
    """Parse one value (without a device) for ``param``; range-checked."""
    text = str(text)
    if "\x00" in text or "\n" in text:
        raise UsageError("value holds a NUL or newline", param=param.name)
    try:
        value = _parse_kind(param, text)
    except UsageError as exc:
        raise UsageError(exc.message, param=param.name) from None
    _check_range(param, value, text)
    return value


def _parse_kind(param: Param, text: str) -> Value:
    k = param.kind
    if k == BYTES:
        v = units.parse_size(text, bare_unit=1024, allow_unlimited=param.unlimited,
                             what="memory size")
        if v != UNLIMITED and convert.is_unlimited_bytes(v) \
                and v <= convert.LIBVIRT_UNLIMITED_KIB * 1024:
            # what v1 reads back for "no limit" (the running kernel's PAGE_COUNTER_MAX) and
            # libvirt's 9007199254740991 KiB mean the same thing; above them: out of range
            return UNLIMITED
        # the kernel counts whole pages and rounds down; so do we, so that the
        # journal and the live value compare equal
        return v if v == UNLIMITED else (v // units.PAGE_SIZE) * units.PAGE_SIZE
    if k == RATE:
        return units.parse_size(text, bare_unit=1, allow_unlimited=True, what="byte rate")
    if k in (SHARES, WEIGHT, IOPS, CPU_WEIGHT, IO_WEIGHT):
        return units.parse_int(text, what=param.unit(), allow_unlimited=param.unlimited)
    if k == PERIOD:
        return units.parse_time_us(text, what="period")
    if k == QUOTA:
        t = text.strip()
        if t.endswith("%"):
            try:
                pct = float(t[:-1])
            except ValueError:
                raise UsageError(f"{text!r} is not a percentage of one CPU") from None
            if not (0 < pct <= 100000) or pct != pct:
                raise UsageError(f"{text!r}: a CPU share must be above 0% and at most 100000%")
            return f"{pct:g}%"
        return units.parse_time_us(text, allow_unlimited=True, what="quota")
    if k == CPULIST:
        return units.parse_cpulist(text, what="CPU list" if param.name == "cpuset_cpus"
                                   else "NUMA node list")
    raise AssertionError(k)  # pragma: no cover


def _check_range(param: Param, value: Value, text: str) -> None:
    if isinstance(value, str) or value == UNLIMITED:
        return
    lo, hi = param.minimum, param.maximum
    if param.per_device and value == 0:
        return  # 0 clears a device's entry
    if value < lo or value > hi:
        raise UsageError(f"{text!r} is out of range ({param.range_text()} {param.unit()})",
                         param=param.name)


def parse_device_value(param: Param, text: str) -> List[Tuple[str, Value]]:
    """``DEV,N[,DEV,N...]`` → [(device, value), ...] for a per-device parameter."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) < 2 or len(parts) % 2:
        example = "50M" if param.kind == RATE else "1000" if param.kind == IOPS else "500"
        raise UsageError(f"{text!r}: expected DEVICE,VALUE (e.g. /dev/vda,{example})",
                         param=param.name)
    out = []
    for dev, raw in zip(parts[::2], parts[1::2]):
        check_device_name(dev, param.name)
        out.append((dev, parse_value(param, raw)))
    return out


def check_device_name(dev: str, param: str = None) -> None:
    if not dev:
        raise UsageError("empty device name", param=param)
    if any(c in dev for c in "\x00\n ") or len(dev) > 4096:
        raise UsageError(f"{dev!r} is not a device name", param=param)
    if "/.." in dev or dev.startswith(".."):
        raise UsageError(f"{dev!r}: '..' is not allowed in a device name", param=param)


def parse_assignment(text: str) -> List[Setting]:
    """``hard_limit=1G`` or ``device_read_bytes_sec=/dev/vda,10M`` → settings."""
    name, sep, raw = str(text).partition("=")
    if not sep:
        raise UsageError(f"{text!r}: expected PARAM=VALUE (see 'cgctl params')")
    param = lookup(name.strip())
    if param.per_device:
        return [Setting(param, dev, v) for dev, v in parse_device_value(param, raw)]
    return [Setting(param, "", parse_value(param, raw))]


# libvirt's v1-shaped parameter and the v2-native one that write the same file
SAME_FILE = (("cpu_shares", "cpu_weight"), ("weight", "io_weight"))
# the same, per device: one entry of one file for each disk
SAME_DEVICE_ENTRY = (("device_weight", "device_io_weight"),)


def same_file_partner(key: "Key") -> Optional["Key"]:
    """The other parameter writing the same kernel file (or, per device, the same entry of
    it) as ``key`` = (param, device): its key, or None. A write of one replaces the other."""
    name, device = key
    for a, b in (SAME_DEVICE_ENTRY if device else SAME_FILE):
        if name in (a, b):
            return (b if name == a else a, device)
    return None


def parse_assignments(items: Iterable[str]) -> Dict[Key, Setting]:
    out: Dict[Key, Setting] = {}
    for item in items:
        for s in parse_assignment(item):
            if s.key in out and out[s.key].value != s.value:
                raise UsageError("given twice with different values", param=s.param.name)
            out[s.key] = s
    if not out:
        raise UsageError("no parameter given (PARAM=VALUE ...)")
    for a, b in SAME_FILE:
        if (a, "") in out and (b, "") in out:
            raise UsageError(f"{a} and {b} set the same kernel file: give one of them",
                             param=b)
    for a, b in SAME_DEVICE_ENTRY:
        both = {d for (n, d) in out if n == a} & {d for (n, d) in out if n == b}
        if both:
            raise UsageError(f"{a} and {b} set the same entry of {sorted(both)[0]}: give one "
                             "of them", param=b)
    return out


def from_text(name: str, device: str, text: str) -> Setting:
    """Rebuild a setting from the journal's canonical text."""
    p = lookup(name)
    return Setting(p, device, parse_value(p, text))


# the unit of a value's number in --json (``number``): one per kind
_NUMBER_UNITS = {BYTES: "bytes", SHARES: "shares", PERIOD: "microseconds",
                 QUOTA: "microseconds", WEIGHT: "weight", CPU_WEIGHT: "cpu.weight",
                 IO_WEIGHT: "io.weight", RATE: "bytes/s", IOPS: "IO/s", CPULIST: None}


def number_unit(param: Param) -> Optional[str]:
    """The unit of ``number``'s result for this parameter (None: a CPU list has none)."""
    return _NUMBER_UNITS[param.kind]


def number(param: Param, value) -> Optional[int]:
    """A value as a plain number for --json (bytes, microseconds, weights, IO/s), beside its
    display string; None where it has none: unlimited (the display says "unlimited"), a
    CPU list, a quota given as a share of CPUs, or something unreadable."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if param.kind != CPULIST else None


def number_of_text(name: str, device: str, text: Optional[str]) -> Optional[int]:
    """``number`` of a journal's canonical text (a change's old/new)."""
    if text is None or not name:
        return None
    try:
        return number(lookup(name), from_text(name, device, text).value)
    except UsageError:
        return None


def quota_us(value: Value, period: int) -> Number:
    """A quota in microseconds; a '150%' share is taken against ``period``."""
    if isinstance(value, str) and value.endswith("%"):
        us = int(round(float(value[:-1]) / 100.0 * period))
        return max(us, 1000)
    return value


def validate_merged(values: Mapping[str, Value], changed: Iterable[str], guest: str = None) -> None:
    """Cross-parameter rules over the merged (current + new) values.

    ``values`` maps non-device parameter names to their values after the
    change; only rules touching a ``changed`` parameter are enforced, so a
    pre-existing odd state does not block unrelated changes.
    """
    changed = set(changed)

    def rule(a: str, b: str, why: str, unlimited_counts: bool = False):
        if (a in changed or b in changed) and a in values and b in values:
            va, vb = values[a], values[b]
            if (unlimited_counts or va != UNLIMITED) and va > vb:
                raise UsageError(
                    f"{a} ({units.describe_bytes(va)}) would exceed {b} "
                    f"({units.describe_bytes(vb)}): {why}", guest=guest, param=a if a in changed else b)

    rule("hard_limit", "swap_hard_limit", "swap_hard_limit counts RAM plus swap",
         unlimited_counts=True)
    rule("soft_limit", "hard_limit", "a soft limit above the hard limit never acts")
    rule("min_guarantee", "hard_limit", "a guarantee cannot exceed the hard limit")
    rule("memory_low", "hard_limit", "a protection cannot exceed the hard limit")


def family(name: str) -> List[Param]:
    return [p for p in CATALOGUE if p.family == name]


def virsh_options() -> Dict[str, List[str]]:
    """virsh command → its options, in catalogue order (``cgctl memtune GUEST --hard-limit``)."""
    return {fam: [p.virsh for p in family(fam) if p.virsh] for fam in FAMILIES}

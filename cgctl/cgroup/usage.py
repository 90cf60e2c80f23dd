"""What a running guest uses, read from its groups on cgroup v1 and v2 (docs/observability.md).

Read only; never a write. Which groups are summed, and why:

* memory, CPU time, IO bytes/ops, PSI: the machine group's own files. The kernel accounts
  these hierarchically, so the machine group already holds everything below it (libvirt's
  ``libvirt/``, ``emulator``, ``vcpuN``, a container's own subgroups). Summing the children
  as well would count them twice. (v1: ``memory.use_hierarchy`` is 1 on every kernel since
  5.x; ``memory.stat``'s ``total_*`` lines and ``blkio.*_recursive`` are the hierarchical ones.)
* CPU throttling (periods throttled, time throttled): the kernel counts it per group that
  has a quota, not up the tree, so it is summed over the machine group, libvirt's group,
  ``emulator`` and every ``vcpuN`` (where each exists): the groups cgctl's quotas go to.
* v1 ``oom_kill`` (``memory.oom_control``): counted in the group of the killed process only,
  so it is summed over the machine group and libvirt's group. v2 ``memory.events`` is
  hierarchical: the machine group's file.

A figure the kernel does not have (no swap accounting, no ``memory.peak`` before 5.19, no PSI
on v1) is None, never 0. Numbers: bytes, microseconds, counts.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional

from cgctl.cgroup import fs
from cgctl.cgroup.groups import GuestGroups
from cgctl.errors import CgctlError

# USER_HZ: the unit of v1 cpuacct.stat (user/system)
_USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _text(path: str) -> Optional[str]:
    try:
        return fs.read(path)
    except OSError:  # absent on this kernel, or the guest just stopped
        return None


def _int(path: str) -> Optional[int]:
    t = _text(path)
    try:
        return int(t.split()[0]) if t and t.strip() else None
    except ValueError:
        return None


def _keyed(path: str) -> Dict[str, int]:
    """``key value`` lines (memory.stat, memory.events, cpu.stat) → {key: int}."""
    out: Dict[str, int] = {}
    for line in (_text(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_psi(text: Optional[str]) -> Optional[dict]:
    """``some avg10=0.00 avg60=0.00 avg300=0.00 total=0`` lines → {some: {...}, full: {...}}."""
    if not text:
        return None
    out: dict = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        row = {}
        for kv in parts[1:]:
            k, _, v = kv.partition("=")
            try:
                row[k] = int(v) if k == "total" else float(v)
            except ValueError:
                continue
        out[parts[0]] = row
    return out or None


def parse_io_stat(text: Optional[str]) -> Dict[str, Dict[str, int]]:
    """v2 io.stat: ``MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...`` → {majmin: {...}}."""
    out: Dict[str, Dict[str, int]] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        row = {}
        for kv in parts[1:]:
            k, _, v = kv.partition("=")
            if k in ("rbytes", "wbytes", "rios", "wios"):
                try:
                    row[k] = int(v)
                except ValueError:
                    pass
        out[parts[0]] = row
    return out


def parse_blkio(bytes_text: Optional[str], ops_text: Optional[str]) -> Dict[str, Dict[str, int]]:
    """v1 blkio.throttle.io_service_bytes / io_serviced: ``MAJ:MIN Read N`` ... → as io.stat."""
    out: Dict[str, Dict[str, int]] = {}
    for text, prefix in ((bytes_text, "bytes"), (ops_text, "ios")):
        for line in (text or "").splitlines():
            parts = line.split()
            if len(parts) != 3 or ":" not in parts[0] or parts[1] not in ("Read", "Write"):
                continue
            key = ("r" if parts[1] == "Read" else "w") + prefix
            try:
                out.setdefault(parts[0], {})[key] = int(parts[2])
            except ValueError:
                pass
    return out


def _quota_dirs(groups: GuestGroups, controller: str) -> List[str]:
    """The machine group, libvirt's group, emulator and vcpuN: each where it exists."""
    try:
        base = groups.machine_dir(controller)
        lv = groups.libvirt_dir(controller)
    except CgctlError:
        return []
    dirs = [base] + ([lv] if lv != base else [])
    for name in fs.subdirs(lv):
        if name == "emulator" or (name.startswith("vcpu") and name[4:].isdigit()):
            dirs.append(os.path.join(lv, name))
    return dirs


def _v1_sibling(groups: GuestGroups, host, controller: str, other: str) -> Optional[str]:
    """The group at the same path in another v1 hierarchy (libvirt makes the same path in
    each; cpuacct is not one of the controllers cgctl resolves)."""
    try:
        h = host.owner(other)
        rel = os.path.relpath(groups.machine_dir(controller), groups.mount(controller))
        return fs.check_beneath(h.mountpoint, os.path.join(h.mountpoint, rel))
    except CgctlError:
        return None


def memory(groups: GuestGroups) -> Optional[dict]:
    try:
        d = groups.machine_dir("memory")
    except CgctlError:
        return None
    if "memory" in groups.v2_controllers:
        st = _keyed(os.path.join(d, "memory.stat"))
        ev = _keyed(os.path.join(d, "memory.events"))
        kernel = st.get("kernel")
        if kernel is None and "slab" in st:  # before 5.18: the parts of it
            kernel = sum(st.get(k, 0) for k in ("kernel_stack", "pagetables", "slab", "sock"))
        return {"current": _int(os.path.join(d, "memory.current")),
                "peak": _int(os.path.join(d, "memory.peak")),
                "swap": _int(os.path.join(d, "memory.swap.current")),
                "anon": st.get("anon"), "file": st.get("file"), "kernel": kernel,
                "events": {k: ev.get(k) for k in ("high", "max", "oom", "oom_kill")}}
    st = _keyed(os.path.join(d, "memory.stat"))
    cur = _int(os.path.join(d, "memory.usage_in_bytes"))
    memsw = _int(os.path.join(d, "memory.memsw.usage_in_bytes"))
    swap = st.get("total_swap")
    if swap is None and memsw is not None and cur is not None:
        swap = max(memsw - cur, 0)
    ooms = None
    for g in _memory_dirs(groups):
        n = _keyed(os.path.join(g, "memory.oom_control")).get("oom_kill")
        if n is not None:
            ooms = (ooms or 0) + n
    return {"current": cur, "peak": _int(os.path.join(d, "memory.max_usage_in_bytes")),
            "swap": swap, "anon": st.get("total_rss", st.get("rss")),
            "file": st.get("total_cache", st.get("cache")),
            "kernel": _int(os.path.join(d, "memory.kmem.usage_in_bytes")),
            # v1 has no high/oom counts; failcnt counts the times usage hit the limit
            "events": {"high": None, "max": _int(os.path.join(d, "memory.failcnt")),
                       "oom": None, "oom_kill": ooms}}


def _memory_dirs(groups: GuestGroups) -> List[str]:
    base, lv = groups.machine_dir("memory"), groups.libvirt_dir("memory")
    return [base] + ([lv] if lv != base else [])


def cpu(groups: GuestGroups, host) -> Optional[dict]:
    try:
        d = groups.machine_dir("cpu")
    except CgctlError:
        return None
    v2 = "cpu" in groups.v2_controllers
    out: dict = {}
    if v2:
        st = _keyed(os.path.join(d, "cpu.stat"))
        out.update(usage_usec=st.get("usage_usec"), user_usec=st.get("user_usec"),
                   system_usec=st.get("system_usec"))
    else:
        acct = _v1_sibling(groups, host, "cpu", "cpuacct")
        ns = _int(os.path.join(acct, "cpuacct.usage")) if acct else None
        st = _keyed(os.path.join(acct, "cpuacct.stat")) if acct else {}
        tick = 1_000_000 // _USER_HZ
        out.update(usage_usec=None if ns is None else ns // 1000,
                   user_usec=st["user"] * tick if "user" in st else None,
                   system_usec=st["system"] * tick if "system" in st else None)
    periods = throttled = t_usec = None
    for g in _quota_dirs(groups, "cpu"):
        st = _keyed(os.path.join(g, "cpu.stat"))
        if "nr_throttled" not in st:
            continue
        periods = (periods or 0) + st.get("nr_periods", 0)
        throttled = (throttled or 0) + st["nr_throttled"]
        t = st.get("throttled_usec") if v2 else (
            st["throttled_time"] // 1000 if "throttled_time" in st else None)
        t_usec = (t_usec or 0) + (t or 0)
    out.update(nr_periods=periods, nr_throttled=throttled, throttled_usec=t_usec)
    return out


def io(groups: GuestGroups, name_of: Callable[[str], Optional[str]] = None,
       node_of: Callable[[str], Optional[str]] = None) -> Optional[list]:
    """Per device: ``majmin``; ``device``, the operator's name (``name_of``: only where the
    config names it, else None); ``node``, the kernel's ``/dev`` node (``node_of``) or None."""
    try:
        d = groups.machine_dir("io")
    except CgctlError:
        return None
    if "io" in groups.v2_controllers:
        rows = parse_io_stat(_text(os.path.join(d, "io.stat")))
    else:
        pick = lambda f: _text(os.path.join(d, f + "_recursive")) or _text(os.path.join(d, f))
        rows = parse_blkio(pick("blkio.throttle.io_service_bytes"),
                           pick("blkio.throttle.io_serviced"))
    out = []
    for majmin, r in sorted(rows.items()):
        out.append({"majmin": majmin, "device": name_of(majmin) if name_of else None,
                    "node": node_of(majmin) if node_of else None,
                    **{k: r.get(k, 0) for k in ("rbytes", "wbytes", "rios", "wios")}})
    return out


def pressure(groups: GuestGroups) -> Optional[dict]:
    """PSI of the machine group (v2 only; None on v1, or a kernel without PSI)."""
    out = {}
    for c in ("cpu", "memory", "io"):
        if c in groups.v2_controllers:
            p = parse_psi(_text(os.path.join(groups.machine_dir(c), f"{c}.pressure")))
            if p:
                out[c] = p
    return out or None


def read(groups: GuestGroups, host, name_of: Callable[[str], Optional[str]] = None,
         node_of: Callable[[str], Optional[str]] = None) -> dict:
    """Everything this module knows about the guest's use now; see the module doc."""
    return {"memory": memory(groups), "cpu": cpu(groups, host),
            "io": io(groups, name_of, node_of),
            "pressure": pressure(groups), "accounting": accounting(groups)}


def accounting(groups: GuestGroups) -> dict:
    """Which groups each figure comes from (the module doc says why)."""
    def at(c):
        try:
            return groups.machine_dir(c)
        except CgctlError:
            return None
    return {"memory": at("memory"), "cpu": at("cpu"), "io": at("io"),
            "throttling": _quota_dirs(groups, "cpu"),
            "note": "hierarchical: the machine group includes libvirt/, emulator and vcpuN; "
                    "throttling is summed over the groups listed"}

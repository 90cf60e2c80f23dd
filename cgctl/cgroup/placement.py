"""A running guest's main PID → its cgroup groups (docs/design.md#finding-a-guests-cgroups).

Never built from the name: the ID in the group name changes on every start.
We read ``/proc/PID/cgroup``, strip libvirt's own sub-levels (``emulator``,
``vcpuN``, ``iothreadN``, ``libvirt``) and check what is left looks like a
machine group under the controller's mount, reached through no symlink.

Whether libvirt's own group is ``<machine>/libvirt`` is read from the same path
(the process sits in ``.../libvirt[/emulator]``), never from what exists below
the machine group: root in an LXC guest with a writable cgroupfs view can make
a ``libvirt`` directory there. PID is libvirt's own process (QEMU, or
``libvirt_lxc``, which is outside the container's PID namespace), so the guest
cannot move it.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Tuple

from cgctl import consts
from cgctl.cgroup import CONTROLLERS, fs, owner
from cgctl.cgroup.hierarchy import V1_NAMES
from cgctl.cgroup.groups import GuestGroups
from cgctl.errors import CgroupNotFound, CgctlError, UnsafePath

_THREAD_RE = re.compile(r"^(?:emulator|vcpu\d+|iothread\d+)$")
NESTED = "libvirt"  # the level libvirt >= 7.1 makes below a systemd machine scope


def parse_proc_cgroup(text: str) -> List[Tuple[str, List[str], str]]:
    """``ID:ctrl,ctrl:/path`` lines → [(id, [controllers], path)]."""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[0], [c for c in parts[1].split(",") if c], parts[2]))
    return out


def split_path(path: str) -> Tuple[str, bool]:
    """A guest process's group path → (machine group path, whether libvirt put it below a
    ``libvirt`` level). libvirt's layout only: at most one thread level (``emulator``,
    ``vcpuN``, ``iothreadN``) under at most one ``libvirt``; anything deeper is left on the
    path (and then fails the machine-group check)."""
    parts = [p for p in path.split("/") if p]
    if parts and _THREAD_RE.match(parts[-1]):
        parts.pop()
    nested = bool(parts) and parts[-1] == NESTED
    if nested:
        parts.pop()
    return "/" + "/".join(parts), nested


def groups_for_pid(pid: int, host, *, guest: str, driver: str,
                   proc_root: str = consts.PROC_ROOT) -> GuestGroups:
    try:
        with open(os.path.join(proc_root, str(int(pid)), "cgroup")) as f:
            entries = parse_proc_cgroup(f.read())
    except (FileNotFoundError, ProcessLookupError):
        raise CgroupNotFound(f"process {pid} is gone (did the guest just stop?)",
                             guest=guest) from None
    machine: Dict[str, Tuple[str, str]] = {}
    v2, nested = set(), set()
    for ctrl in CONTROLLERS:
        try:
            h = owner(host, ctrl)
        except CgctlError:
            continue
        rel = _path_in(entries, h, V1_NAMES.get(ctrl, ctrl))
        if rel is None:
            continue
        mpath, in_libvirt = split_path(rel)
        absdir = fs.check_beneath(h.mountpoint, os.path.join(h.mountpoint, mpath.lstrip("/")))
        if not fs.looks_like_machine_group(absdir):
            raise UnsafePath(f"process {pid} sits in {absdir}, which is not a libvirt machine group",
                             guest=guest, path=absdir)
        if not os.path.isdir(absdir):
            raise CgroupNotFound(f"{absdir} does not exist", guest=guest, path=absdir)
        machine[ctrl] = (h.mountpoint, absdir)
        if in_libvirt:
            nested.add(ctrl)
        if h.version == 2:
            v2.add(ctrl)
    if not machine:
        raise CgroupNotFound(f"process {pid} is in no cgroup of a controller cgctl manages",
                             guest=guest)
    return GuestGroups(guest=guest, driver=driver, machine=machine, v2_controllers=frozenset(v2),
                       nested=frozenset(nested))


def _path_in(entries, hierarchy, v1_name: str) -> Optional[str]:
    for hid, ctrls, path in entries:
        if hierarchy.version == 2 and hid == "0" and not ctrls:
            return path
        if hierarchy.version == 1 and v1_name in ctrls:
            return path
    return None

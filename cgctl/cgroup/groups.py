"""A guest's cgroup groups, per controller, and which one each parameter targets."""

from __future__ import annotations

import os
import re
from typing import Dict, List, Mapping, Tuple, NamedTuple

from cgctl.model import params as P
from cgctl.errors import CgroupNotFound, Unsupported
from cgctl.cgroup import fs

_VCPU_RE = re.compile(r"^vcpu(\d+)$")


class GuestGroups(NamedTuple):
    """Where a running guest lives: controller → (mount point, machine group dir)."""

    guest: str
    driver: str
    machine: Mapping[str, Tuple[str, str]]  # controller -> (mountpoint, absolute dir)
    v2_controllers: frozenset = frozenset()  # controllers owned by v2
    # controllers where libvirt put the guest's process below ``<machine>/libvirt`` (libvirt
    # >= 7.1 under systemd), as /proc/PID/cgroup said (cgctl/cgroup/placement.py)
    nested: frozenset = frozenset()

    def mount(self, controller: str) -> str:
        return self._entry(controller)[0]

    def machine_dir(self, controller: str) -> str:
        return self._entry(controller)[1]

    def _entry(self, controller: str) -> Tuple[str, str]:
        try:
            return self.machine[controller]
        except KeyError:
            raise Unsupported(f"the guest has no group in the {controller} controller "
                              "(not mounted, or not enabled for it)", guest=self.guest) from None

    def libvirt_dir(self, controller: str) -> str:
        """libvirt's own group: ``<machine>/libvirt`` where libvirt put the guest's process
        there (systemd hosts, libvirt >= 7.1), else the machine group. Never because such a
        directory exists: a container's root can make one (docs/reliability.md)."""
        base = self.machine_dir(controller)
        return os.path.join(base, "libvirt") if controller in self.nested else base

    def vcpu_dirs(self, controller: str) -> List[str]:
        base = self.libvirt_dir(controller)
        found = []
        for name in fs.subdirs(base):
            m = _VCPU_RE.match(name)
            if m:
                found.append((int(m.group(1)), os.path.join(base, name)))
        return [d for _, d in sorted(found)]

    def emulator_dir(self, controller: str) -> str:
        return os.path.join(self.libvirt_dir(controller), "emulator")

    def dirs(self, param: P.Param) -> List[str]:
        """Every group a parameter is written to, parents before children."""
        c = param.controller
        if param.target == P.MACHINE:
            return [self.machine_dir(c)]
        if param.target == P.LIBVIRT:
            return [self.libvirt_dir(c)]
        if self.driver != "qemu":
            raise Unsupported(f"applies to QEMU guests only, this is a {self.driver} guest",
                              guest=self.guest, param=param.name)
        if param.target == P.VCPUS:
            dirs = self.vcpu_dirs(c)
            if not dirs:
                raise CgroupNotFound(f"no vcpuN groups under {self.libvirt_dir(c)}",
                                     guest=self.guest, param=param.name)
            return dirs
        d = self.emulator_dir(c)
        if not os.path.isdir(d):
            raise CgroupNotFound(f"no emulator group at {d}", guest=self.guest, param=param.name)
        return [d]

    def to_dict(self) -> Dict[str, str]:
        return {c: d for c, (_, d) in sorted(self.machine.items())}

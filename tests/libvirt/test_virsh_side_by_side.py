"""The same virsh-style command line through virsh and through cgctl gives the same kernel bytes,
on a real QEMU guest (docs/usage.md, the virsh-style commands): `schedinfo --set` and the bare
`PARAM=VALUE` form, and memtune's negative values meaning unlimited."""

from __future__ import annotations

import os

import pytest

from cgctl.cgroup import hierarchy
from cgctl.cgroup.placement import groups_for_pid
from tests.clikit import cgctl

# (virsh command line after the guest, cgctl's, the file, the controller, the group)
CASES = {
    "schedinfo --set": (["schedinfo", "--set", "cpu_shares=512", "--live"],
                        ["schedinfo", "--set", "cpu_shares=512", "--live"],
                        "cpu.shares", "cpu", "machine"),
    "schedinfo bare": (["schedinfo", "cpu_shares=700", "--live"],
                       ["schedinfo", "cpu_shares=700", "--live"], "cpu.shares", "cpu", "machine"),
    "schedinfo vcpu": (["schedinfo", "--set", "vcpu_quota=40000", "--live"],
                       ["schedinfo", "--set", "vcpu_quota=40000", "--live"],
                       "cpu.cfs_quota_us", "cpu", "vcpu0"),
    "memtune -1": (["memtune", "--hard-limit", "-1", "--live"],
                   ["memtune", "--hard-limit", "-1", "--live"],
                   "memory.limit_in_bytes", "memory", "machine"),
    "memtune -5": (["memtune", "--hard-limit", "-5", "--live"],
                   ["memtune", "--hard-limit", "-5", "--live"],
                   "memory.limit_in_bytes", "memory", "machine"),
}
# what each file is put back to before each tool's turn, through virsh
RESET = {"cpu.shares": ["schedinfo", "--set", "cpu_shares=1024", "--live"],
         "cpu.cfs_quota_us": ["schedinfo", "--set", "vcpu_quota=-1", "--live"],
         "memory.limit_in_bytes": ["memtune", "--hard-limit", "1048576", "--live"]}


def read(guest, controller, group, filename):
    groups = groups_for_pid(guest.pid, hierarchy.detect(), guest=guest.name, driver=guest.driver)
    d = groups.machine_dir(controller) if group == "machine" else os.path.join(
        groups.libvirt_dir(controller), group)
    with open(os.path.join(d, filename)) as f:
        return f.read().strip()


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_bytes_as_virsh(libvirt_sandbox, qemu_guest, tmp_path, case):
    virsh_args, cgctl_args, filename, controller, group = CASES[case]
    sb, g = libvirt_sandbox, qemu_guest
    got = {}
    for tool in ("virsh", "cgctl"):
        sb.virsh(*RESET[filename][:1], g.name, *RESET[filename][1:])
        before = read(g, controller, group, filename)
        if tool == "virsh":
            sb.virsh(virsh_args[0], g.name, *virsh_args[1:])
        else:
            cgctl(tmp_path / "journal.db", cgctl_args[0], g.name, *cgctl_args[1:])
        got[tool] = read(g, controller, group, filename)
        assert got[tool] != before, f"{tool} {case}: the file did not change ({before})"
    assert got["cgctl"] == got["virsh"], got

"""A planted ``libvirt`` directory on the real v1 kernel: writes still go to the machine group.

The scratch guest has this machine's layout (no systemd: the machine group itself is
libvirt's, ``<parent>/qemu-1-NAME.libvirt-qemu/{emulator,vcpu0}``, our process in
``emulator``). A ``libvirt/{emulator,vcpu0}`` tree made below the machine group, as root in
a container with a writable cgroupfs view could make it, must not become the target
(docs/reliability.md). The faked systemd layouts are in tests/unit/test_groups.py.
"""

from __future__ import annotations

import os

import pytest

from cgctl.core import live
from cgctl.model import params as P
from cgctl.cgroup.placement import groups_for_pid

pytestmark = pytest.mark.realcg
MiB = 2**20


@pytest.fixture(autouse=True)
def _v1(real_host):
    if real_host.owner("memory").version != 1:
        pytest.skip("this layout is the v1 one; v2 hosts run libvirt under systemd")


def _read(path):
    with open(path) as f:
        return f.read().strip()


def _plant(g, ctrl, *subs):
    """mkdir <machine>/libvirt[/sub...] in ``ctrl``'s hierarchy; cpuset needs cpus/mems."""
    base = os.path.join(g.dirs(ctrl), "libvirt")
    for d in [base] + [os.path.join(base, s) for s in subs]:
        os.mkdir(d)
        if "cpuset" in g.host.owner(ctrl).controllers:
            for f in ("cpuset.cpus", "cpuset.mems"):
                with open(os.path.join(os.path.dirname(d), f)) as src, \
                        open(os.path.join(d, f), "w") as dst:
                    dst.write(src.read().strip())
    return base


def test_a_planted_libvirt_dir_does_not_divert_the_writes(scratch_guest, router):
    g = scratch_guest
    planted_mem = _plant(g, "memory")
    planted_cpu = _plant(g, "cpu", "emulator", "vcpu0")
    before = _read(os.path.join(planted_mem, "memory.limit_in_bytes"))

    gg = groups_for_pid(g.proc.pid, g.host, guest=g.name, driver="qemu")
    assert gg.libvirt_dir("memory") == g.dirs("memory")
    assert gg.libvirt_dir("cpu") == g.dirs("cpu")
    assert gg.vcpu_dirs("cpu") == [os.path.join(g.dirs("cpu"), "vcpu0")]

    live.set_live(router, gg, P.parse_assignments(["hard_limit=700M", "vcpu_quota=20000",
                                                   "global_quota=50000"]))
    assert g.read("memory", "memory.limit_in_bytes") == str(700 * MiB)
    assert g.read("cpu", "cpu.cfs_quota_us", "vcpu0") == "20000"
    assert g.read("cpu", "cpu.cfs_quota_us") == "50000"
    # the planted groups are as the kernel made them
    assert _read(os.path.join(planted_mem, "memory.limit_in_bytes")) == before
    assert _read(os.path.join(planted_cpu, "vcpu0", "cpu.cfs_quota_us")) == "-1"
    assert _read(os.path.join(planted_cpu, "cpu.cfs_quota_us")) == "-1"

"""Writes go where libvirt put the guest, not where a planted directory says (faked cgroupfs).

libvirt's own group is ``<machine>/libvirt`` only where the guest's process (QEMU, or
``libvirt_lxc``) sits below such a level in /proc/PID/cgroup; a ``libvirt`` directory that
merely exists (root in an LXC container with a writable cgroupfs view can make one) changes
nothing. The same on the real v1 kernel: tests/realcg/test_groups_planted.py.
"""

from __future__ import annotations

import os

import pytest

from cgctl.cgroup import hierarchy
from cgctl.core import live
from cgctl.model import params as P
from cgctl.cgroup import Router
from cgctl.errors import UnsafePath
from cgctl.cgroup.placement import groups_for_pid, split_path
from tests import fakecg
from tests.fakekernel import FakeKernel

HARD = P.BY_NAME["hard_limit"]


def read(path):
    with open(path) as f:
        return f.read().strip()


def plant(fs, d):
    """What root in a container can do: mkdir a ``libvirt`` child (the kernel fills it)."""
    fakecg.make_group(fs, d)
    return d


def _put_process(fs, m, rel):
    """/proc/PID/cgroup says the process sits at ``rel`` (relative to the v2 root)."""
    path = os.path.join("/proc", str(m.pid), "cgroup")
    os.chmod(path, 0o644)
    with open(path, "w") as f:
        f.write(f"0::{rel}\n")


@pytest.fixture
def v2(fs, monkeypatch):
    fakecg.make_v2_host(fs, bfq=False)
    m = fakecg.make_systemd_v2_machine(fs, "web1", id=3, vcpus=1)
    kernel = FakeKernel(monkeypatch)
    host = hierarchy.detect("/proc")
    return fs, m, host, kernel


def _groups(m, host, driver="qemu"):
    return groups_for_pid(m.pid, host, guest=m.name, driver=driver, proc_root="/proc")


def test_split_path_follows_libvirts_layout():
    assert split_path("/machine.slice/machine-qemu\\x2d1\\x2dvm.scope/libvirt/emulator") == \
        ("/machine.slice/machine-qemu\\x2d1\\x2dvm.scope", True)
    assert split_path("/machine.slice/machine-lxc\\x2d1\\x2dct.scope/libvirt") == \
        ("/machine.slice/machine-lxc\\x2d1\\x2dct.scope", True)
    assert split_path("/machine/qemu-1-vm.libvirt-qemu/emulator") == \
        ("/machine/qemu-1-vm.libvirt-qemu", False)
    assert split_path("/machine/qemu-1-vm.libvirt-qemu") == ("/machine/qemu-1-vm.libvirt-qemu",
                                                             False)
    # deeper than libvirt makes: not stripped (and then not a machine group)
    assert split_path("/m/x.scope/libvirt/libvirt/emulator") == ("/m/x.scope/libvirt", True)
    assert split_path("/m/x.scope/libvirt/vcpu0/emulator") == ("/m/x.scope/libvirt/vcpu0", False)


def test_systemd_nested_layout_writes_libvirts_group_whatever_is_planted_below(v2):
    fs, m, host, kernel = v2
    plant(fs, os.path.join(m.libvirt, "libvirt"))
    g = _groups(m, host)
    assert g.libvirt_dir("memory") == m.libvirt
    live.set_live(Router(host), g, P.parse_assignments(["hard_limit=1G"]))
    assert read(os.path.join(m.libvirt, "memory.max")) == str(2**30)
    assert not [w for w, _ in kernel.writes if w.startswith(os.path.join(m.libvirt, "libvirt"))]


def test_a_libvirt_dir_planted_where_libvirt_uses_the_scope_itself_is_ignored(v2):
    """libvirt < 7.1 under systemd: the guest is in the scope (QEMU in scope/emulator); a
    ``libvirt`` child that exists there is not libvirt's."""
    fs, m, host, kernel = v2
    _put_process(fs, m, os.path.relpath(m.machine, "/sys/fs/cgroup").join(["/", "/emulator"]))
    g = _groups(m, host)
    assert g.machine_dir("memory") == m.machine
    assert g.libvirt_dir("memory") == m.machine        # not the existing m.machine/libvirt
    assert g.dirs(HARD) == [m.machine]
    live.set_live(Router(host), g, P.parse_assignments(["hard_limit=1G"]))
    assert read(os.path.join(m.machine, "memory.max")) == str(2**30)
    assert read(os.path.join(m.libvirt, "memory.max")) == "max"
    assert not [w for w, _ in kernel.writes if w.startswith(m.libvirt)]


def test_lxc_controller_in_scope_libvirt_writes_there_not_in_a_planted_child(v2):
    """An LXC guest under systemd, libvirt >= 7.1: libvirt_lxc (the pid libvirt records)
    and the container's init sit in scope/libvirt; the container's root plants
    scope/libvirt/libvirt (its cgroupfs view starts at scope/libvirt)."""
    fs, m, host, kernel = v2
    _put_process(fs, m, "/" + os.path.relpath(m.libvirt, "/sys/fs/cgroup"))
    planted = plant(fs, os.path.join(m.libvirt, "libvirt"))
    g = _groups(m, host, driver="lxc")
    assert g.libvirt_dir("memory") == m.libvirt
    live.set_live(Router(host), g, P.parse_assignments(["hard_limit=1G"]))
    assert read(os.path.join(m.libvirt, "memory.max")) == str(2**30)
    assert not [w for w, _ in kernel.writes if w.startswith(planted)]


def test_a_process_moved_below_a_planted_libvirt_level_is_refused(v2):
    fs, m, host, kernel = v2
    planted = plant(fs, os.path.join(m.libvirt, "libvirt"))
    _put_process(fs, m, "/" + os.path.relpath(planted, "/sys/fs/cgroup"))
    with pytest.raises(UnsafePath):
        _groups(m, host)


def test_v1_without_systemd_ignores_a_planted_libvirt_dir(fs):
    """The development machine (docs/design.md#the-development-machine)'s layout: machine/qemu-N-NAME.libvirt-qemu/{emulator,vcpuN}."""
    fakecg.make_v1_host(fs)
    m = fakecg.make_v1_machine(fs, name="vm", id=4)
    plant_v1 = os.path.join(m.machine["memory"], "libvirt")
    os.mkdir(plant_v1)
    host = hierarchy.detect("/proc")
    g = groups_for_pid(m.pid, host, guest="vm", driver="qemu", proc_root="/proc")
    assert g.libvirt_dir("memory") == m.machine["memory"]
    assert g.dirs(HARD) == [m.machine["memory"]]
    assert g.vcpu_dirs("cpu") == list(m.vcpus["cpu"])


def test_lxc_on_systemd_limits_in_libvirt_weights_on_the_scope(fs, monkeypatch):
    """The observed LXC layout (tests/fakecg.py make_systemd_v2_lxc): hard_limit replaces
    libvirt_lxc's <memory> in scope/libvirt, cpu_shares is the scope's cpu.weight."""
    fakecg.make_v2_host(fs, bfq=False)
    ct = fakecg.make_systemd_v2_lxc(fs, "ct1", pid=700)
    FakeKernel(monkeypatch)
    host = hierarchy.detect("/proc")
    g = groups_for_pid(ct.pid, host, guest=ct.name, driver="lxc", proc_root="/proc")
    assert (g.machine_dir("cpu"), g.libvirt_dir("memory")) == (ct.machine, ct.libvirt)
    live.set_live(Router(host), g, P.parse_assignments(["hard_limit=1G", "cpu_shares=2048", "weight=500"]))
    assert read(os.path.join(ct.libvirt, "memory.max")) == str(2**30)
    assert read(os.path.join(ct.machine, "cpu.weight")) == "174"
    assert read(os.path.join(ct.machine, "io.weight")) == "default 4950"

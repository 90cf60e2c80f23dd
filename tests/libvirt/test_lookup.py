"""virt.lookup and runfiles.find_running agree on real QEMU and LXC guests (real libvirtd 9.0)."""

from __future__ import annotations

import signal

import pytest

from cgctl import errors
from cgctl.host import runfiles

pytest.importorskip("libvirt")
from cgctl import virt  # noqa: E402

pytestmark = pytest.mark.libvirt


def _cgroup(pid, controller="memory"):
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if controller in ctrls.split(","):
                return path
    raise AssertionError(f"no {controller} line in /proc/{pid}/cgroup")


@pytest.mark.parametrize("kind", ["qemu", "lxc"])
def test_running_guest_agrees(make_guest, kind):
    g = make_guest(kind)
    by_libvirt = virt.lookup(g.name, [g.uri])
    by_files = runfiles.find_running(g.name)
    assert by_libvirt == by_files
    assert (by_files.name, by_files.uuid, by_files.driver, by_files.uri) == (g.name, g.uuid, kind, g.uri)
    assert by_files.running and by_files.persistent
    assert by_files.pid == g.pid
    # by UUID, both ways, and through the default URI list
    assert virt.lookup(g.uuid) == by_libvirt
    assert runfiles.find_running(g.uuid.upper()) == by_files
    # the main PID is the one inside the guest's machine group (docs/design.md#finding-a-guests-cgroups)
    suffix = f"-{g.name}.libvirt-{kind}"
    assert _cgroup(by_files.pid).startswith(f"/machine/{kind}-")
    assert _cgroup(by_files.pid).endswith(suffix)
    if kind == "lxc":  # the group's ID is the libvirt_lxc controller's PID
        assert _cgroup(by_files.pid) == f"/machine/lxc-{by_files.pid}{suffix}"


@pytest.mark.parametrize("kind", ["qemu", "lxc"])
def test_stopped_guest(libvirt_sandbox, make_guest, kind):
    g = make_guest(kind, start=False)
    stopped = virt.lookup(g.name, [g.uri])
    assert (stopped.running, stopped.persistent, stopped.pid) == (False, True, None)
    assert runfiles.find_running(g.name) is None
    assert runfiles.find_running(g.uuid) is None
    # start, then destroy: the runtime files go and find_running says so
    libvirt_sandbox.start_guest(g.name, g.uri)
    assert runfiles.find_running(g.name).pid == g.pid
    libvirt_sandbox.destroy(g.name, g.uri)
    assert runfiles.find_running(g.name) is None
    assert virt.lookup(g.name, [g.uri]).running is False


@pytest.mark.parametrize("kind", ["qemu", "lxc"])
def test_transient_guest(make_guest, kind):
    g = make_guest(kind, transient=True)
    by_libvirt, by_files = virt.lookup(g.name, [g.uri]), runfiles.find_running(g.name)
    assert by_libvirt == by_files
    assert by_files.persistent is False and by_files.running is True


def test_unknown_guest(libvirt_sandbox):
    with pytest.raises(errors.GuestNotFound):
        virt.lookup("cgt-no-such-guest")
    assert runfiles.find_running("cgt-no-such-guest") is None


def test_list_guests_sees_both_drivers(make_guest):
    q, c = make_guest("qemu"), make_guest("lxc")
    found = {g.name: g for g in virt.list_guests()}
    assert found[q.name].driver == "qemu" and found[q.name].pid == q.pid
    assert found[c.name].driver == "lxc" and found[c.name].pid == c.pid


def test_instance_changes_on_restart(libvirt_sandbox, qemu_guest):
    first = runfiles.instance_of(runfiles.find_running(qemu_guest.name).pid)
    libvirt_sandbox.destroy(qemu_guest.name, qemu_guest.uri)
    libvirt_sandbox.start_guest(qemu_guest.name, qemu_guest.uri)
    second = runfiles.instance_of(runfiles.find_running(qemu_guest.name).pid)
    assert first != second


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_find_running_without_libvirtd(libvirt_sandbox, make_guest, sig):
    q, c = make_guest("qemu"), make_guest("lxc")
    before = runfiles.find_running(q.name), runfiles.find_running(c.name)
    libvirt_sandbox.stop_libvirtd(sig)
    try:
        assert (runfiles.find_running(q.name), runfiles.find_running(c.name)) == before
        with pytest.raises(errors.LibvirtError):
            virt.lookup(q.name)
    finally:
        libvirt_sandbox.start_libvirtd()
    assert virt.lookup(q.name) == before[0]
    assert virt.lookup(c.name) == before[1]

"""Per-device settings in cgroup v2's formats, on a faked systemd cgroup2 host.

io.max "MAJ:MIN rbps= wbps= riops= wiops=" (max removes), io.bfq.weight raw
when the disk uses bfq, else io.weight (iocost) converted; and the udev
watcher's logic without udev."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from cgctl.host import devices, udevwatch
from cgctl.cgroup import hierarchy
from cgctl.core import live
from cgctl.model import params as P
from cgctl.cgroup import Router
from cgctl.errors import KernelRefused, Unsupported, UsageError
from cgctl.cgroup.placement import groups_for_pid
from cgctl.host.runfiles import Guest
from tests import fakecg
from tests.fakekernel import FakeKernel

DISK = "8:16"


def read(path):
    with open(path) as f:
        return f.read().strip()


def host_with(fs, monkeypatch, *, bfq, scheduler="mq-deadline"):
    fakecg.make_v2_host(fs, bfq=bfq)
    m = fakecg.make_systemd_v2_machine(fs, "db1", id=4)
    sched = " ".join(f"[{s}]" if s == scheduler else s for s in ("none", "mq-deadline", "bfq"))
    fs.create_file(f"/sys/dev/block/{DISK}/queue/scheduler", contents=sched + "\n")
    fs.create_file(f"/sys/dev/block/{DISK}/uevent", contents="MAJOR=8\nMINOR=16\nDEVNAME=sdb\n")
    kernel = FakeKernel(monkeypatch)
    host = hierarchy.detect("/proc")
    groups = groups_for_pid(m.pid, host, guest="db1", driver="qemu", proc_root="/proc")
    return m, Router(host), groups, kernel


def dev_set(router, groups, *items):
    settings = P.parse_assignments(items)
    return live.set_live(router, groups, settings, {s.device: DISK for s in settings.values()})


def test_io_max_one_key_per_parameter(fs, monkeypatch):
    m, router, groups, kernel = host_with(fs, monkeypatch, bfq=False)
    dev_set(router, groups, "device_read_bytes_sec=/dev/sdb,50M",
            "device_write_bytes_sec=/dev/sdb,10M", "device_read_iops_sec=/dev/sdb,1000",
            "device_write_iops_sec=/dev/sdb,500")
    assert [d for p, d in kernel.writes if p.endswith("io.max")] == [
        f"{DISK} rbps=52428800", f"{DISK} wbps=10485760", f"{DISK} riops=1000",
        f"{DISK} wiops=500"]
    assert read(f"{m.libvirt}/io.max") == f"{DISK} rbps=52428800 wbps=10485760 riops=1000 wiops=500"
    assert live.read_value(router, groups, P.BY_NAME["device_write_bytes_sec"]) == {DISK: 10 * 2**20}
    # 0 and unlimited remove: v2 spells it "max" (v1's "0" is ERANGE there)
    dev_set(router, groups, "device_read_bytes_sec=/dev/sdb,0",
            "device_write_bytes_sec=/dev/sdb,unlimited")
    assert read(f"{m.libvirt}/io.max") == f"{DISK} rbps=max wbps=max riops=1000 wiops=500"
    assert live.read_value(router, groups, P.BY_NAME["device_read_bytes_sec"]) == {}
    dev_set(router, groups, "device_read_iops_sec=/dev/sdb,0", "device_write_iops_sec=/dev/sdb,0")
    assert read(f"{m.libvirt}/io.max") == ""


def test_bfq_disk_takes_raw_weight_in_io_bfq_weight(fs, monkeypatch):
    m, router, groups, kernel = host_with(fs, monkeypatch, bfq=True, scheduler="bfq")
    kernel.bfq_devices.add(DISK)
    dev_set(router, groups, "device_weight=/dev/sdb,300")
    assert read(f"{m.machine}/io.bfq.weight") == f"default 100\n{DISK} 300"
    assert read(f"{m.machine}/io.weight") == "default 100"
    assert live.read_value(router, groups, P.BY_NAME["device_weight"]) == {DISK: 300}
    dev_set(router, groups, "device_weight=/dev/sdb,0")
    assert kernel.writes[-1][1] == f"{DISK} default"
    assert read(f"{m.machine}/io.bfq.weight") == "default 100"
    n = len(kernel.writes)
    dev_set(router, groups, "device_weight=/dev/sdb,0")   # nothing left to clear: no write
    assert len(kernel.writes) == n


def test_disk_off_bfq_uses_iocost_weight_converted(fs, monkeypatch):
    m, router, groups, kernel = host_with(fs, monkeypatch, bfq=True, scheduler="mq-deadline")
    with pytest.raises(KernelRefused) as ei:
        dev_set(router, groups, "device_weight=/dev/sdb,500")
    msg = str(ei.value)
    assert ei.value.errno == errno.EOPNOTSUPP
    assert "io.cost.qos" in msg and f"'{DISK} enable=1'" in msg
    assert "sdb's scheduler set to bfq (it uses mq-deadline)" in msg
    kernel.iocost.add(DISK)
    dev_set(router, groups, "device_weight=/dev/sdb,500")
    assert read(f"{m.machine}/io.weight") == f"default 100\n{DISK} 4950"
    assert live.read_value(router, groups, P.BY_NAME["device_weight"]) == {DISK: 500}


def test_v1_bfq_weight_checks_scheduler_first(fs, monkeypatch):
    fakecg.make_v1_host(fs)
    vm = fakecg.make_v1_machine(fs, name="old1")
    fs.create_file(f"/sys/dev/block/{DISK}/queue/scheduler", contents="none [mq-deadline] bfq\n")
    fs.create_file(f"/sys/dev/block/{DISK}/uevent", contents="DEVNAME=sdb\n")
    host = hierarchy.detect("/proc")
    groups = groups_for_pid(vm.pid, host, guest="old1", driver="qemu", proc_root="/proc")
    if not fs.exists(groups.machine_dir("io") + "/blkio.bfq.weight_device"):
        fs.create_file(groups.machine_dir("io") + "/blkio.bfq.weight_device",
                       contents="default 100\n")
    with pytest.raises(Unsupported) as ei:
        dev_set(Router(host), groups, "device_weight=/dev/disk/by-id/wwn-x,300")
    assert ei.value.errno == errno.EOPNOTSUPP
    assert ("device /dev/disk/by-id/wwn-x (/dev/sdb) uses mq-deadline; per-device weights "
            "need bfq: echo bfq > /sys/block/sdb/queue/scheduler") in str(ei.value)


# -- naming without devices ------------------------------------------------------------

XML = """<domain><name>g</name><devices>
  <disk type='block'><source dev='/dev/mapper/vg-data'/><target dev='vdb'/></disk>
  <disk type='file'><source file='/var/lib/libvirt/images/g.qcow2'/><target dev='vda'/></disk>
  <disk type='network'><source protocol='rbd' name='pool/img'/><target dev='vdc'/></disk>
  <disk type='volume'><source pool='default' volume='v1'/><target dev='vdd'/></disk>
</devices></domain>"""


def test_guest_targets_say_what_they_are():
    assert devices.guest_disks(XML)["vdb"] == devices.GuestDisk("vdb", "block",
                                                                "/dev/mapper/vg-data")
    for target, what in (("vda", "a file (/var/lib/libvirt/images/g.qcow2)"),
                         ("vdc", "a network disk (rbd/pool/img)"),
                         ("vdd", "a storage pool volume (default/v1)")):
        with pytest.raises(UsageError) as ei:
            devices.resolve(target, guest="g", param="device_weight", domain_xml=XML)
        assert (f"disk {target} of guest g is {what}, not a block device: per-device limits "
                "need a block device") in str(ei.value)


# -- the watcher's logic ------------------------------------------------------------------

def test_watcher_coalesces_a_burst():
    calls = []
    w = udevwatch.DeviceWatcher(lambda *a: calls.append(a), settle=0.05, context=object())
    w._worker = threading.Thread(target=w._deliver, daemon=True)   # no monitor: push by hand
    w._worker.start()
    try:
        w.push("/dev/loop3", "7:3", "add")
        w.push("/dev/loop3", "7:3", "change")
        w.push("/dev/loop3", "7:3", "change")
        w.push("/dev/sdb", "8:16", "change")
        deadline = time.monotonic() + 2
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
    finally:
        w.stop()
    assert sorted(calls) == [("/dev/loop3", "7:3", "add"), ("/dev/sdb", "8:16", "change")]


class FakeJournal:
    def __init__(self, configs):
        self.configs = configs

    def get_config(self, uuid):
        return self.configs.get(uuid, {})

    def get_guest_profile(self, uuid):  # no profiles here (cgctl/core/profiles.py)
        from cgctl.core.journal import GuestProfile
        return GuestProfile(None, None)

    def get_profile(self, name):
        return None


def test_affected_guests_are_those_naming_the_disk_now(monkeypatch):
    names = {"/dev/disk/by-id/a": "8:16", "/dev/loop3": "7:3"}

    def resolve(name, **kw):
        if name not in names:
            raise UsageError("no such device")
        return names[name]

    monkeypatch.setattr(devices, "resolve", resolve)
    g = [Guest(f"g{i}", f"0000000{i}-0000-0000-0000-000000000000", "qemu", "", True, True, 100 + i)
         for i in range(4)]
    j = FakeJournal({
        g[0].uuid: {("device_read_bytes_sec", "/dev/disk/by-id/a"): "1M"},
        g[1].uuid: {("hard_limit", ""): "1G"},
        g[2].uuid: {("device_weight", "/dev/gone"): "300", ("device_weight", "/dev/loop3"): "200"},
        g[3].uuid: {("device_weight", "/dev/disk/by-id/a"): "300"},
    })
    assert udevwatch.affected_guests(j, g, "8:16") == [g[0], g[3]]
    assert udevwatch.affected_guests(j, g, "7:3") == [g[2]]
    assert udevwatch.affected_guests(j, g, "9:0") == []

"""device_io_weight: cgroup v2's own per-disk weight, "MAJ:MIN W" written as given (io.weight
1..10000 for a disk on iocost, io.bfq.weight 1..1000 for one on BFQ); on v1 BFQ's
blkio.bfq.weight_device as given, CFQ's blkio.weight_device converted
(docs/cgroup-v1-v2.md#formulas). Faked kernels: tests/fakecg.py, tests/fakekernel.py."""

from __future__ import annotations

import pytest

from cgctl.cgroup import Router, hierarchy
from cgctl.cgroup.placement import groups_for_pid
from cgctl.core import live
from cgctl.errors import UsageError
from cgctl.model import params as P
from tests import fakecg
from tests.unit.test_devices_v2 import DISK, dev_set, host_with, read


def test_v2_iocost_disk_takes_it_as_given(fs, monkeypatch):
    m, router, groups, kernel = host_with(fs, monkeypatch, bfq=False)
    kernel.iocost.add(DISK)
    dev_set(router, groups, "device_io_weight=/dev/sdb,4950")
    assert read(f"{m.machine}/io.weight") == f"default 100\n{DISK} 4950"
    assert live.read_value(router, groups, P.BY_NAME["device_io_weight"]) == {DISK: 4950}
    # the v1-shaped device_weight reads the same entry through the formula
    assert live.read_value(router, groups, P.BY_NAME["device_weight"]) == {DISK: 500}
    dev_set(router, groups, "device_io_weight=/dev/sdb,0")
    assert read(f"{m.machine}/io.weight") == "default 100"


def test_v2_bfq_disk_takes_1_to_1000(fs, monkeypatch):
    m, router, groups, kernel = host_with(fs, monkeypatch, bfq=True, scheduler="bfq")
    kernel.bfq_devices.add(DISK)
    dev_set(router, groups, "device_io_weight=/dev/sdb,700")
    assert read(f"{m.machine}/io.bfq.weight") == f"default 100\n{DISK} 700"
    with pytest.raises(UsageError, match=r"io.bfq.weight.*1\.\.1000"):
        dev_set(router, groups, "device_io_weight=/dev/sdb,4950")


@pytest.mark.parametrize("blkio,fname,written", [("bfq", "blkio.bfq.weight_device", "700"),
                                                 ("cfq", "blkio.weight_device", "80")])
def test_v1(fs, blkio, fname, written):
    fakecg.make_v1_host(fs, blkio_weight=blkio)
    vm = fakecg.make_v1_machine(fs, name="old1")
    fs.create_file(f"/sys/dev/block/{DISK}/queue/scheduler",
                   contents=("none mq-deadline [bfq]\n" if blkio == "bfq" else "[cfq]\n"))
    fs.create_file(f"/sys/dev/block/{DISK}/uevent", contents="DEVNAME=sdb\n")
    host = hierarchy.detect("/proc")
    groups = groups_for_pid(vm.pid, host, guest="old1", driver="qemu", proc_root="/proc")
    router = Router(host)
    dev_set(router, groups, "device_io_weight=/dev/sdb,700")
    assert f"{DISK} {written}" in read(f"{groups.machine_dir('io')}/{fname}")
    got = live.read_value(router, groups, P.BY_NAME["device_io_weight"])[DISK]
    # CFQ's 10..1000 is coarser: read back through the formula, what show compares against
    assert got == router.backend("io").normalize(P.BY_NAME["device_io_weight"], 700, groups)


def test_the_v1_shaped_and_the_native_name_for_one_entry_are_refused_together():
    with pytest.raises(UsageError, match="same entry of /dev/sdb"):
        P.parse_assignments(["device_weight=/dev/sdb,300", "device_io_weight=/dev/sdb,3000"])
    P.parse_assignments(["device_weight=/dev/sda,300", "device_io_weight=/dev/sdb,3000"])


def test_one_entry_one_owner_in_config_metadata_and_libvirts_tunables():
    from cgctl.model import metadata, tunables
    assert P.same_file_partner(("device_io_weight", "/dev/sdb")) == ("device_weight", "/dev/sdb")
    assert P.same_file_partner(("device_read_bytes_sec", "/dev/sdb")) is None
    # libvirt's <device><weight> meets device_io_weight on the same path
    found = tunables.conflicts({("device_weight", "/dev/sdb"): "400"},
                               [("device_io_weight", "/dev/sdb")])
    assert found == {("device_io_weight", "/dev/sdb"): (("device_weight", "/dev/sdb"), "400")}
    kw = dict(at="2025-01-01T00:00:00", host="h", user="u")
    doc = metadata.record(None, {("device_weight", "/dev/sdb"): "300"}, section="config", **kw)
    doc = metadata.record(doc, {("device_io_weight", "/dev/sdb"): "3000"}, section="config", **kw)
    assert {k: e.value for k, e in doc.config.items()} == {
        ("device_weight", "/dev/sdb"): None, ("device_io_weight", "/dev/sdb"): "3000"}


def test_a_config_change_drops_the_same_entrys_other_parameter(ctl, fake_host):
    from cgctl.core.controller import CONFIG
    fake_host.stopped_guest("web1", "5f0e5a1c-3c1f-4e8e-9b7e-3a9d1d2c4b6a")
    ctl.set("web1", ["device_weight=/dev/sdb,300", "device_weight=/dev/sdc,200"], CONFIG)
    o = ctl.set("web1", ["device_io_weight=/dev/sdb,3000"], CONFIG)
    assert ctl.journal().get_config("5f0e5a1c-3c1f-4e8e-9b7e-3a9d1d2c4b6a") == {
        ("device_io_weight", "/dev/sdb"): "3000", ("device_weight", "/dev/sdc"): "200"}
    assert [(c.param, c.device, c.old, c.new) for c in o.changes][-1] == \
        ("device_weight", "/dev/sdb", "300", None)


def test_a_malformed_device_value_is_explained_in_the_parameters_own_unit():
    """The example in the error is a value of that parameter: a weight, IO/s or bytes/s."""
    for name, example in (("device_io_weight", "/dev/vda,500"), ("device_read_iops_sec",
                          "/dev/vda,1000"), ("device_write_bytes_sec", "/dev/vda,50M")):
        with pytest.raises(UsageError) as e:
            P.parse_device_value(P.BY_NAME[name], "abc")
        assert f"(e.g. {example})" in str(e.value)

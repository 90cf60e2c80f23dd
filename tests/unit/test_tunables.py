"""libvirt's own tunables beside cgctl's config (cgctl/model/tunables.py): the parser (units,
missing parts, per-device, values cgctl would refuse), `set --config` warning where the two
meet at the next start, and `show` listing them; on the faked host of conftest.py, whose
"libvirt" gives the persistent XML a test puts in ``fake_host.persistent_xml``."""

from __future__ import annotations

import json
import os

import pytest

from cgctl import consts
from cgctl.cli import main as cli
from cgctl.core.controller import Controller
from cgctl.model import tunables
from tests.unit.conftest import STATUS

UUID = "d30eb5b3-72ba-4af9-8591-0ef552da6d8c"
OFF_UUID = "2a29237e-15bb-4467-a36f-07f04fc1adcf"

FULL = """<domain type='kvm'>
  <name>web1</name>
  <memtune>
    <hard_limit unit='KiB'>4194304</hard_limit>
    <soft_limit unit='M'>2048</soft_limit>
    <swap_hard_limit unit='GiB'>6</swap_hard_limit>
    <min_guarantee>1048576</min_guarantee>
  </memtune>
  <cputune>
    <vcpupin vcpu='0' cpuset='1'/>
    <shares>2048</shares>
    <period>100000</period>
    <quota>-1</quota>
    <global_period>100000</global_period>
    <global_quota>150000</global_quota>
    <emulator_period>50000</emulator_period>
    <emulator_quota>25000</emulator_quota>
  </cputune>
  <blkiotune>
    <weight>800</weight>
    <device>
      <path>/dev/sda</path>
      <weight>500</weight>
      <read_bytes_sec>10485760</read_bytes_sec>
      <write_iops_sec>0</write_iops_sec>
    </device>
    <device>
      <path>/dev/vdb</path>
      <write_bytes_sec>1048576</write_bytes_sec>
      <read_iops_sec>200</read_iops_sec>
    </device>
  </blkiotune>
</domain>"""


def test_every_tunable_in_cgctls_names_and_canonical_text():
    assert tunables.parse(FULL) == {
        ("hard_limit", ""): "4G", ("soft_limit", ""): "2G", ("swap_hard_limit", ""): "6G",
        ("min_guarantee", ""): "1G",   # no unit attribute: KiB, libvirt's default
        ("cpu_shares", ""): "2048", ("vcpu_period", ""): "100000",
        ("vcpu_quota", ""): "unlimited", ("global_period", ""): "100000",
        ("global_quota", ""): "150000", ("emulator_period", ""): "50000",
        ("emulator_quota", ""): "25000", ("weight", ""): "800",
        ("device_weight", "/dev/sda"): "500",
        ("device_read_bytes_sec", "/dev/sda"): "10M",   # write_iops_sec 0: nothing applied
        ("device_write_bytes_sec", "/dev/vdb"): "1M",
        ("device_read_iops_sec", "/dev/vdb"): "200"}


@pytest.mark.parametrize("unit,number,nbytes", [
    ("b", 2**30, 2**30), ("bytes", 2**30, 2**30), ("k", 2**20, 2**30), ("KiB", 2**20, 2**30),
    ("M", 1024, 2**30), ("MiB", 1024, 2**30), ("G", 1, 2**30), ("GiB", 1, 2**30),
    ("T", 1, 2**40), ("KB", 4096000, 4096 * 10**6), ("MB", 4096, 4096 * 10**6)])
def test_memtune_units_are_libvirts(unit, number, nbytes):
    # libvirt's KB/MB are powers of 1000, k/KiB, M/MiB powers of 1024
    xml = f"<domain><memtune><hard_limit unit='{unit}'>{number}</hard_limit></memtune></domain>"
    assert tunables.parse(xml) == {("hard_limit", ""): tunables.P.canonical_text(
        tunables.P.BY_NAME["hard_limit"], nbytes)}


def test_libvirts_unlimited_and_a_negative_value_are_unlimited():
    xml = ("<domain><memtune><hard_limit unit='KiB'>9007199254740991</hard_limit>"
           "<soft_limit>-1</soft_limit></memtune>"
           "<cputune><global_quota>-1</global_quota></cputune></domain>")
    assert tunables.parse(xml) == {("hard_limit", ""): "unlimited",
                                   ("soft_limit", ""): "unlimited",
                                   ("global_quota", ""): "unlimited"}


@pytest.mark.parametrize("xml", [None, "", b"", "not xml <", "<domain/>",
                                 "<domain><memtune/><cputune/><blkiotune/></domain>",
                                 "<domstatus/>",
                                 # a device without a path, a value cgctl refuses (shares 1)
                                 "<domain><blkiotune><device><weight>5</weight></device>"
                                 "</blkiotune><cputune><shares>1</shares></cputune></domain>"])
def test_missing_or_unusable_parts_give_nothing(xml):
    assert tunables.parse(xml) == {}


def test_libvirts_status_file_is_read_too():
    status = STATUS.replace("<devices>", "<memtune><hard_limit>1048576</hard_limit></memtune>"
                                         "<devices>")
    assert tunables.parse(status.format(pid=1, id=1, name="x", uuid=UUID)) == \
        {("hard_limit", ""): "1G"}


def test_by_param_joins_devices():
    assert tunables.by_param(tunables.parse(FULL))["device_read_iops_sec"] == "/dev/vdb=200"
    assert tunables.by_param({("device_weight", "/dev/b"): "5", ("device_weight", "/dev/a"): "9"}) \
        == {"device_weight": "/dev/a=9, /dev/b=5"}


# --------------------------------------------------------------------------- the controller


def warnings_of(outcome):
    return [w for w in outcome.warnings if w.startswith("libvirt also sets")]


def test_set_config_warns_for_each_parameter_libvirt_also_sets(ctl, fake_host):
    fake_host.stopped_guest("off1", OFF_UUID)
    fake_host.persistent_xml["off1"] = FULL
    o = ctl.set("off1", ["hard_limit=2G", "cpu_weight=200", "cpuset_cpus=0-1",
                         "device_read_bytes_sec=/dev/sda,5M", "device_read_bytes_sec=/dev/vdb,5M"],
                "config")
    assert sorted(warnings_of(o)) == sorted([
        "libvirt also sets hard_limit=4G in the domain XML: libvirt applies it at start, then "
        "cgctl's value replaces it (the hook's early applier before the vCPUs run, else at "
        "`started`/the service)",
        # cpu_weight and cpu.shares write one kernel file
        "libvirt also sets cpu_shares=2048 in the domain XML: libvirt applies it at start, "
        "then cgctl's value replaces it (the hook's early applier before the vCPUs run, else "
        "at `started`/the service)",
        "libvirt also sets device_read_bytes_sec=/dev/sda,10M in the domain XML: libvirt "
        "applies it at start, then cgctl's value replaces it (the hook's early applier before "
        "the vCPUs run, else at `started`/the service)"])
    # the config is written all the same
    assert ctl.journal().get_config(OFF_UUID)[("hard_limit", "")] == "2G"


def test_perm_on_a_running_guest_warns_from_the_persistent_xml(ctl, fake_host):
    fake_host.running("web1", UUID)
    fake_host.persistent_xml["web1"] = FULL
    assert len(warnings_of(ctl.set("web1", ["global_quota=50%"], "live+config"))) == 1
    assert warnings_of(ctl.set("web1", ["global_quota=50%"], "live")) == []   # live only


def test_no_xml_no_libvirt_no_warning_and_no_failure(ctl, fake_host):
    fake_host.stopped_guest("off1", OFF_UUID)       # libvirt "down": guest_xml raises
    o = ctl.set("off1", ["hard_limit=2G"], "config")
    assert warnings_of(o) == [] and o.changes
    fake_host.persistent_xml["off1"] = "<domain><memtune>"     # broken XML
    assert warnings_of(ctl.set("off1", ["hard_limit=3G"], "config")) == []


def test_a_removal_does_not_fight(ctl, fake_host):
    fake_host.stopped_guest("off1", OFF_UUID)
    fake_host.persistent_xml["off1"] = FULL
    ctl.set("off1", ["device_read_bytes_sec=/dev/sda,5M"], "config")
    assert warnings_of(ctl.set("off1", ["device_read_bytes_sec=/dev/sda,0"], "config")) == []


def test_show_lists_the_running_guests_tunables_json_and_human(fake_host):
    m = fake_host.running("web1", UUID)
    path = os.path.join(consts.LIBVIRT_RUN_DIR, "qemu", "web1.xml")
    fake_host.fs.get_object(path).set_contents(STATUS.format(
        pid=m.pid, id=1, name="web1", uuid=UUID).replace(
        "<devices>", "<memtune><hard_limit unit='KiB'>1048576</hard_limit></memtune>"
                     "<cputune><shares>512</shares></cputune><devices>"))
    argv = ["--journal", fake_host.journal_path, "show", "web1"]
    rc, out, _ = cli.run_captured(argv + ["--json"])
    assert rc == 0
    assert json.loads(out)["libvirt_tunables"] == {"cpu_shares": "512", "hard_limit": "1G"}
    rc, out, _ = cli.run_captured(argv)
    assert rc == 0
    assert ("libvirt's own tunables (applied by libvirt at start, before cgctl): "
            "cpu_shares=512, hard_limit=1G") in out.splitlines()


def test_show_of_a_stopped_guest_reads_the_persistent_xml_and_never_fails(fake_host):
    fake_host.stopped_guest("off1", OFF_UUID)
    ctl = Controller(journal_path=fake_host.journal_path, host=fake_host.host())
    try:
        assert ctl.show("off1")["libvirt_tunables"] == {}     # libvirt "down"
        fake_host.persistent_xml["off1"] = FULL
        assert ctl.show("off1")["libvirt_tunables"]["device_weight"] == "/dev/sda=500"
    finally:
        ctl.close()
    rc, out, _ = cli.run_captured(["--journal", fake_host.journal_path, "show", "off1"])
    assert rc == 0 and "libvirt's own tunables" in out

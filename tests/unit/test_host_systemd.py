"""cgctl/host/systemd.py: the weights in a systemd scope told to systemd (SetUnitProperties),
on a faked systemd cgroup2 host with the bus faked. The real systemd is the host lane's
(tests/hostlane/inside/test_settings.py::test_weight_on_the_scope_survives)."""

from __future__ import annotations

import sys

import pytest

from cgctl.cgroup import Router, hierarchy
from cgctl.cgroup.placement import groups_for_pid
from cgctl.core import live
from cgctl.host import systemd
from cgctl.model import params as P
from tests import fakecg
from tests.fakekernel import FakeKernel

SCOPE = "/sys/fs/cgroup/machine.slice/machine-qemu\\x2d3\\x2dweb1.scope"
UNIT = "machine-qemu\\x2d3\\x2dweb1.scope"


def test_cpu_weight_is_cpuweight():
    assert systemd.properties("cpu.weight", "174\n") == [("CPUWeight", "t", 174)]


def test_io_weight_is_ioweight_and_the_whole_device_list():
    assert systemd.properties("io.weight", "default 505\n8:0 1000\n252:16 25\n") == [
        ("IOWeight", "t", 505),
        ("IODeviceWeight", "a(st)", []),   # clears what systemd had: a removed line stays removed
        ("IODeviceWeight", "a(st)", [("/dev/block/8:0", 1000), ("/dev/block/252:16", 25)])]


def test_other_files_say_nothing():
    assert systemd.properties("io.bfq.weight", "default 500\n") == []
    assert systemd.properties("cpu.shares", "2048\n") == []


def test_only_weight_files_of_a_scope_itself_are_told():
    calls = []
    files = {f"{SCOPE}/cpu.weight": "174", f"{SCOPE}/libvirt/cpu.weight": "50",
             f"{SCOPE}/libvirt/memory.max": "1000", "/sys/fs/cgroup/machine/qemu-1-a/cpu.weight": "9",
             "/sys/fs/cgroup/cpu/machine.slice/x.scope/cpu.shares": "2048"}
    systemd.tell(files, files.__getitem__, "web1", lambda u, p: calls.append((u, p)), booted=True)
    assert calls == [(UNIT, [("CPUWeight", "t", 174)])]


def test_without_systemd_nothing_is_called():
    systemd.tell([f"{SCOPE}/cpu.weight"], lambda p: "174", "web1",
                 lambda u, p: pytest.fail("called"), booted=False)


def test_a_bus_failure_is_one_warning_and_no_error(capsys, monkeypatch):
    lines = []
    monkeypatch.setattr(systemd.log, "warning", lambda msg, *a: lines.append(msg % a))

    def refuse(unit, props):
        raise ConnectionRefusedError("no system bus")
    systemd.tell([f"{SCOPE}/cpu.weight"], lambda p: "174", "web1", refuse, booted=True)
    assert len(lines) == 1 and UNIT in lines[0] and "no system bus" in lines[0], lines


@pytest.fixture
def v2(fs, monkeypatch):
    fakecg.make_v2_host(fs, bfq=False)
    m = fakecg.make_systemd_v2_machine(fs, "web1", id=3, vcpus=1)
    FakeKernel(monkeypatch)
    host = hierarchy.detect("/proc")
    groups = groups_for_pid(m.pid, host, guest="web1", driver="qemu", proc_root="/proc")
    calls = []
    monkeypatch.setattr(systemd, "set_unit_properties", lambda u, p: calls.append((u, p)))
    fs.create_dir(systemd.SYSTEMD_RUN)
    return m, Router(host), groups, calls, fs


def test_a_set_of_weights_tells_systemd_the_kernel_values_and_undo_the_old_ones(v2):
    m, router, groups, calls, _ = v2
    assert m.machine == SCOPE
    _, writes = live.set_live(router, groups, P.parse_assignments(
        ["cpu_shares=2048", "weight=500", "hard_limit=1G"]))
    # the v2 values: shares 2048 -> cpu.weight 174 (crun), blkio 500 -> io.weight 4950
    assert calls == [(UNIT, [("CPUWeight", "t", 174), ("IOWeight", "t", 4950),
                             ("IODeviceWeight", "a(st)", []), ("IODeviceWeight", "a(st)", [])])]
    calls.clear()
    live.undo(writes, "web1")
    assert calls == [(UNIT, [("CPUWeight", "t", 100), ("IOWeight", "t", 100),
                             ("IODeviceWeight", "a(st)", []), ("IODeviceWeight", "a(st)", [])])]


def test_a_set_without_weights_tells_nothing(v2):
    m, router, groups, calls, _ = v2
    live.set_live(router, groups, P.parse_assignments(["hard_limit=1G", "vcpu_quota=50%"]))
    assert calls == []


def test_no_systemd_running_tells_nothing(v2):
    m, router, groups, calls, fs = v2
    fs.remove_object(systemd.SYSTEMD_RUN)
    live.set_live(router, groups, P.parse_assignments(["cpu_shares=2048"]))
    assert calls == []


def test_the_message_is_setunitproperties_runtime_on_the_system_bus(monkeypatch):
    jeepney = pytest.importorskip("jeepney")
    from jeepney.io import blocking
    sent = []

    class Conn:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def send_and_get_reply(self, msg, timeout=None):
            sent.append(msg)
            return jeepney.new_method_return(msg)

    monkeypatch.setattr(blocking, "open_dbus_connection", lambda bus: sent.append(bus) or Conn())
    systemd.set_unit_properties(UNIT, [("CPUWeight", "t", 174),
                                       ("IODeviceWeight", "a(st)", [("/dev/block/8:0", 5)])])
    bus, msg = sent
    assert bus == "SYSTEM"
    h = msg.header.fields
    assert (h[jeepney.HeaderFields.destination], h[jeepney.HeaderFields.path],
            h[jeepney.HeaderFields.interface], h[jeepney.HeaderFields.member],
            h[jeepney.HeaderFields.signature]) == (
        "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager", "SetUnitProperties", "sba(sv)")
    assert msg.body == (UNIT, True, [("CPUWeight", ("t", 174)),
                                     ("IODeviceWeight", ("a(st)", [("/dev/block/8:0", 5)]))])
    msg.serialise(serial=1)   # every variant is valid D-Bus


def test_an_error_reply_raises(monkeypatch):
    jeepney = pytest.importorskip("jeepney")
    from jeepney.io import blocking

    class Conn:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def send_and_get_reply(self, msg, timeout=None):
            return jeepney.new_error(msg, "org.freedesktop.systemd1.NoSuchUnit", "s",
                                     ("Unit x.scope not found.",))

    monkeypatch.setattr(blocking, "open_dbus_connection", lambda bus: Conn())
    with pytest.raises(Exception, match="NoSuchUnit|not found"):
        systemd.set_unit_properties(UNIT, [("CPUWeight", "t", 1)])


def test_jeepney_is_not_imported_by_cgctl():
    # a v1 or non-scope host must not pay for it: only set_unit_properties imports it
    import subprocess
    out = subprocess.run([sys.executable, "-c", "import cgctl.core.live, cgctl.core.controller, sys;"
                          "print('jeepney' in sys.modules)"], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr

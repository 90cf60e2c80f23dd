"""A host reboot (the lane reboots the VM when a test asks, then runs this module again):
the journal of the boot before is intact, cgctl starts after libvirt, and an autostarted guest
comes up with its settings in force."""
import os

import pytest

from .hostkit import Guest, cgctl, effective_memory_max, read, sh, unit_props, virsh, wait_for

MiB = 1024 * 1024
AFTER = os.environ.get("CGCTL_HOSTLANE_PHASE") == "after-reboot"
STATE = "/var/lib/hostlane"
NAME = "hl-auto"

before_only = pytest.mark.skipif(AFTER, reason="done before the reboot")
after_only = pytest.mark.skipif(not AFTER, reason="runs after the lane reboots the VM")


@before_only
def test_prepare_an_autostarted_guest_and_ask_for_a_reboot():
    g = Guest(NAME).define()
    cgctl("set", NAME, "hard_limit=140M", "vcpu_quota=35%", "--config")
    virsh("autostart", NAME)
    with open(os.path.join(STATE, "boot-id-before"), "w") as f:
        f.write(read("/proc/sys/kernel/random/boot_id"))
    open(os.path.join(STATE, "reboot-requested"), "w").close()
    assert not g.running()


@pytest.fixture
def auto_guest():
    g = Guest(NAME)
    yield g
    g.remove()


@after_only
def test_after_the_reboot(auto_guest):
    g = auto_guest
    before = read(os.path.join(STATE, "boot-id-before")).replace("-", "")
    # the journal of the boot before is there, with cgctl's lines in it
    boots = sh("journalctl", "--list-boots", "--no-pager").stdout
    assert before in boots, boots
    old = sh("journalctl", "-b", before, "-u", "cgctl.service", "--no-pager", "-o", "cat").stdout
    assert any(ln.startswith("ready:") for ln in old.splitlines()), old[-2000:]
    # the service came up by itself (enabled), after libvirt's daemon
    wait_for(lambda: unit_props("cgctl.service", "ActiveState")["ActiveState"] == "active", "cgctl active", 120)
    c = unit_props("cgctl.service", "ExecMainStartTimestampMonotonic")
    lv = unit_props("libvirtd.service", "ActiveEnterTimestampMonotonic")
    assert int(lv["ActiveEnterTimestampMonotonic"]) > 0
    assert int(c["ExecMainStartTimestampMonotonic"]) >= int(lv["ActiveEnterTimestampMonotonic"]), (c, lv)
    # the autostarted guest runs with its journal config
    wait_for(g.running, "the autostarted guest running", 120)
    wait_for(lambda: effective_memory_max(g.cgroup, g.scope) == 140 * MiB, "hard_limit in force", 60)
    wait_for(lambda: read(os.path.join(g.cgroup, "vcpu0", "cpu.max")).split()[0] == "35000",
             "vcpu_quota in force", 60)

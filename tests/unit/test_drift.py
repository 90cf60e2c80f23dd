"""cgctl/core/drift.py on the faked host of conftest.py: a value rewritten behind cgctl's back is
found and put back, an untouched one is not reported (also where the v2 conversion is
lossy), and only cgctl's writes to this run of the guest are the reference."""

from __future__ import annotations

import os

import pytest

from cgctl.model import convert
from cgctl.core import drift
from cgctl.core.controller import LIVE, Controller
from cgctl.core.drift import Drift
from tests.unit.conftest import read

UUID = "d30eb5b3-72ba-4af9-8591-0ef552da6d8c"


@pytest.fixture
def setup(fake_host):
    m = fake_host.running("web1", UUID)
    ctl = Controller(journal_path=fake_host.journal_path, host=fake_host.host())
    yield fake_host, m, ctl
    ctl.close()


def rewrite(fake_host, path, text):
    """Someone else's write (systemd, a script): straight into the file."""
    fake_host.fs.get_object(path).set_contents(text)


def test_untouched_values_are_not_drift(setup):
    _, m, ctl = setup
    ctl.set("web1", ["hard_limit=1G", "cpu_shares=512", "global_quota=50%"], LIVE)
    assert drift.find(ctl, ctl.find_guest("web1")) == []


def test_nothing_written_nothing_to_compare(setup):
    fake_host, m, ctl = setup
    rewrite(fake_host, os.path.join(m.machine["cpu"], "cpu.shares"), "2048\n")
    assert drift.find(ctl, ctl.find_guest("web1")) == []


def test_a_rewritten_value_is_found_and_repaired(setup):
    fake_host, m, ctl = setup
    shares = os.path.join(m.machine["cpu"], "cpu.shares")
    limit = os.path.join(m.libvirt["memory"], "memory.limit_in_bytes")
    ctl.set("web1", ["hard_limit=1G", "cpu_shares=512"], LIVE)
    rewrite(fake_host, shares, "2048\n")
    guest = ctl.find_guest("web1")
    found = drift.find(ctl, guest)
    assert found == [Drift("cpu_shares", "", "512", "2048")]   # hard_limit held: not listed
    outcome = drift.repair(ctl, guest, found, source="reconcile")
    assert not outcome.errors
    assert read(shares) == "512" and read(limit) == str(2**30)
    last = ctl.journal().history(UUID)[-1]
    assert (last.command, last.source, last.param, last.old_value, last.new_value) == \
        (drift.REPAIR_COMMAND, "reconcile", "cpu_shares", "2048", "512")
    assert drift.find(ctl, guest) == []


def test_a_later_live_change_is_the_reference(setup):
    _, m, ctl = setup
    ctl.set("web1", ["cpu_shares=512"], LIVE)
    ctl.set("web1", ["cpu_shares=700"], LIVE)
    assert drift.find(ctl, ctl.find_guest("web1")) == []
    ctl.set("web1", ["cpu_shares=512"], "config")   # config only: not a live write
    assert drift.find(ctl, ctl.find_guest("web1")) == []


def test_a_new_run_of_the_guest_does_not_inherit_the_last_runs_writes(setup):
    fake_host, m, ctl = setup
    ctl.set("web1", ["cpu_shares=512"], LIVE)
    rewrite(fake_host, os.path.join(m.machine["cpu"], "cpu.shares"), "1024\n")
    fake_host.started(m.pid, -60)      # the process now started after cgctl's write
    assert drift.find(ctl, ctl.find_guest("web1")) == []


def test_a_share_of_cpus_is_judged_at_the_period_in_force(setup):
    fake_host, m, ctl = setup
    ctl.set("web1", ["global_quota=50%"], LIVE)
    quota = os.path.join(m.libvirt["cpu"], "cpu.cfs_quota_us")
    assert read(quota) == "50000"
    rewrite(fake_host, os.path.join(m.libvirt["cpu"], "cpu.cfs_period_us"), "200000\n")
    guest = ctl.find_guest("web1")
    assert drift.find(ctl, guest) == [Drift("global_quota", "", "50%", "50000")]
    drift.repair(ctl, guest, drift.find(ctl, guest), source="cli")
    assert read(quota) == "100000"          # 50% of the period in force


def test_v2_lossy_conversion_is_not_drift(fake_host_v2):
    """cpu_shares 512 is cpu.weight 20 on v2; reading it back gives other shares: the same
    value, not drift. A weight rewritten to the default is."""
    m = fake_host_v2.running("web1", UUID)
    ctl = Controller(journal_path=fake_host_v2.journal_path, host=fake_host_v2.host())
    try:
        ctl.set("web1", ["cpu_shares=512", "hard_limit=1G"], LIVE)
        weight = os.path.join(m.machine, "cpu.weight")
        assert read(weight) == str(convert.shares_to_weight(512))
        guest = ctl.find_guest("web1")
        assert drift.find(ctl, guest) == []
        rewrite(fake_host_v2, weight, "100\n")          # systemd's daemon-reload
        [d] = drift.find(ctl, guest)
        assert (d.param, d.expected) == ("cpu_shares", "512")
        drift.repair(ctl, guest, [d], source="reconcile")
        assert read(weight) == str(convert.shares_to_weight(512))
        assert drift.find(ctl, guest) == []
    finally:
        ctl.close()


def test_a_write_of_the_same_files_other_parameter_is_the_reference(setup):
    """cpu_shares written at start, then cpu_weight --live: both write cpu.shares; the older
    cpu_shares is no reference any more, so it is not drift and repair does not undo the
    operator's cpu_weight."""
    fake_host, m, ctl = setup
    ctl.set("web1", ["cpu_shares=512"], LIVE)
    ctl.set("web1", ["cpu_weight=300"], LIVE)
    assert drift.find(ctl, ctl.find_guest("web1")) == []
    assert read(os.path.join(m.machine["cpu"], "cpu.shares")) == "3072"

"""Profiles (cgctl/core/profiles.py, docs/fleet.md#profiles) on the faked host of conftest.py:
the effective-config rule, a profile change put in force on N guests (each all or nothing),
bad input (unknown profile, a bad profile file, a profile change a guest cannot take, deleting
a profile in use) and the CLI around them."""

from __future__ import annotations

import errno
import json
import os

import pytest

from cgctl.cgroup import fs as cgfs
from cgctl.core import profiles
from cgctl.core.controller import BOTH, CONFIG
from cgctl.core.journal import Journal
from cgctl.errors import UsageError
from tests.unit.conftest import one_line_error, read, shares

UUIDS = ["d30eb5b3-72ba-4af9-8591-0ef552da6d8c", "2a29237e-15bb-4467-a36f-07f04fc1adcf",
         "8b1d4c4e-2f1a-4f7e-9d55-3c1f0c2e9a10"]
NAMES = ["web1", "web2", "web3"]
G = 2**30
V1_UNLIMITED = "9223372036854771712"


@pytest.fixture
def vms(fake_host):
    return [fake_host.running(n, u, id=i + 1) for i, (n, u) in enumerate(zip(NAMES, UUIDS))]


@pytest.fixture
def pdir(fake_host, monkeypatch):
    d = "/etc/cgctl-test/profiles.d"
    fake_host.fs.create_dir(d)
    monkeypatch.setenv(profiles.ENV, d)
    return d


def mem(m):
    return read(os.path.join(m.libvirt["memory"], "memory.limit_in_bytes"))


# --------------------------------------------------------------------------- the rule

def test_profile_then_own_settings_on_top(ctl, vms):
    profiles.define(ctl.journal(), "gold", {("cpu_shares", ""): "2048",
                                            ("hard_limit", ""): "2G"})
    ctl.use_profile("web1", "gold", ["hard_limit=1G"], CONFIG)
    eff = ctl.effective(UUIDS[0])
    assert eff.config == {("cpu_shares", ""): "2048", ("hard_limit", ""): "1G"}
    assert (eff.profile, eff.origin, eff.reference) == ("gold", "journal", "gold")
    assert eff.from_profile(("cpu_shares", "")) and not eff.from_profile(("hard_limit", ""))
    # the apply path of every start (hook, service, `cgctl apply`) puts exactly that in force
    ctl.apply_config(ctl.find_guest("web1"))
    assert (mem(vms[0]), shares(vms[0])) == (str(G), "2048")


def test_default_profile_for_guests_without_a_reference(ctl, vms):
    profiles.define(ctl.journal(), profiles.DEFAULT, {("cpu_shares", ""): "300"})
    ctl.set("web2", ["hard_limit=1G"], CONFIG)   # own settings: still the default beneath
    ctl.use_profile("web3", profiles.NONE, [], CONFIG)  # opted out
    assert ctl.effective(UUIDS[0]).config == {("cpu_shares", ""): "300"}  # never seen before
    assert ctl.effective(UUIDS[1]).config == {("cpu_shares", ""): "300",
                                              ("hard_limit", ""): "1G"}
    assert ctl.effective(UUIDS[2]).config == {}
    assert ctl.effective(UUIDS[0]).reference is None


def test_a_file_wins_over_the_journal_and_the_cli_does_not_change_it(ctl, vms, pdir, fake_host):
    profiles.define(ctl.journal(), "gold", {("cpu_shares", ""): "2048"})
    fake_host.fs.create_file(f"{pdir}/gold.toml", contents='cpu_shares = 4096\n'
                             '[device_weight]\n"/dev/vda" = 300\n')
    ctl.use_profile("web1", "gold", [], CONFIG)
    eff = ctl.effective(UUIDS[0])
    assert eff.origin == "file"
    assert eff.config == {("cpu_shares", ""): "4096", ("device_weight", "/dev/vda"): "300"}
    with pytest.raises(UsageError, match="defined by .*gold.toml"):
        profiles.define(ctl.journal(), "gold", {("cpu_shares", ""): "1"})


def test_a_host_without_the_profile_uses_the_carried_values(ctl, vms):
    with ctl.journal().transaction() as tx:  # what travel.receive stores from the metadata
        tx.set_guest_profile(UUIDS[0], "web1", "qemu", "gold", {("cpu_shares", ""): "2048"})
    eff = ctl.effective(UUIDS[0])
    assert (eff.config, eff.origin) == ({("cpu_shares", ""): "2048"}, "carried")
    assert "not defined on this host" in eff.problem


def test_a_broken_file_falls_back_to_the_values_the_guest_carries(ctl, vms, pdir, fake_host):
    fake_host.fs.create_file(f"{pdir}/gold.toml", contents='cpu_shares = 2048\n')
    ctl.use_profile("web1", "gold", [], CONFIG)
    fake_host.fs.get_object(f"{pdir}/gold.toml").set_contents('cpu_shares = "lots"\n')
    eff = ctl.effective(UUIDS[0])
    assert (eff.config, eff.origin) == ({("cpu_shares", ""): "2048"}, "carried")
    assert "gold.toml" in eff.problem and "cpu_shares" in eff.problem


# --------------------------------------------------------------------------- changing a profile

def test_a_profile_change_goes_to_every_running_user_each_all_or_nothing(ctl, vms, monkeypatch):
    profiles.define(ctl.journal(), "gold", {("cpu_shares", ""): "2048"})
    for n in NAMES:
        ctl.use_profile(n, "gold", [], BOTH)
    assert [shares(m) for m in vms] == ["2048"] * 3
    plain = cgfs.write
    web2 = vms[1].machine["cpu"]

    def write(path, data):  # web2's kernel refuses cpu.shares: its hard_limit must not move
        if path.startswith(web2) and path.endswith("cpu.shares"):
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return plain(path, data)
    monkeypatch.setattr(cgfs, "write", write)
    profiles.define(ctl.journal(), "gold", {("cpu_shares", ""): "512", ("hard_limit", ""): "1G"})
    outcomes = {o.guest.name: o for o in ctl.push_profile("gold", BOTH)}
    assert sorted(outcomes) == NAMES
    assert [(shares(m), mem(m)) for m in vms] == [("512", str(G)), ("2048", V1_UNLIMITED),
                                                  ("512", str(G))]
    assert outcomes["web2"].errors and not outcomes["web2"].changes
    assert not outcomes["web1"].errors and not outcomes["web3"].errors
    # the journal's live record (drift's reference) says what each guest holds
    with Journal(ctl.journal_path) as j:
        last = {r.param: r.new_value for r in j.history(UUIDS[1]) if r.mode == "live"}
    assert last == {"cpu_shares": "2048"}


def test_profile_set_cli_config_mode_leaves_running_guests(run, vms):
    assert run("profile", "set", "gold", "cpu_shares=700", "--config")[0] == 0
    assert run("set", "web1", "--profile", "gold", "--config")[0] == 0
    assert shares(vms[0]) == "1024"
    rc, out, err = run("profile", "set", "gold", "cpu_shares=800")  # --current: --perm
    assert (rc, err) == (0, ""), out
    assert shares(vms[0]) == "800"
    rc, out, _ = run("show", "web1")
    assert "profile: gold (this host's journal)" in out
    # PARAMETER LIVE CONFIG [DIFFERS] [USED...] FROM
    assert [ln.split()[:3] + ln.split()[-1:] for ln in out.splitlines()
            if ln.startswith("cpu_shares")] == [["cpu_shares", "800", "800", "profile"]]


# --------------------------------------------------------------------------- bad input

def test_unknown_profile_one_line_nothing_written(run, vms, fake_host):
    rc, out, err = run("set", "web1", "hard_limit=1G", "--profile", "nosuch")
    assert rc == 2 and "unknown profile 'nosuch'" in one_line_error(err)
    assert mem(vms[0]) == V1_UNLIMITED
    with Journal(fake_host.journal_path) as j:
        assert j.get_config(UUIDS[0]) == {} and j.history() == []


def test_a_bad_profile_file_is_refused_whole(run, vms, pdir, fake_host):
    fake_host.fs.create_file(f"{pdir}/batch.toml",
                             contents='cpu_shares = 100\nnot_a_param = 3\n')
    rc, out, err = run("set", "web1", "--profile", "batch")
    assert rc == 2 and "batch.toml" in one_line_error(err) and "not_a_param" in err
    assert shares(vms[0]) == "1024"
    rc, out, err = run("profile", "list")
    assert rc == 1 and "ERROR" in out


def test_a_profile_change_a_user_cannot_take_is_refused(run, vms):
    run("profile", "set", "gold", "cpu_shares=700")
    assert run("set", "web1", "swap_hard_limit=1G", "--profile", "gold", "--config")[0] == 0
    rc, _, err = run("profile", "set", "gold", "hard_limit=2G")  # above web1's swap limit
    assert rc == 2 and "web1" in one_line_error(err)
    rc, out, _ = run("profile", "show", "gold", "--json")
    assert json.loads(out)["settings"] == {"cpu_shares": "700"}


def test_deleting_a_profile_in_use_needs_force_and_users_keep_its_values(run, ctl, vms):
    run("profile", "set", "gold", "cpu_shares=700")
    run("set", "web1", "--profile", "gold")
    rc, _, err = run("profile", "delete", "gold")
    assert rc == 2 and "used by 1 guest(s) (web1)" in one_line_error(err)
    assert run("profile", "delete", "gold", "--force")[0] == 0
    eff = ctl.effective(UUIDS[0])
    assert (eff.config, eff.origin) == ({("cpu_shares", ""): "700"}, "carried")


def test_a_profile_reference_is_config_not_live(run, vms):
    run("profile", "set", "gold", "cpu_shares=700")
    rc, _, err = run("set", "web1", "--profile", "gold", "--live")
    assert rc == 2 and "profile is config" in one_line_error(err)

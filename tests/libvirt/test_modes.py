"""Seed 000's state-transition matrices against real guests, through the real command.

start → change (A dynamic / B static / C permanent) → stop → start → delete,
checking the cgroup file and the journal after every step. "start" here is
``virsh start`` followed by ``cgctl apply`` — what the service and the hook do
at every start (their own tests check they do it by themselves).
"""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from cgctl.cgroup import hierarchy
from cgctl.cgroup.placement import groups_for_pid
from tests.clikit import cgctl
from tests.seedcases import (LIVE_AFTER_CHANGE, LIVE_AFTER_RESTART, SEED_FAMILIES, SEED_MODE_NAME,
                             SEED_MODES)


# parameter, file, controller, X, Y, how the kernel file spells X and Y (tests/seedcases.py)
CASES = {name: (f.param, f.v1[1], f.v1[0], f.x, f.y, f.v1[2], f.v1[3])
         for name, f in SEED_FAMILIES.items() if f.v1}


def live_file(guest, controller, filename):
    host = hierarchy.detect()
    groups = groups_for_pid(guest.pid, host, guest=guest.name, driver=guest.driver)
    path = os.path.join(groups.machine_dir(controller), filename)
    with open(path) as f:
        return f.read().strip()


def journal_value(journal, guest, param):
    db = sqlite3.connect(str(journal))
    try:
        row = db.execute("SELECT value FROM setting WHERE uuid = ? AND param = ?",
                         (guest.uuid, param)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def start(sb, guest, journal):
    sb.start_guest(guest.name, guest.uri)
    cgctl(journal, "apply", guest.name)


@pytest.mark.parametrize("kind", ["qemu", "lxc"])
@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.parametrize("case,flag", SEED_MODES)
def test_seed_matrix(libvirt_sandbox, make_guest, tmp_path, kind, family, case, flag):
    param, fname, ctrl, x, y, fx, fy = CASES[family]
    journal = tmp_path / "journal.db"
    guest = make_guest(kind, start=False)
    canon = {}
    # the initial config X, set while the guest is stopped (--current means --config)
    r = cgctl(journal, "--json", "set", guest.name, f"{param}={x}")
    assert json.loads(r.stdout)["mode"] == "config"
    canon["X"] = journal_value(journal, guest, param)

    # 1. start the domain: live = X, journal = X
    start(libvirt_sandbox, guest, journal)
    assert live_file(guest, ctrl, fname) == fx
    assert journal_value(journal, guest, param) == canon["X"]

    # 2. change X → Y in the case's mode
    r = cgctl(journal, "--json", "set", guest.name, f"{param}={y}", flag)
    out = json.loads(r.stdout)
    assert out["mode"] == SEED_MODE_NAME[case]
    live_after = {"x": fx, "y": fy}[LIVE_AFTER_CHANGE[case]]
    assert live_file(guest, ctrl, fname) == live_after
    expect_journal = canon["X"] if case == "A" else out["changes"][0]["new"]
    assert journal_value(journal, guest, param) == expect_journal

    # 3. stop the domain: the journal is untouched
    libvirt_sandbox.destroy(guest.name, guest.uri)
    assert journal_value(journal, guest, param) == expect_journal
    r = cgctl(journal, "set", guest.name, f"{param}={y}", "--live", check=False)
    assert r.returncode == 1 and "not running" in r.stderr

    # 4. start again: A comes back to X, B and C start with Y
    start(libvirt_sandbox, guest, journal)
    assert live_file(guest, ctrl, fname) == {"x": fx, "y": fy}[LIVE_AFTER_RESTART[case]]

    # 5. delete the domain: config gone, history kept and marked deleted
    libvirt_sandbox.remove(guest.name, guest.uri)
    cgctl(journal, "prune")
    assert journal_value(journal, guest, param) is None
    hist = json.loads(cgctl(journal, "--json", "history", guest.uuid).stdout)
    assert hist and all(h["deleted"] for h in hist)
    assert [h["command"] for h in hist][:2] == ["set", "apply"]


def test_current_follows_state(libvirt_sandbox, make_guest, tmp_path):
    journal = tmp_path / "j.db"
    guest = make_guest("qemu", start=True)
    out = json.loads(cgctl(journal, "--json", "set", guest.name, "cpu_shares=300").stdout)
    assert out["mode"] == "live"
    assert live_file(guest, "cpu", "cpu.shares") == "300"
    assert journal_value(journal, guest, "cpu_shares") is None
    libvirt_sandbox.destroy(guest.name, guest.uri)
    out = json.loads(cgctl(journal, "--json", "set", guest.name, "cpu_shares=400").stdout)
    assert out["mode"] == "config"
    assert journal_value(journal, guest, "cpu_shares") == "400"


def test_errors_are_one_line_and_write_nothing(libvirt_sandbox, make_guest, tmp_path):
    journal = tmp_path / "j.db"
    guest = make_guest("qemu", start=True)
    cgctl(journal, "set", guest.name, "cpu_shares=600", "--perm")
    before = live_file(guest, "cpu", "cpu.shares")
    db_before = sqlite3.connect(str(journal)).execute(
        "SELECT count(*) FROM history").fetchone()[0]
    for args, code, words in [
        (["set", "no-such-guest-xyz", "cpu_shares=100"], 1, "no such guest"),
        (["set", guest.name, "cpu_shares=1"], 2, "out of range"),
        (["set", guest.name, "nonsense=1"], 2, "unknown parameter"),
        (["set", guest.name, "hard_limit=1G", "swap_hard_limit=512M"], 2, "exceed"),
        (["set", guest.name, "cpu_shares=100", "cpuset_cpus=0-200"], 1, "does not have"),
        (["set", "../etc", "cpu_shares=100"], 2, "cannot contain"),
    ]:
        r = cgctl(journal, *args, check=False)
        assert r.returncode == code, (args, r.stderr)
        assert words in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert live_file(guest, "cpu", "cpu.shares") == before
    assert sqlite3.connect(str(journal)).execute(
        "SELECT count(*) FROM history").fetchone()[0] == db_before


def test_transient_guest_refuses_config(libvirt_sandbox, make_guest, tmp_path):
    journal = tmp_path / "j.db"
    guest = make_guest("qemu", transient=True)
    r = cgctl(journal, "set", guest.name, "cpu_shares=300", "--config", check=False)
    assert r.returncode == 2 and "transient" in r.stderr
    r = cgctl(journal, "set", guest.name, "cpu_shares=300", "--perm", check=False)
    assert r.returncode == 2
    cgctl(journal, "set", guest.name, "cpu_shares=300")  # --current = --live: fine
    assert live_file(guest, "cpu", "cpu.shares") == "300"


def test_show_and_virsh_spelling(libvirt_sandbox, make_guest, tmp_path):
    journal = tmp_path / "j.db"
    guest = make_guest("qemu", start=True)
    cgctl(journal, "memtune", guest.name, "--hard-limit", "1G", "--live")
    cgctl(journal, "schedinfo", guest.name, "--cpu-shares", "700", "--config")
    show = json.loads(cgctl(journal, "--json", "show", guest.name).stdout)
    rows = {r["param"]: r for r in show["params"]}
    assert rows["hard_limit"]["live"] == "1G" and rows["hard_limit"]["config"] is None
    assert rows["cpu_shares"]["config"] == "700" and rows["cpu_shares"]["differs"] is True
    assert "min_guarantee" in rows and rows["min_guarantee"]["unsupported"]
    # a quota given as a share of CPUs is compared at the period in force
    cgctl(journal, "set", guest.name, "global_quota=50%", "--perm")
    show = json.loads(cgctl(journal, "--json", "show", guest.name).stdout)
    quota = {r["param"]: r for r in show["params"]}["global_quota"]
    assert (quota["live"], quota["config"], quota["differs"]) == ("50000", "50%", False)
    human = cgctl(journal, "show", guest.name).stdout
    assert "cpu_shares" in human and "*" in human
    lst = json.loads(cgctl(journal, "--json", "list").stdout)
    assert [r["state"] for r in lst if r["uuid"] == guest.uuid] == ["running"]

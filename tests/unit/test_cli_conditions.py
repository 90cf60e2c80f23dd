"""One exit status per condition across commands (docs/usage.md "Exit status"), no side effect
from a query or a failure, one line when there is nothing to do, messages in the parameter's
units. In-process on the faked host of conftest.py."""

from __future__ import annotations

import json
import os

import pytest

from cgctl.cli import main as cli
from cgctl.core import drift, policy  # noqa: F401  imported before pyfakefs starts, not under it
from cgctl.model import units
from tests.unit.conftest import read

UUID = "d30eb5b3-72ba-4af9-8591-0ef552da6d8c"

READ_ONLY = [["list"], ["history"], ["history", "web1"], ["forget", "web1"], ["export"],
             ["export", "web1"], ["apply", "--all"], ["verify", "--all"], ["show", "web1"],
             ["verify", "web1"], ["params"], ["host"]]


@pytest.fixture
def vm(fake_host):
    return fake_host.running("web1", UUID)


def run_with(journal, *argv):
    return cli.run_captured(["--journal", journal, *argv])


def one_line(err):
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv", READ_ONLY, ids=" ".join)
def test_without_a_journal_nothing_is_created(fake_host, vm, tmp_path, argv):
    journal = str(tmp_path / "typo" / "journal.db")
    rc, out, err = run_with(journal, *argv)
    assert not os.path.lexists(os.path.dirname(journal))
    if argv[0] in ("show", "verify") and "--all" not in argv or argv[0] in ("params", "host"):
        assert rc == 0, err  # about the guest or the host, not the journal: reads it as empty
    else:
        assert rc == 1
        assert f"journal {journal} does not exist" in one_line(err)


def test_an_unknown_guest_is_exit_1_in_every_command(fake_host, vm):
    run_with(fake_host.journal_path, "set", "web1", "cpu_shares=512", "--config")
    before = run_with(fake_host.journal_path, "history", "--json")[1]
    for argv in (["forget", "nosuch"], ["history", "nosuch"], ["export", "nosuch"],
                 ["show", "nosuch"], ["set", "nosuch", "cpu_shares=2"], ["apply", "nosuch"]):
        rc, _, err = run_with(fake_host.journal_path, *argv)
        assert rc == 1, (argv, err)
        assert "'nosuch'" in one_line(err)
    assert run_with(fake_host.journal_path, "history", "--json")[1] == before


@pytest.mark.parametrize("verb", ["apply", "verify"])
def test_nothing_to_do_says_so_in_one_line(fake_host, vm, verb):
    run_with(fake_host.journal_path, "set", "web1", "cpu_shares=512", "--live")
    run_with(fake_host.journal_path, "forget", "web1")  # the journal exists, holds no config
    rc, out, err = run_with(fake_host.journal_path, verb, "--all")
    assert (rc, err) == (0, "")
    assert out == f"nothing to {verb}: no running guest has settings in the journal\n"
    rc, out, _ = run_with(fake_host.journal_path, verb, "--all", "--json")
    assert (rc, json.loads(out)) == (0, [])


def test_history_limit_below_zero_is_refused(fake_host, vm):
    rc, _, err = run_with(fake_host.journal_path, "history", "--limit", "-1")
    assert rc == 2 and "--limit" in one_line(err)


def test_verify_table_is_aligned_and_repair_shows_the_new_value(fake_host, vm):
    j = fake_host.journal_path
    run_with(j, "set", "web1", "cpu_shares=512", "hard_limit=1G", "--live")
    fake_host.fs.get_object(os.path.join(vm.machine["cpu"], "cpu.shares")).set_contents("2048\n")
    rc, out, _ = run_with(j, "verify", "web1")
    assert rc == 1
    assert out.splitlines() == ["guest web1: DRIFT",
                                "  PARAMETER   CGCTL WROTE  CGROUP HOLDS",
                                "  cpu_shares  512          2048"]
    rc, out, _ = run_with(j, "verify", "web1", "--repair")
    assert rc == 0
    assert out.splitlines() == ["guest web1: repaired",
                                "  PARAMETER   CGCTL WROTE  CGROUP HELD  CGROUP HOLDS NOW",
                                "  cpu_shares  512          2048         512"]
    assert read(os.path.join(vm.machine["cpu"], "cpu.shares")) == "512"


def test_messages_give_sizes_in_units_not_raw_bytes(fake_host, vm):
    rc, _, err = run_with(fake_host.journal_path, "set", "web1", "hard_limit=3221348928B",
                          "swap_hard_limit=2G", "--live")
    assert rc == 2
    line = one_line(err)
    assert "3221348928B" not in line
    # the value as the kernel will hold it (whole pages), in the parameter's unit
    assert "hard_limit (3145848K) would exceed swap_hard_limit (2G)" in line


def test_describe_bytes():
    assert units.describe_bytes(3 * 2**30) == "3G"
    assert units.describe_bytes(1000) == "1000B"
    assert units.describe_bytes(1536 * 2**20 + 1) == "1.50G (1610612737 bytes)"
    assert units.describe_bytes(units.UNLIMITED) == "unlimited"

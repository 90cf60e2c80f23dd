"""virsh's own spellings where cgctl borrows virsh's commands (cgctl/cli/main.py cmd_virsh,
cgctl/model/units.py parse_cpulist), on the faked host of conftest.py: `schedinfo --set` and the
bare `PARAM=VALUE` form, any negative memtune value as unlimited, cpu lists with `^` exclusions."""

from __future__ import annotations

import os

import pytest

from cgctl.errors import UsageError
from cgctl.model import units
from tests.unit.conftest import read, shares

UUID = "5c1f3f8e-39a2-4a2e-9a7e-3f0b1d2c4e6a"
V1_UNLIMITED = "9223372036854771712"


@pytest.fixture
def vm(fake_host):
    return fake_host.running("web1", UUID)


@pytest.mark.parametrize("form", [["--set", "cpu_shares=512"], ["cpu_shares=512"],
                                  ["--cpu-shares", "512"]])
def test_schedinfo_forms_write_the_same_bytes(run, vm, form):
    rc, out, err = run("schedinfo", "web1", *form, "--live")
    assert (rc, err) == (0, ""), err
    assert shares(vm) == "512"


def test_schedinfo_refuses_another_commands_parameter_and_writes_nothing(run, vm):
    before = shares(vm)
    rc, _, err = run("schedinfo", "web1", "hard_limit=1G", "--live")
    assert rc == 2 and "schedinfo takes PARAM=VALUE" in err
    rc, _, err = run("schedinfo", "web1", "--set", "cpu_shares", "--live")
    assert rc == 2
    assert shares(vm) == before


@pytest.mark.parametrize("value", ["-1", "-5", "-1024"])
def test_memtune_any_negative_is_unlimited(run, vm, value):
    mem = os.path.join(vm.libvirt["memory"], "memory.limit_in_bytes")
    assert run("memtune", "web1", "--hard-limit", "1G", "--live")[0] == 0
    assert read(mem) == str(2**30)
    rc, out, err = run("memtune", "web1", "--hard-limit", value, "--live")
    assert (rc, err) == (0, "")
    assert "hard_limit: 1G -> unlimited" in out
    # v1's "no limit" as written ("-1"); the real kernel reads it back as PAGE_COUNTER_MAX
    assert read(mem) in ("-1", V1_UNLIMITED)


def test_set_keeps_refusing_a_negative_size(run, vm):
    rc, _, err = run("set", "web1", "hard_limit=-5", "--live")
    assert rc == 2 and "negative" in err


@pytest.mark.parametrize("text,canon", [("0-7,^3", "0-2,4-7"), ("^3,0-7", "0-2,4-7"),
                                        ("0-7,^2-5", "0-1,6-7"), ("0-3,^4", "0-3")])
def test_cpulist_exclusions(text, canon):
    assert units.parse_cpulist(text) == canon


@pytest.mark.parametrize("text", ["^3", "0-3,^0-3", "0,^x", "^"])
def test_cpulist_exclusions_refused(text):
    with pytest.raises(UsageError):
        units.parse_cpulist(text)


def test_cpuset_command_takes_an_exclusion(run, vm):
    cpus = os.path.join(vm.libvirt["cpuset"], "cpuset.cpus")
    rc, _, err = run("cpuset", "web1", "--cpus", "0-1,^1", "--live")
    assert (rc, err) == (0, ""), err
    assert read(cpus) == "0"

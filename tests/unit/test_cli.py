"""cgctl/cli/main.py in-process (cli.run_captured) on the faked host of conftest.py: exit codes
0 done / 1 could not / 2 bad request, the --json shapes, one-line errors, no traceback."""

from __future__ import annotations

import errno
import json
import os

import pytest

from cgctl.cli import main as cli
from cgctl.core.controller import Controller
from cgctl.core.journal import Journal
from tests.fakekernel import FakeKernel
from tests.unit.conftest import one_line_error, read

UUID = "d30eb5b3-72ba-4af9-8591-0ef552da6d8c"
OFF_UUID = "2a29237e-15bb-4467-a36f-07f04fc1adcf"
V1_UNLIMITED = "9223372036854771712"


@pytest.fixture
def vm(fake_host):
    return fake_host.running("web1", UUID)


def mem(m):
    return read(os.path.join(m.libvirt["memory"], "memory.limit_in_bytes"))


def history(fake_host, uuid=UUID):
    """The journal's rows for ``uuid`` (none when there is no journal file)."""
    with Journal(fake_host.journal_path, create=False) as j:
        return [(r.command, r.mode, r.param, r.new_value, r.outcome) for r in j.history(uuid)]


# --------------------------------------------------------------------------- done: 0

def test_set_live_human(run, vm):
    rc, out, err = run("set", "web1", "hard_limit=1G", "--live")
    assert (rc, err) == (0, "")
    assert out.splitlines() == ["guest web1 (qemu): live", "  hard_limit: unlimited -> 1G"]
    assert mem(vm) == str(2**30)


def test_set_json_shape(run, vm, fake_host):
    rc, out, err = run("set", "web1", "hard_limit=1G", "cpu_shares=512", "--perm", "--json")
    assert (rc, err) == (0, "")
    d = json.loads(out)
    assert d == {"guest": "web1", "uuid": UUID, "driver": "qemu", "mode": "live+config",
                 "errors": [], "warnings": [],
                 "changes": [{"param": "hard_limit", "device": None, "old": "unlimited",
                              "new": "1G", "old_number": None, "new_number": 2**30,
                              "unit": "bytes"},
                             {"param": "cpu_shares", "device": None, "old": "1024",
                              "new": "512", "old_number": 1024, "new_number": 512,
                              "unit": "shares"}]}
    assert sorted(history(fake_host)) == [("set", "live+config", "cpu_shares", "512", "ok"),
                                          ("set", "live+config", "hard_limit", "1G", "ok")]


def test_virsh_style_command(run, vm, fake_host):
    rc, out, _ = run("memtune", "web1", "--hard-limit", "1G", "--live")
    assert rc == 0
    assert mem(vm) == str(2**30)
    assert history(fake_host) == [("memtune", "live", "hard_limit", "1G", "ok")]


def test_show_json_shape(run, vm):
    assert run("set", "web1", "hard_limit=1G", "--perm")[0] == 0
    rc, out, _ = run("show", "web1", "--json")
    assert rc == 0
    d = json.loads(out)
    assert {k: d[k] for k in ("guest", "uuid", "driver", "running", "persistent")} == \
        {"guest": "web1", "uuid": UUID, "driver": "qemu", "running": True, "persistent": True}
    by = {r["param"]: r for r in d["params"]}
    assert by["hard_limit"] == {"param": "hard_limit", "live": "1G", "config": "1G",
                                "differs": False, "unsupported": None, "from_profile": False,
                                "live_number": 2**30, "config_number": 2**30, "unit": "bytes",
                                "kernel": {"file": "memory.limit_in_bytes", "raw": str(2**30),
                                           "unit": "bytes", "default": False},
                                "set_by": "cgctl"}
    assert d["profile"] is None and d["profile_reference"] is None
    assert by["min_guarantee"]["unsupported"]          # v1 has no memory.min
    assert set(d["groups"]) and d["notes"] == []


def test_history_and_list_json(run, vm):
    run("set", "web1", "cpu_shares=512", "--perm")
    rc, out, _ = run("history", "web1", "--json")
    assert rc == 0
    [row] = json.loads(out)
    assert {k: row[k] for k in ("name", "command", "mode", "param", "old_value", "new_value",
                                "outcome")} == \
        {"name": "web1", "command": "set", "mode": "live+config", "param": "cpu_shares",
         "old_value": "1024", "new_value": "512", "outcome": "ok"}
    rc, out, _ = run("list", "--json")
    assert rc == 0
    [g] = json.loads(out)
    assert (g["guest"], g["state"], g["settings"]) == ("web1", "running", 1)


# --------------------------------------------------------------------------- bad request: 2

@pytest.mark.parametrize("argv, words", [
    (["set", "web1", "hard_limit=banana", "--live"], "hard_limit"),
    (["set", "web1", "no_such_param=1", "--live"], "no_such_param"),
    (["set", "web1", "hard_limit=1G", "--live", "--current"], "--current"),
    (["set", "web1", "hard_limit"], "PARAM=VALUE"),
    (["frobnicate"], "frobnicate"),
    ([], "no command"),
    (["apply"], "GUEST or --all"),
])
def test_bad_requests_exit_2_and_touch_nothing(run, vm, fake_host, argv, words):
    rc, out, err = run(*argv)
    assert rc == 2
    assert words in one_line_error(err)
    assert out == ""
    assert mem(vm) == V1_UNLIMITED
    assert history(fake_host) == []


def test_config_of_a_transient_guest_exits_2(run, fake_host):
    fake_host.running("tmp1", UUID, persistent=False)
    rc, _, err = run("set", "tmp1", "hard_limit=1G", "--config")
    assert rc == 2 and "transient" in one_line_error(err)


# --------------------------------------------------------------------------- could not: 1

def test_live_on_a_stopped_guest_exits_1(run, fake_host):
    fake_host.stopped_guest("off1", OFF_UUID)
    rc, _, err = run("set", "off1", "hard_limit=1G", "--live")
    assert rc == 1 and "not running" in one_line_error(err)
    assert history(fake_host, OFF_UUID) == []


def test_unknown_guest_exits_1(run, vm):
    rc, _, err = run("set", "nosuch", "hard_limit=1G")
    assert rc == 1 and "'nosuch'" in one_line_error(err)


def test_kernel_refusal_exits_1_with_json_error(run, vm, monkeypatch, fake_host):
    FakeKernel(monkeypatch, fail_on={"memory.limit_in_bytes": errno.EBUSY})
    rc, out, err = run("set", "web1", "hard_limit=1G", "cpu_shares=512", "--live", "--json")
    assert rc == 1
    assert "EBUSY" in one_line_error(err)
    d = json.loads(out)
    assert d["error"] == "KernelRefused" and d["param"] == "hard_limit"
    assert d["errno"] == "EBUSY" and d["guest"] == "web1"
    assert d["path"].endswith("memory.limit_in_bytes")
    assert set(d) == {"error", "message", "guest", "param", "path", "errno"}
    assert mem(vm) == V1_UNLIMITED
    assert read(os.path.join(vm.machine["cpu"], "cpu.shares")) == "1024"
    assert history(fake_host) == []


def test_unopenable_journal_exits_1(fake_host, vm):
    rc, _, err = cli.run_captured(["--journal", "/dev/null/j.db", "set", "web1",
                                   "hard_limit=1G", "--live"])
    assert rc == 1 and "/dev/null/j.db" in one_line_error(err)
    assert mem(vm) == V1_UNLIMITED


def test_a_bug_is_one_line_not_a_traceback(run, vm, monkeypatch):
    def boom(*a, **kw):
        raise RuntimeError("boom")
    monkeypatch.delenv("CGCTL_DEBUG", raising=False)
    monkeypatch.setattr(Controller, "set", boom)
    rc, out, err = run("set", "web1", "hard_limit=1G", "--json")
    assert rc == 1
    assert "internal error: RuntimeError: boom" in one_line_error(err)
    assert json.loads(out)["error"] == "CgctlError"


def test_apply_with_a_refused_parameter_exits_1(run, vm, fake_host, monkeypatch):
    run("set", "web1", "hard_limit=1G", "cpu_shares=512", "--config")
    FakeKernel(monkeypatch, fail_on={"cpu.shares": errno.EINVAL})
    rc, out, _ = run("apply", "web1", "--json")
    assert rc == 1
    [o] = json.loads(out)
    assert [c["param"] for c in o["changes"]] == ["hard_limit"]
    assert [e["param"] for e in o["errors"]] == ["cpu_shares"]
    assert mem(vm) == str(2**30)


def test_verify_exit_codes(run, vm, fake_host):
    run("set", "web1", "cpu_shares=512", "--live")
    assert run("verify", "web1")[0] == 0
    fake_host.fs.get_object(os.path.join(vm.machine["cpu"], "cpu.shares")).set_contents("2048\n")
    rc, out, _ = run("verify", "web1", "--json")
    assert rc == 1
    [r] = json.loads(out)
    assert r["drift"] == [{"param": "cpu_shares", "device": None, "expected": "512",
                           "live": "2048"}] and r["repaired"] is False
    rc, out, _ = run("verify", "web1", "--repair", "--json")
    assert rc == 0 and json.loads(out)[0]["repaired"] is True
    assert read(os.path.join(vm.machine["cpu"], "cpu.shares")) == "512"


# --------------------------------------------------------------------------- --json numbers

def test_json_numbers_beside_display_strings(run, vm):
    """show/set/history --json: plain numbers (bytes, microseconds, weights, IO/s) beside the
    display strings; unlimited and CPU lists have none; ``guest`` names the guest everywhere."""
    rc, out, _ = run("set", "web1", "global_period=50ms", "global_quota=unlimited",
                     "cpuset_cpus=0", "--perm", "--json")
    assert rc == 0
    by = {c["param"]: c for c in json.loads(out)["changes"]}
    assert (by["global_period"]["new"], by["global_period"]["new_number"],
            by["global_period"]["unit"]) == ("50000", 50000, "microseconds")
    assert (by["global_quota"]["new"], by["global_quota"]["new_number"]) == ("unlimited", None)
    assert (by["cpuset_cpus"]["new_number"], by["cpuset_cpus"]["unit"]) == (None, None)
    rc, out, _ = run("show", "web1", "--json")
    rows = {r["param"]: r for r in json.loads(out)["params"]}
    assert (rows["global_period"]["live_number"], rows["global_period"]["config_number"]) == \
        (50000, 50000)
    assert (rows["cpu_shares"]["live_number"], rows["cpu_shares"]["unit"]) == (1024, "shares")
    rc, out, _ = run("history", "web1", "--json")
    hist = json.loads(out)
    assert all(r["guest"] == r["name"] == "web1" for r in hist)
    period = next(r for r in hist if r["param"] == "global_period")
    assert (period["new_value"], period["new_number"], period["unit"]) == \
        ("50000", 50000, "microseconds")
    rc, out, _ = run("list", "--json")
    assert json.loads(out)[0]["guest"] == "web1"


def test_json_numbers_per_device(run, vm):
    rc, out, _ = run("set", "web1", "device_read_iops_sec=/dev/sdb,300", "--config", "--json")
    assert rc == 0
    c = json.loads(out)["changes"][0]
    assert (c["device"], c["new"], c["new_number"], c["unit"]) == ("/dev/sdb", "300", 300, "IO/s")
    rows = {r["param"]: r for r in json.loads(run("show", "web1", "--json")[1])["params"]}
    d = rows["device_read_iops_sec"]["devices"][0]
    assert (d["device"], d["live_number"], d["config_number"]) == ("/dev/sdb", None, 300)


def test_a_native_parameter_replaces_its_v1_shaped_twin_in_the_config(run, vm, fake_host):
    assert run("set", "web1", "cpu_shares=2048", "--config")[0] == 0
    rc, out, _ = run("set", "web1", "cpu_weight=200", "--config", "--json")
    assert rc == 0
    changes = {c["param"]: c for c in json.loads(out)["changes"]}
    assert (changes["cpu_shares"]["old"], changes["cpu_shares"]["new"]) == ("2048", None)
    with Journal(fake_host.journal_path, create=False) as j:
        assert j.get_config(UUID) == {("cpu_weight", ""): "200"}
    rc, _, err = run("set", "web1", "cpu_shares=2048", "cpu_weight=200", "--config")
    assert rc == 2 and "same kernel file" in one_line_error(err)

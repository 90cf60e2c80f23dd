"""show puts the kernel's own file and value beside cgctl's (``kernel``: file, raw content,
unit; a default shown as the default) and says who put the value there (``set_by``): cgctl
(what it last wrote to this run of the guest holds: cgctl/core/drift.py's reference), the
kernel's default, or someone else ("set elsewhere": libvirt, systemd, a hand). On the faked
v1 and v2 hosts of conftest.py; docs/cgroup-v1-v2.md#what-show-reports-beside-cgctls-values."""

from __future__ import annotations

import json
import os

from cgctl.core.controller import LIVE, Controller

UUID = "6b0f9a3c-1d5e-4f00-9a44-2f1d4c3b7e10"


def rows(ctl):
    return {r["param"]: r for r in ctl.show("web1")["params"]}


def rewrite(fake_host, path, text):
    """Someone else's write (libvirt, systemd, a hand): straight into the file."""
    fake_host.fs.get_object(path).set_contents(text)


def _ctl(fake_host):
    return Controller(journal_path=fake_host.journal_path, host=fake_host.host())


def test_v2_native_value_beside_cgctls_and_defaults_as_defaults(fake_host_v2):
    m = fake_host_v2.running("web1", UUID)
    ctl = _ctl(fake_host_v2)
    r = rows(ctl)
    assert r["cpu_shares"]["kernel"] == {"file": "cpu.weight", "raw": "100",
                                         "unit": "weight (1..10000)", "default": True}
    assert r["cpu_shares"]["set_by"] == "default" and r["cpu_shares"]["live"] == "1024"
    assert r["weight"]["kernel"]["raw"] == "default 100" and r["weight"]["set_by"] == "default"
    assert r["hard_limit"]["kernel"]["raw"] == "max" and r["hard_limit"]["set_by"] == "default"
    ctl.set("web1", ["cpu_shares=2048"], LIVE)
    r = rows(ctl)
    assert (r["cpu_shares"]["kernel"]["raw"], r["cpu_shares"]["set_by"]) == ("174", "cgctl")
    # cpu_weight reads the same file, which cgctl wrote (through cpu_shares)
    assert r["cpu_weight"]["set_by"] == "cgctl" and r["cpu_weight"]["live"] == "174"
    # libvirt writes <shares> verbatim: 1024 into cpu.weight
    rewrite(fake_host_v2, os.path.join(m.machine, "cpu.weight"), "1024\n")
    r = rows(ctl)
    assert (r["cpu_shares"]["kernel"]["raw"], r["cpu_shares"]["set_by"]) == ("1024", "elsewhere")
    ctl.close()


def test_v1_a_value_nobody_in_cgctl_wrote_is_set_elsewhere(fake_host):
    m = fake_host.running("web1", UUID)
    ctl = _ctl(fake_host)
    rewrite(fake_host, os.path.join(m.libvirt["memory"], "memory.limit_in_bytes"),
            str(512 * 2**20) + "\n")
    r = rows(ctl)
    assert r["hard_limit"]["kernel"] == {"file": "memory.limit_in_bytes",
                                         "raw": str(512 * 2**20), "unit": "bytes",
                                         "default": False}
    assert r["hard_limit"]["set_by"] == "elsewhere"
    assert r["cpu_shares"]["set_by"] == "default"
    assert r["cpuset_cpus"]["set_by"] == "default"      # its parent's
    ctl.set("web1", ["hard_limit=1G", "cpu_weight=200"], LIVE)
    r = rows(ctl)
    assert r["hard_limit"]["set_by"] == "cgctl"
    assert (r["cpu_weight"]["kernel"]["file"], r["cpu_weight"]["kernel"]["raw"]) == \
        ("cpu.shares", "2048")
    assert r["cpu_shares"]["set_by"] == "cgctl"
    ctl.close()


def test_v1_a_write_from_a_previous_run_is_not_cgctls_now(fake_host):
    m = fake_host.running("web1", UUID)
    ctl = _ctl(fake_host)
    ctl.set("web1", ["cpu_shares=512"], LIVE)
    fake_host.started(m.pid, -10)   # a new run of the guest (same pid, started after the write)
    assert rows(ctl)["cpu_shares"]["set_by"] == "elsewhere"
    ctl.close()


def test_cli_show_text_and_json(fake_host, run):
    m = fake_host.running("web1", UUID)
    assert run("set", "web1", "cpu_shares=2048", "--live")[0] == 0
    rewrite(fake_host, os.path.join(m.libvirt["memory"], "memory.soft_limit_in_bytes"),
            str(2**30) + "\n")
    rc, out, err = run("show", "web1")
    assert rc == 0, err
    head = out.splitlines()[1]
    assert "KERNEL" in head and "SET BY" in head
    line = {ln.split()[0]: ln for ln in out.splitlines()[2:] if ln.strip()}
    assert "cpu.shares 2048" in line["cpu_shares"] and " cgctl " in line["cpu_shares"]
    assert "memory.limit_in_bytes 9223372036854771712" in line["hard_limit"]
    assert " default " in line["hard_limit"]
    assert " set elsewhere " in line["soft_limit"] + " "
    assert "set elsewhere: the kernel holds a value cgctl did not write" in out
    rc, out, _ = run("--json", "show", "web1")
    d = {r["param"]: r for r in json.loads(out)["params"]}
    assert d["cpu_shares"]["kernel"]["raw"] == "2048" and d["soft_limit"]["set_by"] == "elsewhere"

"""What each tool shows after the other's change, on this cgroup v1 host's real libvirt:
`virsh schedinfo/memtune/blkiotune` after `cgctl set`, and `cgctl show` (its value, the
kernel's own file and value, who set it) after a virsh change. docs/cgroup-v1-v2.md's table
"What each tool shows after the other's change, as measured" holds these relations (the v2
column: tests/hostlane/inside/test_virsh_agreement.py). Each step prints what it saw (-s)."""

from __future__ import annotations

import json
import os

import pytest

from cgctl.cgroup import hierarchy
from cgctl.cgroup.placement import groups_for_pid
from tests.clikit import cgctl

KiB = 1024


def fields(out: str) -> dict:
    return {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in out.splitlines()
                                              if ":" in ln)}


class Tools:
    def __init__(self, sb, guest, journal):
        self.sb, self.g, self.journal = sb, guest, journal

    def virsh_set(self, *args):
        self.sb.virsh(args[0], self.g.name, *args[1:])

    def cgctl_set(self, *args):
        cgctl(self.journal, "set", self.g.name, *args, "--live")

    def virsh_reports(self, family: str) -> dict:
        return fields(self.sb.virsh(family, self.g.name).stdout)

    def show(self) -> dict:
        d = json.loads(cgctl(self.journal, "--json", "show", self.g.name).stdout)
        return {r["param"]: r for r in d["params"]}

    def kernel(self, controller: str, filename: str) -> str:
        groups = groups_for_pid(self.g.pid, hierarchy.detect(), guest=self.g.name,
                                driver=self.g.driver)
        with open(os.path.join(groups.machine_dir(controller), filename)) as f:
            return f.read().strip()


@pytest.fixture
def tools(libvirt_sandbox, qemu_guest, tmp_path):
    return Tools(libvirt_sandbox, qemu_guest, tmp_path / "journal.db")


def seen(step, **kw):
    print(f"agreement v1: {step}: " + json.dumps(kw, sort_keys=True, default=str))


def test_schedinfo(tools):
    t = tools
    t.virsh_set("schedinfo", "--set", "cpu_shares=700", "--live")
    r = t.show()
    seen("virsh cpu_shares=700", show=r["cpu_shares"], kernel=t.kernel("cpu", "cpu.shares"))
    assert (r["cpu_shares"]["live"], r["cpu_shares"]["kernel"]["file"],
            r["cpu_shares"]["kernel"]["raw"], r["cpu_shares"]["set_by"]) == \
        ("700", "cpu.shares", "700", "elsewhere")
    t.cgctl_set("cpu_shares=2048")
    v, r = t.virsh_reports("schedinfo"), t.show()
    seen("cgctl cpu_shares=2048", virsh=v, show=r["cpu_shares"])
    assert v["cpu_shares"] == "2048" and r["cpu_shares"]["set_by"] == "cgctl"
    t.cgctl_set("cpu_weight=300")
    v, r = t.virsh_reports("schedinfo"), t.show()
    seen("cgctl cpu_weight=300", virsh=v, show=r["cpu_weight"])
    assert v["cpu_shares"] == t.kernel("cpu", "cpu.shares") == "3072"   # systemd's mapping
    assert (r["cpu_weight"]["live"], r["cpu_weight"]["set_by"]) == ("300", "cgctl")
    # virsh overwrites what cgctl wrote: show says so (drift's reference, cgctl/core/drift.py)
    t.virsh_set("schedinfo", "--set", "cpu_shares=1024", "--live")
    r = t.show()
    seen("virsh cpu_shares=1024 after cgctl", show=r["cpu_shares"])
    assert (r["cpu_shares"]["kernel"]["raw"], r["cpu_shares"]["set_by"]) == ("1024", "elsewhere")
    assert r["cpu_weight"]["set_by"] == "elsewhere"


def test_memtune(tools):
    t = tools
    t.virsh_set("memtune", "--hard-limit", str(300 * KiB), "--live")
    r = t.show()
    seen("virsh hard_limit=300M", show=r["hard_limit"])
    assert (r["hard_limit"]["live"], r["hard_limit"]["kernel"]["raw"],
            r["hard_limit"]["set_by"]) == ("300M", str(300 * 2**20), "elsewhere")
    assert r["soft_limit"]["set_by"] == "default"
    t.cgctl_set("hard_limit=200M", "soft_limit=150M")
    v, r = t.virsh_reports("memtune"), t.show()
    seen("cgctl hard_limit=200M soft_limit=150M", virsh=v, show=r["hard_limit"])
    assert (v["hard_limit"], v["soft_limit"]) == (str(200 * KiB), str(150 * KiB))
    assert r["hard_limit"]["set_by"] == r["soft_limit"]["set_by"] == "cgctl"


def test_blkiotune(tools):
    t = tools
    r = t.virsh_reports("blkiotune")
    if "weight" not in r or r["weight"] in ("0", ""):
        pytest.skip(f"no proportional block-IO weight here (virsh blkiotune: {r})")
    t.virsh_set("blkiotune", "--weight", "500", "--live")
    r = t.show()
    seen("virsh weight=500", show=r["weight"])
    assert (r["weight"]["live"], r["weight"]["set_by"]) == ("500", "elsewhere")
    assert r["io_weight"]["live"] == "500"              # BFQ's file: the same number
    t.cgctl_set("weight=300")
    v, r = t.virsh_reports("blkiotune"), t.show()
    seen("cgctl weight=300", virsh=v, show=r["weight"])
    assert v["weight"] == "300" and r["weight"]["set_by"] == "cgctl"
    t.cgctl_set("io_weight=700")
    v, r = t.virsh_reports("blkiotune"), t.show()
    seen("cgctl io_weight=700", virsh=v, show=r["io_weight"])
    assert v["weight"] == "700" and r["io_weight"]["kernel"]["raw"] == "700"

"""What each tool shows after the other's change, on a systemd cgroup v2 host (libvirt 9.0,
systemd 252, kernel 6.1): `virsh schedinfo/memtune/blkiotune` after a `cgctl set`, and
`cgctl show` (its live value, the kernel's own file and value, who set it) after a virsh change.

Each step records what it saw in the results' facts.txt (`agreement: ...` lines: the files that
changed under the guest's scope, what virsh reports, cgctl show's row); docs/cgroup-v1-v2.md's
table "What each tool shows after the other's change, as measured" is taken from them. The
asserts hold the relations found: libvirt writes `<shares>` and blkio weights verbatim into the
v2 files, cgctl converts `cpu_shares`/`weight` and writes the native ones as given, and a value
cgctl did not write to this run is shown as set elsewhere."""
import json
import os

import pytest

from .hostkit import cgctl, cgctl_json, read, snapshot, virsh

FACTS = "/run/hostlane/facts.txt"
KiB = 1024


@pytest.fixture(scope="module")
def guest(make_guest):
    return make_guest("hl-agree").start()


def fields(out: str) -> dict:
    return {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in out.splitlines()
                                              if ":" in ln)}


def show_row(g, param: str) -> dict:
    row = {r["param"]: r for r in cgctl_json("show", g.name)["params"]}[param]
    return {k: row.get(k) for k in ("live", "config", "kernel", "set_by")}


class Step:
    """One tool's change: the setting files that moved under the scope, and what each tool
    reports afterwards; written to facts.txt whatever the asserts say."""

    def __init__(self, g, family: str, params):
        self.g, self.family, self.params = g, family, params

    def __call__(self, who: str, action, *args) -> dict:
        before = snapshot(self.g.scope)
        res = action(*args)
        after = snapshot(self.g.scope)
        seen = {"step": f"{who}: {' '.join(args)}",
                "exit": getattr(res, "returncode", None),
                "error": (getattr(res, "stderr", "") or "").strip()[:200] or None,
                "files": {k: v for k, v in after.items() if before.get(k) != v},
                "virsh": fields(virsh(self.family, self.g.name, check=False).stdout),
                "cgctl": {p: show_row(self.g, p) for p in self.params}}
        os.makedirs(os.path.dirname(FACTS), exist_ok=True)
        with open(FACTS, "a") as f:
            f.write("agreement: " + json.dumps(seen, sort_keys=True) + "\n")
        return seen


def _virsh(g):
    return lambda *a: virsh(a[0], g.name, *a[1:], check=False)


def _cgctl(g):
    return lambda *a: cgctl("set", g.name, *a, check=False)


def test_schedinfo(guest):
    step = Step(guest, "schedinfo", ("cpu_shares", "cpu_weight"))
    scope_weight = lambda: read(os.path.join(guest.scope, "cpu.weight"))
    # virsh first: nothing of cgctl's in this run of the guest yet
    s = step("virsh", _virsh(guest), "schedinfo", "--set", "cpu_shares=1024", "--live")
    assert s["exit"] == 0, s
    assert s["virsh"]["cpu_shares"] == "1024", s               # libvirt: verbatim
    assert s["cgctl"]["cpu_shares"]["set_by"] == "elsewhere", s
    assert s["cgctl"]["cpu_weight"]["live"] == "1024", s      # the native name: as virsh says
    s = step("cgctl", _cgctl(guest), "cpu_shares=2048", "--live")
    assert scope_weight() == "174", s                           # runc/crun's formula
    assert s["cgctl"]["cpu_shares"]["set_by"] == "cgctl", s
    assert s["cgctl"]["cpu_shares"]["kernel"]["raw"] == "174", s
    s = step("cgctl", _cgctl(guest), "cpu_weight=300", "--live")
    assert scope_weight() == "300", s
    assert s["virsh"]["cpu_shares"] == "300", s                 # the same number in both tools


def test_memtune(guest):
    step = Step(guest, "memtune", ("hard_limit", "soft_limit", "memory_low", "min_guarantee"))
    s = step("virsh", _virsh(guest), "memtune", "--hard-limit", str(300 * KiB), "--live")
    assert s["exit"] == 0, s
    assert s["cgctl"]["hard_limit"]["live"] == "300M", s
    assert s["cgctl"]["hard_limit"]["set_by"] == "elsewhere", s
    s = step("cgctl", _cgctl(guest), "hard_limit=200M", "soft_limit=150M", "memory_low=20M",
             "--live")
    assert (s["virsh"]["hard_limit"], s["virsh"]["soft_limit"]) == \
        (str(200 * KiB), str(150 * KiB)), s
    assert s["cgctl"]["soft_limit"]["kernel"]["file"] == "memory.high", s
    assert s["cgctl"]["hard_limit"]["set_by"] == "cgctl", s


def test_blkiotune(guest):
    step = Step(guest, "blkiotune", ("weight", "io_weight"))
    s = step("virsh", _virsh(guest), "blkiotune", "--weight", "500", "--live")
    if s["exit"] != 0:
        pytest.skip(f"libvirt's blkiotune on this host: {s['error']}")
    assert s["virsh"]["weight"] == "500", s
    assert s["cgctl"]["io_weight"]["live"] == "500", s       # verbatim into the v2 file
    assert s["cgctl"]["weight"]["set_by"] == "elsewhere", s
    s = step("cgctl", _cgctl(guest), "io_weight=300", "--live")
    assert s["virsh"]["weight"] == "300", s
    assert s["cgctl"]["io_weight"]["set_by"] == "cgctl", s
    s = step("cgctl", _cgctl(guest), "weight=500", "--live")
    assert s["cgctl"]["weight"]["set_by"] == "cgctl", s
    assert s["virsh"]["weight"] == s["cgctl"]["weight"]["kernel"]["raw"].split()[-1], s

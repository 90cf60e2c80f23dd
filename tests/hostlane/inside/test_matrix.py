"""The seed state-transition matrices (docs/design.md#change-modes) on a systemd host: dynamic
(--live), static (--config) and permanent (--perm), each start -> change -> stop -> start ->
delete, for a QEMU guest (with a real disk) and an LXC container, for memory, CPU and block IO
(weight and a per-device throttle on the loop device that is the QEMU guest's disk).
The table is the v1 lane's (tests/seedcases.py); here the values are read back from the v2 files
of the groups libvirt used: limits in the scope's delegated ``libvirt/``, weights on the scope.

One guest per (driver, mode) carries the three families in one `cgctl set` (a set is all or
nothing, and the modes act per set): 6 guests, 12 starts, instead of 18 and 36. "start" is
`virsh start` alone: the hook (installed per README.md) and the service apply the journal."""
import os

import pytest

from tests.seedcases import (LIVE_AFTER_CHANGE, LIVE_AFTER_RESTART, SEED_FAMILIES, SEED_MODE_NAME,
                             SEED_MODES)

from .hostkit import cgctl, cgctl_json, majmin, read, wait_for


def live(guest, family, which):
    """(what the kernel file holds, what the table says it must hold for X or Y)."""
    where, files = SEED_FAMILIES[family].v2
    group = guest.scope if where == "scope" else guest.cgroup
    for fname, x, y in files:
        path = os.path.join(group, fname)
        if os.path.exists(path):
            want = {"x": x, "y": y}[which].format(dev=guest.io_dev, majmin=majmin(guest.io_dev))
            return (read(path).splitlines() or [""])[0], want
    raise AssertionError(f"none of {[f for f, _, _ in files]} in {group}")


def holds(guest, which) -> bool:
    return all(got == want for got, want in (live(guest, fam, which) for fam in SEED_FAMILIES))


def check_live(guest, which):
    got = {fam: live(guest, fam, which) for fam in SEED_FAMILIES}
    assert {f: g for f, (g, _) in got.items()} == {f: w for f, (_, w) in got.items()}, (which, guest.scope)


def show(guest):
    return {r["param"]: r for r in cgctl_json("show", guest.name)["params"]}


def set_all(guest, which, *flag):
    return cgctl_json("set", guest.name, *(f"{f.param}={getattr(f, which).format(dev=guest.io_dev)}"
                                           for f in SEED_FAMILIES.values()), *flag)


@pytest.mark.parametrize("driver", ["qemu", "lxc"])
@pytest.mark.parametrize("case,flag", SEED_MODES)
def test_seed_matrix(make_guest, loop_disk, driver, case, flag):
    g = make_guest(f"hl-m{case.lower()}-{driver}", driver, disk=loop_disk if driver == "qemu" else None)
    g.io_dev = loop_disk   # the throttles' device: the QEMU guest's disk; for LXC a host disk
    params = [f.param for f in SEED_FAMILIES.values()]
    # the initial config X, set while the guest is stopped (--current means --config)
    assert set_all(g, "x")["mode"] == "config"
    config_x = {p: show(g)[p]["config"] for p in params}
    assert None not in config_x.values(), config_x

    # 1. start: live = X, journal = X
    g.start()
    wait_for(lambda: holds(g, "x"), "X in force at start", 30)   # the hook: at once
    check_live(g, "x")

    # 2. change X -> Y in the case's mode
    assert set_all(g, "y", flag)["mode"] == SEED_MODE_NAME[case]
    check_live(g, LIVE_AFTER_CHANGE[case])
    rows = show(g)
    config = {p: rows[p]["config"] for p in params}
    if case == "A":
        assert config == config_x
    else:
        assert all(config[p] != config_x[p] for p in params), (config, config_x)
    # live and config disagree after A and B, agree after C
    assert {p: rows[p]["differs"] for p in params} == {p: case != "C" for p in params}, rows

    # 3. stop: the journal is untouched, --live is refused
    g.destroy()
    assert {p: r["config"] for p, r in show(g).items() if p in params} == config
    r = cgctl("set", g.name, "hard_limit=768M", "--live", check=False)
    assert r.returncode == 1 and "not running" in r.stderr, r.stderr

    # 4. start again: A is back to X, B and C start with Y
    g.start()
    wait_for(lambda: holds(g, LIVE_AFTER_RESTART[case]), "the config at the next start", 30)
    check_live(g, LIVE_AFTER_RESTART[case])
    assert not any(r["differs"] for p, r in show(g).items() if p in params)

    # 5. delete (stop, undefine): the service drops the config, the history stays, marked deleted
    g.destroy()
    g.virsh("undefine", g.name)

    def all_deleted():
        hist = cgctl_json("history", g.uuid)
        return hist and all(h["deleted"] for h in hist)
    wait_for(all_deleted, "the service marks the guest's history deleted", 30, every=1)
    assert cgctl("show", g.name, check=False).returncode != 0

"""hostinfo against recorded host snapshots (tests/data/hosts/<host>/) and edge cases."""

import json
import os
from pathlib import Path

import pytest

from cgctl import errors
from cgctl.cgroup import hierarchy

HOSTS = Path(__file__).resolve().parent.parent / "data" / "hosts"
HOST_NAMES = sorted(p.name for p in HOSTS.iterdir() if (p / "expected.json").exists())


def load(name: str) -> hierarchy.Host:
    d = HOSTS / name
    cgroups = (d / "cgroups").read_text() if (d / "cgroups").exists() else None
    v2 = json.loads((d / "v2_controllers").read_text())
    return hierarchy.parse((d / "mounts").read_text(), cgroups, v2.get, prefer_root="/sys/fs/cgroup")


def test_the_required_snapshots_exist():
    for name in ("this-machine", "fedora-v2-systemd", "rhel7-v1-systemd", "ubuntu-hybrid",
                 "hybrid-v2-owns-some", "no-cgroups", "container-v2"):
        assert name in HOST_NAMES


@pytest.mark.parametrize("name", HOST_NAMES)
def test_snapshot_matches_expected(name):
    expected = json.loads((HOSTS / name / "expected.json").read_text())
    assert load(name).to_dict() == expected


@pytest.mark.parametrize("name", HOST_NAMES)
def test_owner_is_consistent_with_to_dict(name):
    host = load(name)
    for controller, version in host.to_dict()["owners"].items():
        h = host.owner(controller)
        assert h.version == version and controller in h.controllers
        assert host.has(controller)


def test_this_machine_routes_like_design_section_8():
    host = load("this-machine")
    assert host.mode == "hybrid"
    assert host.owner("memory").mountpoint == "/sys/fs/cgroup/memory"
    assert host.owner("cpu").mountpoint == "/sys/fs/cgroup/cpu"
    assert host.owner("blkio").mountpoint == "/sys/fs/cgroup/blkio"
    assert host.v2.mountpoint == "/sys/fs/cgroup/unified"
    assert not host.has("net_cls")          # enabled, but mounted nowhere


def test_co_mounted_controllers_share_one_hierarchy():
    host = load("rhel7-v1-systemd")
    assert host.owner("cpu") is host.owner("cpuacct")
    assert host.owner("cpu").mountpoint == "/sys/fs/cgroup/cpu,cpuacct"
    assert host.owner("net_prio").controllers == frozenset({"net_cls", "net_prio"})
    # seclabel, xattr, release_agent=, name= are options, not controllers
    for h in host.hierarchies:
        assert not h.controllers & {"seclabel", "xattr", "rw", "relatime", "nosuid", "systemd"}


def test_named_hierarchy_owns_nothing():
    host = load("rhel7-v1-systemd")
    systemd = [h for h in host.hierarchies if h.name == "systemd"]
    assert len(systemd) == 1 and systemd[0].controllers == frozenset()


def test_blkio_and_io_are_one_controller():
    v2 = load("fedora-v2-systemd")
    assert v2.owner("blkio") is v2.owner("io")
    v1 = load("rhel7-v1-systemd")
    assert v1.owner("io").mountpoint == "/sys/fs/cgroup/blkio"


def test_hybrid_with_empty_unified_is_visible():
    d = load("ubuntu-hybrid").to_dict()
    assert d["mode"] == "hybrid" and d["v2_owns"] == []
    assert any(h["version"] == 2 and h["controllers"] == [] for h in d["hierarchies"])


def test_hybrid_routes_moved_controllers_to_v2():
    host = load("hybrid-v2-owns-some")
    assert host.owner("memory").version == 2
    assert host.owner("blkio").version == 2
    assert host.owner("cpu").version == 1


def test_unmounted_controller_is_unsupported():
    host = load("no-cgroups")
    assert host.mode == "none" and not host.has("memory")
    with pytest.raises(errors.Unsupported, match="controller memory is not mounted on this host"):
        host.owner("memory")


def test_disabled_controller_is_not_enabled():
    assert "memory" not in load("no-cgroups").enabled


def test_container_v2_is_read_only_and_found_by_fstype():
    host = load("container-v2")
    (h,) = host.hierarchies
    assert h.version == 2 and h.mountpoint == "/sys/fs/cgroup" and h.read_only


MINIMAL = "proc /proc proc rw 0 0\n"


def test_escaped_mountpoint_is_unescaped():
    text = MINIMAL + "cgroup /mnt/my\\040cg\\134x cgroup rw,relatime,memory 0 0\n"
    host = hierarchy.parse(text, None, lambda mp: None)
    assert host.owner("memory").mountpoint == "/mnt/my cg\\x"
    assert host.mode == "v1" and host.enabled == {"memory"} and not host.enabled_known


def test_bind_mounts_keep_the_one_under_sys_fs_cgroup():
    text = (MINIMAL
            + "cgroup /var/lib/kubelet/pods/x/cg cgroup rw,memory 0 0\n"
            + "cgroup /sys/fs/cgroup/memory/extra cgroup rw,memory 0 0\n"
            + "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n")
    host = hierarchy.parse(text, None, lambda mp: None, prefer_root="/sys/fs/cgroup")
    assert [h.mountpoint for h in host.hierarchies] == ["/sys/fs/cgroup/memory"]


def test_first_wins_among_equal_candidates():
    text = MINIMAL + "cgroup /a/mem cgroup rw,memory 0 0\ncgroup /b/mem cgroup rw,memory 0 0\n"
    host = hierarchy.parse(text, None, lambda mp: None, prefer_root="/sys/fs/cgroup")
    assert host.owner("memory").mountpoint == "/a/mem"


def test_v1_wins_when_both_claim_a_controller():
    text = (MINIMAL + "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
            "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    host = hierarchy.parse(text, None, lambda mp: "memory pids\n")
    assert host.owner("memory").version == 1
    assert host.owner("pids").version == 2
    assert host.v2.controllers == {"pids"}


def test_unreadable_cgroup_controllers_owns_nothing():
    text = MINIMAL + "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"
    host = hierarchy.parse(text, None, lambda mp: None)
    assert host.mode == "v2" and host.v2.controllers == frozenset()


def test_named_v1_plus_cgroup2_is_v2():
    # systemd inside a container on a v2 host may mount name=systemd; controllers are all on v2
    text = (MINIMAL + "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"
            "cgroup /sys/fs/cgroup/systemd cgroup rw,none,name=systemd 0 0\n")
    host = hierarchy.parse(text, None, lambda mp: "cpu memory\n")
    assert host.mode == "v2"
    assert host.owner("memory").version == 2


def test_only_named_v1_is_v1():
    text = MINIMAL + "cgroup /sys/fs/cgroup/systemd cgroup rw,none,name=systemd 0 0\n"
    assert hierarchy.parse(text, None, lambda mp: None).mode == "v1"


def test_proc_cgroups_parsing_skips_junk():
    text = ("#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
            "cpu\t1\t3\t1\nmemory\t0\t1\t0\n\nbroken line\n")
    assert hierarchy.parse_proc_cgroups(text) == {"cpu"}
    assert hierarchy.parse_proc_cgroups(None) is None


def test_detect_reads_a_proc_tree(tmp_path):
    d = HOSTS / "ubuntu-hybrid"
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    cg = tmp_path / "cg"
    (cg / "unified").mkdir(parents=True)
    (cg / "unified" / "cgroup.controllers").write_text("")
    mounts = (d / "mounts").read_text().replace("/sys/fs/cgroup", str(cg))
    (proc / "self" / "mounts").write_text(mounts)
    (proc / "cgroups").write_text((d / "cgroups").read_text())
    host = hierarchy.detect(str(proc))
    assert host.mode == "hybrid"
    assert host.v2.mountpoint == str(cg / "unified") and host.v2.controllers == frozenset()
    assert host.owner("memory").mountpoint == str(cg / "memory")


def test_detect_falls_back_to_proc_mounts_and_missing_proc_cgroups(tmp_path):
    (tmp_path / "mounts").write_text(MINIMAL + "cgroup /x/memory cgroup rw,memory 0 0\n")
    host = hierarchy.detect(str(tmp_path))
    assert host.owner("memory").mountpoint == "/x/memory"
    assert host.enabled_known is False


def test_detect_without_mounts_is_a_clear_error(tmp_path):
    with pytest.raises(errors.Unsupported, match="cannot read the mount table"):
        hierarchy.detect(str(tmp_path))


@pytest.mark.skipif(not os.path.exists("/proc/self/mounts"), reason="needs a real /proc")
def test_detect_on_this_machine_agrees_with_the_snapshot():
    live = hierarchy.detect("/proc")
    recorded = load("this-machine")
    if not any(h.mountpoint == "/sys/fs/cgroup/memory" for h in live.hierarchies):
        pytest.skip("not the development machine of docs/design.md#the-development-machine")
    assert live.mode == recorded.mode
    assert live.owners() == recorded.owners()

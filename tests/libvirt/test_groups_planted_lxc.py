"""A real LXC guest with a ``libvirt`` directory planted in its machine group: `cgctl set`
still writes the machine group (docs/reliability.md, "Writes go where libvirt put the guest").

Root inside a container whose cgroupfs view is writable can ``mkdir libvirt`` there; the
directory is made here from outside, which is the same directory. cgctl used to take any
existing ``<machine>/libvirt`` for libvirt's own group and so limited an empty child.
"""

from __future__ import annotations

import os

from tests.clikit import cgctl

MiB = 2**20


def _machine_dir(pid: int, ctrl: str) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if ctrl in ctrls.split(","):
                return f"/sys/fs/cgroup/{ctrl}{path}"   # v1: cpu is a link to cpu,cpuacct
    raise AssertionError(f"no {ctrl} group")


def _read(path):
    with open(path) as f:
        return f.read().strip()


def test_set_writes_the_lxc_machine_group_not_a_planted_libvirt_dir(lxc_guest, tmp_path):
    guest, journal = lxc_guest, tmp_path / "j.db"
    mem = _machine_dir(guest.pid, "memory")
    cpu = _machine_dir(guest.pid, "cpu")
    assert not mem.rstrip("/").endswith("/libvirt")   # this host: no systemd, no nested level
    planted = [os.path.join(mem, "libvirt"), os.path.join(cpu, "libvirt")]
    try:
        for d in planted:
            os.mkdir(d)
        before = _read(os.path.join(planted[0], "memory.limit_in_bytes"))
        cgctl(journal, "set", guest.name, "hard_limit=300M", "global_quota=50000", "--live")
        assert _read(os.path.join(mem, "memory.limit_in_bytes")) == str(300 * MiB)
        assert _read(os.path.join(cpu, "cpu.cfs_quota_us")) == "50000"
        assert _read(os.path.join(planted[0], "memory.limit_in_bytes")) == before
        assert _read(os.path.join(planted[1], "cpu.cfs_quota_us")) == "-1"
    finally:
        for d in planted:   # before the guest goes: libvirt cannot remove a group with a child
            if os.path.isdir(d):
                os.rmdir(d)

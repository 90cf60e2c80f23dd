"""Block IO on a systemd host: a QEMU guest with a real disk (a loop device of the host as its
virtio disk) and an LXC container. The per-device throttles land in the scope's delegated
``libvirt/io.max`` keyed by the loop device's MAJ:MIN, the weight on the scope itself (told to
systemd as IOWeight), and both survive `systemctl daemon-reload`. The modes (--live, --config,
--perm across a restart) of a throttle and the weight are test_matrix.py's."""
import os

from .hostkit import cgctl, io_max, majmin, note, read, systemctl, unit_props, weight_file

THROTTLES = {"device_read_bytes_sec": ("rbps", "1M", "1048576"),
             "device_write_bytes_sec": ("wbps", "2M", "2097152"),
             "device_read_iops_sec": ("riops", "300", "300"),
             "device_write_iops_sec": ("wiops", "200", "200")}


def expected_weight(fname: str, weight: int) -> str:
    # docs/parameters.md: io.bfq.weight takes the blkio weight as given, io.weight converted
    return str(weight) if fname == "io.bfq.weight" else f"default {1 + (weight - 10) * 9999 // 990}"


def set_throttles(g, dev, *flags):
    cgctl("set", g.name, *(f"{p}={dev},{v}" for p, (_, v, _) in THROTTLES.items()), *flags)
    return {k: n for (k, _, n) in THROTTLES.values()}


def test_qemu_disk_throttles_and_weight(make_guest, loop_disk):
    g = make_guest("hl-io", disk=loop_disk).start()
    assert loop_disk in g.virsh("domblklist", g.name).stdout
    want = set_throttles(g, loop_disk, "--live")
    cgctl("set", g.name, "weight=500", "--live")
    assert io_max(g.cgroup, loop_disk) == want, read(os.path.join(g.cgroup, "io.max"))
    fname, content = weight_file(g.scope)
    assert content == expected_weight(fname, 500), (fname, content)
    told = unit_props(g.scope_unit, "IOWeight", "IODeviceWeight", "IOReadBandwidthMax")
    note(f"IO on {loop_disk} ({majmin(loop_disk)}, scheduler "
         f"{read('/sys/block/%s/queue/scheduler' % os.path.basename(loop_disk))}): libvirt/io.max "
         f"{read(os.path.join(g.cgroup, 'io.max'))!r}, the scope's io.max {read(os.path.join(g.scope, 'io.max'))!r}, "
         f"the scope's {fname} {content!r}; systemd: {told}; virsh blkiotune: "
         f"{' '.join(g.virsh('blkiotune', g.name).stdout.split())}")
    if fname == "io.weight":   # cgctl told systemd (docs/operations.md, "Weights through systemd")
        assert told["IOWeight"] == content.split()[1], told

    systemctl("daemon-reload")
    assert io_max(g.cgroup, loop_disk) == want
    after = weight_file(g.scope)
    note(f"after daemon-reload: the scope's {after[0]} {after[1]!r}")
    if fname == "io.weight":
        assert after == (fname, content)

    # 0 clears a throttle: the key goes back to max; all four: the line disappears
    cgctl("set", g.name, f"device_read_bytes_sec={loop_disk},0", "--live")
    assert io_max(g.cgroup, loop_disk) == dict(want, rbps="max")
    cgctl("set", g.name, *(f"{p}={loop_disk},0" for p in THROTTLES), "--live")
    assert io_max(g.cgroup, loop_disk) == {}


def test_lxc_throttles_and_weight(make_guest, loop_disk):
    g = make_guest("hl-io-ct", "lxc").start()
    want = set_throttles(g, loop_disk, "--live")
    cgctl("set", g.name, "weight=300", "--live")
    assert io_max(g.cgroup, loop_disk) == want, read(os.path.join(g.cgroup, "io.max"))
    fname, content = weight_file(g.scope)
    assert content == expected_weight(fname, 300), (fname, content)
    systemctl("daemon-reload")
    assert io_max(g.cgroup, loop_disk) == want
    if fname == "io.weight":
        assert weight_file(g.scope) == (fname, content)
        assert unit_props(g.scope_unit, "IOWeight")["IOWeight"] == content.split()[1]

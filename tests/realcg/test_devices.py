"""Per-device block-IO settings against real loop devices and the real v1 blkio files.

Every loop device is made here from a file in tmp_path and detached in a finally;
a loop device whose scheduler a test switches to bfq gets its old one back.
"""

from __future__ import annotations

import errno
import os
import queue
import struct
import subprocess
import time
import uuid as uuidlib

import pytest

from cgctl.host import devices, udevwatch
from cgctl.core import live
from cgctl.model import params as P
from cgctl.core.controller import Controller
from cgctl.core.reading import _show_row
from cgctl.errors import Unsupported, UsageError
from cgctl.cgroup.placement import groups_for_pid
from cgctl.host.runfiles import Guest

pytestmark = pytest.mark.realcg

MiB = 2**20


def _need_losetup():
    if subprocess.run(["sh", "-c", "command -v losetup"], capture_output=True).returncode:
        pytest.skip("losetup is not installed")


class Loops:
    """Loop devices this test attached; ``cleanup`` detaches every one still attached
    to one of our files and puts back schedulers we changed."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.files = []
        self.schedulers = {}   # /sys/block/loopN/queue/scheduler -> the one it had

    def image(self, name="disk.img", size=32 * MiB, mbr=False):
        path = str(self.dir / name)
        with open(path, "wb") as f:
            f.truncate(size)
            if mbr:   # one Linux partition from sector 2048 to the end (no sfdisk here)
                entry = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", 2048,
                                    size // 512 - 2048)
                f.seek(446)
                f.write(entry)
                f.seek(510)
                f.write(b"\x55\xaa")
        self.files.append(path)
        return path

    def attach(self, path, partscan=False):
        args = ["losetup", "--find", "--show"] + (["-P"] if partscan else []) + [path]
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()

    def detach(self, dev):
        subprocess.run(["losetup", "-d", dev], check=True)

    def set_scheduler(self, dev, name):
        path = f"/sys/block/{os.path.basename(dev)}/queue/scheduler"
        self.schedulers.setdefault(path, devices.io_scheduler(_majmin(dev))[0])
        with open(path, "w") as f:
            f.write(name)

    def cleanup(self):
        for path, old in self.schedulers.items():
            try:
                with open(path, "w") as f:
                    f.write(old)
            except OSError:
                pass
        for f in self.files:
            out = subprocess.run(["losetup", "-j", f], capture_output=True, text=True).stdout
            for line in out.splitlines():
                subprocess.run(["losetup", "-d", line.split(":", 1)[0]])


@pytest.fixture
def loops(tmp_path):
    _need_losetup()
    k = Loops(tmp_path)
    try:
        yield k
    finally:
        k.cleanup()


@pytest.fixture
def blkio_v1(scratch_guest):
    if scratch_guest.host.owner("io").version != 1:
        pytest.skip("blkio is not on cgroup v1 here")
    return scratch_guest


def _majmin(dev):
    st = os.stat(dev)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def groups(g):
    return groups_for_pid(g.proc.pid, g.host, guest=g.name, driver="qemu")


def set_dev(router, g, *items):
    """What `cgctl set --live` does for per-device settings: names → numbers now, then write."""
    settings = P.parse_assignments(items)
    devnums = {s.device: devices.resolve(s.device, param=s.param.name)
               for s in settings.values()}
    return live.set_live(router, groups(g), settings, devnums)


def entries(g, fname):
    return g.read("io", fname).splitlines()


# -- naming ------------------------------------------------------------------------

def test_names_resolve_to_the_same_disk(loops, tmp_path):
    dev = loops.attach(loops.image())
    mm = _majmin(dev)
    link = tmp_path / "by-test-link"
    os.symlink(dev, link)
    base = os.path.basename(dev)
    assert devices.resolve(dev) == mm
    assert devices.resolve(str(link)) == mm           # what /dev/disk/by-id/... is
    assert devices.resolve(base) == mm                # bare kernel name
    d = devices.lookup(str(link))
    assert (d.name, d.disk, d.partition) == (str(link), base, None)
    for sub in ("by-id", "by-path", "by-uuid"):       # only where udevd made links
        top = f"/dev/disk/{sub}"
        for n in (os.listdir(top) if os.path.isdir(top) else []):
            target = os.path.realpath(os.path.join(top, n))
            if os.path.basename(target) == base:
                assert devices.resolve(os.path.join(top, n)) == mm


def test_partition_resolves_to_whole_disk(loops, monkeypatch):
    dev = loops.attach(loops.image(mbr=True), partscan=True)
    part = dev + "p1"
    time.sleep(0.1)
    if not os.path.exists(part):
        # this kernel parses no partition tables (CONFIG_MSDOS_PARTITION and
        # CONFIG_EFI_PARTITION off): add the partition by hand (BLKPG), as partx does
        if subprocess.run(["addpart", dev, "1", "2048", "4096"]).returncode:
            pytest.skip("no partition table parser and no addpart here")
        for _ in range(50):
            if os.path.exists(part):
                break
            time.sleep(0.05)
    assert os.path.exists(part)
    d = devices.lookup(part)
    assert d.majmin == _majmin(dev) != _majmin(part)
    assert (d.disk, d.partition) == (os.path.basename(dev), os.path.basename(part))
    monkeypatch.setattr(devices, "pyudev", None)      # the fallback agrees
    assert devices.resolve(part) == _majmin(dev)


def test_guest_disk_target(loops, tmp_path):
    dev = loops.attach(loops.image())
    xml = (f"<domain><name>g</name><devices>"
           f"<disk type='block'><source dev='{dev}'/><target dev='vdb'/></disk>"
           f"<disk type='file'><source file='{tmp_path}/x.qcow2'/><target dev='vdc'/></disk>"
           f"</devices></domain>")
    assert devices.resolve("vdb", domain_xml=xml) == _majmin(dev)
    with pytest.raises(UsageError) as ei:
        devices.resolve("vdc", guest="g", domain_xml=xml)
    assert ("disk vdc of guest g is a file" in str(ei.value)
            and "per-device limits need a block device" in str(ei.value))


def test_errors_name_the_device(tmp_path):
    f = tmp_path / "plain"
    f.write_text("x")
    with pytest.raises(UsageError, match="not a block device .a regular file") as ei:
        devices.resolve(str(f), param="device_read_bytes_sec")
    assert ei.value.errno == errno.ENOTBLK
    with pytest.raises(UsageError, match="no such device") as ei:
        devices.resolve(str(tmp_path / "missing"))
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(UsageError, match="not a block device .a directory"):
        devices.resolve(str(tmp_path))
    with pytest.raises(UsageError, match="character device"):
        devices.resolve("/dev/null")
    with pytest.raises(UsageError, match="from /"):
        devices.resolve("dev/vda")
    with pytest.raises(UsageError, match="no such device"):
        devices.resolve("nosuchdisk0")


# -- throttles -----------------------------------------------------------------------

def test_throttles_written_read_back_and_cleared(blkio_v1, router, loops, tmp_path):
    g = blkio_v1
    dev = loops.attach(loops.image())
    mm = _majmin(dev)
    link = tmp_path / "link"
    os.symlink(dev, link)
    changes, _ = set_dev(router, g, f"device_read_bytes_sec={dev},1M",
                         f"device_write_bytes_sec={link},2M",
                         f"device_read_iops_sec={os.path.basename(dev)},300",
                         f"device_write_iops_sec={dev},400")
    assert f"{mm} {MiB}" in entries(g, "blkio.throttle.read_bps_device")
    assert f"{mm} {2 * MiB}" in entries(g, "blkio.throttle.write_bps_device")
    assert f"{mm} 300" in entries(g, "blkio.throttle.read_iops_device")
    assert f"{mm} 400" in entries(g, "blkio.throttle.write_iops_device")
    # the change keeps the operator's names
    assert {c.device for c in changes} == {dev, str(link), os.path.basename(dev)}
    assert live.read_value(router, groups(g), P.BY_NAME["device_read_bytes_sec"]) == {mm: MiB}
    # 0 and unlimited both remove the device's entry (v1 writes "MAJ:MIN 0")
    set_dev(router, g, f"device_read_bytes_sec={dev},0", f"device_write_bytes_sec={link},unlimited")
    assert not any(line.startswith(mm + " ") for line in
                   entries(g, "blkio.throttle.read_bps_device")
                   + entries(g, "blkio.throttle.write_bps_device"))
    assert f"{mm} 300" in entries(g, "blkio.throttle.read_iops_device")


def test_bfq_weight_needs_bfq_and_clears_with_default(blkio_v1, router, loops):
    g = blkio_v1
    dev = loops.attach(loops.image())
    mm, name = _majmin(dev), os.path.basename(dev)
    if not os.path.exists(g.file("io", "blkio.bfq.weight_device")):
        pytest.skip("no BFQ here")
    cur, avail = devices.io_scheduler(mm)
    if cur == "bfq":
        pytest.skip("loop devices already use bfq here")
    with pytest.raises(Unsupported) as ei:
        set_dev(router, g, f"device_read_bytes_sec={dev},1M", f"device_weight={dev},300")
    msg = str(ei.value)
    assert ei.value.errno == errno.EOPNOTSUPP
    assert f"device {dev} uses {cur}; per-device weights need bfq" in msg
    assert f"echo bfq > /sys/block/{name}/queue/scheduler" in msg
    assert devices.io_scheduler(mm)[0] == cur                   # cgctl changed nothing
    assert entries(g, "blkio.throttle.read_bps_device") == []   # nothing of the set written
    if "bfq" not in avail:
        return
    loops.set_scheduler(dev, "bfq")        # the test's own device, put back in cleanup
    set_dev(router, g, f"device_weight={dev},300")
    assert f"{mm} 300" in entries(g, "blkio.bfq.weight_device")
    assert live.read_value(router, groups(g), P.BY_NAME["device_weight"]) == {mm: 300}
    set_dev(router, g, f"device_weight={dev},0")   # written as "MAJ:MIN default": bfq says ERANGE to 0
    assert not any(line.startswith(mm) for line in entries(g, "blkio.bfq.weight_device"))


# -- renumbering -------------------------------------------------------------------

def _guest(g):
    return Guest(g.name, str(uuidlib.uuid4()), "qemu", "qemu:///system", True, True, g.proc.pid)


def _controller(host, tmp_path):
    return Controller(journal_path=str(tmp_path / "journal.db"), host=host,
                      run_dir=str(tmp_path / "run"))


def _configure(ctl, guest, items):
    with ctl.journal().transaction() as tx:
        tx.set_config(guest.uuid, guest.name, guest.driver,
                      {s.key: s.text() for s in P.parse_assignments(items).values()})


def test_throttle_follows_a_renumbered_device(blkio_v1, real_host, loops, tmp_path):
    g = blkio_v1
    guest, ctl = _guest(g), _controller(real_host, tmp_path)
    img = loops.image()
    link = str(tmp_path / "by-id-disk")           # the name udev would keep pointing right
    first = loops.attach(img)
    os.symlink(first, link)
    _configure(ctl, guest, [f"device_write_bytes_sec={link},2M", "hard_limit=1G"])
    out = ctl.apply_devices(guest)
    assert not out.errors and [c.param for c in out.changes] == ["device_write_bytes_sec"]
    old = _majmin(first)
    assert entries(g, "blkio.throttle.write_bps_device") == [f"{old} {2 * MiB}"]
    # detach; a filler takes the old slot, so the disk comes back with other numbers
    loops.detach(first)
    filler = loops.attach(loops.image("filler.img"))
    assert filler == first
    again = loops.attach(img)
    new = _majmin(again)
    assert new != old
    os.remove(link)
    os.symlink(again, link)
    out = ctl.apply_devices(guest)
    assert not out.errors
    # the limit follows the name; the old numbers (now the filler's) lose what cgctl put there
    assert entries(g, "blkio.throttle.write_bps_device") == [f"{new} {2 * MiB}"]
    assert {(c.device, c.old, c.new) for c in out.changes} == {
        (link, None, "2M"), (f"stale:{old}", "2M", "0B")}
    assert ctl.journal().get_config(guest.uuid)[("device_write_bytes_sec", link)] == "2M"
    # hard_limit was not part of a device re-apply; no instance was recorded
    assert g.read("memory", "memory.limit_in_bytes") != str(2**30)
    assert ctl.journal().get_instance(guest.uuid) is None
    # show: the operator's name beside the numbers
    lv = live.read_all(ctl.router, groups(g))["device_write_bytes_sec"]
    row = _show_row(P.BY_NAME["device_write_bytes_sec"], lv, {link: "2M"}, True,
                    names=ctl.device_names(guest, [link]))
    assert row["live"] == f"{link} ({new})=2M" and row["differs"] is False
    # named by the config: the operator's name, no kernel node beside it
    assert row["devices"] == [{"device": link, "majmin": new, "node": None, "live": "2M", "config": "2M",
                               "live_number": 2 * MiB, "config_number": 2 * MiB,
                               "differs": False}]
    ctl.close()


# -- udev ------------------------------------------------------------------------------

def test_udev_kernel_events_reapply(blkio_v1, real_host, loops, tmp_path):
    """Kernel uevents reach a pyudev monitor without udevd; one callback per burst."""
    g = blkio_v1
    guest, ctl = _guest(g), _controller(real_host, tmp_path)
    img = loops.image()
    link = str(tmp_path / "disk-link")
    events = queue.Queue()
    watcher = udevwatch.DeviceWatcher(lambda node, mm, action: events.put((node, mm, action)),
                                      source="kernel", settle=0.3)
    watcher.start()
    try:
        dev = loops.attach(img)
        os.symlink(dev, link)
        _configure(ctl, guest, [f"device_read_iops_sec={link},250"])
        mm = _majmin(dev)
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                got.append(events.get(timeout=0.5))
            except queue.Empty:
                if got:
                    break
        mine = [e for e in got if e[1] == mm]
        if not got:
            pytest.skip("no kernel uevents reach this process")
        assert len(mine) == 1 and mine[0][0] == dev      # three uevents, one callback
        # what the service does with it (in its own thread)
        assert udevwatch.affected_guests(ctl.journal(), [guest], mm) == [guest]
        assert udevwatch.affected_guests(ctl.journal(), [guest], "7:255") == []
        outcomes = udevwatch.reapply_device(ctl, [guest], mm)
        assert len(outcomes) == 1 and not outcomes[0].errors
        assert entries(g, "blkio.throttle.read_iops_device") == [f"{mm} 250"]
        hist = ctl.history(guest.uuid)
        assert hist[0]["source"] == "event" and hist[0]["device"] == link
    finally:
        watcher.stop()
        ctl.close()


# -- the effect ---------------------------------------------------------------------------

@pytest.mark.slow
def test_dd_runs_at_the_throttled_rate(blkio_v1, router, loops, record_property):
    g = blkio_v1
    dev = loops.attach(loops.image(size=16 * MiB))
    set_dev(router, g, f"device_write_bytes_sec={dev},1M")
    procs = g.file("io", "cgroup.procs")
    count = 48   # 48 x 64 KiB = 3 MiB: ~3 s at 1 MiB/s
    t0 = time.monotonic()
    subprocess.run(["sh", "-c", f'echo $$ > "{procs}" && exec dd if=/dev/zero of={dev} '
                                f"oflag=direct bs=64k count={count} status=none"], check=True)
    elapsed = time.monotonic() - t0
    rate = count * 64 * 1024 / elapsed
    record_property("dd_rate_bytes_per_s", int(rate))
    print(f"\ndd through a 1 MiB/s write throttle: {count * 64} KiB in {elapsed:.2f} s "
          f"= {rate / MiB:.2f} MiB/s")
    assert rate < 3 * MiB  # the throttle's effect (unthrottled, a loop device takes >100 MiB/s)

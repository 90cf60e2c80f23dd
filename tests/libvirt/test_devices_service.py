"""Per-disk limits end to end: `cgctl set`/`show` on a real guest, and the service following a
device that comes back with other numbers (docs/devices.md).

Without udevd here, the test plays udev's part for the stable name: a symlink it points at the
device's new node before attaching it, as udev would update /dev/disk/by-id/... ."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.daemonkit import Subprocess, wait_for

CGCTL = [sys.executable, "-m", "cgctl.cli"]
MiB = 1 << 20


def _majmin(dev):
    st = os.stat(dev)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _free_loop():
    return subprocess.run(["losetup", "--find"], check=True, capture_output=True,
                          text=True).stdout.strip()


def _throttle(guest):
    from cgctl.cgroup import hierarchy
    from cgctl.cgroup.placement import groups_for_pid
    g = groups_for_pid(guest.pid, hierarchy.detect(), guest=guest.name, driver=guest.driver)
    with open(os.path.join(g.libvirt_dir("io"), "blkio.throttle.read_bps_device")) as f:
        return f.read()


@pytest.fixture
def images(tmp_path):
    if subprocess.run(["sh", "-c", "command -v losetup"], capture_output=True).returncode:
        pytest.skip("losetup is not installed")
    files = []

    def make(name):
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.truncate(8 * MiB)
        files.append(path)
        return path
    yield make
    for f in files:   # detach whatever is still attached to our files
        out = subprocess.run(["losetup", "-j", f], capture_output=True, text=True).stdout
        for line in out.splitlines():
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]])


def test_disk_limit_follows_the_name_across_renumbering(libvirt_sandbox, make_guest, images,
                                                        tmp_path):
    guest = make_guest("qemu", start=True)
    journal = str(tmp_path / "journal.db")
    env = dict(os.environ, CGCTL_NO_SERVICE="1")
    disk = images("data.img")
    first = _free_loop()
    subprocess.run(["losetup", first, disk], check=True)
    stable = str(tmp_path / "by-id-data")          # stands for /dev/disk/by-id/...
    os.symlink(first, stable)

    r = subprocess.run(CGCTL + ["--journal", journal, "set", guest.name,
                                f"device_read_bytes_sec={stable},1M", "--perm"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"{_majmin(first)} {MiB}" in _throttle(guest)
    show = json.loads(subprocess.run(CGCTL + ["--journal", journal, "--json", "show", guest.name],
                                     env=env, capture_output=True, text=True, check=True).stdout)
    row = next(p for p in show["params"] if p["param"] == "device_read_bytes_sec")
    assert stable in row["config"] and "1M" in row["config"]
    assert f"{_majmin(first)}" in row["live"]

    # drift repair would also put the limit on the renumbered device (it resolves the name
    # again): off here, so that this shows the udev path
    conf = tmp_path / "cgctl.toml"
    conf.write_text("drift_interval = 0\n")
    svc = Subprocess(["--journal", journal, "--config-file", str(conf)],
                     log_path=tmp_path / "daemon.log")
    try:
        svc.wait_log("device watcher started")
        # the disk goes away and comes back as another loop device
        subprocess.run(["losetup", "-d", first], check=True)
        filler = images("filler.img")
        subprocess.run(["losetup", first, filler], check=True)   # its old numbers are taken
        second = _free_loop()
        assert _majmin(second) != _majmin(first)
        os.unlink(stable)
        os.symlink(second, stable)                                # what udev would do
        subprocess.run(["losetup", second, disk], check=True)     # the kernel's add/change event
        wait_for(lambda: f"{_majmin(second)} {MiB}" in _throttle(guest), timeout=15,
                 what=f"the limit on {second}")
    finally:
        code = svc.stop()
        print(svc.log())
    assert code == 0
    assert f"device_read_bytes_sec[{stable}]" in svc.log() and "source=event" in svc.log()

"""Block devices by the names operators use → ``MAJ:MIN`` at apply time.

The journal keeps the operator's name; numbers are looked up on every apply,
so a device that comes back with other numbers still gets its limits.
Accepted names:

- a path: ``/dev/vda``, ``/dev/disk/by-id/...``, ``/dev/disk/by-path/...``,
  ``/dev/mapper/...`` (symlinks are followed, as operators expect);
- a guest's disk target (``vdb``) whose ``<disk type='block'>`` source in the
  domain XML is a host block device; a target backed by a file, a network
  volume or a pool volume is an error, never a silent fall-back to the host's
  own ``/dev/vdb``;
- a bare kernel name (``loop3``, ``dm-0``, ``sdb``).

A partition resolves to its whole disk (the kernel refuses partitions with
ENODEV); device-mapper and loop devices resolve to themselves. pyudev does the
lookup; without pyudev, ``/sys/dev/block`` gives the same answer.

Per-device weights also need the disk's IO scheduler to support them
(``check_bfq``): cgctl says so and names the command, but never changes the
scheduler itself (host policy).
"""

from __future__ import annotations

import errno as E
import os
import stat
import threading
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Tuple, NamedTuple

from cgctl.errors import Unsupported, UsageError

# pyudev is the main path, imported on first use: it costs ~15 ms, and most
# commands never name a device. False = not tried yet; None = not installed.
pyudev = False


def _pyudev():
    global pyudev
    if pyudev is False:
        try:
            import pyudev as mod
        except ImportError:  # pragma: no cover - the fallback is tested by patching None
            mod = None
        pyudev = mod
    return pyudev

SYS_DEV_BLOCK = os.environ.get("CGCTL_SYS_DEV_BLOCK", "/sys/dev/block")
SYS_CLASS_BLOCK = "/sys/class/block"

# libudev contexts are not thread-safe (udev_new(3): "not thread-safe ... must not be shared
# between threads"), and the service resolves devices in several threads at once (its worker,
# the command socket's requests, the udev watcher): one context per thread, made on first use
# and kept for the thread's later lookups (a new one costs ~2.5 ms here, 60 lookups' worth:
# too much to make one per lookup; docs/reliability.md).
_local = threading.local()


def udev_context():
    """This thread's own pyudev Context."""
    ctx = getattr(_local, "context", None)
    if ctx is None:
        ctx = _local.context = _pyudev().Context()
    return ctx


class BlockDevice(NamedTuple):
    """What an operator's name stands for right now."""

    name: str                        # as the operator gave it (the journal's key)
    node: str                        # the path looked at (XML source for a guest target)
    majmin: str                      # the whole disk's MAJ:MIN: what cgroup files take
    disk: str                        # the whole disk's kernel name (vda, loop0, dm-0)
    partition: Optional[str] = None  # the partition's kernel name, when the name was one


class GuestDisk(NamedTuple):
    target: str             # vda
    type: str               # block, file, network, volume, dir, nvme
    source: Optional[str]   # the host path (block: dev, file: file), else a description


def guest_disks(domain_xml: Optional[str]) -> Dict[str, GuestDisk]:
    """Guest disk target → its type and source, from domain XML."""
    if not domain_xml:
        return {}
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return {}
    out = {}
    for disk in root.iter("disk"):
        src, tgt = disk.find("source"), disk.find("target")
        if tgt is None or not tgt.get("dev"):
            continue
        kind = disk.get("type", "file")
        source = None
        if src is not None:
            source = (src.get("dev") or src.get("file") or src.get("dir")
                      or "/".join(filter(None, (src.get("pool"), src.get("volume"))))
                      or "/".join(filter(None, (src.get("protocol"), src.get("name")))) or None)
        out[tgt.get("dev")] = GuestDisk(tgt.get("dev"), kind, source)
    return out


def _guest_target(name: str, disk: GuestDisk, guest: Optional[str], param: Optional[str]) -> str:
    who = f" of guest {guest}" if guest else ""
    if disk.type == "block" and disk.source:
        return disk.source
    what = {"file": "a file", "network": "a network disk", "volume": "a storage pool volume",
            "dir": "a directory"}.get(disk.type, f"a {disk.type!r} disk")
    src = f" ({disk.source})" if disk.source else ""
    raise UsageError(f"disk {name}{who} is {what}{src}, not a block device: per-device limits "
                     "need a block device", guest=guest, param=param)


def lookup(name: str, *, param: Optional[str] = None, guest: Optional[str] = None,
           domain_xml: Optional[str] = None) -> BlockDevice:
    """The whole disk behind ``name`` now; UsageError when there is none."""
    if "/" in name:
        if not name.startswith("/"):
            raise UsageError(f"{name!r}: give a device path from / (e.g. /dev/vda) "
                             "or a bare name (vda)", guest=guest, param=param)
        path = name
    else:
        disk = guest_disks(domain_xml).get(name)
        if disk is not None:
            path = _guest_target(name, disk, guest, param)
        elif os.path.exists(os.path.join("/dev", name)):
            path = os.path.join("/dev", name)
        else:
            return _by_kernel_name(name, param=param, guest=guest)
    try:
        st = os.stat(path)  # follows /dev/disk/by-* and /dev/mapper links
    except FileNotFoundError:
        raise UsageError(f"no such device {name!r}" + (f" ({path})" if path != name else ""),
                         guest=guest, param=param, path=path, errno=E.ENOENT) from None
    except OSError as exc:
        raise UsageError(f"cannot look at device {name!r}: {exc.strerror}", guest=guest,
                         param=param, path=path, errno=exc.errno) from None
    if not stat.S_ISBLK(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else \
            "a character device" if stat.S_ISCHR(st.st_mode) else \
            "a regular file" if stat.S_ISREG(st.st_mode) else "not a device"
        raise UsageError(f"{name!r} is not a block device ({what})", guest=guest, param=param,
                         path=path, errno=E.ENOTBLK)
    disk, part = _whole_disk(st.st_rdev, name, param=param, guest=guest)
    return BlockDevice(name, path, disk[0], disk[1], part)


def resolve(name: str, *, param: Optional[str] = None, guest: Optional[str] = None,
            domain_xml: Optional[str] = None) -> str:
    """``MAJ:MIN`` of the whole disk behind ``name``."""
    return lookup(name, param=param, guest=guest, domain_xml=domain_xml).majmin


def _by_kernel_name(name: str, *, param, guest) -> BlockDevice:
    """A kernel name with no /dev node of that name (e.g. ``cciss!c0d0``)."""
    try:
        with open(os.path.join(SYS_CLASS_BLOCK, name, "dev")) as f:
            major, minor = (int(x) for x in f.read().split(":"))
    except (OSError, ValueError):
        raise UsageError(f"no such device {name!r} (neither a disk of the guest nor /dev/{name})",
                         guest=guest, param=param, errno=E.ENOENT) from None
    disk, part = _whole_disk(os.makedev(major, minor), name, param=param, guest=guest)
    return BlockDevice(name, os.path.join(SYS_CLASS_BLOCK, name), disk[0], disk[1], part)


def _whole_disk(devnum: int, name: str, *, param, guest) -> Tuple[Tuple[str, str], Optional[str]]:
    """((MAJ:MIN, kernel name) of the disk, partition's kernel name or None)."""
    majmin = f"{os.major(devnum)}:{os.minor(devnum)}"
    udev = _pyudev()
    if udev is None:
        return _whole_disk_sysfs(majmin, name, param=param, guest=guest)
    try:
        dev = udev.Devices.from_device_number(udev_context(), "block", devnum)
    except udev.DeviceNotFoundError:
        raise UsageError(f"no such device {name!r}: its node names {majmin}, which the kernel "
                         "does not have (a stale node?)", guest=guest, param=param,
                         errno=E.ENODEV) from None
    if dev.device_type == "partition":
        disk = dev.find_parent("block", "disk")
        if disk is None:
            raise UsageError(f"partition {dev.sys_name} ({name!r}) has no parent disk",
                             guest=guest, param=param, errno=E.ENODEV)
        n = disk.device_number
        return (f"{os.major(n)}:{os.minor(n)}", disk.sys_name), dev.sys_name
    return (majmin, dev.sys_name), None


def _whole_disk_sysfs(majmin: str, name: str, *, param, guest):
    sysdir = os.path.join(SYS_DEV_BLOCK, majmin)
    if not os.path.exists(sysdir):
        raise UsageError(f"no such device {name!r}: its node names {majmin}, which the kernel "
                         "does not have (a stale node?)", guest=guest, param=param,
                         errno=E.ENODEV)
    real = os.path.realpath(sysdir)
    if os.path.exists(os.path.join(sysdir, "partition")):
        parent = os.path.dirname(real)
        with open(os.path.join(parent, "dev")) as f:
            return (f.read().strip(), os.path.basename(parent)), os.path.basename(real)
    return (majmin, os.path.basename(real)), None


# -- IO schedulers ---------------------------------------------------------------

def kernel_name(majmin: str) -> str:
    """``vda`` for ``254:0`` (from uevent; the number itself when unknown)."""
    try:
        with open(os.path.join(SYS_DEV_BLOCK, majmin, "uevent")) as f:
            for line in f:
                if line.startswith("DEVNAME="):
                    return line.strip().split("=", 1)[1]
    except OSError:
        pass
    return majmin


def node_name(majmin: str) -> Optional[str]:
    """``/dev/vda`` for ``254:0`` when the kernel names the device and the node exists; None
    otherwise (what ``show`` prints beside a MAJ:MIN the config does not name)."""
    name = kernel_name(majmin)
    if name == majmin:
        return None
    path = os.path.join("/dev", name)
    return path if os.path.exists(path) else None


def io_scheduler(majmin: str) -> Tuple[Optional[str], List[str]]:
    """(current scheduler, available ones) of a whole disk; (None, []) when it has no
    queue/scheduler file (then nothing is known)."""
    try:
        with open(os.path.join(SYS_DEV_BLOCK, majmin, "queue", "scheduler")) as f:
            words = f.read().split()
    except OSError:
        return None, []
    current = next((w[1:-1] for w in words if w.startswith("[")), None)
    return current, [w.strip("[]") for w in words]


def check_scheduler(majmin: str, want: str, *, device: str, param: str = None,
                    guest: str = None) -> None:
    """Unsupported (errno EOPNOTSUPP, as the kernel would say) unless the disk uses ``want``."""
    current, available = io_scheduler(majmin)
    if current is None or current == want:
        return  # unknown: let the kernel decide (its refusal gets a hint too)
    disk = kernel_name(majmin)
    named = f"/dev/{disk}" if device in (disk, f"/dev/{disk}") else f"{device} (/dev/{disk})"
    how = (f"echo {want} > /sys/block/{disk}/queue/scheduler" if want in available
           else f"{want} is not available for this disk: modprobe {want}, then "
                f"echo {want} > /sys/block/{disk}/queue/scheduler")
    raise Unsupported(f"device {named} uses {current}; per-device weights need {want}: {how} "
                      f"(the kernel refuses them with EOPNOTSUPP; cgctl never changes "
                      f"the scheduler itself)", guest=guest, param=param,
                      path=os.path.join(SYS_DEV_BLOCK, majmin, "queue", "scheduler"),
                      errno=E.EOPNOTSUPP)

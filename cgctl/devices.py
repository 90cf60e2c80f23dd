"""Block devices by the names operators use → ``MAJ:MIN`` at apply time.

The journal keeps the operator's name; numbers are looked up on every apply,
so a device that comes back with other numbers still gets its limits.
Accepted: ``/dev/vda``, ``/dev/disk/by-id/...``, ``/dev/mapper/...``, a bare
kernel name (``vda``), or a guest's disk target (``vdb``) whose source in the
domain XML is a host block device. A partition resolves to its whole disk (the
kernel refuses partitions); device-mapper and loop devices resolve to themselves.
"""

from __future__ import annotations

import os
import stat
import xml.etree.ElementTree as ET
from typing import Dict, Optional

from .errors import UsageError

SYS_DEV_BLOCK = os.environ.get("CGCTL_SYS_DEV_BLOCK", "/sys/dev/block")


def disk_sources(domain_xml: Optional[str]) -> Dict[str, str]:
    """Guest disk target (``vda``) → host block device path, from domain XML."""
    if not domain_xml:
        return {}
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return {}
    out = {}
    for disk in root.iter("disk"):
        if disk.get("type") != "block":
            continue
        src, tgt = disk.find("source"), disk.find("target")
        if src is not None and tgt is not None and src.get("dev") and tgt.get("dev"):
            out[tgt.get("dev")] = src.get("dev")
    return out


def resolve(name: str, *, param: str = None, domain_xml: Optional[str] = None) -> str:
    """``MAJ:MIN`` of the whole disk behind ``name``."""
    path = name
    if "/" not in name:
        path = disk_sources(domain_xml).get(name) or os.path.join("/dev", name)
    try:
        st = os.stat(path)  # follows /dev/disk/by-* links, as operators expect
    except FileNotFoundError:
        raise UsageError(f"no such device {name!r}", param=param) from None
    except OSError as exc:
        raise UsageError(f"cannot look at device {name!r}: {exc.strerror}", param=param) from None
    if not stat.S_ISBLK(st.st_mode):
        raise UsageError(f"{name!r} is not a block device", param=param)
    return whole_disk(os.major(st.st_rdev), os.minor(st.st_rdev))


def whole_disk(major: int, minor: int) -> str:
    """A partition's parent disk; anything else itself."""
    sysdir = os.path.join(SYS_DEV_BLOCK, f"{major}:{minor}")
    if os.path.exists(os.path.join(sysdir, "partition")):
        parent = os.path.dirname(os.path.realpath(sysdir))
        try:
            with open(os.path.join(parent, "dev")) as f:
                return f.read().strip()
        except OSError:
            pass
    return f"{major}:{minor}"

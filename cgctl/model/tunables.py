"""libvirt's own tunables in a domain XML, in cgctl's parameter names (docs/usage.md#libvirts-own-tunables).

A guest's ``<memtune>``, ``<cputune>`` and ``<blkiotune>`` are applied by libvirt itself
when the guest starts; cgctl's config for the same parameter is applied after that and
replaces it. ``parse`` turns those elements into ``{(param, device): canonical text}``
(the journal's spelling, cgctl/model/params.py), so ``show`` can list them and
``set --config`` can say where the two meet. Pure code, no I/O; never raises: an XML it
cannot read, or an element whose value cgctl would refuse, is left out.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Dict, Iterable, Optional, Tuple

from cgctl.errors import CgctlError
from cgctl.model import params as P

Key = Tuple[str, str]

# element -> cgctl parameter
MEMTUNE = {"hard_limit": "hard_limit", "soft_limit": "soft_limit",
           "swap_hard_limit": "swap_hard_limit", "min_guarantee": "min_guarantee"}
CPUTUNE = {"shares": "cpu_shares", "period": "vcpu_period", "quota": "vcpu_quota",
           "global_period": "global_period", "global_quota": "global_quota",
           "emulator_period": "emulator_period", "emulator_quota": "emulator_quota"}
BLKIO_DEVICE = {"weight": "device_weight", "read_bytes_sec": "device_read_bytes_sec",
                "write_bytes_sec": "device_write_bytes_sec",
                "read_iops_sec": "device_read_iops_sec",
                "write_iops_sec": "device_write_iops_sec"}


def parse(domain_xml) -> Dict[Key, str]:
    """``{(param, device or ""): canonical text}`` of the domain's libvirt tunables."""
    if isinstance(domain_xml, bytes):
        domain_xml = domain_xml.decode("utf-8", "replace")
    if not domain_xml or not str(domain_xml).strip():
        return {}
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return {}
    if root.tag == "domstatus":  # libvirt's status file: the domain inside
        root = root.find("domain")
        if root is None:
            return {}
    out: Dict[Key, str] = {}
    mem = root.find("memtune")
    if mem is not None:
        for el in mem:
            if el.tag in MEMTUNE and el.text:
                _add(out, MEMTUNE[el.tag], "", _memory_text(el))
    cpu = root.find("cputune")
    if cpu is not None:
        for el in cpu:
            if el.tag in CPUTUNE and el.text:
                text = el.text.strip()
                if el.tag.endswith("quota") and text.startswith("-"):
                    text = "unlimited"  # libvirt's quota: any negative value is no limit
                _add(out, CPUTUNE[el.tag], "", text)
    blk = root.find("blkiotune")
    if blk is not None:
        w = blk.find("weight")
        if w is not None and w.text:
            _add(out, "weight", "", w.text.strip())
        for dev in blk.findall("device"):
            path = (dev.findtext("path") or "").strip()
            if not path:
                continue
            for el in dev:
                # 0 is libvirt's "no limit/weight on this device": nothing applied
                if el.tag in BLKIO_DEVICE and el.text and el.text.strip() != "0":
                    _add(out, BLKIO_DEVICE[el.tag], path, el.text.strip())
    return out


def _memory_text(el) -> str:
    """A memtune value with its unit (libvirt's default: KiB); negative is unlimited."""
    text = el.text.strip()
    if text.startswith("-"):
        return "unlimited"
    return text + (el.get("unit") or "KiB").strip()


def _add(out: Dict[Key, str], name: str, device: str, text: str) -> None:
    try:
        out[(name, device)] = P.from_text(name, device, text).text()
    except CgctlError:
        pass  # a value cgctl would refuse is not one it can compare or show


def by_param(tunables: Dict[Key, str]) -> Dict[str, str]:
    """``{param: text}`` for display: per-device ones as ``DEV=V, DEV=V`` (as ``show`` does)."""
    out: Dict[str, str] = {}
    for (name, device), text in sorted(tunables.items()):
        item = f"{device}={text}" if device else text
        out[name] = f"{out[name]}, {item}" if name in out else item
    return out


def conflicts(tunables: Dict[Key, str], keys: Iterable[Key]) -> Dict[Key, Tuple[Key, str]]:
    """For each of ``keys`` (what cgctl's config sets): the libvirt tunable it fights with,
    ``{key: ((param, device), text)}``. The same parameter and device name, or the other
    parameter of a pair that writes one kernel file (cpu_shares/cpu_weight,
    weight/io_weight: ``params.SAME_FILE``)."""
    out: Dict[Key, Tuple[Key, str]] = {}
    for key in keys:
        other = _same_file(key)
        for k in (key, other):
            if k is not None and k in tunables:
                out[key] = (k, tunables[k])
                break
    return out


def _same_file(key: Key) -> Optional[Key]:
    return P.same_file_partner(key)


def warning(key: Key, text: str) -> str:
    """The ``set --config`` warning for one libvirt tunable cgctl's config also sets."""
    name, device = key
    value = f"{device},{text}" if device else text
    return (f"libvirt also sets {name}={value} in the domain XML: libvirt applies it at "
            "start, then cgctl's value replaces it (the hook's early applier before the "
            "vCPUs run, else at `started`/the service)")

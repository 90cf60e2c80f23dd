"""Tell systemd the weights cgctl wrote into a guest's scope, so daemon-reload keeps them.

On a systemd host libvirt's machine group is a scope systemd owns
(``machine.slice/machine-qemu\\x2dN\\x2dNAME.scope``); ``systemctl daemon-reload`` writes
every file of it back to systemd's idea of the unit (docs/operations.md, "On a systemd host,
as observed"). The weights must sit there (they compare with the other guests), so after
cgctl's own writes (immediate, all-or-nothing) it tells systemd the same values with
``SetUnitProperties(unit, runtime=true, ...)``, as libvirt does for ``<shares>``.

What systemd is told is read back from the kernel file just written, so an apply and an
undo are told the same way: ``cpu.weight`` -> CPUWeight, ``io.weight``'s ``default N`` ->
IOWeight, its ``MAJ:MIN N`` lines -> IODeviceWeight (cleared, then the file's whole list).
``io.bfq.weight`` is not told: systemd derives the BFQ weight from IOWeight with its own
formula, so no IOWeight reproduces cgctl's BFQ value (drift repair keeps it).

A D-Bus failure never fails a change: one warning, drift repair still covers it. No systemd
(no /run/systemd/system): nothing is done. jeepney is imported only when there is
something to tell.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from cgctl import log

# (property name, D-Bus signature, value) as SetUnitProperties takes it
Prop = Tuple[str, str, object]
# call(unit, props): sends one SetUnitProperties; raises on failure
Call = Callable[[str, List[Prop]], None]

_FILES = ("cpu.weight", "io.weight")
SYSTEMD_RUN = "/run/systemd/system"   # sd_booted(3)'s test


def scope_unit(group_dir: str) -> Optional[str]:
    """The unit owning a group: the dir's basename when it is a scope, else None."""
    name = os.path.basename(group_dir.rstrip("/"))
    return name if name.endswith(".scope") else None


def properties(fname: str, content: str) -> List[Prop]:
    """The unit properties that say what a weight file holds."""
    if fname == "cpu.weight":
        return [("CPUWeight", "t", int(content.strip()))]
    if fname != "io.weight":
        return []
    props: List[Prop] = []
    devs = []
    for line in content.splitlines():
        head, _, value = line.strip().partition(" ")
        if head == "default":
            props.append(("IOWeight", "t", int(value)))
        elif ":" in head and value.strip().isdigit():
            devs.append((f"/dev/block/{head}", int(value)))
    # an empty list clears systemd's per-device weights, then the file's own list: what
    # systemd keeps is then exactly what the kernel holds (a removed disk weight included)
    props += [("IODeviceWeight", "a(st)", []), ("IODeviceWeight", "a(st)", devs)]
    return props


def pending(paths: Iterable[str]) -> Dict[str, List[str]]:
    """{unit: [weight files]} among ``paths`` that sit in a scope's own directory."""
    out: Dict[str, List[str]] = {}
    for path in paths:
        unit = scope_unit(os.path.dirname(path))
        if unit and os.path.basename(path) in _FILES and path not in out.get(unit, []):
            out.setdefault(unit, []).append(path)
    return out


def tell(paths: Iterable[str], read: Callable[[str], str], guest: str = None,
         call: Optional[Call] = None, booted: Optional[bool] = None) -> None:
    """Tell systemd what the scope weight files among ``paths`` hold now. Never raises."""
    todo = pending(paths)
    if not todo:
        return
    if booted is None:
        booted = os.path.isdir(SYSTEMD_RUN)
    if not booted:
        return
    for unit, files in todo.items():
        try:
            props: List[Prop] = []
            for path in files:
                props += properties(os.path.basename(path), read(path))
            (call or set_unit_properties)(unit, props)
        except Exception as exc:  # D-Bus, jeepney missing, a file gone: the change stands
            log.warning("guest %s: could not tell systemd %s's weights (%s); "
                        "'systemctl daemon-reload' may undo them until drift repair: %s",
                        guest, unit, ", ".join(os.path.basename(f) for f in files), exc)


def set_unit_properties(unit: str, props: List[Prop], timeout: float = 5.0) -> None:
    """org.freedesktop.systemd1.Manager.SetUnitProperties(unit, runtime=true, props)."""
    from jeepney import DBusAddress, new_method_call
    from jeepney.io.blocking import open_dbus_connection
    from jeepney.wrappers import unwrap_msg

    addr = DBusAddress("/org/freedesktop/systemd1", bus_name="org.freedesktop.systemd1",
                       interface="org.freedesktop.systemd1.Manager")
    msg = new_method_call(addr, "SetUnitProperties", "sba(sv)",
                          (unit, True, [(name, (sig, value)) for name, sig, value in props]))
    with open_dbus_connection(bus="SYSTEM") as conn:
        unwrap_msg(conn.send_and_get_reply(msg, timeout=timeout))  # raises DBusErrorResponse

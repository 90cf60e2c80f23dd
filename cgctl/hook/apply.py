"""What ``started begin`` and ``reconnect begin`` do, and the metadata receive step before them:
put the guest's journal config in force through the controller, the guest found from libvirt's
runtime files (``cgctl/host/runfiles.py``), never from libvirt itself (that deadlocks).
"""

from __future__ import annotations

from cgctl.hook.hooklog import Log, route_cgctl_log
from cgctl.start import applier
from cgctl.start.applier import controller
from cgctl.start.options import HookFailure, Options


def receive_metadata(driver: str, name: str, dom, opts: Options, ctl, log: Log) -> dict:
    """cgctl/start/applier.py's receive, cgctl's log lines routed to the hook's."""
    return applier.receive_metadata(driver, name, dom, opts, ctl, log,
                                    before=lambda: route_cgctl_log(log))


def started(driver: str, name: str, dom, opts: Options, ctl, log: Log) -> None:
    """``started begin``: take the settings the domain XML carries, then apply the journal
    config (and the metadata's ``<live>`` overlay) now."""
    from cgctl.host import runfiles
    from cgctl.errors import GuestNotRunning
    info = dom.info()  # malformed: logged, the runtime files decide
    ctl = controller(opts, ctl)
    route_cgctl_log(log)
    guest = runfiles.find_running(name, ctl.run_dir, drivers=(driver,))
    if info and guest and guest.uuid != info.uuid:
        raise HookFailure(f"libvirt's runtime files say {name} is {guest.uuid}, the domain XML "
                          f"says {info.uuid}")
    uuid = info.uuid if info else (guest.uuid if guest else None)
    if uuid is None:
        raise HookFailure("cannot tell which guest this is: no usable domain XML on stdin and "
                          f"no running {driver} guest named {name}")
    # the XML's settings are taken only for the guest libvirt's runtime files show running
    # with that very UUID: an XML of another guest (or of none) writes nothing to the journal
    overlay = receive_metadata(driver, name, dom, opts, ctl, log) \
        if guest is not None and info is not None else {}
    config = ctl.effective(uuid).config  # the guest's profile and its own settings
    if not config and not overlay:
        return  # nothing configured: nothing to enforce, strict or not
    if guest is None:
        raise GuestNotRunning(f"libvirt says the guest started, but no running {driver} process "
                              f"of it was found under {ctl.run_dir}", guest=name)
    outcome = ctl.apply_config(guest, source="hook", command="hook started", overlay=overlay)
    if outcome.errors:
        raise HookFailure(f"{len(outcome.errors)} of {len(config)} setting(s) not applied: "
                          + "; ".join(str(e) for e in outcome.errors))
    log(f"applied {len(outcome.changes)} setting(s) from the journal")


def reconnect(driver: str, name: str, opts: Options, ctl, log: Log) -> None:
    """libvirtd restarted and found the guest running: re-apply only to a new instance."""
    from cgctl.host import runfiles
    ctl = controller(opts, ctl)
    route_cgctl_log(log)
    guest = runfiles.find_running(name, ctl.run_dir, drivers=(driver,))
    if guest is None:
        return
    journal = ctl.journal(create=False)
    if not ctl.effective(guest.uuid, journal).config:
        return
    # once: this very process has its config (and maybe later --live changes): keep them
    outcome = ctl.apply_config(guest, source="hook", command="hook reconnect", journal=journal,
                               once=True)
    if outcome is not None and outcome.errors:
        raise HookFailure(f"{len(outcome.errors)} setting(s) not applied: "
                          + "; ".join(str(e) for e in outcome.errors))

"""The hook's early applier: launched at ``prepare begin`` (detached: double fork, own session,
no descriptor of libvirt's), it runs the applier of one start (``cgctl/start/applier.py``) and
logs to syslog. When the service runs, the installed script hands it the start instead
(``cgctl/start/handoff.py``) and nothing here runs.
"""

from __future__ import annotations

import os

from cgctl.hook.hooklog import Log, route_cgctl_log, syslog
from cgctl.start import applier
from cgctl.start.applier import controller
from cgctl.start.options import EARLY_TIMEOUT, Options, lock_wait_within


def launch(driver: str, name: str, dom, opts: Options, log: Log,
           timeout: float = EARLY_TIMEOUT) -> None:
    """``prepare begin`` / ``start begin`` alone: start the early applier of this call's guest
    (``dom``: its StdinDomain) and return.

    libvirt waits for this process, so it does only what must be said on libvirt's stderr or
    must hold before it returns: the XML's facts and the name checked, the guest's lock taken
    (held across the fork, so `start begin` finds it held however late the child runs). The
    configuration file, the domain's metadata, the journal and the controller are the detached
    child's (docs/hook.md, "What `prepare begin` does before libvirt goes on")."""
    info = dom.info()
    if info is None:
        return
    from cgctl.model.ident import validate_name
    validate_name(name)
    # None: an applier (launched at `prepare begin`, or the service's) waits for this guest
    # already; the child then only takes the domain's metadata, as the call always did
    fd = applier.try_lock(applier.lock_path(driver, name))
    launched = _monotonic()
    try:
        detach(lambda: _child(driver, name, info, dom, opts, fd, launched, timeout), timeout,
               keep=fd)
    finally:
        if fd is not None:
            os.close(fd)  # ours only: the child's copy of the descriptor keeps the lock


def _child(driver: str, name: str, info, dom, opts: Options, fd, launched: float,
           timeout: float) -> None:
    """The detached child of ``launch``: what deciding did not need. Its log lines go to syslog
    (its stderr is /dev/null); a failure here never reaches libvirt (``detach``)."""
    from cgctl.hook import apply
    from cgctl.start.options import resolve_settings
    if fd is not None:
        applier.claim(driver, name, fd)  # first: our PID in the lock file for the script
    held = applier.Held(driver, name, fd) if fd is not None else None
    try:
        log = Log(driver, name, "early")
        _strict, early = resolve_settings(opts, log)
        overlay = apply.receive_metadata(driver, name, dom, opts, None, log)
        if held is not None and early:
            early_apply(driver, name, info.uuid, info.vcpus, opts, launched, timeout, overlay,
                        held=held)
    finally:
        if held is not None:
            held.let_go()


def _monotonic() -> float:
    import time
    return time.monotonic()


def detach(work, timeout: float = EARLY_TIMEOUT, keep: int = None) -> None:
    """Run ``work`` in a grandchild in its own session, with no descriptor of ours open but
    ``keep`` (the guest's lock, taken by the parent).

    The intermediate child is reaped here, so the hook leaves no zombie and libvirt sees
    our exit as soon as we return.
    """
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    code = 0
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        top = max(os.sysconf("SC_OPEN_MAX"), 1 << 16)
        if keep is None or keep < 3:
            os.closerange(3, top)  # includes `null`
        else:
            os.closerange(3, keep)
            os.closerange(keep + 1, top)
        import signal
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the hard bound: the kernel kills us
        signal.alarm(int(timeout) + 5)
        work()
    except BaseException as exc:  # nothing to print to: syslog only
        syslog(f"cgctl hook: early applier failed: {type(exc).__name__}: {exc}", True)
        code = 1
    finally:
        # os._exit skips the collector; a SQLite connection that failed to open is kept by a
        # reference cycle (its statement cache) and, unclosed, leaves -wal/-shm beside the journal
        import gc
        gc.collect()
        os._exit(code)


def early_apply(driver: str, name: str, uuid: str, vcpus: int, opts: Options,
                launched: float, timeout: float = EARLY_TIMEOUT, overlay=None,
                early: bool = True, held=None) -> str:
    """The detached applier: the guest's lock (``held``, else taken here), then ``serve``
    (what happened is logged to syslog and recorded in the journal's history as ``hook early``
    / ``hook started``)."""
    if held is None:
        fd = applier.take(driver, name)
        if fd is None:
            return "another applier waits for this guest"
        held = applier.Held(driver, name, fd)
    try:
        log = Log(driver, name, "early")
        route_cgctl_log(log)
        ctl = controller(opts, lock_wait=lock_wait_within(EARLY_TIMEOUT))
        try:  # closed here (checkpoints the WAL): the applier ends in os._exit, which skips it
            what = applier.serve(ctl, driver, name, uuid, vcpus, launched + timeout, log,
                                 overlay, early, let_go=held.let_go)
        finally:
            ctl.close()
        syslog(f"cgctl hook: {driver} guest={name} op=early: {what}", False)
        return what
    finally:
        held.let_go()

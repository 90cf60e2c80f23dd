"""The early applier of ``prepare begin``/``start begin``: launched from the hook, detached
(double fork, own session, no descriptor of libvirt's), it waits for the guest's process and
cgroups and applies the journal config once, before libvirt lets the vCPUs run (docs/hook.md,
"Why an early applier").
"""

from __future__ import annotations

import os

from cgctl import consts
from cgctl.hook.apply import controller
from cgctl.hook.hooklog import Log, route_cgctl_log, syslog
from cgctl.hook.options import EARLY_POLL, EARLY_TIMEOUT, Options, lock_wait_within


def lock_path(driver: str, uuid: str) -> str:
    """The lock file an early applier holds while it waits for the guest ``uuid``."""
    return os.path.join(consts.HOOK_RUN_DIR, f"early-{driver}-{uuid}.lock")


def _try_lock(path: str):
    """An fd holding an exclusive lock on ``path``, or None if another process holds it."""
    import fcntl
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def launch(driver: str, name: str, dom, opts: Options, log: Log,
           timeout: float = EARLY_TIMEOUT, overlay=None) -> None:
    """Start the early applier for this call's guest (``dom``: its StdinDomain) and return;
    nothing if one already waits for it."""
    info = dom.info()
    if info is None:
        return
    from cgctl.host.runfiles import validate_name
    validate_name(name)
    path = lock_path(driver, info.uuid)
    fd = _try_lock(path)
    if fd is None:
        return  # launched at `prepare begin` and still waiting: one is enough
    os.close(fd)
    launched = _monotonic()
    detach(lambda: early_apply(driver, name, info.uuid, info.vcpus, opts, launched, timeout,
                               overlay), timeout)


def _monotonic() -> float:
    import time
    return time.monotonic()


def detach(work, timeout: float = EARLY_TIMEOUT) -> None:
    """Run ``work`` in a grandchild in its own session, with no descriptor of ours open.

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
        os.closerange(3, max(os.sysconf("SC_OPEN_MAX"), 1 << 16))  # includes `null`
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
                launched: float, timeout: float = EARLY_TIMEOUT, overlay=None) -> str:
    """Wait for the guest's process and cgroup, then apply its journal config once.

    Returns what happened (also recorded in the journal's history as ``hook early``).
    """
    import contextlib
    fd = _try_lock(lock_path(driver, uuid))
    if fd is None:
        return "another early applier waits for this guest"
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        what = _early_apply(driver, name, uuid, vcpus, opts, launched, timeout, overlay)
        syslog(f"cgctl hook: {driver} guest={name} op=early: {what}", False)
        return what
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path(driver, uuid))  # still ours: we hold the lock
        os.close(fd)


def _early_apply(driver, name, uuid, vcpus, opts, launched, timeout, overlay=None) -> str:
    log = Log(driver, name, "early")
    route_cgctl_log(log)
    ctl = controller(opts, lock_wait=lock_wait_within(EARLY_TIMEOUT))
    try:  # closed here (checkpoints the WAL): the applier ends in os._exit, which skips it
        return apply_when_ready(ctl, driver, name, uuid, vcpus, launched, timeout, log, overlay)
    finally:
        ctl.close()


def apply_when_ready(ctl, driver, name, uuid, vcpus, launched, timeout, log,
                     overlay=None) -> str:
    """Poll until the guest's verified process and its cgroups exist, then apply once."""
    import time
    from cgctl.model import params as P
    from cgctl.cgroup import placement
    from cgctl.host import runfiles
    from cgctl.errors import CgroupNotFound, UnsafePath

    deadline = launched + timeout
    journal = ctl.journal(create=False)
    config = dict(ctl.effective(uuid, journal).config)  # profile + own (cgctl/core/profiles.py)
    config.update(overlay or {})  # <live> settings carried in the metadata (cgctl/core/travel.py)
    if not config:
        return "nothing in the journal"
    sub = [P.BY_NAME[n] for n, _ in config if n in P.BY_NAME
           and P.BY_NAME[n].target in (P.VCPUS, P.EMULATOR)] if driver == "qemu" else []
    host = ctl.host
    while time.monotonic() < deadline:
        # the guest's process as cgctl.host.runfiles checks it (pid file and status agree, exe,
        # uid, start time, argv): for QEMU, after exec (libvirt placed it in its cgroup and wrote
        # its own tunables before that); a stale pid file or a faked argv fails this test
        pid = runfiles.verified_pid(driver, name, uuid, ctl.run_dir, consts.PROC_ROOT)
        if pid:
            try:
                groups = placement.groups_for_pid(pid, host, guest=name, driver=driver)
            except (CgroupNotFound, UnsafePath):
                groups = None
            if groups is not None and _subgroups_ready(groups, sub, vcpus):
                guest = runfiles.Guest(name=name, uuid=uuid, driver=driver,
                                       uri=runfiles.SYSTEM_URIS[driver], running=True,
                                       persistent=runfiles.is_persistent(driver, name), pid=pid)
                # once, decided under the guest's lock: `started` may have applied meanwhile
                ctl.lock_wait = max(min(ctl.lock_wait, deadline - time.monotonic()), 0.0)
                outcome = ctl.apply_config(guest, source="hook", command="hook early",
                                           journal=journal, once=True,
                                           overlay=overlay)
                if outcome is None:
                    return "already applied to this instance"
                return (f"applied {len(outcome.changes)} setting(s), "
                        f"{len(outcome.errors)} failed, {time.monotonic() - launched:.3f} s "
                        "after the hook")
        time.sleep(EARLY_POLL)
    log(f"the guest's cgroup did not appear within {timeout:g} s; "
        "`started begin` and the service apply the config", error=True)
    return "timed out"


def _subgroups_ready(groups, params, vcpus: int) -> bool:
    from cgctl.errors import CgctlError
    for p in params:
        try:
            dirs = groups.dirs(p)
        except CgctlError:
            return False
        if p.target == "vcpus" and len(dirs) < max(vcpus, 1):
            return False
    return True

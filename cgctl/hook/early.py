"""The applier of one guest start: launched from the hook at ``prepare begin`` (detached: double
fork, own session, no descriptor of libvirt's) or run by the service (``cgctl/hook/handoff.py``),
it holds the guest's lock file for the whole start and

1. waits for the guest's process and cgroups and applies the journal config once, before
   libvirt lets the vCPUs run (docs/hook.md, "Why an early applier");
2. waits for ``started begin``: the installed script writes a *go* file holding a token and
   waits on the lock; the applier applies again as the authority, writes ``ok TOKEN`` (or
   ``fail TOKEN why``) to the *result* file and lets go of the lock. The script then answers
   libvirt without starting Python, or starts it when there is no ``ok`` for its token.

Both waits are woken by the kernel (inotify on libvirt's run directory, the hook's run
directory and the guest's machine groups), with a slow re-check for what has no file event.
"""

from __future__ import annotations

import os

from cgctl import consts
from cgctl.hook.apply import controller
from cgctl.hook.hooklog import Log, route_cgctl_log, syslog
from cgctl.hook.options import (EARLY_RECHECK, EARLY_TIMEOUT, Options, lock_wait_within)


def lock_path(driver: str, name: str, run_dir: str = None) -> str:
    """The lock file the applier of guest ``name`` holds during its start (the installed
    script finds it by the name libvirt passes; cgctl/hook/install.py)."""
    return os.path.join(run_dir or consts.HOOK_RUN_DIR, f"early-{driver}-{name}.lock")


def go_path(driver: str, name: str, run_dir: str = None) -> str:
    return os.path.join(run_dir or consts.HOOK_RUN_DIR, f"early-{driver}-{name}.go")


def result_path(driver: str, name: str, run_dir: str = None) -> str:
    return os.path.join(run_dir or consts.HOOK_RUN_DIR, f"early-{driver}-{name}.result")


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


def take(driver: str, name: str):
    """The guest's lock (an fd) for one applier, stale go/result files removed; or None if
    another applier (the hook's or the service's) holds it already."""
    import contextlib
    fd = _try_lock(lock_path(driver, name))
    if fd is None:
        return None
    for path in (go_path(driver, name), result_path(driver, name)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def release(driver: str, name: str, fd: int) -> None:
    """The lock file removed (still ours: we hold it), then the lock let go."""
    import contextlib
    with contextlib.suppress(OSError):
        os.unlink(lock_path(driver, name))
    os.close(fd)


def launch(driver: str, name: str, dom, opts: Options, log: Log,
           timeout: float = EARLY_TIMEOUT, overlay=None) -> None:
    """Start the early applier for this call's guest (``dom``: its StdinDomain) and return;
    nothing if one already waits for it."""
    info = dom.info()
    if info is None:
        return
    from cgctl.host.runfiles import validate_name
    validate_name(name)
    fd = _try_lock(lock_path(driver, name))
    if fd is None:
        return  # launched at `prepare begin` (or the service's) and still waiting: one is enough
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
                launched: float, timeout: float = EARLY_TIMEOUT, overlay=None,
                early: bool = True) -> str:
    """The detached applier: the guest's lock, then ``serve`` (what happened is logged to syslog
    and recorded in the journal's history as ``hook early`` / ``hook started``)."""
    fd = take(driver, name)
    if fd is None:
        return "another applier waits for this guest"
    try:
        log = Log(driver, name, "early")
        route_cgctl_log(log)
        ctl = controller(opts, lock_wait=lock_wait_within(EARLY_TIMEOUT))
        try:  # closed here (checkpoints the WAL): the applier ends in os._exit, which skips it
            what = serve(ctl, driver, name, uuid, vcpus, launched + timeout, log, overlay, early)
        finally:
            ctl.close()
        syslog(f"cgctl hook: {driver} guest={name} op=early: {what}", False)
        return what
    finally:
        release(driver, name, fd)


class _Watch:
    """inotify on the directories whose changes can make the guest ready or bring the go file:
    libvirt's run directory of the driver, the hook's run directory, and the guest's machine
    groups once known (libvirt creates ``vcpuN``/``emulator`` there)."""

    def __init__(self, dirs):
        from cgctl.host import inotify
        self.ino = None
        self.seen = set()
        try:
            self.ino = inotify.Inotify()
        except (OSError, AttributeError):
            return  # no inotify: the re-check alone (slower, still correct)
        for d in dirs:
            self.add(d)

    def add(self, d: str) -> None:
        from cgctl.host import inotify as I
        if self.ino is None or d in self.seen:
            return
        try:
            self.ino.add(d, I.IN_CREATE | I.IN_CLOSE_WRITE | I.IN_MOVED_TO | I.IN_DELETE)
            self.seen.add(d)
        except OSError:
            pass  # not there (yet): the next look tries again

    def wait(self, seconds: float) -> None:
        import time
        if self.ino is None:
            time.sleep(seconds)
        else:
            self.ino.wait(seconds)

    def close(self) -> None:
        if self.ino is not None:
            self.ino.close()


def _read_token(path: str):
    try:
        with open(path, "rb") as f:
            return f.read(64).decode("ascii", "replace").strip() or None
    except OSError:
        return None


def _write_result(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (" ".join(text.split()) + "\n").encode("utf-8", "replace"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def serve(ctl, driver, name, uuid, vcpus, deadline, log, overlay=None, early=True,
          recheck: float = EARLY_RECHECK) -> str:
    """One guest start, the caller holding its lock (``take``): apply once when the guest's
    verified process and cgroups are there (if ``early``), then answer ``started begin``'s go
    file by applying again and writing the result. Returns what happened."""
    import time
    from cgctl.model import params as P
    from cgctl.host import runfiles

    go, result = go_path(driver, name), result_path(driver, name)
    journal = ctl.journal(create=False)
    config = dict(ctl.effective(uuid, journal).config)  # profile + own (cgctl/core/profiles.py)
    config.update(overlay or {})  # <live> settings carried in the metadata (cgctl/core/travel.py)
    sub = [P.BY_NAME[n] for n, _ in config if n in P.BY_NAME
           and P.BY_NAME[n].target in (P.VCPUS, P.EMULATOR)] if driver == "qemu" else []
    watch = _Watch([os.path.join(ctl.run_dir, driver), os.path.dirname(go)])
    what = "nothing in the journal" if not config else None
    try:
        while True:
            token = _read_token(go)
            if token is not None:  # `started begin` waits for us
                return _answer(ctl, driver, name, uuid, config, overlay, journal, token, result,
                               what, log)
            if what is None and early:
                guest = _ready(ctl, driver, name, uuid, vcpus, sub, watch)
                if guest is not None:
                    what = _apply_early(ctl, guest, journal, overlay, deadline)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            watch.wait(min(left, recheck))
    finally:
        watch.close()
    if what is None:
        log(f"the guest's cgroup did not appear in time; "
            "`started begin` and the service apply the config", error=True)
        return "timed out"
    return f"{what}; no `started begin` came"


def _ready(ctl, driver, name, uuid, vcpus, sub, watch):
    """The guest (runfiles.Guest) once its verified process and cgroups are all there."""
    from cgctl.cgroup import placement
    from cgctl.host import runfiles
    from cgctl.errors import CgroupNotFound, UnsafePath
    # the guest's process as cgctl.host.runfiles checks it (pid file and status agree, exe,
    # uid, start time, argv): for QEMU, after exec (libvirt placed it in its cgroup and wrote
    # its own tunables before that); a stale pid file or a faked argv fails this test
    pid = runfiles.verified_pid(driver, name, uuid, ctl.run_dir, consts.PROC_ROOT)
    if not pid:
        return None
    try:
        groups = placement.groups_for_pid(pid, ctl.host, guest=name, driver=driver)
    except (CgroupNotFound, UnsafePath):
        return None
    for _mount, d in groups.machine.values():  # libvirt makes vcpuN/emulator (or libvirt/) here
        watch.add(d)
        if os.path.isdir(os.path.join(d, "libvirt")):
            watch.add(os.path.join(d, "libvirt"))
    if not _subgroups_ready(groups, sub, vcpus):
        return None
    return runfiles.Guest(name=name, uuid=uuid, driver=driver, uri=runfiles.SYSTEM_URIS[driver],
                          running=True, persistent=runfiles.is_persistent(driver, name), pid=pid)


def _apply_early(ctl, guest, journal, overlay, deadline) -> str:
    import time
    # once, decided under the guest's lock: `started` may have applied meanwhile
    ctl.lock_wait = max(min(ctl.lock_wait, deadline - time.monotonic()), 0.0)
    outcome = ctl.apply_config(guest, source="hook", command="hook early", journal=journal,
                               once=True, overlay=overlay)
    if outcome is None:
        return "already applied to this instance"
    return f"early: {len(outcome.changes)} setting(s) applied, {len(outcome.errors)} failed"


def _answer(ctl, driver, name, uuid, config, overlay, journal, token, result, what, log) -> str:
    """``started begin``: apply as the authority (libvirt rewrote its own vCPU tunables after
    the early write) and tell the script. Any doubt is a ``fail``: the script then runs the
    hook in Python, which applies again and reports (strict or not) as it always has."""
    from cgctl.host import runfiles
    try:
        if not config:
            _write_result(result, f"ok {token}")
            return "nothing in the journal"
        guest = runfiles.find_running(name, ctl.run_dir, drivers=(driver,))
        if guest is None or guest.uuid != uuid:
            _write_result(result, f"fail {token} no running guest {name} with {uuid}")
            return "started: guest not found; the hook applies"
        outcome = ctl.apply_config(guest, source="hook", command="hook started",
                                   journal=journal, overlay=overlay)
        if outcome.errors:
            _write_result(result, f"fail {token} {len(outcome.errors)} setting(s) not applied")
            return f"started: {len(outcome.errors)} failed; the hook applies"
        _write_result(result, f"ok {token}")
        return (f"{what or 'early: not applied'}; started: {len(outcome.changes)} "
                "setting(s) applied")
    except Exception as exc:  # noqa: BLE001  the script falls back to the hook in Python
        try:
            _write_result(result, f"fail {token} {type(exc).__name__}: {exc}")
        except OSError:
            pass
        return f"started: {type(exc).__name__}: {exc}; the hook applies"


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

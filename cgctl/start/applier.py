"""The applier of one guest start, run by the hook's detached process (``cgctl/hook/early.py``)
or by the service (``cgctl/start/handoff.py``): it holds the guest's lock file for the whole
start and

1. waits for the guest's process and cgroups and applies the journal config once, before
   libvirt lets the vCPUs run (docs/hook.md, "Why an early applier");
2. waits for ``started begin``: the installed script writes a *go* file holding a token and
   waits on the lock; the applier applies again as the authority, writes ``ok TOKEN`` (or
   ``fail TOKEN why``) to the *result* file and lets go of the lock. The script then answers
   libvirt without starting Python, or starts it when there is no ``ok`` for its token.

Both waits are woken by the kernel (inotify on libvirt's run directory, the hook's run
directory and the guest's machine groups), with a slow re-check for what has no file event.
This package sits below both entry points (docs/architecture.md): the service imports it,
never the hook.
"""

from __future__ import annotations

import os

from cgctl import consts
from cgctl.start.options import EARLY_RECHECK, HOOK_TIMEOUT, Options, lock_wait_within


def controller(opts: Options, ctl=None, lock_wait: float = None):
    """The Controller on the hook's journal (``ctl`` itself when it is already that one)."""
    from cgctl.core.controller import Controller
    if ctl is None or (opts.journal is not None and opts.journal != ctl.journal_path):
        from cgctl.config import resolve
        # --journal (baked in at install), $CGCTL_JOURNAL, the config file's journal, the default
        cfg = resolve(opts.config_file, {"journal": opts.journal}, on_error=lambda m: None)
        ctl = Controller(journal_path=cfg.journal)
    # the guest's lock (cgctl/core/guestlock.py) is waited for well within this call's own bound:
    # a writer holding it too long costs this apply (logged), never libvirt's start
    ctl.lock_wait = lock_wait if lock_wait is not None else lock_wait_within(HOOK_TIMEOUT)
    return ctl


def receive_metadata(driver: str, name: str, dom, opts: Options, ctl, log,
                     before=None) -> dict:
    """Merge the settings carried in the domain XML's <metadata> into the journal (a guest
    defined or migrated from another host: cgctl/core/travel.py); the <live> overlay to apply.
    ``dom``: the call's StdinDomain; ``before()``: called once there is metadata to take (the
    hook routes cgctl's log lines there). Never raises: the journal config still applies."""
    try:
        if b"<metadata" not in dom.xml:
            return {}  # the common case: one byte search, and metadata/travel not imported
        from cgctl.model import metadata
        if metadata.NS.encode() not in dom.xml:
            return {}
        from cgctl.core import travel
        info = dom.info()
        if info is None:
            return {}
        c = controller(opts, ctl)
        if before is not None:
            before()
        try:
            overlay, decisions = travel.receive(c.journal(), info.uuid, name, driver, dom.xml,
                                                source="hook")
        finally:
            if c is not ctl:
                # closed before the early applier forks: a child must not inherit an open
                # SQLite connection (its locks and WAL state belong to this process)
                c.close()
        taken = sum(d.taken for d in decisions)
        if decisions:
            log(f"metadata: {taken} setting(s) taken, {len(decisions) - taken} kept from this "
                f"host's journal")
        return overlay
    except Exception as exc:  # noqa: BLE001  a hook never fails on metadata
        log(f"cannot use the settings in the domain's metadata: {exc}", error=True)
        return {}


def lock_path(driver: str, name: str, run_dir: str = None) -> str:
    """The lock file the applier of guest ``name`` holds during its start (the installed
    script finds it by the name libvirt passes; cgctl/hook/install.py)."""
    return os.path.join(run_dir or consts.HOOK_RUN_DIR, f"early-{driver}-{name}.lock")


def go_path(driver: str, name: str, run_dir: str = None) -> str:
    return os.path.join(run_dir or consts.HOOK_RUN_DIR, f"early-{driver}-{name}.go")


def result_path(driver: str, name: str, run_dir: str = None) -> str:
    return os.path.join(run_dir or consts.HOOK_RUN_DIR, f"early-{driver}-{name}.result")


def try_lock(path: str):
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
    fd = try_lock(lock_path(driver, name))
    if fd is None:
        return None
    return claim(driver, name, fd)


def claim(driver: str, name: str, fd: int) -> int:
    """The lock ``fd`` (held) made this process's: stale go/result files removed, our
    ``holder_line`` written. The hook's applier calls it in the detached child, on the lock its
    parent took before forking (cgctl/hook/early.py)."""
    import contextlib
    for path in (go_path(driver, name), result_path(driver, name)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    os.ftruncate(fd, 0)
    os.write(fd, holder_line())
    return fd


def holder_line() -> bytes:
    """What a lock's holder writes into its lock file once it holds it: ``PID TICKS`` (its start
    in clock ticks after boot). The installed script reads it with the shell's own ``read`` and
    compares TICKS with /proc/PID/stat: a live holder is seen without starting ``flock(1)``, and
    a PID reused by another process does not match (docs/hook.md, "Locks the shell tests")."""
    from cgctl.host.runfiles import start_ticks
    pid = os.getpid()
    return f"{pid} {start_ticks(pid)}\n".encode()


class Held:
    """The guest's lock file held by one applier (``take``'s fd), let go once: after the answer
    (``serve``'s ``let_go``) or at the end, whichever comes first."""

    def __init__(self, driver: str, name: str, fd: int):
        self.driver, self.name, self.fd = driver, name, fd

    def let_go(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            release(self.driver, self.name, fd)


def release(driver: str, name: str, fd: int) -> None:
    """The lock file emptied and removed (still ours: we hold it), then the lock let go.
    Emptied first: were the unlink to fail, the script must not take a live PID left in it
    for a holder (it then asks ``flock(1)``)."""
    import contextlib
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    with contextlib.suppress(OSError):
        os.unlink(lock_path(driver, name))
    os.close(fd)


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
          recheck: float = EARLY_RECHECK, let_go=None) -> str:
    """One guest start, the caller holding its lock (``take``): apply once when the guest's
    verified process and cgroups are there (if ``early``), then answer ``started begin``'s go
    file by applying again and writing the result. ``let_go()`` lets go of the guest's lock
    file (the script waits on it) right after the answer, before the journal's commit; the
    caller lets go at the end in any case (``Held``). Returns what happened."""
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
                               what, log, let_go or (lambda: None))
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


def _answer(ctl, driver, name, uuid, config, overlay, journal, token, result, what, log,
            let_go) -> str:
    """``started begin``: apply as the authority (libvirt rewrote its own vCPU tunables after
    the early write) and tell the script. Any doubt is a ``fail``: the script then runs the
    hook in Python, which applies again and reports (strict or not) as it always has.

    The answer comes before the journal's commit (an fsync: ~40 ms on a loaded disk, the
    largest part of the call): the limits are in force once written, the record only says so.
    The apply's records (its history rows and the instance row) go into a one-guest batch
    (cgctl/core/batch.py), committed right after the script was let go; the guest's lock
    (cgctl/core/guestlock.py) is held until that commit, so no other writer lands between our
    write and our record. A crash in between loses that record only (docs/hook.md, "The answer
    before the commit"), never a setting: the cgroups hold the config, and the next reconcile
    applies again what has no instance row."""
    import time
    from cgctl.core.batch import Batch
    from cgctl.host import runfiles
    pending = None
    marks = [time.perf_counter()]  # where the script's wait goes (docs/performance.md §2 F)
    try:
        if not config:
            _write_result(result, f"ok {token}")
            return "nothing in the journal"
        guest = runfiles.find_running(name, ctl.run_dir, drivers=(driver,))
        if guest is None or guest.uuid != uuid:
            _write_result(result, f"fail {token} no running guest {name} with {uuid}")
            return "started: guest not found; the hook applies"
        marks.append(time.perf_counter())
        pending = Batch(journal, max_guests=1, max_age=EARLY_RECHECK)
        outcome = ctl.apply_config(guest, source="hook", command="hook started",
                                   journal=journal, overlay=overlay, batch=pending)
        marks.append(time.perf_counter())
        if outcome.errors:
            _write_result(result, f"fail {token} {len(outcome.errors)} setting(s) not applied")
            what = f"started: {len(outcome.errors)} failed; the hook applies"
        else:
            _write_result(result, f"ok {token}")
            marks.append(time.perf_counter())
            ms = [f"{(b - a) * 1000:.2f}" for a, b in zip(marks, marks[1:])]
            what = (f"{what or 'early: not applied'}; started: {len(outcome.changes)} "
                    f"setting(s) applied (find/apply/answer ms: {'/'.join(ms)})")
    except Exception as exc:  # noqa: BLE001  the script falls back to the hook in Python
        try:
            _write_result(result, f"fail {token} {type(exc).__name__}: {exc}")
        except OSError:
            pass
        what = f"started: {type(exc).__name__}: {exc}; the hook applies"
    finally:
        let_go()  # the script reads its answer now; libvirt goes on
        if pending is not None:
            try:
                pending.commit()  # also lets go of the guest's lock when nothing is to record
            except Exception as exc:  # noqa: BLE001  the limits are in force; only the record
                log(f"the apply is in force but not recorded in the journal: "
                    f"{type(exc).__name__}: {exc}; the next reconcile applies again", error=True)
                what += "; not recorded"
    return what


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

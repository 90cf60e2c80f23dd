"""One writer per guest, from reading its config to recording what was written.

A start-time apply reads the journal config, writes the cgroups, then records the history; a
``set --perm`` landing between the read and the write would be overwritten by the stale value,
which drift repair would then defend as the reference (docs/reliability.md, "Lost updates").
Every path that writes a guest's live values or its config holds this lock for that span:
``Controller.set``/``unset``, the applies (CLI ``apply``, the service's worker, the hook's
``started``/``reconnect`` and its early applier, socket requests) and drift repair.

Why a per-guest lock file rather than one SQLite ``BEGIN IMMEDIATE`` around the whole apply:
SQLite's write lock is one for the whole journal, so cgroup writes and device look-ups made while
holding it would hold every other guest's changes and starts (and the hook's 5 s bound) too; a
lock per guest holds only the guest it is about.

The lock: ``flock`` on ``<HOOK_RUN_DIR>/guest-<uuid>.lock`` (``/run/cgctl``: gone at boot),
opened ``O_NOFOLLOW``, mode 0600, in a directory that must be ours and writable by no one else.
flock excludes other processes and, because every holder opens its own file description, other
threads; a per-UUID mutex in front of it keeps the threads of one process (the service) off the
polling loop, and a thread that already holds a guest's lock may take it again (drift repair
calls the apply). The wait is bounded (``GuestBusy``, one line naming the guest), never blocking
forever: the hook passes a wait shorter than its own time bound. The holder removes the file
before it lets go; a waiter that then locks a removed file sees its inode is not the path's
any more and tries again.

Order: this lock first, then the journal's transaction, never the other way round (no path
takes a guest lock while in a transaction), so two writers cannot wait on each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
import time
from typing import Dict, Iterator, Optional

from cgctl import consts
from cgctl.errors import CgctlError, UsageError

WAIT = 30.0  # s a CLI command or the service waits for another writer of the same guest
_POLL_MIN, _POLL_MAX = 0.001, 0.02  # s between two tries, doubling up to the max


class GuestBusy(CgctlError):
    """Another cgctl process kept the guest's lock for longer than this one may wait."""


_held = threading.local()      # .depth: {uuid: n} held by this thread
_mutexes: Dict[str, threading.Lock] = {}
_mutexes_guard = threading.Lock()


def lock_dir() -> str:
    return consts.HOOK_RUN_DIR


def path_for(uuid: str) -> str:
    from cgctl.model.units import normalize_uuid
    u = normalize_uuid(uuid) if isinstance(uuid, str) else None
    if u is None:
        raise UsageError(f"not a guest UUID: {uuid!r}")
    return os.path.join(lock_dir(), f"guest-{u}.lock")


def _mutex(uuid: str) -> threading.Lock:
    with _mutexes_guard:
        m = _mutexes.get(uuid)
        if m is None:
            m = _mutexes[uuid] = threading.Lock()
        return m


@contextlib.contextmanager
def hold(uuid: str, *, wait: float = WAIT, guest: Optional[str] = None) -> Iterator[None]:
    """Hold the guest's lock for the block; GuestBusy after ``wait`` seconds of waiting."""
    path = path_for(uuid)
    key = os.path.basename(path)
    depth = _held.__dict__.setdefault("depth", {})
    if depth.get(key):                     # this thread holds it already: re-entered
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    deadline = time.monotonic() + max(wait, 0.0)
    mutex = _mutex(key)
    if not mutex.acquire(timeout=max(wait, 0.0)):
        raise _busy(guest or uuid, wait, path)
    try:
        fd = _lock_file(path, deadline, guest or uuid, wait)
        depth[key] = 1
        try:
            yield
        finally:
            depth.pop(key, None)
            with contextlib.suppress(OSError):
                os.unlink(path)            # still ours: we hold the lock
            os.close(fd)
    finally:
        mutex.release()


def _busy(who: str, wait: float, path: str) -> GuestBusy:
    return GuestBusy(f"another cgctl process is changing this guest and did not finish within "
                     f"{wait:g} s (lock {path}); try again", guest=who, path=path)


def _lock_file(path: str, deadline: float, who: str, wait: float) -> int:
    _check_dir(os.path.dirname(path), who)
    pause = _POLL_MIN
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise CgctlError(f"cannot open the guest's lock file {path}: {exc.strerror}",
                             guest=who, path=path, errno=exc.errno) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CgctlError(f"the guest's lock file {path} is not a regular file",
                                 guest=who, path=path)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise _busy(who, wait, path) from None
                    time.sleep(pause)
                    pause = min(pause * 2, _POLL_MAX)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)                       # the holder removed it as we waited: again


def _check_dir(d: str, who: str) -> None:
    """The lock directory exists, is a directory (not a link), ours, writable by no one else."""
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        st = os.lstat(d)
    except OSError as exc:
        raise CgctlError(f"cannot make the lock directory {d}: {exc.strerror}",
                         guest=who, path=d, errno=exc.errno) from None
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o022:
        raise CgctlError(f"the lock directory {d} is not a directory writable by its owner "
                         "alone; refusing to lock there", guest=who, path=d)
    if st.st_uid != os.geteuid():
        raise CgctlError(f"the lock directory {d} belongs to uid {st.st_uid}, not to this "
                         "user (changing a guest needs root)", guest=who, path=d)

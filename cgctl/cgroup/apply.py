"""Apply an ordered list of writes all-or-nothing.

Every file is read before anything is written (so a missing file fails the
set before it starts); each write remembers what undoes it; on the first
failure the writes already made are undone, newest first.
"""

from __future__ import annotations

import errno as E
import os
from typing import Callable, List, Optional

from cgctl.host import devices
from cgctl import log
from cgctl.errors import CgroupNotFound, KernelRefused
from cgctl.cgroup import fs
from cgctl.cgroup.backend import Write



def hint_for(write: Write, err: int, usage: Callable[[], str]) -> str:
    """What the operator can do about a refusal, in the kernel's own terms."""
    name = os.path.basename(write.path)
    if err == E.EBUSY and name.startswith("memory."):
        return f"the guest uses {usage()} now, more than the new limit"
    if err == E.EBUSY and name.startswith("cpuset."):
        return "a child group (vCPU or emulator pin) still uses CPUs or nodes outside the new set"
    if err in (E.EOPNOTSUPP, E.ENOTSUP) and write.device:
        disk = devices.kernel_name(write.device)
        sched = devices.io_scheduler(write.device)[0] or "unknown"
        if "bfq" in name:
            return (f"per-device BFQ weights need the disk's scheduler set to bfq; {disk} uses "
                    f"{sched} (echo bfq > /sys/block/{disk}/queue/scheduler)")
        if name == "io.weight":
            return (f"per-device io.weight needs iocost enabled for the disk in the root's "
                    f"io.cost.qos (echo '{write.device} enable=1' > io.cost.qos), or {disk}'s "
                    f"scheduler set to bfq (it uses {sched})")
    if err == E.EINVAL:
        if name.startswith("memory.memsw") or name == "memory.limit_in_bytes":
            return "swap_hard_limit must stay at or above hard_limit"
        if name in ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max"):
            return "a quota must be at least 1000us and fit within the parent group's bandwidth"
        if name.startswith("cpuset."):
            return "the set must name online CPUs/nodes that the parent group allows"
    if err == E.ERANGE and name.startswith("cpuset."):
        return "the set names CPUs or nodes this host does not have"
    if err == E.ERANGE:
        return "value outside what the kernel accepts for this file"
    return ""


def apply_writes(writes: List[Write], *, guest: Optional[str] = None,
                 usage: Callable[[], str] = lambda: "unknown") -> None:
    # read every touched file first: fail before writing anything; what it holds is what
    # undoes the write (a file written twice here: undone to what the first write put in)
    held = {}
    for w in writes:
        if w.path in held:
            continue
        try:
            held[w.path] = fs.read(w.path)
        except FileNotFoundError:
            raise CgroupNotFound(f"{w.path} vanished (did the guest just stop?)",
                                 guest=guest, param=w.param, path=w.path) from None
    done: List[Write] = []
    for w in writes:
        try:
            w.restore = w.compute_restore(held[w.path])
            fs.write(w.path, w.data)
            held[w.path] = _after(w, held[w.path])
        except OSError as exc:
            rollback(done, guest)
            if exc.errno == E.ENOENT:
                raise CgroupNotFound(f"{w.path} vanished (did the guest just stop?)",
                                     guest=guest, param=w.param, path=w.path,
                                     errno=exc.errno) from None
            raise KernelRefused.from_oserror(exc, param=w.param, path=w.path, value=w.data,
                                             guest=guest,
                                             hint=hint_for(w, exc.errno, usage)) from None
        done.append(w)


def _after(w: Write, before: str) -> str:
    """What the file holds for the next write's undo once ``w`` is in (per-device files keep
    the other devices' lines)."""
    if w.device is None:
        return w.data
    lines = [ln for ln in before.splitlines() if ln.split(" ", 1)[0] != w.device]
    return "\n".join(lines + [w.data])


def rollback(done: List[Write], guest: Optional[str]) -> None:
    for w in reversed(done):
        try:
            fs.write(w.path, w.restore)
        except OSError as exc:
            # nothing more can be done; say so loudly, the first error still wins
            log.error("guest %s: could not restore %s to %r: %s", guest, w.path, w.restore, exc)

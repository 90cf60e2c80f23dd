"""A minimal inotify (Linux) through libc, for the threads and processes that must be woken by
the kernel rather than by a timer: the service's OOM watcher (``cgctl/service/oomwatch.py``)
and the applier of a guest start (``cgctl/start/applier.py``)."""

from __future__ import annotations

import ctypes
import os
import select
import struct

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_IGNORED, IN_NONBLOCK, IN_CLOEXEC = 0x8000, 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")


class Inotify:
    def __init__(self):
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)}")
        self.fd = fd

    def add(self, path: str, mask: int) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
        return wd

    def remove(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)

    def read(self):
        """[(wd, mask, name)] of the events queued now."""
        out = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            i = 0
            while i + _EVENT.size <= len(data):
                wd, mask, _cookie, n = _EVENT.unpack_from(data, i)
                name = data[i + _EVENT.size:i + _EVENT.size + n].rstrip(b"\0").decode(
                    "utf-8", "replace")
                out.append((wd, mask, name))
                i += _EVENT.size + n

    def wait(self, timeout: float) -> list:
        """The events that arrive within ``timeout`` seconds ([] if none did)."""
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        if not p.poll(max(int(timeout * 1000), 0)):
            return []
        return self.read()

    def close(self):
        os.close(self.fd)

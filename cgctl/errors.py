"""One error hierarchy for cgctl.

Every error carries the fields that explain it (guest, parameter, file,
errno); only the CLI turns errors into exit codes and one-line messages.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Optional

EXIT_OK = 0
EXIT_FAILURE = 1  # the request was valid but could not be carried out
EXIT_USAGE = 2  # the request itself was wrong: bad value, unknown parameter, impossible combination
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as the shell reports it)
# the one table of them all, for operators: docs/usage.md "Exit status"


class CgctlError(Exception):
    """Base of every error cgctl reports to an operator."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, guest: Optional[str] = None,
                 param: Optional[str] = None, path: Optional[str] = None,
                 errno: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.guest = guest
        self.param = param
        self.path = path
        self.errno = errno

    def __str__(self) -> str:
        parts = []
        if self.guest:
            parts.append(f"guest {self.guest!r}")
        if self.param:
            parts.append(self.param)
        prefix = ": ".join(parts)
        text = f"{prefix}: {self.message}" if prefix else self.message
        # one line, whatever the message held
        return " ".join(text.split("\n"))

    def to_dict(self) -> dict:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "guest": self.guest,
            "param": self.param,
            "path": self.path,
            "errno": _errno.errorcode.get(self.errno, self.errno) if self.errno else None,
        }


class UsageError(CgctlError):
    """Bad value, unknown parameter, impossible combination: nothing was written."""

    exit_code = EXIT_USAGE


class GuestNotFound(CgctlError):
    """The host does not know this guest."""


class GuestNotRunning(CgctlError):
    """A live change was asked of a guest that is not running."""


class GuestTransient(UsageError):
    """A config change was asked of a transient guest."""


class CgroupNotFound(CgctlError):
    """The guest runs but its cgroup could not be found (it may have just stopped)."""


class Unsupported(CgctlError):
    """The host lacks the file or controller a parameter needs."""


class UnsafePath(CgctlError):
    """A path left the cgroup mount, went through a symlink, or is not a machine group."""


class KernelRefused(CgctlError):
    """The kernel refused a write; the set was rolled back."""

    def __init__(self, message: str, **kw):
        super().__init__(message, **kw)

    @classmethod
    def from_oserror(cls, exc: OSError, *, param: str, path: str, value: str,
                     guest: Optional[str] = None, hint: str = "") -> "KernelRefused":
        name = _errno.errorcode.get(exc.errno or 0, str(exc.errno))
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        msg = f"kernel refused {value!r} in {path}: {name} ({reason})"
        if hint:
            msg += f"; {hint}"
        return cls(msg, guest=guest, param=param, path=path, errno=exc.errno)


class JournalError(CgctlError):
    """The journal could not be opened, read or written."""


class LibvirtError(CgctlError):
    """libvirt could not be reached or answered with an error."""

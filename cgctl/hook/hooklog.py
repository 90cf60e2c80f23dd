"""The hook's messages: one line each on stderr (libvirt logs it, and shows it in the error of a
refused start) and to syslog (``cgctl-hook``, facility daemon) when there is one; cgctl's own
``logging`` output (the controller's one line per change) is routed to the same place.
"""

from __future__ import annotations

import os


class Log:
    """One line per message: stderr (libvirt's log) and syslog."""

    def __init__(self, driver: str, name: str, op: str):
        self.prefix = f"cgctl hook: {driver} guest={name} op={op}"

    def __call__(self, msg: str, error: bool = False) -> None:
        line = " ".join(f"{self.prefix}: {msg}".split("\n"))
        try:
            os.write(2, (line + "\n").encode("utf-8", "replace"))
        except OSError:
            pass
        syslog(line, error)


def syslog(line: str, error: bool) -> None:
    """``line`` to syslog only (the early applier, whose stderr is /dev/null, logs with this)."""
    try:
        import syslog as _syslog
        _syslog.openlog("cgctl-hook", _syslog.LOG_PID, _syslog.LOG_DAEMON)
        _syslog.syslog(_syslog.LOG_ERR if error else _syslog.LOG_INFO, line)
    except Exception:  # no syslog here: stderr has it
        pass


def route_cgctl_log(log: Log) -> None:
    """The controller's one-line-per-change messages go where the hook's go (in the hook's own
    processes only: in the service, cgctl/start/handoff.py, they stay on the service's log)."""
    if not isinstance(log, Log):
        return
    import logging

    class _Handler(logging.Handler):
        def emit(self, record):
            log(record.getMessage(), error=record.levelno >= logging.ERROR)

    lg = logging.getLogger("cgctl")
    lg.handlers[:] = [_Handler()]
    lg.setLevel(logging.INFO)
    lg.propagate = False

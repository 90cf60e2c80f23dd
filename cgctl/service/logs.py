"""The service's log lines: timestamped on a terminal or in a file, or with the syslog priority
prefix journald reads when systemd connected stderr to the journal; the level from the config
(set again on SIGHUP)."""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("cgctl")


class Formatter(logging.Formatter):
    """``2024-05-01 12:00:00.123 cgctl[PID]: message`` on a terminal or file; under journald
    (which stamps lines itself) ``<6>message``."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}

    def __init__(self, journald: bool):
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if self.journald:
            return f"<{self.PRIORITY.get(record.levelno, 6)}>{msg}"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return f"{stamp}.{int(record.msecs):03d} cgctl[{record.process}]: {msg}"


def stderr_is_journal() -> bool:
    """True when systemd connected stderr to journald ($JOURNAL_STREAM is its dev:inode)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter(stderr_is_journal()))
    logging.basicConfig(handlers=[handler], force=True)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    log.setLevel(level.upper())

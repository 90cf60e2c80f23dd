"""One-line action logs that cost nothing on the fast path.

``logging`` takes ~8 ms to import, more than the rest of a live change. Until
something (the service, ``-v``) imports and configures it, messages at WARNING
and above go straight to stderr and the rest are dropped; once it is imported,
everything goes through the "cgctl" logger.
"""

from __future__ import annotations

import sys

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40


def log(level: int, msg: str, *args) -> None:
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("cgctl").log(level, msg, *args)
    elif level >= WARNING:
        sys.stderr.write("cgctl: " + (msg % args if args else msg) + "\n")


def enabled(level: int) -> bool:
    """Whether a message at ``level`` would go anywhere: callers skip building the arguments of
    a debug line when not (a reconcile's per-setting lines, docs/performance.md section 3 F)."""
    logging = sys.modules.get("logging")
    if logging is not None:
        return logging.getLogger("cgctl").isEnabledFor(level)
    return level >= WARNING


def debug(msg: str, *args) -> None:
    log(DEBUG, msg, *args)


def info(msg: str, *args) -> None:
    log(INFO, msg, *args)


def warning(msg: str, *args) -> None:
    log(WARNING, msg, *args)


def error(msg: str, *args) -> None:
    log(ERROR, msg, *args)

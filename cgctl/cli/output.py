"""What the command prints: tables, ``--json``, one outcome; to stdout/stderr, or to the buffers
of a request the service runs for a client (cgctl/service/cmdserver.py)."""

from __future__ import annotations

import contextvars
import sys
from typing import List

# Where output goes: stdout/stderr, or the buffers of a request the service runs for a
# client (cgctl.service.cmdserver); per thread, so concurrent requests never mix.
_OUT: "contextvars.ContextVar" = contextvars.ContextVar("cgctl_out", default=None)
_ERR: "contextvars.ContextVar" = contextvars.ContextVar("cgctl_err", default=None)


def _print(*args, **kw) -> None:
    print(*args, file=_OUT.get() or sys.stdout, **kw)


def _eprint(*args, **kw) -> None:
    print(*args, file=_ERR.get() or sys.stderr, **kw)


# -- output --------------------------------------------------------------------
def _out(args, data, human) -> None:
    if args.json:
        import json  # only here: json's import is a few ms of every command's start
        _print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        human(data)


def _table(rows: List[List[str]], header: List[str], indent: str = "") -> None:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        _print(indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _print_outcome(o: dict) -> None:
    _print(f"guest {o['guest']} ({o['driver']}): {o['mode']}")
    for c in o["changes"]:
        dev = f"[{c['device']}]" if c["device"] else ""
        _print(f"  {c['param']}{dev}: {c['old'] if c['old'] is not None else '-'} -> "
              f"{c['new'] if c['new'] is not None else '-'}")
    for e in o.get("errors", []):
        _print(f"  FAILED {e['param'] or ''}: {e['message']}")
    for w in o.get("warnings", []):
        _print(f"  warning: {w}")

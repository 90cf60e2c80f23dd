"""The service's configuration file (``/etc/cgctl/cgctl.toml``): defaults, keys, checks.

Defaults, then the file, then the command line (``cgctl daemon --journal``, ``-c``). The hook
reads its own two keys from the same file (cgctl/hook.py); the service accepts and ignores them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from . import consts
from .errors import UsageError

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Config:
    """The service's settings: defaults, then the config file, then the command line."""

    uris: Tuple[str, ...] = consts.DEFAULT_URIS
    journal: str = consts.JOURNAL_PATH
    log_level: str = "info"
    reconnect_initial: float = 0.5  # seconds before the first reconnect; doubles each attempt
    reconnect_max: float = 30.0
    keepalive_interval: int = 5  # seconds between keepalive probes ...
    keepalive_count: int = 3  # ... and how many may go unanswered before the link is dead
    watch_devices: bool = True  # start the per-device watcher if this build has one
    command_socket: str = consts.COMMAND_SOCKET  # where `cgctl set` finds the service; "" = off
    drift_interval: float = 60.0  # seconds between drift checks of running guests; 0 = off
    history_keep_days: int = 365  # history rows older than this go (cgctl prune, the service); 0 = keep
    history_keep_rows: int = 10000  # ... and beyond the newest this many per guest; 0 = no cap
    # the hook's keys share the file (cgctl/hook.py reads them); the service accepts and ignores them
    hook_strict: bool = False
    hook_early_apply: bool = True


def _check_key(key: str, value, path: str):
    def bad(want: str):
        return UsageError(f"config {path}: {key} must be {want}, not {value!r}", path=path)
    if key == "uris":
        if not isinstance(value, list) or not all(isinstance(u, str) and u.strip() for u in value):
            raise bad("a list of libvirt URIs")
        return tuple(u.strip() for u in value)
    if key == "journal":
        if not isinstance(value, str) or not os.path.isabs(value):
            raise bad("an absolute path")
        return value
    if key == "log_level":
        if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
            raise bad("one of " + ", ".join(LOG_LEVELS))
        return value.lower()
    if key in ("reconnect_initial", "reconnect_max"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
            raise bad("a number of seconds in (0, 3600]")
        return float(value)
    if key in ("keepalive_interval", "keepalive_count"):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 600:
            raise bad("a whole number in [1, 600]")
        return value
    if key == "drift_interval":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 86400:
            raise bad("a number of seconds in [0, 86400] (0 turns drift repair off)")
        return float(value)
    if key in ("history_keep_days", "history_keep_rows"):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**9:
            raise bad("a whole number >= 0 (0 keeps everything)")
        return value
    if key == "command_socket":
        if not isinstance(value, str) or (value and not os.path.isabs(value)):
            raise bad("an absolute path, or \"\" to turn it off")
        return value
    if key in ("watch_devices", "hook_strict", "hook_early_apply"):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    known = ", ".join(f.name for f in dataclasses.fields(Config))
    raise UsageError(f"config {path}: unknown key {key!r} (known: {known})", path=path)


def load_config(path: Optional[str]) -> Config:
    """The config in the TOML file at ``path``; the defaults if there is no such file.

    UsageError (naming the file and the key) for a file that cannot be read or is wrong.
    """
    import tomllib

    if not path:
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return Config()
    except OSError as e:
        raise UsageError(f"config {path}: cannot read: {e.strerror}", path=path,
                         errno=e.errno) from e
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config {path}: not valid TOML: {e}", path=path) from e
    values = {k: _check_key(k, v, path) for k, v in data.items()}
    cfg = Config(**values)
    if cfg.reconnect_initial > cfg.reconnect_max:
        raise UsageError(f"config {path}: reconnect_initial ({cfg.reconnect_initial:g}) is more "
                         f"than reconnect_max ({cfg.reconnect_max:g})", path=path)
    return cfg

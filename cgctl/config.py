"""cgctl's configuration file (``/etc/cgctl/cgctl.toml``): defaults, keys, checks.

The ONE loader of every entry point: the CLI (``cgctl/cli/main.py``), the hook (``cgctl/hook/main.py``),
the service (``cgctl/service/daemon.py``) and the command socket (``cgctl/service/cmdserver.py``) all call
``resolve()``, so a key means the same thing to each of them. Precedence, highest first: the
command line, the environment (``ENVIRONMENT``), the file, the defaults (docs/operations.md).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from cgctl import consts
from cgctl.errors import UsageError

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Config:
    """The service's settings: defaults, then the config file, then the command line."""

    uris: Tuple[str, ...] = consts.BUILTIN_URIS
    journal: str = consts.BUILTIN_JOURNAL
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
    # Prometheus metrics (cgctl/service/metrics.py, docs/observability.md): "" = off
    metrics_listen: str = ""  # "127.0.0.1:9613": serve /metrics there
    metrics_textfile: str = ""  # node_exporter's textfile collector: write this .prom file
    # the hook's keys share the file (cgctl/hook/main.py reads them); the service accepts and ignores them
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
    if key == "metrics_listen":
        try:
            if value != "":
                parse_listen(value)
        except (TypeError, ValueError):
            raise bad('"HOST:PORT" (e.g. "127.0.0.1:9613"), or "" to turn it off') from None
        return value
    if key == "metrics_textfile":
        if not isinstance(value, str) or (value and (not os.path.isabs(value)
                                                     or not value.endswith(".prom"))):
            raise bad('an absolute path ending in .prom, or "" to turn it off')
        return value
    if key in ("watch_devices", "hook_strict", "hook_early_apply"):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    known = ", ".join(f.name for f in dataclasses.fields(Config))
    raise UsageError(f"config {path}: unknown key {key!r} (known: {known})", path=path)


def parse_listen(text: str) -> Tuple[str, int]:
    """``HOST:PORT`` / ``[V6]:PORT`` / ``:PORT`` (localhost) → (host, port); ValueError."""
    import re
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]*)):(\d{1,5})", text)
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ValueError(f"not HOST:PORT: {text!r}")
    return (m.group(1) or m.group(2) or "127.0.0.1"), int(m.group(3))


# environment variables that win over the file (and lose to the command line)
ENVIRONMENT = {"journal": "CGCTL_JOURNAL", "uris": "CGCTL_URIS"}


def toml_module():
    """tomllib (Python 3.11+), else tomli (a dependency before 3.11, see pyproject.toml); else a
    one-line error (no traceback). Every TOML reader of cgctl goes through here."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UsageError("reading the config file needs Python 3.11+ or the tomli package "
                             "(pip install tomli)") from None
    return tomllib


def load_config(path: Optional[str], on_error: Optional[Callable[[str], None]] = None) -> Config:
    """The config in the TOML file at ``path``; the defaults if there is no such file.

    UsageError (naming the file and the key) for a file that cannot be read or is wrong; with
    ``on_error`` (the hook, which must never fail on it), each problem is passed to it instead
    and the key (or the whole file) falls back to the defaults.
    """
    if not path:
        return Config()
    try:
        tomllib = toml_module()
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return Config()
    except UsageError as e:
        if on_error is None:
            raise
        on_error(f"{e}; defaults used")
        return Config()
    except OSError as e:
        if on_error is not None:
            on_error(f"cannot read {path}: {e.strerror}; defaults used")
            return Config()
        raise UsageError(f"config {path}: cannot read: {e.strerror}", path=path,
                         errno=e.errno) from e
    except ValueError as e:  # tomllib.TOMLDecodeError (and tomli's) is a ValueError
        if on_error is not None:
            on_error(f"cannot parse {path}: {e}; defaults used")
            return Config()
        raise UsageError(f"config {path}: not valid TOML: {e}", path=path) from e
    values = {}
    for k, v in data.items():
        try:
            values[k] = _check_key(k, v, path)
        except UsageError as e:
            if on_error is None:
                raise
            on_error(f"{e}; ignored")
    cfg = Config(**values)
    if cfg.reconnect_initial > cfg.reconnect_max:
        msg = (f"config {path}: reconnect_initial ({cfg.reconnect_initial:g}) is more "
               f"than reconnect_max ({cfg.reconnect_max:g})")
        if on_error is None:
            raise UsageError(msg, path=path)
        on_error(msg + "; ignored")
        cfg = dataclasses.replace(cfg, reconnect_initial=Config.reconnect_initial,
                                  reconnect_max=Config.reconnect_max)
    return cfg


def from_environment(environ=None) -> dict:
    """The keys the environment sets (``ENVIRONMENT``), checked like the file's."""
    environ = os.environ if environ is None else environ
    out = {}
    journal = environ.get(ENVIRONMENT["journal"])
    if journal:
        out["journal"] = os.path.abspath(journal)
    uris = environ.get(ENVIRONMENT["uris"])
    if uris is not None and uris.split():
        out["uris"] = tuple(uris.split())
    return out


def resolve(config_file: Optional[str], command_line: Optional[dict] = None, environ=None,
            on_error: Optional[Callable[[str], None]] = None) -> Config:
    """What every entry point runs with: command line > environment > file > defaults.

    ``command_line`` holds only the options given (None values are "not given"); a relative
    journal is made absolute against this process's working directory."""
    cfg = load_config(config_file, on_error)
    given = {k: v for k, v in (command_line or {}).items() if v is not None}
    if given.get("journal"):
        given["journal"] = os.path.abspath(given["journal"])
    if "uris" in given:
        given["uris"] = tuple(given["uris"])
    return dataclasses.replace(cfg, **{**from_environment(environ), **given})

"""The hook's contract and settings: options before the driver word, exit codes, time bounds,
and strict/early resolved from the options, the environment and the configuration file.

Imports nothing heavy and reads nothing at import (a bad environment value must not make the
import fail): ``cgctl/hook/install.py`` builds the installed script from these constants.
"""

from __future__ import annotations

import os

from cgctl import consts
from cgctl.consts import DRIVERS  # noqa: F401  (the drivers a hook is installed for)

# defaults; the environment may change them (read by timeouts(), never at import)
HOOK_TIMEOUT = 5.0  # hard bound of one call, s (CGCTL_HOOK_TIMEOUT)
EARLY_TIMEOUT = 20.0  # the early applier's life, s (CGCTL_HOOK_EARLY_TIMEOUT)
TIMEOUT_ENVS = (("CGCTL_HOOK_TIMEOUT", HOOK_TIMEOUT), ("CGCTL_HOOK_EARLY_TIMEOUT", EARLY_TIMEOUT))
TIMEOUT_MAX = 3600.0  # above this a timer overflows or the bound means nothing
# the applier is woken by inotify (cgctl/start/applier.py); it also looks again after this long
# without an event, for what has no file event of its own (QEMU's exec between two writes of
# libvirt's status file)
EARLY_RECHECK = 0.1
# the hand-off to the service (cgctl/start/handoff.py): the service holds this lock file while it
# takes requests; the installed script drops a request file named REQUEST_PREFIX + DRIVER-NAME
SERVICE_LOCK = "service.lock"
REQUEST_PREFIX = "request-"
STARTED_WAIT = 2.0  # s the script waits for an applier's answer at `started begin`
STDIN_LIMIT = 16 << 20  # a domain XML is a few KiB; never read without bound

EXIT_OK, EXIT_REFUSE, EXIT_USAGE = 0, 1, 2
# The installed script (cgctl/hook/install.py) runs the hook with SCRIPT_ENV set; a deliberate
# refusal is then EXIT_SCRIPT_REFUSE, which the script turns into libvirt's 1. Every other
# status (Python's 1 for a traceback, 126/127, a signal) is a broken install to the script,
# never a refusal (docs/hook.md, "When cgctl itself is broken").
SCRIPT_ENV = "CGCTL_HOOK_SCRIPT"
EXIT_SCRIPT_REFUSE = 3
STRICT_ENV = "CGCTL_HOOK_STRICT"
EARLY_ENV = "CGCTL_HOOK_EARLY_APPLY"

# (op, subop) -> what to do; anything else is a no-op (answered by the installed script itself)
ACTIONS = {
    ("prepare", "begin"): "early",
    ("start", "begin"): "early",
    ("started", "begin"): "started",
    ("reconnect", "begin"): "reconnect",
}


class HookUsage(Exception):
    """The hook was called with arguments libvirt never gives."""


class HookFailure(Exception):
    """The config could not be put in force (logged; fatal only for a strict ``started``)."""


class Options:
    """Options given before the driver word (and baked into the installed script)."""

    __slots__ = ("journal", "config_file", "strict", "early")

    def __init__(self):
        self.journal = None
        self.config_file = consts.CONFIG_PATH
        self.strict = None  # None: from the environment, then the config file
        self.early = None

    def argv(self) -> list:
        """These options as arguments again (for the installed script)."""
        out = []
        if self.journal:
            out += ["--journal", self.journal]
        if self.config_file != consts.CONFIG_PATH:
            out += ["--config-file", self.config_file]
        if self.strict is not None:
            out.append("--strict" if self.strict else "--no-strict")
        if self.early is not None:
            out.append("--early-apply" if self.early else "--no-early-apply")
        return out


def parse_options(args) -> tuple:
    """Leading options → (Options, remaining words)."""
    opts, rest = Options(), list(args)
    if rest and rest[0] == "--":  # `cgctl hook -- --strict qemu ...` (argparse's REMAINDER)
        rest.pop(0)
    flags = {"--strict": ("strict", True), "--no-strict": ("strict", False),
             "--early-apply": ("early", True), "--no-early-apply": ("early", False)}
    while rest and rest[0].startswith("--"):
        word = rest.pop(0)
        key, eq, value = word.partition("=")
        if word in flags:
            setattr(opts, *flags[word])
        elif key in ("--journal", "--config-file"):
            if not eq:
                if not rest:
                    raise HookUsage(f"{key} needs a value")
                value = rest.pop(0)
            setattr(opts, key[2:].replace("-", "_"), value)
        else:
            raise HookUsage(f"unknown option {word!r}")
    return opts, rest


def read_config_file(path: str, log=None) -> dict:
    """The keys the hook uses from cgctl's configuration file, read by the one loader every
    entry point uses (cgctl.config). Never fatal: a problem is logged and that key (or
    the whole file) falls back to its default."""
    from cgctl.config import load_config
    cfg = load_config(path, on_error=(lambda m: log(m, error=True)) if log else (lambda m: None))
    return {"hook_strict": cfg.hook_strict, "hook_early_apply": cfg.hook_early_apply,
            "journal": cfg.journal}


def timeouts(log=None) -> tuple:
    """(call bound, early applier's life) in s, from the environment; a bad value is one log
    line and the default (never an exception: this runs on every call)."""
    import math
    out = []
    for name, default in TIMEOUT_ENVS:
        raw = os.environ.get(name)
        value = default
        if raw is not None and raw.strip():
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not 0 < value <= TIMEOUT_MAX:  # also NaN
                if log:
                    log(f"{name}={raw!r} is not a number of seconds in (0, {TIMEOUT_MAX:g}]; "
                        f"{default:g} s used", error=True)
                value = default
        out.append(value)
    return tuple(out)


def lock_wait_within(bound: float) -> float:
    """How long an apply bounded by ``bound`` seconds may wait for the guest's lock."""
    return max(min(bound * 0.6, bound - 1.0), 0.0)


def env_bool(name: str):
    """True/False from the environment variable ``name``; None if unset or blank."""
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return None
    return v.strip().lower() in ("1", "yes", "true", "on")


def resolve_settings(opts: Options, log=None) -> tuple:
    """(strict, early) from the options, the environment, the configuration file."""
    strict, early = opts.strict, opts.early
    if strict is None:
        strict = env_bool(STRICT_ENV)
    if early is None:
        early = env_bool(EARLY_ENV)
    if strict is None or early is None:
        cfg = read_config_file(opts.config_file, log)
        if strict is None:
            strict = cfg.get("hook_strict", False)
        if early is None:
            early = cfg.get("hook_early_apply", True)
    return strict, early

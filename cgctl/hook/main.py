"""libvirt's hook, ``cgctl hook [OPTIONS] qemu|lxc NAME OP SUBOP EXTRA`` (domain XML on stdin):
parse, dispatch to the early applier or the apply of ``started``/``reconnect``, and the exit
policy, all within a watchdog's time bound. What each call does: docs/hook.md. Imports little
and never libvirt (libvirt waits for the hook holding the guest's lock: calling it deadlocks).
"""

from __future__ import annotations

import os
import sys

from cgctl.hook.hooklog import Log
from cgctl.start.options import (ACTIONS, DRIVERS, EARLY_ENV, EXIT_OK, EXIT_REFUSE,
                                EXIT_SCRIPT_REFUSE, EXIT_USAGE, SCRIPT_ENV, STDIN_LIMIT, STRICT_ENV, HookFailure,
                                HookUsage, Options, env_bool, parse_options, resolve_settings,
                                timeouts)

# The installed script, not this module, has the last word on the exit status libvirt sees, so
# a cgctl that cannot even be imported never kills or refuses a guest (docs/hook.md, "When cgctl
# itself is broken"). Nothing here may fail at import: settings from the environment are read
# per call (options.timeouts(), options.resolve_settings()) with defaults.


def main(hook_args, ctl=None) -> int:
    """``cgctl hook ...``: libvirt's call, or ``install`` / ``uninstall``."""
    try:
        opts, rest = parse_options(hook_args)
        if rest and rest[0] in ("install", "uninstall"):
            from cgctl.hook.install import install_main
            return install_main(rest[0], rest[1:], opts, ctl)
        if len(rest) not in (4, 5) or rest[0] not in DRIVERS:
            raise HookUsage("usage: cgctl hook [--strict] [--journal PATH] qemu|lxc NAME OP SUBOP "
                            "[EXTRA] (domain XML on stdin), or cgctl hook install|uninstall")
    except HookUsage as exc:
        print(f"cgctl hook: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    driver, name, op, subop = rest[:4]
    return run(driver, name, op, subop, opts, ctl)


def run(driver: str, name: str, op: str, subop: str, opts: Options, ctl=None) -> int:
    """One call from libvirt; returns the exit status (the policy: docs/hook.md, "Failures")."""
    from cgctl.start.domain import StdinDomain
    action = ACTIONS.get((op, subop))
    log = Log(driver, name, op)
    dom = StdinDomain(_read_stdin(), name, log)
    _quiet_stdio()
    if action is None:
        return EXIT_OK
    refuse = EXIT_SCRIPT_REFUSE if os.environ.get(SCRIPT_ENV) else EXIT_REFUSE
    call_timeout, early_timeout = timeouts(log)
    # strict as far as known before reading the configuration file (which might hang)
    state = {"strict": bool(opts.strict if opts.strict is not None else env_bool(STRICT_ENV))}
    _start_watchdog(call_timeout, lambda: refuse if action == "started" and state["strict"]
                    else EXIT_OK, log)
    try:
        if action == "early" and _maybe_early(opts):
            # the config file may still say no: the detached child reads it (cgctl/hook/early.py)
            from cgctl.hook import early as applier
            applier.launch(driver, name, dom, opts, log, early_timeout)
            return EXIT_OK
        from cgctl.hook import apply
        state["strict"], early = resolve_settings(opts, log)
        if action == "early":  # early apply off: the metadata is taken here, no applier
            apply.receive_metadata(driver, name, dom, opts, ctl, log)
            return EXIT_OK
        if action == "started":
            apply.started(driver, name, dom, opts, ctl, log)  # receives the metadata itself
            return EXIT_OK
        apply.reconnect(driver, name, opts, ctl, log)
        return EXIT_OK
    except BaseException as exc:  # a hook never lets a traceback or an exit code slip out
        why = str(exc) if isinstance(exc, HookFailure) else _describe(exc)
        if action == "started" and state["strict"]:
            log(f"{why}; refusing the start (hook_strict: the guest must not run without "
                "its limits)", error=True)
            return refuse
        if action == "started":
            log(f"{why}; the guest starts without them (not strict: set hook_strict = true "
                "to refuse the start instead)", error=True)
        else:
            log(why, error=True)
        return EXIT_OK


def _maybe_early(opts: Options) -> bool:
    """Early apply not turned off by the option or the environment (what libvirt waits for
    must not read the configuration file: the detached child does)."""
    early = opts.early if opts.early is not None else env_bool(EARLY_ENV)
    return early is not False


def _describe(exc: BaseException) -> str:
    from cgctl.errors import CgctlError
    if isinstance(exc, CgctlError):
        return f"cannot apply the journal config: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"cannot apply the journal config: internal error: {type(exc).__name__}: {exc}"


def _read_stdin() -> bytes:
    """The domain XML libvirt writes to stdin (empty if stdin is a terminal or closed)."""
    try:
        if os.isatty(0):
            return b""
    except OSError:
        return b""
    chunks, size = [], 0
    while size < STDIN_LIMIT:
        try:
            b = os.read(0, 65536)
        except OSError:
            break
        if not b:
            break
        chunks.append(b)
        size += len(b)
    return b"".join(chunks)


def _quiet_stdio() -> None:
    """stdin and stdout on /dev/null: nothing of libvirt's stays open but stderr (the log)."""
    try:
        fd = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    for target in (0, 1):
        try:
            os.dup2(fd, target)
        except OSError:
            pass
    os.close(fd)


def _start_watchdog(seconds: float, code, log: Log) -> None:
    """Exit the process with ``code()`` if this call is still running after ``seconds``.

    A thread, not SIGALRM: a Python signal handler cannot run while SQLite waits for a lock,
    and this bound must hold whatever the main thread is doing.
    """
    import threading

    def fire():
        c = code()
        log(f"still running after {seconds:g} s: giving up "
            f"({'refusing the start' if c else 'exit 0'})", error=True)
        os._exit(c)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()


if __name__ == "__main__":  # the installed script: python -m cgctl.hook [OPTIONS] DRIVER ARGS...
    sys.exit(main(sys.argv[1:]))

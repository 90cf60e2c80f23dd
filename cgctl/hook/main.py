"""libvirt's hook: ``cgctl hook qemu|lxc NAME OP SUBOP EXTRA``, the domain XML on stdin (DESIGN §7).

libvirt runs every executable in ``/etc/libvirt/hooks/qemu.d/`` (and ``lxc.d/``) as
``SCRIPT NAME OP SUBOP EXTRA`` and waits for it, synchronously, holding the guest's lock. So this
module never imports libvirt (``cgctl.virt``): calling back into libvirt from here deadlocks. It
finds the guest from libvirt's runtime files instead (``cgctl.host.runfiles``), imports little, and is
bounded in time (``HOOK_TIMEOUT``, enforced by a watchdog thread that exits the process, so even a
journal lock held by another process cannot hold libvirt up).

What each call does:

- ``prepare begin`` / ``start begin`` (QEMU and LXC): launch the **early applier** and return at
  once. The applier is a double-forked process in its own session, stdio on /dev/null and every
  other descriptor closed (libvirt reads the hook's stdout/stderr to EOF, so a child holding them
  would hold libvirt). It polls every ``EARLY_POLL`` s, for at most ``EARLY_TIMEOUT`` s, until
  the guest's process exists (pid file + argv naming this guest: for QEMU that is after exec, so
  libvirt has placed it in its cgroup and written its own XML tunables), its machine cgroup
  exists, and (if the config has vCPU/emulator settings) its ``vcpuN``/``emulator`` groups exist;
  then it applies the journal config once. On a normal QEMU boot that is before libvirt sends
  ``cont`` to the vCPUs, which closes the exposure window ``started begin`` leaves open.
- ``started begin``: apply the journal config now (synchronously, the authority; libvirt may have
  rewritten vCPU quotas after the early write). A failure is logged and exits 0, unless the hook
  is **strict**: then it exits 1 and libvirt kills the guest and fails the start (fail closed).
- ``reconnect begin`` (libvirtd restarted): always exit 0 (non-zero kills a *running* guest).
  Re-applies only if the journal's last applied instance is not this process, so ``--live``
  changes on a guest that kept running are kept.
- anything else (``stopped``, ``release``, ``migrate``, ``restore``...): nothing, exit 0, no output
  (libvirt would take output of ``migrate``/``restore`` as a replacement XML). The installed
  script answers these itself without starting Python (``cgctl/hook/install.py``).

The installed script, not this module, has the last word on the exit status libvirt sees, so
that a cgctl that cannot even be imported never kills or refuses a guest (docs/hook.md, "When
cgctl itself is broken"). Under it (``CGCTL_HOOK_SCRIPT`` set) a deliberate refusal exits
``EXIT_SCRIPT_REFUSE`` (3), which the script turns into libvirt's 1 at ``started begin``; any
other non-zero status means "broken" to the script. Nothing here may fail at import: settings
from the environment are read per call (``timeouts()``, ``resolve_settings()``) with defaults.

Strictness: ``--strict``/``--no-strict``, else the environment's ``CGCTL_HOOK_STRICT``, else
``hook_strict`` in the configuration file (``/etc/cgctl/cgctl.toml``), else not strict. libvirt
runs hooks with a cleaned environment, so ``cgctl hook install --strict`` writes the flag into the
installed script. ``hook_early_apply = false`` (or ``--no-early-apply``) turns the early applier off.

Messages: one line each on stderr (libvirt logs it, and shows it in the error of a refused start)
and to syslog (``cgctl-hook``, facility daemon) when there is one.
"""

from __future__ import annotations

import os
import sys

from cgctl import consts

DRIVERS = ("qemu", "lxc")

# defaults; the environment may change them (read by timeouts(), never at import: a bad value
# must not make the import fail, which would be an exit path of the hook)
HOOK_TIMEOUT = 5.0  # hard bound of one call, s (CGCTL_HOOK_TIMEOUT)
EARLY_TIMEOUT = 20.0  # the early applier's life, s (CGCTL_HOOK_EARLY_TIMEOUT)
TIMEOUT_ENVS = (("CGCTL_HOOK_TIMEOUT", HOOK_TIMEOUT), ("CGCTL_HOOK_EARLY_TIMEOUT", EARLY_TIMEOUT))
TIMEOUT_MAX = 3600.0  # above this a timer overflows or the bound means nothing
EARLY_POLL = 0.005  # s between two looks at the guest's pid file / cgroup
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

# (op, subop) -> what to do; anything else is a no-op
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


# --------------------------------------------------------------------------- messages

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
        _syslog(line, error)


def _syslog(line: str, error: bool) -> None:
    try:
        import syslog
        syslog.openlog("cgctl-hook", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_ERR if error else syslog.LOG_INFO, line)
    except Exception:  # no syslog here: stderr has it
        pass


def _route_cgctl_log(log: Log) -> None:
    """The controller's one-line-per-change messages go where the hook's go."""
    import logging

    class _Handler(logging.Handler):
        def emit(self, record):
            log(record.getMessage(), error=record.levelno >= logging.ERROR)

    lg = logging.getLogger("cgctl")
    lg.handlers[:] = [_Handler()]
    lg.setLevel(logging.INFO)
    lg.propagate = False


# --------------------------------------------------------------------------- settings

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


def _env_bool(name: str):
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return None
    return v.strip().lower() in ("1", "yes", "true", "on")


def resolve_settings(opts: Options, log=None) -> tuple:
    """(strict, early) from the options, the environment, the configuration file."""
    strict, early = opts.strict, opts.early
    if strict is None:
        strict = _env_bool(STRICT_ENV)
    if early is None:
        early = _env_bool(EARLY_ENV)
    if strict is None or early is None:
        cfg = read_config_file(opts.config_file, log)
        if strict is None:
            strict = cfg.get("hook_strict", False)
        if early is None:
            early = cfg.get("hook_early_apply", True)
    return strict, early


# --------------------------------------------------------------------------- entry points

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
    action = ACTIONS.get((op, subop))
    log = Log(driver, name, op)
    xml = _read_stdin()
    _quiet_stdio()
    if action is None:
        return EXIT_OK
    refuse = EXIT_SCRIPT_REFUSE if os.environ.get(SCRIPT_ENV) else EXIT_REFUSE
    call_timeout, early_timeout = timeouts(log)
    # strict as far as known before reading the configuration file (which might hang)
    state = {"strict": bool(opts.strict if opts.strict is not None else _env_bool(STRICT_ENV))}
    _start_watchdog(call_timeout, lambda: refuse if action == "started" and state["strict"]
                    else EXIT_OK, log)
    try:
        state["strict"], early = resolve_settings(opts, log)
        overlay = _receive_metadata(driver, name, xml, opts, ctl, log) \
            if action in ("early", "started") else {}
        if action == "early":
            if early:
                _launch_early(driver, name, xml, opts, log, early_timeout, overlay)
            return EXIT_OK
        if action == "started":
            _started(driver, name, xml, opts, ctl, log, overlay)
            return EXIT_OK
        _reconnect(driver, name, opts, ctl, log)
        return EXIT_OK
    except BaseException as exc:  # a hook never lets a traceback or an exit code slip out
        if isinstance(exc, (HookFailure,)):
            why = str(exc)
        else:
            why = _describe(exc)
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


def _controller(opts: Options, ctl=None, lock_wait: float = None):
    from cgctl.core.controller import Controller
    if ctl is None or (opts.journal is not None and opts.journal != ctl.journal_path):
        from cgctl.config import resolve
        # --journal (baked in at install), $CGCTL_JOURNAL, the config file's journal, the default
        cfg = resolve(opts.config_file, {"journal": opts.journal}, on_error=lambda m: None)
        ctl = Controller(journal_path=cfg.journal)
    # the guest's lock (cgctl/core/guestlock.py) is waited for well within this call's own bound:
    # a writer holding it too long costs this apply (logged), never libvirt's start
    ctl.lock_wait = lock_wait if lock_wait is not None else lock_wait_within(HOOK_TIMEOUT)
    return ctl


def lock_wait_within(bound: float) -> float:
    """How long an apply bounded by ``bound`` seconds may wait for the guest's lock."""
    return max(min(bound * 0.6, bound - 1.0), 0.0)


# --------------------------------------------------------------------------- domain XML

class DomainInfo:
    __slots__ = ("name", "uuid", "vcpus")

    def __init__(self, name, uuid, vcpus):
        self.name, self.uuid, self.vcpus = name, uuid, vcpus


def parse_domain_xml(xml: bytes) -> DomainInfo:
    """Name, UUID and vCPU count from the domain XML; HookFailure if it is not one."""
    import xml.etree.ElementTree as ET
    from cgctl.host.runfiles import normalize_uuid
    if not xml.strip():
        raise HookFailure("no domain XML on stdin")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise HookFailure(f"malformed domain XML on stdin ({exc})") from None
    if root.tag == "domstatus":  # not what libvirt sends, but harmless
        root = root.find("domain") if root.find("domain") is not None else root
    if root.tag != "domain":
        raise HookFailure(f"stdin holds <{root.tag}>, not a <domain> XML")
    uuid = normalize_uuid((root.findtext("uuid") or "").strip())
    if not uuid:
        raise HookFailure("the domain XML on stdin has no valid <uuid>")
    vcpus = 0
    v = root.find("vcpu")
    if v is not None:
        try:
            vcpus = int(v.get("current") or (v.text or "0").strip())
        except ValueError:
            vcpus = 0
    return DomainInfo((root.findtext("name") or "").strip(), uuid, vcpus)


def _domain_or_log(xml: bytes, name: str, log: Log):
    try:
        info = parse_domain_xml(xml)
    except HookFailure as exc:
        log(str(exc), error=True)
        return None
    if info.name and info.name != name:
        log(f"the domain XML on stdin names {info.name!r}, not {name!r}; ignored", error=True)
        return None
    return info


# --------------------------------------------------------------------------- metadata (travel)

def _receive_metadata(driver: str, name: str, xml: bytes, opts: Options, ctl, log: Log) -> dict:
    """Merge the settings carried in the domain XML's <metadata> into the journal (a guest
    defined or migrated from another host: cgctl/core/travel.py); the <live> overlay to apply.
    Never raises: the journal config still applies."""
    try:
        from cgctl.model import metadata
        from cgctl.core import travel
        if metadata.NS.encode() not in xml:
            return {}  # the common case costs one byte search
        info = _domain_or_log(xml, name, log)
        if info is None:
            return {}
        c = _controller(opts, ctl)
        _route_cgctl_log(log)
        try:
            overlay, decisions = travel.receive(c.journal(), info.uuid, name, driver, xml,
                                                source="hook")
        finally:
            if c is not ctl:
                # closed before the early applier forks: a child must not inherit an open
                # SQLite connection (its locks and WAL state belong to this process)
                c.close()
        taken = sum(d.taken for d in decisions)
        if decisions:
            log(f"metadata: {taken} setting(s) taken, {len(decisions) - taken} kept from this "
                f"host's journal")
        return overlay
    except Exception as exc:  # noqa: BLE001  a hook never fails on metadata
        log(f"cannot use the settings in the domain's metadata: {exc}", error=True)
        return {}


# --------------------------------------------------------------------------- started / reconnect

def _started(driver: str, name: str, xml: bytes, opts: Options, ctl, log: Log,
             overlay=None) -> None:
    from cgctl.host import runfiles
    from cgctl.errors import GuestNotRunning
    info = _domain_or_log(xml, name, log)  # malformed: logged, the runtime files decide
    ctl = _controller(opts, ctl)
    _route_cgctl_log(log)
    guest = runfiles.find_running(name, ctl.run_dir, drivers=(driver,))
    if info and guest and guest.uuid != info.uuid:
        raise HookFailure(f"libvirt's runtime files say {name} is {guest.uuid}, the domain XML "
                          f"says {info.uuid}")
    uuid = info.uuid if info else (guest.uuid if guest else None)
    if uuid is None:
        raise HookFailure("cannot tell which guest this is: no usable domain XML on stdin and "
                          f"no running {driver} guest named {name}")
    config = ctl.effective(uuid).config  # the guest's profile and its own settings
    if not config and not overlay:
        return  # nothing configured: nothing to enforce, strict or not
    if guest is None:
        raise GuestNotRunning(f"libvirt says the guest started, but no running {driver} process "
                              f"of it was found under {ctl.run_dir}", guest=name)
    outcome = ctl.apply_config(guest, source="hook", command="hook started", overlay=overlay)
    if outcome.errors:
        raise HookFailure(f"{len(outcome.errors)} of {len(config)} setting(s) not applied: "
                          + "; ".join(str(e) for e in outcome.errors))
    log(f"applied {len(outcome.changes)} setting(s) from the journal")


def _reconnect(driver: str, name: str, opts: Options, ctl, log: Log) -> None:
    """libvirtd restarted and found the guest running: re-apply only to a new instance."""
    from cgctl.host import runfiles
    ctl = _controller(opts, ctl)
    _route_cgctl_log(log)
    guest = runfiles.find_running(name, ctl.run_dir, drivers=(driver,))
    if guest is None:
        return
    journal = ctl.journal(create=False)
    if not ctl.effective(guest.uuid, journal).config:
        return
    # once: this very process has its config (and maybe later --live changes): keep them
    outcome = ctl.apply_config(guest, source="hook", command="hook reconnect", journal=journal,
                               once=True)
    if outcome is not None and outcome.errors:
        raise HookFailure(f"{len(outcome.errors)} setting(s) not applied: "
                          + "; ".join(str(e) for e in outcome.errors))


# --------------------------------------------------------------------------- the early applier

def lock_path(driver: str, uuid: str) -> str:
    return os.path.join(consts.HOOK_RUN_DIR, f"early-{driver}-{uuid}.lock")


def _try_lock(path: str):
    """An fd holding an exclusive lock on ``path``, or None if another process holds it."""
    import fcntl
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _launch_early(driver: str, name: str, xml: bytes, opts: Options, log: Log,
                  timeout: float = EARLY_TIMEOUT, overlay=None) -> None:
    info = _domain_or_log(xml, name, log)
    if info is None:
        return
    from cgctl.host.runfiles import validate_name
    validate_name(name)
    path = lock_path(driver, info.uuid)
    fd = _try_lock(path)
    if fd is None:
        return  # launched at `prepare begin` and still waiting: one is enough
    os.close(fd)
    launched = _monotonic()
    _detach(lambda: early_apply(driver, name, info.uuid, info.vcpus, opts, launched, timeout,
                                overlay), timeout)


def _monotonic() -> float:
    import time
    return time.monotonic()


def _detach(work, timeout: float = EARLY_TIMEOUT) -> None:
    """Run ``work`` in a grandchild in its own session, with no descriptor of ours open.

    The intermediate child is reaped here, so the hook leaves no zombie and libvirt sees
    our exit as soon as we return.
    """
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    code = 0
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.closerange(3, max(os.sysconf("SC_OPEN_MAX"), 1 << 16))  # includes `null`
        import signal
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the hard bound: the kernel kills us
        signal.alarm(int(timeout) + 5)
        work()
    except BaseException as exc:  # nothing to print to: syslog only
        _syslog(f"cgctl hook: early applier failed: {type(exc).__name__}: {exc}", True)
        code = 1
    finally:
        # os._exit skips the collector; a SQLite connection that failed to open is kept by a
        # reference cycle (its statement cache) and, unclosed, leaves -wal/-shm beside the journal
        import gc
        gc.collect()
        os._exit(code)


def early_apply(driver: str, name: str, uuid: str, vcpus: int, opts: Options,
                launched: float, timeout: float = EARLY_TIMEOUT, overlay=None) -> str:
    """Wait for the guest's process and cgroup, then apply its journal config once.

    Returns what happened (also recorded in the journal's history as ``hook early``).
    """
    import contextlib
    fd = _try_lock(lock_path(driver, uuid))
    if fd is None:
        return "another early applier waits for this guest"
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        what = _early_apply(driver, name, uuid, vcpus, opts, launched, timeout, overlay)
        _syslog(f"cgctl hook: {driver} guest={name} op=early: {what}", False)
        return what
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path(driver, uuid))  # still ours: we hold the lock
        os.close(fd)


def _early_apply(driver, name, uuid, vcpus, opts, launched, timeout, overlay=None) -> str:
    log = Log(driver, name, "early")
    _route_cgctl_log(log)
    ctl = _controller(opts, lock_wait=lock_wait_within(EARLY_TIMEOUT))
    try:  # closed here (checkpoints the WAL): the applier ends in os._exit, which skips it
        return _early_apply_with(ctl, driver, name, uuid, vcpus, launched, timeout, log, overlay)
    finally:
        ctl.close()


def _early_apply_with(ctl, driver, name, uuid, vcpus, launched, timeout, log,
                      overlay=None) -> str:
    import time
    from cgctl.model import params as P
    from cgctl.cgroup import placement
    from cgctl.host import runfiles
    from cgctl.errors import CgroupNotFound, UnsafePath

    deadline = launched + timeout
    journal = ctl.journal(create=False)
    config = dict(ctl.effective(uuid, journal).config)  # profile + own (cgctl/core/profiles.py)
    config.update(overlay or {})  # <live> settings carried in the metadata (cgctl/core/travel.py)
    if not config:
        return "nothing in the journal"
    sub = [P.BY_NAME[n] for n, _ in config if n in P.BY_NAME
           and P.BY_NAME[n].target in (P.VCPUS, P.EMULATOR)] if driver == "qemu" else []
    host = ctl.host
    while time.monotonic() < deadline:
        # the guest's process as cgctl.host.runfiles checks it (pid file and status agree, exe, uid,
        # start time, argv): for QEMU, after exec (libvirt placed it in its cgroup and wrote
        # its own tunables before that); a stale pid file or a faked argv fails this test
        pid = runfiles.verified_pid(driver, name, uuid, ctl.run_dir, consts.PROC_ROOT)
        if pid:
            try:
                groups = placement.groups_for_pid(pid, host, guest=name, driver=driver)
            except (CgroupNotFound, UnsafePath):
                groups = None
            if groups is not None and _subgroups_ready(groups, sub, vcpus):
                guest = runfiles.Guest(name=name, uuid=uuid, driver=driver,
                                      uri=runfiles.SYSTEM_URIS[driver], running=True,
                                      persistent=runfiles.is_persistent(driver, name), pid=pid)
                # once, decided under the guest's lock: `started` may have applied meanwhile
                ctl.lock_wait = max(min(ctl.lock_wait, deadline - time.monotonic()), 0.0)
                outcome = ctl.apply_config(guest, source="hook", command="hook early",
                                           journal=journal, once=True,
                                           overlay=overlay)
                if outcome is None:
                    return "already applied to this instance"
                return (f"applied {len(outcome.changes)} setting(s), "
                        f"{len(outcome.errors)} failed, {time.monotonic() - launched:.3f} s "
                        "after the hook")
        time.sleep(EARLY_POLL)
    log(f"the guest's cgroup did not appear within {timeout:g} s; "
        "`started begin` and the service apply the config", error=True)
    return "timed out"


def _subgroups_ready(groups, params, vcpus: int) -> bool:
    from cgctl.errors import CgctlError
    for p in params:
        try:
            dirs = groups.dirs(p)
        except CgctlError:
            return False
        if p.target == "vcpus" and len(dirs) < max(vcpus, 1):
            return False
    return True


if __name__ == "__main__":  # the installed script: python -m cgctl.hook [OPTIONS] DRIVER ARGS...
    sys.exit(main(sys.argv[1:]))

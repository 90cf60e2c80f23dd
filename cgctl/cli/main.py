"""The ``cgctl`` command: a thin shell over the controller.

Exit status: 0 done; 1 could not be done (guest not running, kernel refused,
journal unwritable...); 2 the request was wrong (bad value, unknown
parameter, impossible combination). No traceback reaches an operator.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import sys
import textwrap
from typing import List, Optional

from cgctl import __version__, consts
from cgctl.model import params as P
from cgctl.errors import (EXIT_FAILURE, EXIT_INTERRUPTED, CgctlError, GuestNotFound,
                          JournalError, UsageError)


MODE_HELP = ("--live/--dynamic: now only; --config/--static: from the next start; "
             "--live --config or --perm: both; --current (default): live if running, else config")


# Where output goes: stdout/stderr, or the buffers of a request the service runs for a
# client (cgctl.service.cmdserver); per thread, so concurrent requests never mix.
_OUT: "contextvars.ContextVar" = contextvars.ContextVar("cgctl_out", default=None)
_ERR: "contextvars.ContextVar" = contextvars.ContextVar("cgctl_err", default=None)


def _print(*args, **kw) -> None:
    print(*args, file=_OUT.get() or sys.stdout, **kw)


def _eprint(*args, **kw) -> None:
    print(*args, file=_ERR.get() or sys.stderr, **kw)


def run_captured(argv: List[str], who: Optional[str] = None, only=None):
    """``main(argv)`` with its output captured: (exit status, stdout text, stderr text).

    ``who`` is recorded in the history as the one who asked (the command socket's client);
    ``only``: the commands this caller may run (anything else is refused, never run)."""
    import io
    from cgctl.core import journal
    out, err = io.StringIO(), io.StringIO()
    t_out, t_err = _OUT.set(out), _ERR.set(err)
    t_who = journal.ASKED_BY.set(who)
    try:
        rc = main(list(argv), only=only)
    except SystemExit as exc:  # never end the caller, whatever asks for it
        rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        _OUT.reset(t_out)
        _ERR.reset(t_err)
        journal.ASKED_BY.reset(t_who)
    return rc, out.getvalue(), err.getvalue()


class _Parser(argparse.ArgumentParser):
    """argparse, read strictly: no abbreviated options (``--journ`` is not ``--journal``), so
    the command socket (cgctl/service/cmdserver.py) and this process read a command line alike."""

    def __init__(self, *args, **kw):
        kw["allow_abbrev"] = False
        super().__init__(*args, **kw)

    def error(self, message):  # one line, exit 2, as every other usage error
        raise UsageError(message)

    def _print_message(self, message, file=None):  # --help, --version: captured output too
        if message:
            err = file is sys.stderr
            target = (_ERR.get() or sys.stderr) if err else (_OUT.get() or sys.stdout)
            target.write(message)


def _add_mode(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mode", textwrap.fill(MODE_HELP, 79))
    g.add_argument("--live", "--dynamic", dest="live", action="store_true",
                   help="the running guest's cgroups now; gone at the next start")
    g.add_argument("--config", "--static", dest="config", action="store_true",
                   help="the journal: in force from the next start")
    g.add_argument("--perm", "--permanent", dest="perm", action="store_true",
                   help="both: now and at every start")
    g.add_argument("--current", dest="current", action="store_true",
                   help="--live if the guest runs, else --config (the default)")


def _mode(args) -> str:
    from cgctl.core.controller import BOTH, CONFIG, CURRENT, LIVE
    if args.current and (args.live or args.config or args.perm):
        raise UsageError("--current cannot be combined with --live, --config or --perm")
    if args.perm or (args.live and args.config):
        return BOTH
    if args.live:
        return LIVE
    if args.config:
        return CONFIG
    return CURRENT


# virsh-style commands (memtune, schedinfo, cpuset, blkiotune) and their options: the
# catalogue's family and virsh columns (cgctl/model/params.py)
_VIRSH = P.virsh_options()


def _add_common(p: argparse.ArgumentParser, defaults: bool) -> None:
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")
    # None = not given: the value then comes from $CGCTL_JOURNAL / $CGCTL_URIS, the config
    # file, the defaults (cgctl.config.resolve)
    p.add_argument("--journal", default=d(None),
                   help=f"journal file (default: $CGCTL_JOURNAL, the config file's journal, "
                        f"{consts.BUILTIN_JOURNAL})")
    p.add_argument("-c", "--connect", action="append", metavar="URI", default=d(None),
                   help="libvirt URI (repeatable; default: $CGCTL_URIS, the config file's "
                        "uris, %s)" % " ".join(consts.BUILTIN_URIS))
    p.add_argument("--config-file", metavar="PATH", default=d(None),
                   help=f"config file (default: $CGCTL_CONFIG, {consts.CONFIG_PATH})")
    p.add_argument("-v", "--verbose", action="store_true", default=d(False),
                   help="log each action")


HISTORY_LIMIT = 50  # `cgctl history` shows the newest this many rows unless told otherwise


def _count(text: str) -> int:
    """A whole number >= 0 (argparse type: a bad one is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


EXIT_STATUS = """exit status (the same condition, the same status, in every command):
  0    done, or nothing to do (said in one line)
  1    could not be done: unknown guest, guest not running, the journal does not
       exist, the kernel refused (rolled back), libvirt unreachable; verify: drift left
  2    wrong request: bad value, unknown parameter or option, impossible combination
  130  interrupted
see man cgctl, docs/usage.md"""

# command: (one line for the list of commands, what it does, examples)
HELP = {
    "params": ("list every parameter",
               "Every parameter cgctl knows: unit, range, and the cgroup v1 and v2 files it "
               "writes (docs/parameters.md).",
               ["cgctl params", "cgctl params --json"]),
    "host": ("show the host's cgroup hierarchies",
             "The host's cgroup mode (v1, v2, hybrid), each hierarchy and its controllers, and "
             "which version owns each controller.",
             ["cgctl host"]),
    "set": ("change parameters of a guest",
            "Change one or more parameters, all or nothing: validated together, written in a "
            "safe order, rolled back together if the kernel refuses one. Sizes take a unit "
            "(K, M, G, T, B); a bare memory size is KiB, a bare rate is bytes/s. 'cgctl params' "
            "lists the parameters.",
            ["cgctl set web1 hard_limit=4G swap_hard_limit=6G --perm",
             "cgctl set web1 cpu_shares=2048 --live",
             "cgctl set web1 global_quota=150% --config",
             "cgctl set web1 device_write_bytes_sec=/dev/vdb,50M"]),
    "unset": ("drop parameters from a guest's config",
              "Drop parameters from the config: from the next start they are left to libvirt. "
              "Live values are not changed.",
              ["cgctl unset web1 hard_limit", "cgctl unset web1 device_read_bytes_sec=/dev/vdb"]),
    "show": ("live and config values of a guest",
             "Every parameter of a guest: the live value read from its cgroup, the config "
             "value from the journal, '*' where they differ. Reads only.",
             ["cgctl show web1", "cgctl show web1 --json"]),
    "list": ("guests with settings in the journal",
             "The guests that have settings in the journal, and whether they run. Reads only; "
             "a journal that does not exist is an error (exit 1), not an empty table.",
             ["cgctl list", "cgctl list --journal /srv/cgctl/journal.db"]),
    "history": ("every change, newest last",
                "Every change recorded: time, command, source, mode, old -> new, outcome. Reads "
                "only.",
                ["cgctl history web1", "cgctl history --limit 10", "cgctl history --all --json"]),
    "apply": ("apply the config to running guests now",
              "Put the config in force on a running guest now (what the service and the hook do "
              "at every start). With --all and nothing to apply, says so in one line.",
              ["cgctl apply web1", "cgctl apply --all"]),
    "verify": ("compare live values with what cgctl last wrote",
               "Find live values that no longer hold what cgctl last wrote to this run of the "
               "guest (exit 1 if any); --repair writes cgctl's values back and shows what the "
               "cgroup holds after.",
               ["cgctl verify web1", "cgctl verify --all --repair"]),
    "forget": ("drop a guest's config (history stays)",
               "Drop a guest's config from the journal; its history stays.",
               ["cgctl forget web1"]),
    "prune": ("drop config of guests libvirt no longer defines; trim history",
              "Drop the config of guests libvirt no longer defines, and the history beyond the "
              "retention (history_keep_days / history_keep_rows in the config file). Needs "
              "libvirt-python.",
              ["cgctl prune", "cgctl prune --keep-days 90 --keep-rows 1000"]),
    "export": ("write guests' config as a policy file",
               "Write the config of the named guests (default: every guest with a config) as a "
               "policy file, JSON or TOML (docs/fleet.md). Reads only.",
               ["cgctl export -o /etc/cgctl/policy.toml", "cgctl export web1 db1"]),
    "import": ("make the guests' config match a policy file",
               "Make the config of every guest in FILE match it, after validating the whole "
               "file; prints what changes (nothing the second time).",
               ["cgctl import /etc/cgctl/policy.toml --dry-run",
                "cgctl import /etc/cgctl/policy.toml --perm"]),
    "daemon": ("run the listener service",
               "The listener service (systemd/cgctl.service runs it): re-applies each guest's "
               "config at every start, forgets it at undefine, repairs drift, answers 'cgctl "
               "set' on its socket (docs/operations.md). Exit 2: a wrong config file.",
               ["cgctl daemon", "systemctl enable --now cgctl"]),
    "hook": ("libvirt hook entry point, and its installer",
             "Called by libvirt as /etc/libvirt/hooks/qemu.d/cgctl (and lxc.d): 'cgctl hook "
             "[--strict] [--journal PATH] qemu|lxc NAME OP SUBOP [EXTRA]' with the domain XML "
             "on stdin; 'cgctl hook install' / 'cgctl hook uninstall' set it up "
             "(docs/hook.md). The hook's own exit status is what libvirt acts on: 0, or 1 "
             "when strict and the limits could not be put in force (the start fails).",
             ["cgctl hook install", "cgctl hook install --strict", "cgctl hook uninstall"]),
    "top": ("running guests' use, one line each, refreshed",
            "Every running guest on one line: memory used and limit, CPU % and throttling, IO "
            "rates, OOM kills; refreshed in place like systemd-cgtop (docs/observability.md). "
            "Reads only.",
            ["cgctl top", "cgctl top --sort mem", "cgctl top --once --json"]),
    "profile": ("named sets of settings: list|show|set|unset|delete|apply",
                "Profiles are named sets of settings a guest refers to ('cgctl set GUEST "
                "--profile NAME'), with its own settings on top; 'default' applies to guests "
                "with no profile of their own. Changing a profile changes every guest using it, "
                "all or nothing per guest (docs/fleet.md).",
                ["cgctl profile set gold cpu_shares=2048 hard_limit=8G",
                 "cgctl set web1 --profile gold", "cgctl profile apply gold --live",
                 "cgctl profile list"]),
    "install-host": ("install the unit, tmpfiles entry, completion, man page for this cgctl",
                     "For a pip install: write the systemd unit (ExecStart= where this cgctl "
                     "is), the tmpfiles entry, bash completion and the man page to the host's "
                     "places (docs/install.md). Prints each file and the commands to run next.",
                     ["cgctl install-host", "cgctl install-host --dry-run",
                      "cgctl install-host --root /tmp/scratch"]),
}
for _cmd in _VIRSH:
    HELP[_cmd] = (f"virsh-style {_cmd}: show, or change with options",
                  f"virsh's {_cmd} spelling: with no option, shows the {_cmd} parameters; with "
                  "options, changes them as 'cgctl set' does.", [])
HELP["memtune"][2].extend(["cgctl memtune web1 --hard-limit 4G --perm",
                           "cgctl memtune web1 --soft-limit 2097152   # KiB: 2G"])
HELP["schedinfo"][2].extend(["cgctl schedinfo web1 --cpu-shares 2048 --live"])
HELP["blkiotune"][2].extend(["cgctl blkiotune web1 --device-read-bytes-sec /dev/vdb,50M"])
HELP["cpuset"][2].extend(["cgctl cpuset web1 --cpus 0-3 --config"])


def _option_help(param) -> str:
    """An option's help from the catalogue: what it is, its unit, its range."""
    unit = param.unit()
    if param.kind == P.BYTES:
        unit = "size with a unit (K, M, G, T, B); a bare number is KiB"
    elif param.kind == P.RATE:
        unit = "DEV,N: bytes/s with a unit (K, M, G); a bare number is bytes/s"
    elif param.per_device:
        unit = f"DEV,N: {unit}"
    rng = param.range_text()
    text = f"{param.doc} {unit[0].upper()}{unit[1:]}; {rng}" + (
        "" if rng.startswith("e.g.") else " ('unlimited' allowed)" if param.unlimited else "")
    return text.replace("%", "%%")  # argparse %-formats help


class _VersionAction(argparse.Action):
    """``--version``: the version and the host's cgroup mode, one line."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print the version and the host's "
                         "cgroup mode, then exit")

    def __call__(self, parser, namespace, values, option_string=None):
        parser._print_message(version_line() + "\n")
        parser.exit()


def version_line() -> str:
    try:
        from cgctl.cgroup import hierarchy
        mode = hierarchy.detect().mode
    except Exception:  # noqa: BLE001  a version line never fails
        mode = "unknown"
    return f"cgctl {__version__} (Python {sys.version.split()[0]}, host cgroup mode: {mode})"


def _command(sub, name: str, common) -> argparse.ArgumentParser:
    summary, description, examples = HELP[name]
    description = textwrap.fill(description, 79)
    epilog = ("examples:\n" + "".join(f"  {e}\n" for e in examples) + "\n" if examples
              else "") + EXIT_STATUS
    return sub.add_parser(name, parents=[common], help=summary, description=description,
                          epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    top = _Parser(prog="cgctl", formatter_class=argparse.RawDescriptionHelpFormatter,
                  description=textwrap.fill(
                      "cgroup v1/v2 resource control for libvirt guests (QEMU VMs, LXC "
                      "containers): change limits now, from the next start or both, "
                      "remembered in a journal and put back at every start.", 79),
                  epilog="examples:\n  cgctl set web1 hard_limit=4G --perm\n  cgctl show web1\n"
                         "  cgctl COMMAND --help\n\n" + EXIT_STATUS)
    top.add_argument("--version", action=_VersionAction)
    _add_common(top, defaults=True)
    # the same options after the command word; SUPPRESS keeps the top level's value
    common = _Parser(add_help=False)
    _add_common(common, defaults=False)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    _command(sub, "params", common)
    _command(sub, "host", common)
    p = _command(sub, "set", common)
    p.add_argument("guest", metavar="GUEST", help="name or UUID")
    p.add_argument("assignments", nargs="*", metavar="PARAM=VALUE",
                   help="e.g. hard_limit=4G, cpu_shares=2048, device_read_bytes_sec=/dev/vdb,50M")
    _add_mode(p)
    g = p.add_mutually_exclusive_group()  # profiles (cgctl/core/profiles.py)
    g.add_argument("--profile", metavar="NAME", help="the guest uses this profile")
    g.add_argument("--no-profile", action="store_true",
                   help="the guest uses no profile (not even the host's default)")
    p = _command(sub, "unset", common)
    p.add_argument("guest", metavar="GUEST", help="name or UUID")
    p.add_argument("names", nargs="+", metavar="PARAM[=DEVICE]",
                   help="a parameter, or a per-device parameter and its disk")
    p.add_argument("--config", "--static", action="store_true",
                   help="the only mode of unset (accepted for virsh habits)")
    p = _command(sub, "show", common)
    p.add_argument("guest", metavar="GUEST", help="name or UUID")
    _command(sub, "list", common)
    p = _command(sub, "history", common)
    p.add_argument("guest", nargs="?", metavar="GUEST", help="only this guest (default: all)")
    p.add_argument("--limit", type=_count, default=None, metavar="N",
                   help=f"the newest N rows (default {HISTORY_LIMIT}; 0: all)")
    p.add_argument("--all", action="store_true", help="every row (same as --limit 0)")
    p = _command(sub, "apply", common)
    p.add_argument("guest", nargs="?", metavar="GUEST", help="name or UUID")
    p.add_argument("--all", action="store_true",
                   help="every running guest with settings in the journal")
    p = _command(sub, "verify", common)
    p.add_argument("guest", nargs="?", metavar="GUEST", help="name or UUID")
    p.add_argument("--all", action="store_true",
                   help="every running guest with settings in the journal")
    p.add_argument("--repair", action="store_true", help="write cgctl's values back")
    p = _command(sub, "forget", common)
    p.add_argument("guest", metavar="GUEST", help="name or UUID")
    p = _command(sub, "prune", common)
    p.add_argument("--keep-days", type=_count, metavar="N",
                   help="history rows older than N days go (0: none; default: config file)")
    p.add_argument("--keep-rows", type=_count, metavar="N",
                   help="per guest, rows beyond the newest N go (0: none; default: config file)")
    for cmd, opts in _VIRSH.items():
        p = _command(sub, cmd, common)
        p.add_argument("guest", metavar="GUEST", help="name or UUID")
        for o in opts:
            p.add_argument(f"--{o}", dest=o.replace("-", "_"), metavar="VALUE",
                           help=_option_help(P.lookup(o)))
        _add_mode(p)
    # --- policy files (cgctl/core/policy.py) ---
    p = _command(sub, "export", common)
    p.add_argument("guests", nargs="*", metavar="GUEST",
                   help="name or UUID (default: every guest with a config)")
    p.add_argument("--format", choices=["json", "toml"], default=None,
                   help="default: from -o's extension, else json")
    p.add_argument("-o", "--output", metavar="FILE", help="default: standard output")
    p = _command(sub, "import", common)
    p.add_argument("file", metavar="FILE", help="a policy file, .json or .toml")
    p.add_argument("--dry-run", "-n", action="store_true", help="only print what would change")
    p.add_argument("--perm", "--live", dest="live", action="store_true",
                   help="also put changed settings in force on running guests")
    p = _command(sub, "top", common)
    p.add_argument("--sort", choices=["name", "mem", "cpu", "throttle", "io", "oom"],
                   default="cpu", help="column to sort by (default: cpu)")
    p.add_argument("--interval", type=float, default=2.0, metavar="S",
                   help="seconds between refreshes (default 2)")
    p.add_argument("--once", action="store_true",
                   help="two samples --interval apart, one table (or --json), exit")
    p.add_argument("-n", "--count", type=_count, default=None, metavar="N",
                   help="exit after N refreshes")
    # --- profiles (cgctl/core/profiles.py, docs/fleet.md#profiles) ---
    p = _command(sub, "profile", common)
    psub = p.add_subparsers(dest="profile_command", metavar="ACTION", parser_class=_Parser)
    psub.add_parser("list", parents=[common], help="every profile of this host")
    q = psub.add_parser("show", parents=[common], help="a profile's settings and users")
    q.add_argument("name")
    q = psub.add_parser("set", parents=[common], help="define or change a profile")
    q.add_argument("name")
    q.add_argument("assignments", nargs="+", metavar="PARAM=VALUE")
    q.add_argument("--replace", action="store_true", help="the profile becomes exactly these")
    _add_mode(q)
    q = psub.add_parser("unset", parents=[common], help="drop settings from a profile")
    q.add_argument("name")
    q.add_argument("names", nargs="+", metavar="PARAM[=DEVICE]")
    _add_mode(q)
    q = psub.add_parser("delete", parents=[common], help="drop a profile")
    q.add_argument("name")
    q.add_argument("--force", action="store_true", help="even if guests use it (they keep "
                   "its values)")
    q = psub.add_parser("apply", parents=[common], help="put a profile in force on the "
                        "guests using it")
    q.add_argument("name")
    _add_mode(q)
    _command(sub, "daemon", common)
    p = _command(sub, "hook", common)
    p.add_argument("hook_args", nargs=argparse.REMAINDER, metavar="...",
                   help="libvirt's arguments, or install|uninstall [options]")
    p = _command(sub, "install-host", common)
    p.add_argument("--root", metavar="DIR", default="/",
                   help="install under DIR (a scratch root, a package build); default /")
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="print what would be written, write nothing")
    return top


_PARSER = None


def _parser() -> argparse.ArgumentParser:
    """Built once per process: building it is most of a command's own time (argparse asks
    gettext for every help string), and the service runs many commands."""
    global _PARSER
    if _PARSER is None:
        _PARSER = build_parser()
    return _PARSER


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


# -- commands ------------------------------------------------------------------
def cmd_params(args, ctl) -> int:
    rows = [{"name": p.name, "family": p.family, "unit": p.unit(), "range": p.range_text(),
             "unlimited": p.unlimited, "per_device": p.per_device, "target": p.target,
             "v1_file": p.v1_file, "v2_file": p.v2_file, "doc": p.doc,
             "v1_note": p.v1_note, "v2_note": p.v2_note} for p in P.CATALOGUE]
    _out(args, rows, lambda rs: _table(
        [[r["name"], r["unit"], r["range"], r["v1_file"] or "-", r["v2_file"] or "-"] for r in rs],
        ["PARAMETER", "UNIT", "RANGE", "V1 FILE", "V2 FILE"]))
    return 0


def cmd_host(args, ctl) -> int:
    d = ctl.host.to_dict()

    def human(d):
        _print(f"mode: {d['mode']}")
        for h in d["hierarchies"]:
            ctrls = ",".join(h["controllers"]) or "(no controllers)"
            _print(f"  v{h['version']} {h['mountpoint']}: {ctrls}")
        _print("owners: " + ", ".join(f"{c}=v{v}" for c, v in d["owners"].items()))
    _out(args, d, human)
    return 0


def cmd_set(args, ctl) -> int:
    if args.profile is not None or args.no_profile:
        return cmd_use_profile(args, ctl)
    if not args.assignments:
        raise UsageError("no parameter given (PARAM=VALUE ..., or --profile NAME)")
    o = ctl.set(args.guest, args.assignments, _mode(args))
    _out(args, o.to_dict(), _print_outcome)
    return 0


def cmd_virsh(args, ctl) -> int:
    assignments = []
    for o in _VIRSH[args.command]:
        v = getattr(args, o.replace("-", "_"))
        if v is not None:
            assignments.append(f"{o}={v}")
    if not assignments:
        return cmd_show(args, ctl, only=[P.lookup(o).name for o in _VIRSH[args.command]])
    o = ctl.set(args.guest, assignments, _mode(args), command=args.command)
    _out(args, o.to_dict(), _print_outcome)
    return 0


def cmd_unset(args, ctl) -> int:
    o = ctl.unset(args.guest, args.names)
    _out(args, o.to_dict(), _print_outcome)
    return 0


def cmd_show(args, ctl, only=None) -> int:
    d = ctl.show(args.guest)
    if only:
        d["params"] = [r for r in d["params"] if r["param"] in only]

    def human(d):
        state = "running" if d["running"] else "shut off"
        _print(f"guest {d['guest']} ({d['driver']}, {state}, "
              f"{'persistent' if d['persistent'] else 'transient'}) {d['uuid']}")
        from cgctl.cli import usagefmt  # usage beside the limits (docs/observability.md)
        use = d.get("usage")
        rows = []
        for r in d["params"]:
            if r["unsupported"] and r["config"] is None:
                continue
            mark = "*" if r["differs"] else ""
            rows.append([r["param"], r["live"] if r["live"] is not None else "-",
                         r["config"] if r["config"] is not None else "-", mark]
                        + ([usagefmt.beside(r["param"], use)] if use else []))
        head = ["PARAMETER", "LIVE", "CONFIG", "DIFFERS"] + (["USED"] if use else [])
        if d.get("profile"):
            _print(f"profile: {d['profile']} ({_profile_origin(d)})")
            for row, r in zip(rows, [r for r in d["params"]
                                     if not (r["unsupported"] and r["config"] is None)]):
                row.append("profile" if r.get("from_profile") else
                           ("guest" if r["config"] is not None else ""))
            head.append("FROM")
        _table(rows, head)
        for line in usagefmt.lines(use):
            _print(line)
        for note in d.get("notes", []):
            _print(f"note: {note}")
    _out(args, d, human)
    return 0


def _existing_journal(ctl):
    """The journal, for a command whose subject it is (list, history, forget, export, --all):
    a missing file is an error (a mistyped --journal, or nothing ever set), never created."""
    j = ctl.journal(create=False)
    if j.missing:
        raise JournalError(f"journal {ctl.journal_path} does not exist (nothing was ever set "
                           "with it; check --journal, $CGCTL_JOURNAL, the config file)",
                           path=ctl.journal_path)
    return j


def cmd_list(args, ctl) -> int:
    _existing_journal(ctl)
    rows = ctl.list()
    _out(args, rows, lambda rs: _table(
        [[r["guest"], r["driver"], r["state"], r["settings"], r["last_change"] or "-"] for r in rs],
        ["GUEST", "DRIVER", "STATE", "SETTINGS", "LAST CHANGE"]))
    return 0


def cmd_history(args, ctl) -> int:
    if args.all and args.limit:
        raise UsageError("--all and --limit N: give one of them")
    limit = None if args.all or args.limit == 0 else (args.limit or HISTORY_LIMIT)
    _existing_journal(ctl)
    rows = ctl.history(args.guest, limit)
    if limit is not None and len(rows) == limit and not args.json:
        _eprint(f"cgctl: the newest {limit} rows; --limit N or --all for more")
    _out(args, rows, lambda rs: _table(
        [[r["at"][:23], r["name"], r["command"], r["source"], r["mode"],
          r["param"] + (f"[{r['device']}]" if r["device"] else ""),
          r["old_value"] if r["old_value"] is not None else "-",
          r["new_value"] if r["new_value"] is not None else "-", r["outcome"]] for r in rs],
        ["TIME", "GUEST", "COMMAND", "SOURCE", "MODE", "PARAMETER", "OLD", "NEW", "OUTCOME"]))
    return 0


def cmd_apply(args, ctl) -> int:
    if bool(args.guest) == bool(args.all):
        raise UsageError("apply takes a GUEST or --all")
    if args.all:
        guests = _running_from_journal(ctl)
        if not guests:
            return _nothing(args, "nothing to apply: no running guest has settings in the journal")
    else:
        guests = [ctl.find_guest(args.guest)]
    outcomes = [ctl.apply_config(g, command="apply") for g in guests]
    _out(args, [o.to_dict() for o in outcomes], lambda os_: [_print_outcome(o) for o in os_])
    return EXIT_FAILURE if any(o.errors for o in outcomes) else 0


def _running_from_journal(ctl):
    from cgctl.host import runfiles
    journal = _existing_journal(ctl)
    running = runfiles.all_running(ctl.run_dir)
    return [running[row.uuid] for row in journal.guests()
            if not row.deleted and row.uuid in running]


def _nothing(args, line: str) -> int:
    """An action with nothing to do: one line (an empty list with --json), exit 0."""
    _out(args, [], lambda _: _print(line))
    return 0


def cmd_verify(args, ctl) -> int:
    from cgctl.core import drift
    if bool(args.guest) == bool(args.all):
        raise UsageError("verify takes a GUEST or --all")
    guests = _running_from_journal(ctl) if args.all else [ctl.find_guest(args.guest)]
    if not guests:
        return _nothing(args, "nothing to verify: no running guest has settings in the journal")
    report, left = [], 0
    for g in guests:
        if not g.running:
            raise UsageError("domain is not running: nothing live to verify", guest=g.name)
        found = drift.find(ctl, g)
        entry = {"guest": g.name, "uuid": g.uuid, "drift": [d.to_dict() for d in found],
                 "repaired": False, "errors": []}
        if found and args.repair:
            outcome = drift.repair(ctl, g, found, source="cli")
            entry["repaired"] = not outcome.errors
            entry["errors"] = [e.to_dict() for e in outcome.errors]
            # what the cgroup holds now: read again, not assumed
            still = {(d.param, d.device): d.live for d in drift.find(ctl, g)}
            for d in entry["drift"]:
                key = (d["param"], d["device"])
                d["now"] = still[key] if key in still else d["expected"]
        if found and not entry["repaired"]:
            left += 1
        report.append(entry)

    def human(rs):
        for r in rs:
            if not r["drift"]:
                _print(f"guest {r['guest']}: live values hold what cgctl last wrote")
                continue
            state = "repaired" if r["repaired"] else "DRIFT"
            _print(f"guest {r['guest']}: {state}")
            rows = [[d["param"] + (f"[{d['device']}]" if d["device"] else ""), d["expected"],
                     d["live"] if d["live"] is not None else "(none)"] for d in r["drift"]]
            header = ["PARAMETER", "CGCTL WROTE", "CGROUP HELD" if "now" in r["drift"][0]
                      else "CGROUP HOLDS"]
            if "now" in r["drift"][0]:
                header.append("CGROUP HOLDS NOW")
                for row, d in zip(rows, r["drift"]):
                    row.append(d["now"] if d["now"] is not None else "(none)")
            _table(rows, header, indent="  ")
            for e in r["errors"]:
                _print(f"  FAILED {e['param'] or ''}: {e['message']}")
    _out(args, report, human)
    return EXIT_FAILURE if left else 0


def cmd_forget(args, ctl) -> int:
    row = _existing_journal(ctl).find_guest(args.guest)
    if row is None:
        raise GuestNotFound("the journal has no such guest", guest=args.guest)
    dropped = ctl.forget(row.uuid, command="forget")
    _out(args, {"guest": row.name, "uuid": row.uuid, "dropped": len(dropped)},
         lambda d: _print(f"guest {d['guest']}: dropped {d['dropped']} setting(s); history kept"))
    return 0


def cmd_prune(args, ctl) -> int:
    from cgctl import virt
    known = {g.uuid for g in virt.list_guests(ctl.uris) if g.persistent or g.running}
    days, rows = _retention(args)
    pruned = []
    for row in ctl.journal().guests():
        if not row.deleted and row.uuid not in known:
            ctl.forget(row.uuid, command="prune")
            pruned.append({"guest": row.name, "uuid": row.uuid})
    trimmed = ctl.journal().prune_history(keep_days=days, keep_rows=rows) \
        if days or rows else 0
    result = {"guests": pruned, "history_rows_removed": trimmed,
              "history_keep_days": days, "history_keep_rows": rows}

    def human(r):
        for g in r["guests"]:
            _print(f"guest {g['guest']}: config dropped (libvirt no longer defines it)")
        if not r["guests"]:
            _print("no guest to forget")
        _print(f"history: {r['history_rows_removed']} row(s) removed (keep {days or 'all'} "
               f"day(s), {rows or 'all'} row(s) per guest)")
    _out(args, result, human)
    return 0


def _retention(args):
    """(keep_days, keep_rows): the command line, else the config file's history_keep_*."""
    days, rows = args.keep_days, args.keep_rows
    if days is None or rows is None:
        from cgctl.config import load_config
        cfg = load_config(consts.CONFIG_PATH)
        days = cfg.history_keep_days if days is None else days
        rows = cfg.history_keep_rows if rows is None else rows
    return days, rows


def cmd_export(args, ctl) -> int:
    from cgctl.core import policy
    fmt = args.format or ("toml" if (args.output or "").endswith(".toml") else "json")
    _existing_journal(ctl)
    text = policy.dumps(policy.export(ctl, args.guests), fmt)
    if args.output:
        policy.write_file(args.output, text)
    else:
        _print(text, end="")
    return 0


def cmd_import(args, ctl) -> int:
    from cgctl.core import policy
    plans = policy.plan(ctl, policy.load(args.file))  # the whole file, before any write

    def human(ps):
        if not ps:
            _print("nothing to change: the host matches the policy")
        for pl in ps:
            what = f"profile {pl['profile']}" if "profile" in pl else f"guest {pl['guest']}"
            _print(f"{what}:" + (" (dry run)" if args.dry_run else ""))
            for c in pl["changes"]:
                dev = f"[{c['device']}]" if c["device"] else ""
                _print(f"  {c['param']}{dev}: {c['old'] or '-'} -> {c['new'] or '-'}")
    if not args.dry_run:
        for o in policy.apply(ctl, plans, live=args.live):
            for w in o.warnings:
                _eprint(f"cgctl: warning: guest {o.guest.name}: {w}")
    _out(args, [pl.to_dict() for pl in plans], human)
    return 0


def cmd_top(args, ctl) -> int:
    from cgctl.cli import top
    if not 0 < args.interval <= 3600:
        raise UsageError(f"--interval must be in (0, 3600] seconds, not {args.interval:g}")
    return top.run(args, ctl, lambda text: _print(text, end="" if text.endswith("\n") else "\n"))


# -- profiles (cgctl/core/profiles.py, docs/fleet.md#profiles) ----------------------
def _profile_origin(d) -> str:
    ref = d.get("profile_reference")
    how = {"file": "a file of this host", "journal": "this host's journal",
           "carried": "values carried in the guest's metadata"}.get(d.get("profile_origin"), "?")
    return how + (", the host's default" if ref is None else "")


def _profile_mode(args) -> str:
    """A profile is config: --current is --perm (running users get it now too)."""
    from cgctl.core.controller import BOTH, CURRENT
    mode = _mode(args)
    return BOTH if mode == CURRENT else mode


def cmd_use_profile(args, ctl) -> int:
    from cgctl.core import profiles
    name = profiles.NONE if args.no_profile else profiles.check_name(args.profile)
    o = ctl.use_profile(args.guest, name, args.assignments, _mode(args))
    _out(args, o.to_dict(), _print_outcome)
    return 0


def _push(args, ctl, name, mode) -> int:
    outcomes = ctl.push_profile(name, mode)
    _out(args, [o.to_dict() for o in outcomes],
         lambda os_: [_print_outcome(o) for o in os_] if os_ else
         _print(f"profile {name}: no guest uses it"))
    return EXIT_FAILURE if any(o.errors for o in outcomes) else 0


def cmd_profile(args, ctl) -> int:
    from cgctl.core import profiles
    from cgctl.core.controller import LIVE
    what = args.profile_command
    if not what:
        raise UsageError("profile takes list, show, set, unset, delete or apply")
    if what == "list":
        defs = profiles.Catalog(ctl.journal(create=False)).all()
        rows = [{"name": n, "source": d.source, "path": d.path, "error": d.error,
                 "settings": len(d.settings) if d.settings is not None else None,
                 "users": len(ctl.journal(create=False).profile_users(n))}
                for n, d in defs.items()]
        _out(args, rows, lambda rs: _table(
            [[r["name"], r["source"], r["settings"] if r["error"] is None else "ERROR",
              r["users"], r["error"] or r["path"] or ""] for r in rs],
            ["PROFILE", "SOURCE", "SETTINGS", "GUESTS", "FILE / ERROR"]))
        return EXIT_FAILURE if any(r["error"] for r in rows) else 0
    if what == "show":
        j = ctl.journal(create=False)
        d = profiles.Catalog(j).require(args.name)
        data = {"name": d.name, "source": d.source, "path": d.path,
                "settings": profiles.to_table(d.settings),
                "guests": [g.name for g in j.profile_users(d.name)]}

        def human(x):
            _print(f"profile {x['name']} ({x['source']}{': ' + x['path'] if x['path'] else ''})")
            _table([[k, v if not isinstance(v, dict) else
                     ", ".join(f"{dv}={vv}" for dv, vv in v.items())]
                    for k, v in x["settings"].items()], ["PARAMETER", "VALUE"])
            _print("guests: " + (", ".join(x["guests"]) or "none")
                   + (" (and every guest without a profile of its own)"
                      if x["name"] == profiles.DEFAULT else ""))
        _out(args, data, human)
        return 0
    if what == "delete":
        profiles.delete(ctl.journal(), args.name, force=args.force)
        _out(args, {"deleted": args.name}, lambda x: _print(f"profile {args.name}: deleted"))
        return 0
    mode = _profile_mode(args)
    if what == "apply":
        return _push(args, ctl, profiles.check_name(args.name), mode)
    if mode == LIVE:
        raise UsageError("a profile's definition is config: use --config or --perm "
                         "('cgctl profile apply NAME --live' re-applies it to running guests)")
    if what == "set":
        changes = {s.key: None if s.removes else s.text()
                   for s in P.parse_assignments(args.assignments).values()}
    else:
        changes = {}
        for n in args.names:
            p = P.lookup(n.split("=", 1)[0])
            cur = profiles.Catalog(ctl.journal()).require(args.name).settings
            dev = n.split("=", 1)[1] if "=" in n else None
            changes.update({k: None for k in cur
                            if k[0] == p.name and (dev is None or k[1] == dev)})
    before, after = profiles.define(ctl.journal(), args.name, changes,
                                    replace=getattr(args, "replace", False))
    if not args.json:
        for k in sorted(set(before or {}) | set(after)):
            old, new = (before or {}).get(k), after.get(k)
            if old != new:
                _print(f"profile {args.name}: {k[0]}{f'[{k[1]}]' if k[1] else ''}: "
                       f"{old or '-'} -> {new or '-'}")
    return _push(args, ctl, args.name, mode)


def cmd_daemon(args, ctl) -> int:
    from cgctl.service import daemon
    # The service gets this module handed in rather than importing it: its command socket runs
    # commands with our parser and run_captured, and an import back up (service -> cli) would
    # close a cycle (cli -> service -> cli); tests/unit/test_imports.py keeps it open.
    return daemon.main(sys.modules[__name__], config_file=args.config_file or consts.CONFIG_PATH,
                       command_line=_command_line(args))


def _command_line(args) -> dict:
    """The config keys given on the command line (cgctl.config.resolve)."""
    return {"journal": args.journal, "uris": args.connect}


def cmd_hook(args, ctl) -> int:
    """The hook reads the config file itself: leniently, within its time bound (cgctl/hook/main.py);
    the options given before ``hook`` become the hook's own."""
    from cgctl.hook import main as hook
    rest = list(args.hook_args)
    if rest[:1] == ["--"]:
        rest.pop(0)
    given = ((["--journal", args.journal] if args.journal else [])
             + (["--config-file", args.config_file] if args.config_file else []))
    return hook.main(given + rest, ctl)


COMMANDS = {"params": cmd_params, "host": cmd_host, "set": cmd_set, "unset": cmd_unset,
            "show": cmd_show, "list": cmd_list, "history": cmd_history, "apply": cmd_apply,
            "forget": cmd_forget, "verify": cmd_verify, "prune": cmd_prune, "daemon": cmd_daemon, "hook": cmd_hook,
            "export": cmd_export, "import": cmd_import, "profile": cmd_profile}
COMMANDS.update({k: cmd_virsh for k in _VIRSH})
COMMANDS["top"] = cmd_top


def main(argv: Optional[List[str]] = None, only=None) -> int:
    """``only``: the commands this caller may run (the command socket's); None = all."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hook"] and argv[1:2] in (["-h"], ["--help"]):
        argv = ["hook", "--help"]  # the parser's help (libvirt never passes --help)
    elif argv[:1] == ["hook"] and only is None:
        # libvirt's calling convention and the hook's own options are the hook's to parse,
        # and the hook must start fast: hand it everything before building any parser
        from cgctl.hook import main as hook
        return hook.main(argv[1:])
    as_json = "--json" in argv
    try:
        args = _parser().parse_args(argv)
        if not args.command:
            raise UsageError("no command given (try 'cgctl --help')")
        if only is not None and args.command not in only:
            raise UsageError(f"{args.command!r} is not run here")
        if args.verbose or args.command == "daemon":
            import logging  # only here: see cgctl/log.py
            logging.basicConfig(level=logging.INFO, format="cgctl: %(message)s",
                                stream=sys.stderr)
        if args.command == "hook":  # before reading the config: see cmd_hook
            return cmd_hook(args, None)
        if args.command == "install-host":  # files only: no journal, no libvirt
            from cgctl.cli import hostinstall
            return hostinstall.main(args, _print)
        from cgctl.core.controller import Controller
        from cgctl.config import resolve
        cfg = resolve(args.config_file or consts.CONFIG_PATH, _command_line(args))
        ctl = Controller(journal_path=cfg.journal, uris=cfg.uris)
        try:
            return COMMANDS[args.command](args, ctl)
        finally:
            ctl.close()
    except CgctlError as exc:
        return _fail(exc, as_json)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_FAILURE
    except Exception as exc:  # a bug: still one line, with a way to see more
        if os.environ.get("CGCTL_DEBUG"):
            raise
        err = CgctlError(f"internal error: {type(exc).__name__}: {exc} "
                         "(set CGCTL_DEBUG=1 for a traceback)")
        return _fail(err, as_json)


def _fail(exc: CgctlError, as_json: bool) -> int:
    _eprint(f"cgctl: error: {exc}")
    if as_json:
        import json
        _print(json.dumps(exc.to_dict(), sort_keys=True))
    return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

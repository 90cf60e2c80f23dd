"""The command line: every command, option and help text (``cgctl --help``, the man page and
the completion are generated from it: cgctl/cli/manpage.py); read strictly, the same in this
process and in the service's command socket."""

from __future__ import annotations

import argparse
import sys
import textwrap

from cgctl import __version__, consts
from cgctl.cli.output import _ERR, _OUT
from cgctl.errors import UsageError
from cgctl.model import params as P

MODE_HELP = ("--live/--dynamic: now only; --config/--static: from the next start; "
             "--live --config or --perm: both; --current (default): live if running, else config")


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
                     "is), the tmpfiles entry, bash and zsh completion and the man page to the host's "
                     "places (docs/install.md). Prints each file and the commands to run next.",
                     ["cgctl install-host", "cgctl install-host --dry-run",
                      "cgctl install-host --root /tmp/scratch"]),
}
for _cmd in _VIRSH:
    HELP[_cmd] = (f"virsh-style {_cmd}: show, or change with options",
                  f"virsh's {_cmd} spelling: with no option, shows the {_cmd} parameters; with "
                  "options, changes them as 'cgctl set' does.", [])
HELP["memtune"][2].extend(["cgctl memtune web1 --hard-limit 4G --perm",
                           "cgctl memtune web1 --hard-limit -1   # any negative: unlimited (virsh)",
                           "cgctl memtune web1 --soft-limit 2097152   # KiB: 2G"])
HELP["schedinfo"][2].extend(["cgctl schedinfo web1 --cpu-shares 2048 --live",
                             "cgctl schedinfo web1 --set cpu_shares=2048 --live",
                             "cgctl schedinfo web1 vcpu_quota=50000 --config"])
HELP["blkiotune"][2].extend(["cgctl blkiotune web1 --device-read-bytes-sec /dev/vdb,50M"])
HELP["cpuset"][2].extend(["cgctl cpuset web1 --cpus 0-3 --config",
                          "cgctl cpuset web1 --cpus 0-7,^3   # libvirt's exclusion: not CPU 3"])


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
        if cmd == "schedinfo":  # virsh's own forms: `--set cpu_shares=N` and a bare `cpu_shares=N`
            p.add_argument("assignments", nargs="*", metavar="PARAM=VALUE",
                           help="schedinfo parameters as virsh names them, e.g. cpu_shares=2048")
            p.add_argument("--set", dest="set_", action="append", default=[],
                           metavar="PARAM=VALUE", help="the same, virsh's --set spelling")
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
    p.add_argument("--io", action="store_true",
                   help="IO per device: one line per guest and device (the config's device "
                        "names, else MAJ:MIN and /dev node); --json: 'io' in each row")
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

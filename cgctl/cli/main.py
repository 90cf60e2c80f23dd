"""The ``cgctl`` command: a thin shell over the controller.

Exit status: 0 done; 1 could not be done (guest not running, kernel refused,
journal unwritable...); 2 the request was wrong (bad value, unknown
parameter, impossible combination). No traceback reaches an operator.
"""

from __future__ import annotations

import os
import re
import sys
from typing import List, Optional

from cgctl import __version__, consts  # noqa: F401  (cgctl --version; tests read it here)
from cgctl.model import params as P
from cgctl.errors import (EXIT_FAILURE, EXIT_INTERRUPTED, CgctlError, GuestNotFound,
                          JournalError, UsageError)
# the parser and the output are their own modules; their names are this module's too, for the
# service's command socket (cgctl/service/cmdserver.py reads the command line with them)
from cgctl.cli.output import _ERR, _OUT, _eprint, _out, _print, _print_outcome, _table  # noqa: F401
from cgctl.cli.parser import (HISTORY_LIMIT, _VIRSH, _add_common, _mode, _parser,  # noqa: F401
                              build_parser, version_line)
from cgctl.cli.profilecmd import _profile_origin, cmd_profile, cmd_use_profile


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


_NEGATIVE = re.compile(r"-\d+")


def cmd_virsh(args, ctl) -> int:
    assignments = []
    for o in _VIRSH[args.command]:
        v = getattr(args, o.replace("-", "_"))
        if v is not None:
            if args.command == "memtune" and _NEGATIVE.fullmatch(v.strip()):
                v = "unlimited"  # virsh memtune: any negative value is "unlimited"
            assignments.append(f"{o}={v}")
    for a in list(getattr(args, "assignments", [])) + list(getattr(args, "set_", [])):
        name = a.partition("=")[0].strip()
        if "=" not in a or P.lookup(name).family != args.command:
            raise UsageError(f"{a!r}: {args.command} takes PARAM=VALUE with one of its own "
                             f"parameters ({', '.join(p.name for p in P.family(args.command))})")
        assignments.append(a)
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
                        + ([_kernel_text(r), _SET_BY.get(r.get("set_by"), "")]
                           if d["running"] else [])
                        + ([usagefmt.beside(r["param"], use)] if use else []))
        head = ["PARAMETER", "LIVE", "CONFIG", "DIFFERS"] + \
            (["KERNEL", "SET BY"] if d["running"] else []) + (["USED"] if use else [])
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
        if any(r.get("set_by") == "elsewhere" for r in d["params"]):
            _print("set elsewhere: the kernel holds a value cgctl did not write to this run "
                   "of the guest (libvirt, systemd or by hand)")
        tun = d.get("libvirt_tunables")
        if tun:
            _print("libvirt's own tunables (applied by libvirt at start, before cgctl): "
                   + ", ".join(f"{k}={v}" for k, v in tun.items()))
        for note in d.get("notes", []):
            _print(f"note: {note}")
    _out(args, d, human)
    return 0


# show's SET BY column: who put the kernel's value there (cgctl/core/reading.py)
_SET_BY = {"cgctl": "cgctl", "default": "default", "elsewhere": "set elsewhere"}


def _kernel_text(r: dict) -> str:
    """The kernel's own file and value beside cgctl's: ``cpu.weight 79`` (SET BY says whether
    that is a fresh group's default); per-device files: the file only (values per device)."""
    k = r.get("kernel")
    if not k:
        return "-"
    if r.get("devices") is not None:
        return k["file"]
    raw = k["raw"] if k["raw"] else "''"   # an empty cpuset: its parent's
    return f"{k['file']} {raw}"


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

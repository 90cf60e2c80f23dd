"""``cgctl profile ...`` and ``cgctl set GUEST --profile NAME``: the profile commands
(cgctl/core/profiles.py, docs/fleet.md#profiles)."""

from __future__ import annotations

from cgctl.cli.output import _out, _print, _print_outcome, _table
from cgctl.cli.parser import _mode
from cgctl.errors import EXIT_FAILURE, UsageError
from cgctl.model import params as P

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

"""Policy files for config management: ``cgctl export`` / ``cgctl import FILE [--dry-run]``.

One file (JSON or TOML) holds the config of some or all guests; docs/fleet.md documents the
schema. Import makes this host's journal config of every guest in the file equal to the file
(settings not in the file are dropped from that guest's config; guests not in the file are left
alone). The whole file is validated (schema, guests known here, every value, the cross-parameter
rules) before anything is written; then each guest is changed as ``cgctl set --config`` (and
``unset``) would, so its settings also go into the domain's metadata. A second import of the
same file changes nothing.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, NamedTuple, Optional, Tuple

from cgctl.core import profiles
from cgctl.errors import CgctlError, GuestNotFound, UsageError

SCHEMA = "cgctl-policy"
VERSION = 1
MAX_BYTES = 16 << 20


class Item(NamedTuple):
    param: str
    device: str
    old: Optional[str]
    new: Optional[str]


class Plan(NamedTuple):
    guest: object  # runtime.Guest; for a profile: its name
    items: List[Item]
    profile: Optional[Tuple[Optional[str], Optional[str]]] = None  # (old, new) reference

    def to_dict(self) -> dict:
        if isinstance(self.guest, str):
            return {"profile": self.guest, "changes": [
                {"param": i.param, "device": i.device or None, "old": i.old, "new": i.new}
                for i in self.items]}
        return {"guest": self.guest.name, "uuid": self.guest.uuid,
                "changes": [{"param": i.param, "device": i.device or None, "old": i.old,
                             "new": i.new} for i in self.items]}


# --------------------------------------------------------------------------- export

def export(ctl, idents: Optional[List[str]] = None) -> dict:
    """The policy document of the named guests (default: every guest with a config)."""
    journal = ctl.journal(create=False)
    if idents:
        rows = []
        for ident in idents:
            row = journal.find_guest(ident)
            if row is None or row.deleted:
                raise GuestNotFound("the journal has no config for this guest", guest=ident)
            rows.append(row)
    else:
        rows = [r for r in journal.guests() if not r.deleted and (
            r.settings or journal.get_guest_profile(r.uuid).profile is not None)]
    guests: Dict[str, dict] = {}
    for row in rows:
        guests[row.name] = {"uuid": row.uuid, "driver": row.driver,
                            "settings": profiles.to_table(journal.get_config(row.uuid))}
        ref = journal.get_guest_profile(row.uuid).profile
        if ref is not None:  # absent: the guest follows the host's default profile
            guests[row.name]["profile"] = ref
    # every usable profile of this host (files included: the importing host may lack them)
    defs = {n: profiles.to_table(d.settings)
            for n, d in profiles.Catalog(journal).all().items() if d.settings is not None}
    return {"schema": SCHEMA, "version": VERSION, "profiles": defs, "guests": guests}


def dumps(doc: dict, fmt: str = "json") -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if fmt != "toml":
        raise UsageError(f"unknown format {fmt!r} (json or toml)")
    q = json.dumps  # a JSON string is a TOML basic string for everything we write
    out = [f"schema = {q(doc['schema'])}", f"version = {doc['version']}"]
    for name, settings in doc.get("profiles", {}).items():
        out += ["", f"[profiles.{q(name)}]"]
        out += [f"{k} = {q(v)}" for k, v in settings.items() if not isinstance(v, dict)]
        for k, v in settings.items():
            if isinstance(v, dict):
                out += ["", f"[profiles.{q(name)}.{k}]"] + [f"{q(d)} = {q(x)}"
                                                          for d, x in v.items()]
    for name, g in doc["guests"].items():
        out += ["", f"[guests.{q(name)}]"]
        out += [f"{k} = {q(g[k])}" for k in ("uuid", "driver", "profile") if k in g]
        flat = {k: v for k, v in g.get("settings", {}).items() if not isinstance(v, dict)}
        out += ["", f"[guests.{q(name)}.settings]"] + [f"{k} = {q(v)}" for k, v in flat.items()]
        for k, v in g.get("settings", {}).items():
            if isinstance(v, dict):
                out += ["", f"[guests.{q(name)}.settings.{k}]"]
                out += [f"{q(d)} = {q(x)}" for d, x in v.items()]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- import

def load(path: str) -> dict:
    """Read and parse a policy file (TOML if it ends in .toml, else JSON)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read policy file {path}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise UsageError(f"policy file {path} is larger than {MAX_BYTES >> 20} MiB")
    try:
        text = data.decode("utf-8")
        if path.endswith(".toml"):
            from cgctl.config import toml_module  # tomllib, or tomli before Python 3.11
            return toml_module().loads(text)
        return json.loads(text)
    except Exception as exc:  # noqa: BLE001  any parser's complaint, in one line
        raise UsageError(f"policy file {path} cannot be parsed: {exc}") from None


def _where(*parts) -> str:
    return ".".join(str(p) for p in parts)


def check_document(doc) -> Dict[str, dict]:
    """Schema checks; returns the guests table. UsageError naming the first bad place."""
    if not isinstance(doc, dict):
        raise UsageError("policy: the document must be a table/object")
    extra = set(doc) - {"schema", "version", "guests", "profiles"}
    if extra:
        raise UsageError(f"policy: unknown key(s) {', '.join(sorted(extra))}")
    if doc.get("schema") != SCHEMA:
        raise UsageError(f"policy: schema must be {SCHEMA!r}, not {doc.get('schema')!r}")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UsageError(f"policy: version must be a positive integer, not {version!r}")
    if version > VERSION:
        raise UsageError(f"policy: schema version {version} is newer than this cgctl knows "
                         f"({VERSION}): upgrade cgctl; nothing was changed")
    guests = doc.get("guests", {})
    if not isinstance(guests, dict):
        raise UsageError("policy: guests must be a table/object")
    for name, g in guests.items():
        if not isinstance(g, dict):
            raise UsageError(f"policy: {_where('guests', name)} must be a table/object")
        extra = set(g) - {"uuid", "driver", "settings", "profile"}
        if extra:
            raise UsageError(f"policy: {_where('guests', name)}: unknown key(s) "
                             f"{', '.join(sorted(extra))}")
        if not isinstance(g.get("settings", {}), dict):
            raise UsageError(f"policy: {_where('guests', name, 'settings')} must be a table")
        if "profile" in g and not isinstance(g["profile"], str):
            raise UsageError(f"policy: {_where('guests', name, 'profile')} must be a string")
    if not isinstance(doc.get("profiles", {}), dict):
        raise UsageError("policy: profiles must be a table/object")
    return guests


def _target(name: str, settings: dict) -> Dict[Tuple[str, str], str]:
    """The file's settings of one guest as canonical config text (validated)."""
    try:
        return profiles.settings_from_table(settings, _where("guests", name, "settings"))
    except UsageError as exc:
        raise UsageError(f"policy: {exc.message}") from None


def _profiles(ctl, doc) -> Tuple[Dict[str, Dict[Tuple[str, str], str]], List[Plan]]:
    """The file's profiles (validated) and what defining them here would change."""
    catalog = profiles.Catalog(ctl.journal(create=False))
    out, plans = {}, []
    for name, table in doc.get("profiles", {}).items():
        where = _where("profiles", name)
        try:
            profiles.check_name(name)
            target = profiles.settings_from_table(table, where)
            profiles.check_rules(target, where)
        except UsageError as exc:
            raise UsageError(f"policy: {exc.message}") from None
        d = catalog.get(name)
        have = d.settings if d is not None else None
        if d is not None and d.source == "file" and have != target:
            raise UsageError(f"policy: {where}: defined by {d.path} on this host, with other "
                             "values: change that file (files win over the journal)")
        out[name] = target
        items = [Item(k[0], k[1], (have or {}).get(k), v) for k, v in sorted(target.items())
                 if (have or {}).get(k) != v]
        items += [Item(k[0], k[1], v, None) for k, v in sorted((have or {}).items())
                  if k not in target]
        if items or have is None:
            plans.append(Plan(name, items))
    return out, plans


def plan(ctl, doc) -> List[Plan]:
    """What importing ``doc`` would change, per guest. Validates everything first."""
    guests = check_document(doc)
    defined, plans = _profiles(ctl, doc)
    catalog = profiles.Catalog(ctl.journal(create=False))
    seen = set()
    for name, g in guests.items():
        guest = ctl.find_guest(str(g.get("uuid") or name))
        if g.get("uuid") and guest.name != name:
            raise UsageError(f"policy: guests.{name}: UUID {g['uuid']} is {guest.name!r} here")
        if guest.uuid in seen:
            raise UsageError(f"policy: guest {guest.name} appears twice")
        seen.add(guest.uuid)
        target = _target(name, g.get("settings", {}))
        ref = g.get("profile")  # absent: the host's default profile
        values = {}
        if ref:
            if ref in defined:
                values = defined[ref]
            else:
                d = catalog.get(ref)
                if d is None or d.settings is None:
                    raise UsageError(f"policy: guests.{name}.profile: unknown profile {ref!r} "
                                     "(not in the file, not on this host)")
                values = d.settings
        elif ref is None and profiles.DEFAULT in defined:
            values = defined[profiles.DEFAULT]
        elif ref is None:
            d = catalog.get(profiles.DEFAULT)
            values = d.settings if d is not None and d.settings is not None else {}
        merged_config = dict(values)
        merged_config.update(target)
        try:
            profiles.check_rules(merged_config, f"guests.{name}", guest.name)
        except CgctlError as exc:
            raise UsageError(f"policy: {exc.message}") from None
        have = ctl.journal(create=False).get_config(guest.uuid)
        have_ref = ctl.journal(create=False).get_guest_profile(guest.uuid).profile
        items = [Item(k[0], k[1], have.get(k), v) for k, v in sorted(target.items())
                 if have.get(k) != v]
        items += [Item(k[0], k[1], v, None) for k, v in sorted(have.items()) if k not in target]
        change_ref = (have_ref, ref) if have_ref != ref else None
        if (items or change_ref) and not guest.persistent:
            raise UsageError(f"policy: guests.{name}: a transient guest has no config to set")
        if items or change_ref:
            if change_ref:
                items.insert(0, Item(profiles.HISTORY_PARAM, "", have_ref, ref))
            plans.append(Plan(guest, items, change_ref))
    return plans


def apply(ctl, plans: List[Plan], *, live: bool = False) -> list:
    """Carry out the plans (``live``: also in force now on running guests, as --perm)."""
    from cgctl.core.controller import BOTH, CONFIG
    outcomes = []
    for pl in plans:  # the profiles first: the guests' plans refer to them
        if isinstance(pl.guest, str):
            profiles.define(ctl.journal(), pl.guest,
                            {(i.param, i.device): i.new for i in pl.items})
            outcomes += ctl.push_profile(pl.guest, BOTH if live else CONFIG, command="import")
    for pl in plans:
        g = pl.guest
        if isinstance(g, str):
            continue
        items = [i for i in pl.items if i.param != profiles.HISTORY_PARAM]
        if pl.profile is not None:
            outcomes.append(ctl.use_profile(g.uuid, pl.profile[1], [], BOTH if live and
                                            g.running else CONFIG, command="import"))
        sets = [f"{i.param}={i.device + ',' if i.device else ''}{i.new}"
                for i in items if i.new is not None]
        unsets = [f"{i.param}={i.device}" if i.device else i.param
                  for i in items if i.new is None]
        if sets:
            outcomes.append(ctl.set(g.uuid, sets, BOTH if live and g.running else CONFIG,
                                    command="import"))
        if unsets:
            outcomes.append(ctl.unset(g.uuid, unsets))
    return outcomes


def write_file(path: str, text: str) -> None:
    """Atomically: a reader never sees half a policy."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

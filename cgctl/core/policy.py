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

from cgctl.model import params as P
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
    guest: object  # runtime.Guest
    items: List[Item]

    def to_dict(self) -> dict:
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
        rows = [r for r in journal.guests() if not r.deleted and r.settings]
    guests: Dict[str, dict] = {}
    for row in rows:
        settings: Dict[str, object] = {}
        for (param, device), value in sorted(journal.get_config(row.uuid).items()):
            if device:
                settings.setdefault(param, {})[device] = value
            else:
                settings[param] = value
        guests[row.name] = {"uuid": row.uuid, "driver": row.driver, "settings": settings}
    return {"schema": SCHEMA, "version": VERSION, "guests": guests}


def dumps(doc: dict, fmt: str = "json") -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if fmt != "toml":
        raise UsageError(f"unknown format {fmt!r} (json or toml)")
    q = json.dumps  # a JSON string is a TOML basic string for everything we write
    out = [f"schema = {q(doc['schema'])}", f"version = {doc['version']}"]
    for name, g in doc["guests"].items():
        out += ["", f"[guests.{q(name)}]"]
        out += [f"{k} = {q(g[k])}" for k in ("uuid", "driver") if k in g]
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
    extra = set(doc) - {"schema", "version", "guests"}
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
        extra = set(g) - {"uuid", "driver", "settings"}
        if extra:
            raise UsageError(f"policy: {_where('guests', name)}: unknown key(s) "
                             f"{', '.join(sorted(extra))}")
        if not isinstance(g.get("settings", {}), dict):
            raise UsageError(f"policy: {_where('guests', name, 'settings')} must be a table")
    return guests


def _target(name: str, settings: dict) -> Dict[Tuple[str, str], str]:
    """The file's settings of one guest as canonical config text (validated)."""
    out: Dict[Tuple[str, str], str] = {}
    for param, value in settings.items():
        where = _where("guests", name, "settings", param)
        try:
            p = P.lookup(param)
            if p.per_device:
                if not isinstance(value, dict):
                    raise UsageError("a per-device parameter takes a table DEVICE = VALUE")
                for dev, v in value.items():
                    P.check_device_name(dev, p.name)
                    s = P.from_text(p.name, dev, _scalar(v))
                    if not s.removes:
                        out[(p.name, dev)] = s.text()
            else:
                out[(p.name, "")] = P.from_text(p.name, "", _scalar(value)).text()
        except CgctlError as exc:
            raise UsageError(f"policy: {where}: {exc.message}") from None
    return out


def _scalar(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise UsageError(f"{v!r} is not a value")
    return str(v)


def plan(ctl, doc) -> List[Plan]:
    """What importing ``doc`` would change, per guest. Validates everything first."""
    guests = check_document(doc)
    plans = []
    seen = set()
    for name, g in guests.items():
        guest = ctl.find_guest(str(g.get("uuid") or name))
        if g.get("uuid") and guest.name != name:
            raise UsageError(f"policy: guests.{name}: UUID {g['uuid']} is {guest.name!r} here")
        if guest.uuid in seen:
            raise UsageError(f"policy: guest {guest.name} appears twice")
        seen.add(guest.uuid)
        target = _target(name, g.get("settings", {}))
        merged = {}
        for (param, dev), text in target.items():
            if not dev:
                merged[param] = P.from_text(param, dev, text).value
        try:
            P.validate_merged(merged, list(merged), guest=guest.name)
        except CgctlError as exc:
            raise UsageError(f"policy: guests.{name}: {exc.message}") from None
        have = ctl.journal(create=False).get_config(guest.uuid)
        items = [Item(k[0], k[1], have.get(k), v) for k, v in sorted(target.items())
                 if have.get(k) != v]
        items += [Item(k[0], k[1], v, None) for k, v in sorted(have.items()) if k not in target]
        if items and not guest.persistent:
            raise UsageError(f"policy: guests.{name}: a transient guest has no config to set")
        if items:
            plans.append(Plan(guest, items))
    return plans


def apply(ctl, plans: List[Plan], *, live: bool = False) -> list:
    """Carry out the plans (``live``: also in force now on running guests, as --perm)."""
    from cgctl.core.controller import BOTH, CONFIG
    outcomes = []
    for pl in plans:
        g = pl.guest
        sets = [f"{i.param}={i.device + ',' if i.device else ''}{i.new}"
                for i in pl.items if i.new is not None]
        unsets = [f"{i.param}={i.device}" if i.device else i.param
                  for i in pl.items if i.new is None]
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

"""Profiles: named sets of settings, and a guest's effective config (docs/fleet.md#profiles).

A profile (``gold``, ``batch``...) is defined in the journal (``cgctl profile set``) or by a file
``/etc/cgctl/profiles.d/NAME.toml`` that config management ships; a file wins over a journal
definition of the same name, and the CLI does not change a file's profile. A guest refers to
one profile (or none) and keeps its own settings beside it.

``effective`` is THE rule, used by every path that puts a config in force or shows one (the
controller's applies, the hook, the service, ``show``, the travel of metadata):

1. the guest's reference is a name: that profile's values, from this host's definition; where
   this host has none (or its file is broken), the values the guest's metadata carried (or the
   last ones used here), so a guest migrated from a host that has ``gold`` keeps gold's values;
2. no reference at all (a guest never given ``--profile`` / ``--no-profile``): the host's
   default profile, the one named ``default``, if the host defines it (never carried values:
   the default is the host's own);
3. the explicit "no profile" (``--no-profile``): nothing;
4. the guest's own settings on top, per setting (a per-device one per device).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Dict, List, NamedTuple, Optional, Tuple

from cgctl import consts
from cgctl.model import params as P
from cgctl.errors import CgctlError, UsageError

log = logging.getLogger("cgctl")

Config = Dict[Tuple[str, str], str]

DEFAULT = "default"  # the host's default profile
NONE = ""  # a guest's reference meaning "no profile, not even the default"
HISTORY_PARAM = "profile"  # the history rows of a guest's reference (param column)
ENV = "CGCTL_PROFILES_DIR"
MAX_FILE = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def profiles_dir() -> str:
    return os.environ.get(ENV) or os.path.join(os.path.dirname(consts.CONFIG_PATH),
                                               "profiles.d")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name == "none":
        raise UsageError(f"{name!r} is not a profile name (letters, digits, '_', '.', '-'; "
                         "at most 64; not 'none')")
    return name


# --------------------------------------------------------------------------- values

def settings_from_table(table, where: str) -> Config:
    """A settings table (``hard_limit = "4G"``, per-device ``{DEVICE = VALUE}``) as canonical
    config text; UsageError naming ``where`` and the parameter. Shared with policy files."""
    if not isinstance(table, dict):
        raise UsageError(f"{where} must be a table")
    out: Config = {}
    for param, value in table.items():
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
            raise UsageError(f"{where}.{param}: {exc.message}") from None
    return out


def _scalar(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise UsageError(f"{v!r} is not a value")
    return str(v)


def to_table(config: Config) -> dict:
    """The inverse of ``settings_from_table`` (export, ``profile show --json``)."""
    out: dict = {}
    for (param, device), value in sorted(config.items()):
        if device:
            out.setdefault(param, {})[device] = value
        else:
            out[param] = value
    return out


def check_rules(config: Config, what: str, guest: str = None) -> None:
    """The cross-parameter rules over a whole set (hard_limit <= swap_hard_limit...)."""
    merged = {}
    for (name, device), text in config.items():
        if not device:
            merged[name] = P.from_text(name, device, text).value
    try:
        P.validate_merged(merged, list(merged), guest=guest)
    except CgctlError as exc:
        raise UsageError(f"{what}: {exc}") from None


# --------------------------------------------------------------------------- definitions

class Definition(NamedTuple):
    name: str
    settings: Optional[Config]  # None: unusable (see error)
    source: str  # "file" or "journal"
    path: Optional[str] = None
    error: Optional[str] = None


def load_file(path: str) -> Config:
    """One profile file, validated as a whole; UsageError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
        if len(data) > MAX_FILE:
            raise UsageError("larger than 1 MiB")
        try:
            import tomllib
        except ModuleNotFoundError:  # Python < 3.11
            import tomli as tomllib
        table = tomllib.loads(data.decode("utf-8"))
        settings = settings_from_table(table, "settings")
        check_rules(settings, "settings")
        return settings
    except OSError as exc:
        raise UsageError(f"profile file {path}: {exc.strerror}") from None
    except CgctlError as exc:
        raise UsageError(f"profile file {path}: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001  the TOML parser's complaint, in one line
        raise UsageError(f"profile file {path} cannot be parsed: {exc}") from None


def file_definitions(directory: Optional[str] = None) -> Dict[str, Definition]:
    """Every ``*.toml`` of the profiles directory (a bad one with its error, never raises)."""
    directory = directory or profiles_dir()
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return {}
    out = {}
    for fname in names:
        if not fname.endswith(".toml") or fname.startswith("."):
            continue
        name, path = fname[:-5], os.path.join(directory, fname)
        try:
            check_name(name)
            out[name] = Definition(name, load_file(path), "file", path)
        except UsageError as exc:
            out[name] = Definition(name, None, "file", path, str(exc))
    return out


class Catalog:
    """This host's profiles: the files, then the journal (a file wins)."""

    def __init__(self, journal, directory: Optional[str] = None):
        self.journal = journal
        self._files = file_definitions(directory)

    def get(self, name: str) -> Optional[Definition]:
        if name in self._files:
            return self._files[name]
        settings = self.journal.get_profile(name)
        return None if settings is None else Definition(name, settings, "journal")

    def all(self) -> Dict[str, Definition]:
        out = {n: Definition(n, s, "journal") for n, s in self.journal.get_profiles().items()}
        out.update(self._files)
        return dict(sorted(out.items()))

    def require(self, name: str) -> Definition:
        """A usable definition, else a one-line UsageError."""
        d = self.get(check_name(name))
        if d is None:
            known = ", ".join(self.all()) or "none"
            raise UsageError(f"unknown profile {name!r} (defined here: {known})")
        if d.settings is None:
            raise UsageError(d.error)
        return d


# --------------------------------------------------------------------------- the rule

class Effective(NamedTuple):
    config: Config  # what an apply puts in force: the profile's values, the guest's on top
    own: Config  # the guest's own settings (the journal config)
    profile: Optional[str]  # the profile in use (None: none)
    values: Config  # that profile's values as used
    origin: str  # where they came from: "file", "journal", "carried", "" (no profile)
    reference: Optional[str]  # the guest's stored reference (None: follows the default)
    problem: Optional[str] = None  # why this host's definition was not used

    def from_profile(self, key) -> bool:
        return key in self.values and key not in self.own


def effective(journal, uuid: str, catalog: Optional[Catalog] = None, *,
              own: Optional[Config] = None, reference=False, carried=False,
              profile_values: Optional[Config] = None) -> Effective:
    """The guest's effective config by the rule above (docs/fleet.md#profiles).

    ``own``/``reference``/``carried``/``profile_values`` replace what the journal holds (to
    judge a change before it is written: ``profile set`` checks every guest using it)."""
    own = dict(journal.get_config(uuid) if own is None else own)
    stored = journal.get_guest_profile(uuid)
    ref = stored.profile if reference is False else reference
    values_carried = stored.values if carried is False else carried
    if ref == NONE:
        return Effective(own, own, None, {}, "", ref)
    name = DEFAULT if ref is None else ref
    catalog = catalog or Catalog(journal)
    d = catalog.get(name)
    problem = None
    if profile_values is not None:
        values, origin = dict(profile_values), "new"
    elif d is not None and d.settings is not None:
        values, origin = dict(d.settings), d.source
    elif ref is None:  # no default profile here (or a broken default file)
        if d is not None:
            log.error("the default profile is not used: %s", d.error)
        return Effective(own, own, None, {}, "", ref, d.error if d else None)
    else:
        problem = d.error if d is not None else f"profile {name!r} is not defined on this host"
        values, origin = dict(values_carried or {}), "carried"
        (log.info if values_carried is not None else log.warning)("guest %s: %s; %s", uuid, problem,
                    "using the values its metadata carried" if values_carried is not None
                    else "no values known for it")
    config = dict(values)
    config.update(own)
    return Effective(config, own, name, values, origin, ref, problem)


def users(journal, name: str, running: Dict[str, object]) -> Tuple[List[str], List[str]]:
    """(UUIDs of the guests using profile ``name``, of which running). The default profile
    is used by every guest without a reference, known to the journal or running."""
    uuids = [g.uuid for g in journal.profile_users(name)]
    if name == DEFAULT:
        known = {g.uuid for g in journal.guests() if not g.deleted}
        uuids += [g.uuid for g in journal.guests() if not g.deleted
                  and journal.get_guest_profile(g.uuid).profile is None]
        uuids += [u for u in running if u not in known]
    uuids = sorted(set(uuids))
    return uuids, [u for u in uuids if u in running]


# --------------------------------------------------------------------------- changing definitions

def _check_users(journal, name: str, values: Config, catalog: Catalog) -> None:
    """Every guest using ``name`` must still pass the cross-parameter rules with ``values``."""
    rows = journal.profile_users(name)
    if name == DEFAULT:
        rows += [g for g in journal.guests() if not g.deleted
                 and journal.get_guest_profile(g.uuid).profile is None]
    for g in rows:
        eff = effective(journal, g.uuid, catalog, profile_values=values)
        check_rules(eff.config, f"profile {name}: guest {g.name} (with its own settings)")


def define(journal, name: str, changes: Dict[Tuple[str, str], Optional[str]], *,
           replace: bool = False) -> Tuple[Optional[Config], Config]:
    """Set (text) or drop (None) settings of a journal profile (``replace``: the whole set),
    creating it if needed; validated as a whole (also against every guest using it) before
    anything is written. Returns (before, after)."""
    check_name(name)
    with journal.transaction() as tx:  # read, check and write as one: no change in between
        catalog = Catalog(tx)
        d = catalog.get(name)
        if d is not None and d.source == "file":
            raise UsageError(f"profile {name!r} is defined by {d.path} (config management): "
                             f"change that file, then run 'cgctl profile apply {name}'")
        before = d.settings if d is not None else None
        after = {} if replace else dict(before or {})
        for key, value in changes.items():
            if value is None:
                after.pop(key, None)
            else:
                after[key] = value
        check_rules(after, f"profile {name}")
        _check_users(tx, name, after, catalog)
        tx.put_profile(name, after)
    return before, after


def delete(journal, name: str, *, force: bool = False) -> Config:
    """Drop a journal profile. In use (guests refer to it): refused unless ``force``; those
    guests then keep the values they carry (as on a host that never had the profile)."""
    d = Catalog(journal).get(check_name(name))
    if d is None:
        raise UsageError(f"unknown profile {name!r}")
    if d.source == "file":
        raise UsageError(f"profile {name!r} is defined by {d.path} (config management): "
                         "remove that file instead")
    using = [g.name for g in journal.profile_users(name)]
    if using and not force:
        shown = ", ".join(using[:5]) + (", ..." if len(using) > 5 else "")
        raise UsageError(f"profile {name!r} is used by {len(using)} guest(s) ({shown}); "
                         "give them another profile first, or --force (they keep its values)")
    with journal.transaction() as tx:
        return tx.delete_profile(name) or {}

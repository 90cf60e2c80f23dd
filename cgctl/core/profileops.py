"""What changes when a guest takes a profile, or a profile changes: the guest's reference and
its effective config written (live as the mode says), every user of a profile pushed, each
guest all or nothing (cgctl/core/profiles.py holds the rules, docs/fleet.md#profiles)."""

from __future__ import annotations

from typing import Iterable, List, Tuple

from cgctl.core import live, profiles
from cgctl.core.journal import current_user, now
from cgctl.core.live import Change
from cgctl.core.outcome import BOTH, CONFIG, CURRENT, LIVE, Outcome, log_changes, resolve_mode
from cgctl.errors import CgctlError, UsageError
from cgctl.host import runfiles
from cgctl.host.runfiles import Guest
from cgctl.model import params as P

def _write_effective(ctl, guest: Guest, config) -> Tuple[List[Change], list]:
    """Write ``config`` live, all or nothing; returns (what changed, the writes to undo)."""
    settings = {k: P.from_text(k[0], k[1], v) for k, v in config.items()}
    if not settings:
        return [], []
    groups = ctl.groups(guest)
    devnums = ctl.device_numbers(guest, settings.values())
    changes, writes = live.set_live(ctl.router, groups, settings, devnums)
    ctl._remember_devnums(guest, settings, devnums)
    return [c for c in changes if c.old != c.new], writes

def use_profile(ctl, ident: str, profile: str, assignments: Iterable[str] = (),
                mode: str = CURRENT, *, source: str = "cli",
                command: str = "set") -> Outcome:
    """Give the guest ``profile`` (``profiles.NONE``: no profile, not even the default),
    and maybe settings of its own, as one change. A profile is config: ``--current`` is
    --perm on a running guest, --config on a stopped one; with --perm the new effective
    config is in force at once, all or nothing."""
    settings = P.parse_assignments(assignments) if assignments else {}
    guest = ctl.find_guest(ident)
    if mode == LIVE:
        raise UsageError("a guest's profile is config: use --config, or --perm to put it "
                         "in force now as well", guest=guest.name)
    mode = resolve_mode(BOTH if guest.running else CONFIG, guest) if mode == CURRENT \
        else resolve_mode(mode, guest)
    journal = ctl.journal()
    catalog = profiles.Catalog(journal)
    values = dict(catalog.require(profile).settings) if profile else {}
    at, user = now(), current_user()
    writes, live_changes = [], []
    with ctl.locked(guest):
        try:
            with journal.transaction() as tx:
                own = tx.get_config(guest.uuid)
                new_own = dict(own)
                new_own.update({s.key: s.text() for s in settings.values()})
                for s in settings.values():
                    if s.removes:
                        new_own.pop(s.key, None)
                eff = profiles.effective(tx, guest.uuid, catalog, own=new_own,
                                         reference=profile, carried=values)
                profiles.check_rules(eff.config, f"guest {guest.name} with profile "
                                     f"{profile or '(none)'}", guest.name)
                before = tx.set_guest_profile(guest.uuid, guest.name, guest.driver,
                                              profile, values)
                changes = [Change(profiles.HISTORY_PARAM, "", before.profile, profile)]
                if settings:
                    tx.set_config(guest.uuid, guest.name, guest.driver,
                                  {s.key: None if s.removes else s.text()
                                   for s in settings.values()})
                    changes += [Change(s.param.name, s.device, own.get(s.key), s.text())
                                for s in settings.values()]
                tx.add_history(guest.uuid, guest.name, command=command, source=source,
                               mode=CONFIG, changes=changes, at=at, user=user)
                if mode == BOTH:
                    live_changes, writes = _write_effective(ctl, guest, eff.config)
                    if live_changes:
                        tx.add_history(guest.uuid, guest.name, command=command,
                                       source=source, mode=LIVE, changes=live_changes,
                                       at=at, user=user)
        except BaseException:
            if writes:
                live.undo(writes, guest.name)
            raise
    log_changes(guest, changes + live_changes, source, mode)
    outcome = Outcome(guest, mode, changes + live_changes)
    from cgctl.core import travel
    for w in (travel.publish_profile(guest, mode, profile, values, at=at, user=user),
              travel.publish(guest, mode if mode != LIVE else CONFIG,
                             {s.key: None if s.removes else s.text()
                              for s in settings.values()}, at=at, user=user)
              if settings else None):
        if w:
            outcome.warnings.append(w)
    return outcome

def push_profile(ctl, name: str, mode: str, *, source: str = "cli",
                 command: str = "profile") -> List[Outcome]:
    """Put profile ``name`` as this host defines it now in force on every guest using it,
    as the mode says: live on running guests (each all or nothing: a guest whose kernel
    refuses one value keeps all its old ones, and the others go on); with --config/--perm
    also the values each guest carries (journal and domain metadata)."""
    journal = ctl.journal()
    catalog = profiles.Catalog(journal)
    d = catalog.require(name)
    running = runfiles.all_running(ctl.run_dir)
    uuids, _ = profiles.users(journal, name, running)
    outcomes = []
    for uuid in uuids:
        guest = running.get(uuid)
        try:
            if guest is None:
                if mode == LIVE:
                    continue
                guest = ctl.find_guest(uuid)
            outcomes.append(_push_one(ctl, guest, name, d.settings, mode, catalog,
                                           source=source, command=command))
        except CgctlError as exc:
            row = journal.get_guest(uuid)
            g = guest or Guest(name=row.name if row else uuid, uuid=uuid,
                               driver=row.driver if row else "qemu", uri="", running=False,
                               persistent=False, pid=None)
            outcomes.append(Outcome(g, mode, errors=[exc]))
    return outcomes

def _push_one(ctl, guest: Guest, name: str, values, mode: str, catalog, *, source: str,
              command: str) -> Outcome:
    journal = ctl.journal()
    at, user = now(), current_user()
    outcome = Outcome(guest, mode)
    with ctl.locked(guest):
        eff = profiles.effective(journal, guest.uuid, catalog)
        if eff.profile != name:
            return outcome  # changed its profile meanwhile
        writes = []
        try:
            with journal.transaction() as tx:
                if mode in (CONFIG, BOTH) and eff.reference:
                    tx.set_guest_profile(guest.uuid, guest.name, guest.driver,
                                         eff.reference, values)
                if mode in (LIVE, BOTH) and guest.running:
                    outcome.changes, writes = _write_effective(ctl, guest, eff.config)
                    if outcome.changes:
                        tx.add_history(guest.uuid, guest.name, command=command,
                                       source=source, mode=LIVE, changes=outcome.changes,
                                       at=at, user=user)
        except BaseException:
            if writes:
                live.undo(writes, guest.name)
            raise
    log_changes(guest, outcome.changes, source, LIVE)
    if eff.reference:
        from cgctl.core import travel
        w = travel.publish_profile(guest, mode, eff.reference, values, at=at, user=user)
        if w:
            outcome.warnings.append(w)
    return outcome


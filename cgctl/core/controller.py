"""The one core the CLI, the service and the hook stand on.

A change is: find the guest → decide live/config from the mode → in one
journal transaction: validate, write the live cgroup (all or nothing),
record config and history. If the journal cannot commit, the live writes
are undone, so a failed change leaves cgroups and journal as they were.

Every change and every apply holds the guest's lock (``guestlock``) from
reading the config to recording what it wrote, so an apply never writes a
config that a concurrent ``set`` has replaced.
"""

from __future__ import annotations

import os

from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Tuple

from cgctl import consts, log
from cgctl.host import devices, runfiles
from cgctl.core import compare, guestlock, live, profiles
from cgctl.cgroup import hierarchy, placement
from cgctl.model import params as P
from cgctl.model import units
from cgctl.cgroup import Router
from cgctl.errors import CgctlError, GuestNotFound, GuestNotRunning, GuestTransient, UsageError
from cgctl.core.journal import Journal, current_user, now
from cgctl.core.live import Change
from cgctl.host.runfiles import Guest

if TYPE_CHECKING:
    from cgctl.core.batch import Batch  # noqa: F401


LIVE, CONFIG, BOTH, CURRENT = "live", "config", "live+config", "current"
STALE = "stale:"   # device of a clear for a renumbered device's old MAJ:MIN ("stale:7:0")


class Outcome:
    """What one change or apply did to one guest."""

    def __init__(self, guest: Guest, mode: str, changes: Optional[List[Change]] = None,
                 errors: Optional[List[CgctlError]] = None):
        self.guest = guest
        self.mode = mode
        self.changes: List[Change] = changes or []
        self.errors: List[CgctlError] = errors or []  # per-parameter failures (apply)
        self.warnings: List[str] = []  # done, but something beside it was not (metadata)

    def to_dict(self) -> dict:
        return {
            "guest": self.guest.name, "uuid": self.guest.uuid, "driver": self.guest.driver,
            "mode": self.mode,
            "changes": [{"param": c.param, "device": c.device or None, "old": c.old, "new": c.new}
                        for c in self.changes],
            "errors": [e.to_dict() for e in self.errors],
            "warnings": list(self.warnings),
        }


def resolve_mode(mode: str, guest: Guest) -> str:
    """--current → live or config; refuse what libvirt would refuse."""
    if mode == CURRENT:
        return LIVE if guest.running else CONFIG
    if mode in (LIVE, BOTH) and not guest.running:
        raise GuestNotRunning("domain is not running (use --config to change its next start)",
                              guest=guest.name)
    if mode in (CONFIG, BOTH) and not guest.persistent:
        raise GuestTransient("cannot change the persistent config of a transient domain "
                             "(use --live)", guest=guest.name)
    return mode


TEST_WINDOW_ENV = "CGCTL_TEST_APPLY_WINDOW"


def _test_window() -> None:
    """Tests only: sleep this many seconds between an apply's config read and its writes.

    tests/libvirt/test_lost_update.py widens the window a concurrent ``set`` would have to
    land in, so that the race shows in every round instead of once in a while; under the
    guest's lock the sleep only makes the other writers wait. Unset in production."""
    v = os.environ.get(TEST_WINDOW_ENV)
    if v:
        try:
            import time
            time.sleep(min(max(float(v), 0.0), 10.0))
        except ValueError:
            pass


def log_changes(guest: Guest, changes: Iterable[Change], source: str, mode: str) -> None:
    for c in changes:
        dev = f"[{c.device}]" if c.device else ""
        log.info("guest=%s param=%s%s %s -> %s mode=%s source=%s", guest.name, c.param, dev,
                 c.old if c.old is not None else "-", c.new if c.new is not None else "-",
                 mode, source)


class Controller:
    def __init__(self, *, journal_path: str = consts.JOURNAL_PATH,
                 uris: Iterable[str] = consts.DEFAULT_URIS, host=None, run_dir: str = None):
        self.journal_path = journal_path
        self.uris = tuple(uris)
        self._host = host
        self._journal: Optional[Journal] = None
        self.run_dir = run_dir or consts.LIBVIRT_RUN_DIR
        # (uuid, param, device name) -> (MAJ:MIN, value text) this process last wrote
        self._written: Dict[Tuple[str, str, str], Tuple[str, str]] = {}
        self.lock_wait = guestlock.WAIT  # s to wait for another writer (the hook: less)

    def locked(self, guest: Guest):
        """The guest's lock (docs/architecture.md): one writer from config read to record."""
        return guestlock.hold(guest.uuid, wait=self.lock_wait, guest=guest.name)

    # -- the pieces, opened lazily (a live change must not import libvirt) ----
    @property
    def host(self):
        if self._host is None:
            self._host = hierarchy.detect()
        return self._host

    @property
    def router(self) -> Router:
        return Router(self.host)

    def journal(self, create: bool = True) -> Journal:
        if self._journal is None or (create and self._journal.missing):
            if self._journal is not None:
                self._journal.close()
            self._journal = Journal(self.journal_path, create=create)
        return self._journal

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def find_guest(self, ident: str) -> Guest:
        if not isinstance(ident, str) or not ident:
            raise UsageError("no guest named")
        if len(ident) > 1024:
            raise UsageError(f"guest name is {len(ident)} characters long; libvirt names are short")
        if units.normalize_uuid(ident) is None:
            runfiles.validate_name(ident)
        g = runfiles.find_running(ident, self.run_dir)
        if g is not None:
            return g
        from cgctl import virt  # only now: a stopped guest needs libvirt to be known
        return virt.lookup(ident, self.uris)

    def groups(self, guest: Guest):
        if not guest.running or not guest.pid:
            raise GuestNotRunning("domain is not running", guest=guest.name)
        return placement.groups_for_pid(guest.pid, self.host, guest=guest.name,
                                      driver=guest.driver)

    def device_numbers(self, guest: Guest, settings) -> Dict[str, str]:
        """Operator's device name → whole-disk MAJ:MIN now (docs/design.md#parameters-and-conversions: at apply time)."""
        if not any(s.param.per_device for s in settings):
            return {}
        xml = self._domain_xml(guest, [s.device for s in settings if s.param.per_device])
        return {s.device: devices.resolve(s.device, param=s.param.name, guest=guest.name,
                                          domain_xml=xml)
                for s in settings if s.param.per_device}

    def _domain_xml(self, guest: Guest, names) -> Optional[str]:
        """The live domain XML, only when a bare name may be a guest disk target."""
        if any("/" not in n for n in names):
            return runfiles.status_domain_xml(guest.driver, guest.name, self.run_dir)
        return None

    def device_names(self, guest: Guest, names) -> Dict[str, List[str]]:
        """MAJ:MIN → the operator's names resolving to it now (unresolvable names left out)."""
        names = sorted(set(n for n in names if n))
        xml = self._domain_xml(guest, names)
        out: Dict[str, List[str]] = {}
        for n in names:
            try:
                out.setdefault(devices.resolve(n, guest=guest.name, domain_xml=xml), []).append(n)
            except CgctlError:
                continue
        return out

    # -- changes ---------------------------------------------------------------
    def set(self, ident: str, assignments: Iterable[str], mode: str = CURRENT, *,
            source: str = "cli", command: str = "set") -> Outcome:
        settings = P.parse_assignments(assignments)
        guest = self.find_guest(ident)
        mode = resolve_mode(mode, guest)
        for s in settings.values():
            if s.param.qemu_only and guest.driver != "qemu":
                raise UsageError(f"applies to QEMU guests only; {guest.name} is {guest.driver}",
                                 guest=guest.name, param=s.param.name)
        journal = self.journal()
        writes = []
        at, user = now(), current_user()  # the same stamp in the history and the metadata
        with self.locked(guest):  # the undo too: no other writer between write and undo
            try:
                with journal.transaction() as tx:
                    old_config = tx.get_config(guest.uuid)
                    if mode in (CONFIG, BOTH):  # against what the next start applies
                        self._validate_config(guest, profiles.effective(
                            tx, guest.uuid, own=old_config).config, settings)
                    changes = [Change(s.param.name, s.device, old_config.get(s.key), s.text())
                               for s in settings.values()]
                    if mode in (LIVE, BOTH):
                        groups = self.groups(guest)
                        devnums = self.device_numbers(guest, settings.values())
                        changes, writes = live.set_live(self.router, groups, settings, devnums)
                        self._remember_devnums(guest, settings, devnums)
                    if mode in (CONFIG, BOTH):
                        # a per-device 0/unlimited clears the device's entry from the config
                        tx.set_config(guest.uuid, guest.name, guest.driver,
                                      {s.key: None if s.removes else s.text()
                                       for s in settings.values()})
                    else:
                        tx.upsert_guest(guest.uuid, guest.name, guest.driver)
                    tx.add_history(guest.uuid, guest.name, command=command, source=source,
                                   mode=mode, changes=changes, at=at, user=user)
            except BaseException:
                if writes:
                    live.undo(writes, guest.name)
                raise
        log_changes(guest, changes, source, mode)
        outcome = Outcome(guest, mode, changes)
        # --- settings travel with the guest (cgctl/core/travel.py): after the commit, never fatal
        from cgctl.core import travel
        warning = travel.publish(
            guest, mode, {s.key: None if s.removes else s.text() for s in settings.values()},
            live_changes={s.key: s.text() for s in settings.values()}, at=at, user=user)
        if warning:
            outcome.warnings.append(warning)
        return outcome

    def _validate_config(self, guest: Guest, config, settings) -> None:
        merged: Dict[str, P.Value] = {}
        for (name, device), text in config.items():
            if not device:
                try:
                    merged[name] = P.from_text(name, device, text).value
                except CgctlError:
                    continue
        merged.update({s.param.name: s.value for s in settings.values() if not s.param.per_device})
        P.validate_merged(merged, [s.param.name for s in settings.values()
                                   if not s.param.per_device], guest=guest.name)

    def unset(self, ident: str, names: Iterable[str], *, source: str = "cli") -> Outcome:
        """Drop parameters from the guest's config (its next start leaves them to libvirt)."""
        guest = self.find_guest(ident)
        wanted = []
        for n in names:
            p = P.lookup(n.split("=", 1)[0].split(",", 1)[0])
            dev = n.split("=", 1)[1] if "=" in n else None
            wanted.append((p.name, dev))
        at, user = now(), current_user()
        with self.locked(guest), self.journal().transaction() as tx:
            config = tx.get_config(guest.uuid)
            drop = {k: None for k in config
                    for name, dev in wanted if k[0] == name and (dev is None or k[1] == dev)}
            if not drop:
                raise UsageError("nothing to unset: the config holds none of "
                                 + ", ".join(n for n, _ in wanted), guest=guest.name)
            old = tx.set_config(guest.uuid, guest.name, guest.driver, drop)
            changes = [Change(p, d, old[(p, d)], None) for (p, d) in drop]
            tx.add_history(guest.uuid, guest.name, command="unset", source=source, mode=CONFIG,
                           changes=changes, at=at, user=user)
        log_changes(guest, changes, source, CONFIG)
        outcome = Outcome(guest, CONFIG, changes)
        from cgctl.core import travel  # tombstones in the persistent metadata (cgctl/core/travel.py)
        warning = travel.publish(guest, CONFIG, dict(drop), at=at, user=user) \
            if guest.persistent else None
        if warning:
            outcome.warnings.append(warning)
        return outcome

    def apply_config(self, guest: Guest, *, source: str = "cli", command: str = "apply",
                     journal: Journal = None, once: bool = False,
                     overlay: Optional[Dict[P.Key, str]] = None,
                     batch: Optional["Batch"] = None) -> Optional[Outcome]:
        """Write the guest's journal config into its live cgroups and record the instance.

        All at once when possible; if that is refused, parameter by parameter, so
        one bad setting (a device that is gone) does not keep the others away.
        With ``once``: None, and nothing written, if the journal records that this very
        process (pid + start time) has had its config applied already; decided under the
        guest's lock, so a ``--live`` change made after that apply is kept.
        ``overlay``: key -> text put in force on top of the config (the ``<live>`` settings a
        migrated guest carries in its metadata, docs/fleet.md); not written to the config.
        ``batch`` (cgctl/core/batch.py): the guest's lock is taken for the batch and its records
        go into the batch's one transaction (the log lines follow that commit).
        """
        return self._apply_journal(guest, source=source, command=command, journal=journal,
                                   once=once, overlay=overlay, batch=batch)

    def apply_devices(self, guest: Guest, *, source: str = "event", command: str = "device",
                      journal: Journal = None) -> Outcome:
        """Re-apply only the guest's per-device settings from its journal config: a disk
        appeared or changed (udev), maybe with other numbers. Names are resolved again;
        the instance record is left alone (this is not a whole-config apply)."""
        return self._apply_journal(guest, source=source, command=command, journal=journal,
                                   devices_only=True)

    def _apply_journal(self, guest: Guest, *, source: str, command: str,
                       journal: Optional[Journal], devices_only: bool = False,
                       once: bool = False,
                       overlay: Optional[Dict[P.Key, str]] = None,
                       batch: Optional["Batch"] = None) -> Optional[Outcome]:
        journal = journal or self.journal()
        if batch is not None:  # held by the batch until it commits; re-entered just below
            batch.lock(guest.uuid, guest.name, self.lock_wait)
        with self.locked(guest):  # from reading the config to recording what was written
            if once and runfiles.same_instance(journal.get_instance(guest.uuid),
                                      runfiles.instance_of(guest.pid)):
                return None
            config = dict(self.effective(guest.uuid, journal).config)
            config.update(overlay or {})
            _test_window()
            if devices_only:
                config = {k: v for k, v in config.items() if k[1]}
            settings: Dict[P.Key, P.Setting] = {}
            bad: List[CgctlError] = []
            for (name, device), text in config.items():
                try:
                    settings[(name, device)] = P.from_text(name, device, text)
                except CgctlError as exc:
                    bad.append(exc)
            return self.apply_settings(guest, settings, source=source, command=command,
                                       journal=journal, record_instance=not devices_only,
                                       errors=bad, batch=batch)

    def apply_settings(self, guest: Guest, settings: Dict[P.Key, P.Setting], *, source: str,
                       command: str, journal: Optional[Journal] = None,
                       record_instance: bool = False,
                       errors: Optional[List[CgctlError]] = None,
                       batch: Optional["Batch"] = None) -> Outcome:
        """Write ``settings`` live and record them in the history (one transaction).

        All at once when possible; if that is refused, parameter by parameter, so one bad
        setting (a device that is gone) does not keep the others away. Under the guest's
        lock: a caller that derived ``settings`` from the journal holds it already."""
        journal = journal or self.journal()
        outcome = Outcome(guest, LIVE, errors=list(errors or []))
        with self.locked(guest):
            groups = self.groups(guest)
            pid, start = runfiles.instance_of(guest.pid)
            if settings:
                try:
                    outcome.changes = self._apply_set(guest, groups, settings)
                except CgctlError:
                    for key, s in sorted(settings.items()):
                        try:
                            outcome.changes += self._apply_set(guest, groups, {key: s})
                        except CgctlError as exc:
                            outcome.errors.append(exc)
            at = now()  # when written, also if recorded later by a batch
            user = batch.user if batch is not None else None

            def record(tx):
                if outcome.changes:
                    tx.add_history(guest.uuid, guest.name, command=command, source=source,
                                   mode=LIVE, changes=outcome.changes, at=at, user=user)
                for exc in outcome.errors:
                    tx.add_history(guest.uuid, guest.name, command=command, source=source,
                                   mode=LIVE, changes=[(exc.param or "", "", None, None)],
                                   outcome=str(exc), at=at, user=user)
                if record_instance:
                    tx.set_instance(guest.uuid, pid, start, applied_at=at)

            def report():
                log_changes(guest, outcome.changes, source, LIVE)
                for exc in outcome.errors:
                    log.error("guest=%s apply failed source=%s: %s", guest.name, source, exc)

            if batch is not None:
                batch.add(record, report)
                return outcome
            with journal.transaction() as tx:
                record(tx)
        report()
        return outcome

    def _apply_set(self, guest, groups, settings) -> List[Change]:
        devnums = self.device_numbers(guest, settings.values())
        settings = dict(settings)
        settings.update(self._stale_entries(guest, groups, settings, devnums))
        changes, _ = live.set_live(self.router, groups, settings, devnums)
        self._remember_devnums(guest, settings, devnums)
        return changes

    def _remember_devnums(self, guest: Guest, settings, devnums) -> None:
        for s in settings.values():
            if s.param.per_device and not s.device.startswith(STALE):
                key = (guest.uuid, s.param.name, s.device)
                if s.removes:
                    self._written.pop(key, None)
                else:
                    self._written[key] = (devnums[s.device], s.text())

    def _stale_entries(self, guest, groups, settings, devnums) -> Dict[P.Key, P.Setting]:
        """Clears for the numbers a renumbered device had when this process last wrote it.

        A loop (or nbd) device keeps its numbers and their cgroup entries after detach,
        and whatever is attached there next must not inherit the limit. Only an entry
        still holding exactly what cgctl wrote is cleared, and only numbers no name in
        this set resolves to now. (A device really removed takes its entries with it:
        the kernel drops them.) Memory of one process: the service's, which re-applies
        on udev events; a one-shot `cgctl apply` after a renumbering cannot know."""
        out: Dict[P.Key, P.Setting] = {}
        now = set(devnums.values())
        for s in settings.values():
            if not s.param.per_device:
                continue
            prev = self._written.get((guest.uuid, s.param.name, s.device))
            if prev is None or prev[0] == devnums.get(s.device) or prev[0] in now:
                continue
            try:
                held = live.read_value(self.router, groups, s.param).get(prev[0])
            except CgctlError:
                continue
            if held is not None and P.canonical_text(s.param, held) == prev[1]:
                pseudo = f"{STALE}{prev[0]}"
                devnums[pseudo] = prev[0]
                out[(s.param.name, pseudo)] = P.Setting(s.param, pseudo, 0)
        return out

    # -- profiles (cgctl/core/profiles.py, docs/fleet.md#profiles) -----------------
    def effective(self, uuid: str, journal: Optional[Journal] = None) -> "profiles.Effective":
        """The guest's effective config: THE rule, in cgctl/core/profiles.py."""
        return profiles.effective(journal or self.journal(create=False), uuid)

    def _write_effective(self, guest: Guest, config) -> Tuple[List[Change], list]:
        """Write ``config`` live, all or nothing; returns (what changed, the writes to undo)."""
        settings = {k: P.from_text(k[0], k[1], v) for k, v in config.items()}
        if not settings:
            return [], []
        groups = self.groups(guest)
        devnums = self.device_numbers(guest, settings.values())
        changes, writes = live.set_live(self.router, groups, settings, devnums)
        self._remember_devnums(guest, settings, devnums)
        return [c for c in changes if c.old != c.new], writes

    def use_profile(self, ident: str, profile: str, assignments: Iterable[str] = (),
                    mode: str = CURRENT, *, source: str = "cli",
                    command: str = "set") -> Outcome:
        """Give the guest ``profile`` (``profiles.NONE``: no profile, not even the default),
        and maybe settings of its own, as one change. A profile is config: ``--current`` is
        --perm on a running guest, --config on a stopped one; with --perm the new effective
        config is in force at once, all or nothing."""
        settings = P.parse_assignments(assignments) if assignments else {}
        guest = self.find_guest(ident)
        if mode == LIVE:
            raise UsageError("a guest's profile is config: use --config, or --perm to put it "
                             "in force now as well", guest=guest.name)
        mode = resolve_mode(BOTH if guest.running else CONFIG, guest) if mode == CURRENT \
            else resolve_mode(mode, guest)
        journal = self.journal()
        catalog = profiles.Catalog(journal)
        values = dict(catalog.require(profile).settings) if profile else {}
        at, user = now(), current_user()
        writes, live_changes = [], []
        with self.locked(guest):
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
                        live_changes, writes = self._write_effective(guest, eff.config)
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

    def push_profile(self, name: str, mode: str, *, source: str = "cli",
                     command: str = "profile") -> List[Outcome]:
        """Put profile ``name`` as this host defines it now in force on every guest using it,
        as the mode says: live on running guests (each all or nothing: a guest whose kernel
        refuses one value keeps all its old ones, and the others go on); with --config/--perm
        also the values each guest carries (journal and domain metadata)."""
        journal = self.journal()
        catalog = profiles.Catalog(journal)
        d = catalog.require(name)
        running = runfiles.all_running(self.run_dir)
        uuids, _ = profiles.users(journal, name, running)
        outcomes = []
        for uuid in uuids:
            guest = running.get(uuid)
            try:
                if guest is None:
                    if mode == LIVE:
                        continue
                    guest = self.find_guest(uuid)
                outcomes.append(self._push_one(guest, name, d.settings, mode, catalog,
                                               source=source, command=command))
            except CgctlError as exc:
                row = journal.get_guest(uuid)
                g = guest or Guest(name=row.name if row else uuid, uuid=uuid,
                                   driver=row.driver if row else "qemu", uri="", running=False,
                                   persistent=False, pid=None)
                outcomes.append(Outcome(g, mode, errors=[exc]))
        return outcomes

    def _push_one(self, guest: Guest, name: str, values, mode: str, catalog, *, source: str,
                  command: str) -> Outcome:
        journal = self.journal()
        at, user = now(), current_user()
        outcome = Outcome(guest, mode)
        with self.locked(guest):
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
                        outcome.changes, writes = self._write_effective(guest, eff.config)
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

    def forget(self, uuid: str, *, source: str = "cli", command: str = "undefine") -> dict:
        with self.journal().transaction() as tx:
            return tx.forget_guest(uuid, command=command, source=source)

    # -- reading -----------------------------------------------------------------
    def show(self, ident: str) -> dict:
        guest = self.find_guest(ident)
        eff = self.effective(guest.uuid)
        config = eff.config
        live_values: Dict[str, object] = {}
        groups = None
        names: Dict[str, List[str]] = {}
        if guest.running:
            groups = self.groups(guest)
            live_values = live.read_all(self.router, groups)
            names = self.device_names(guest, [d for (_, d) in config])
        normalize = compare.normalizer(self.router, groups) if guest.running else None
        rows = []
        for p in P.CATALOGUE:
            cfg = {d: v for (n, d), v in config.items() if n == p.name}
            lv = live_values.get(p.name)
            rows.append(_show_row(p, lv, cfg, guest.running, normalize, names, live_values))
            rows[-1]["from_profile"] = any(eff.from_profile(k) for k in config if k[0] == p.name)
        notes = systemd_notes(groups) if groups is not None else []
        if eff.problem:
            notes.append(eff.problem + ("; the values its metadata carried apply"
                                        if eff.origin == "carried" else ""))
        return {"guest": guest.name, "uuid": guest.uuid, "driver": guest.driver,
                "running": guest.running, "persistent": guest.persistent,
                "groups": groups.to_dict() if groups is not None else {}, "notes": notes,
                "profile": eff.profile, "profile_origin": eff.origin or None,
                "profile_reference": eff.reference, "params": rows,
                "usage": self._usage(groups, names)}

    def _usage(self, groups, names) -> Optional[dict]:
        """What the guest uses, beside its limits (cgctl/cgroup/usage.py); None if stopped."""
        from cgctl.cgroup import usage
        return None if groups is None else usage.read(
            groups, self.host, lambda mm: (names.get(mm) or [devices.kernel_name(mm)])[0])

    def list(self) -> List[dict]:
        out = []
        try:
            alive = runfiles.all_running(self.run_dir)
        except CgctlError:
            alive = {}
        for g in self.journal(create=False).guests():
            if g.deleted:
                continue
            running = g.uuid in alive
            out.append({"guest": g.name, "uuid": g.uuid, "driver": g.driver,
                        "state": "running" if running else "shut off",
                        "settings": g.settings, "last_change": g.last_change})
        return out

    def history(self, ident: Optional[str] = None, limit: Optional[int] = None) -> List[dict]:
        j = self.journal(create=False)
        uuid = None
        if ident:
            row = j.find_guest(ident)
            if row is None:
                raise GuestNotFound("the journal has no history for this guest", guest=ident)
            uuid = row.uuid
        return [r._asdict() for r in j.history(uuid, limit=limit)]


def systemd_notes(groups) -> List[str]:
    """What an operator should know about a guest whose machine group is a systemd scope."""
    if any(os.path.basename(d).endswith(".scope") for _, d in groups.machine.values()):
        # systemd rewrites a scope's own files (weights) on daemon-reload (systemd#17938)
        return ["the guest's machine group is a systemd scope: systemd may rewrite "
                "cpu_shares/weight there on 'systemctl daemon-reload'; the service's drift "
                "repair puts cgctl's values back ('cgctl verify --repair' by hand)"]
    return []


def _show_row(p: P.Param, live_value, cfg: Dict[str, str], running: bool, normalize=None,
              names: Dict[str, List[str]] = None, live_values=None) -> dict:
    """One parameter of ``show``: live beside config, and whether they differ (None: no
    config, not running, or not to be told; cgctl/core/compare.py decides)."""
    devs = None
    if p.per_device:
        live_text = live.format_value(p, live_value) if running else None
        config_text = ", ".join(f"{d}={v}" for d, v in sorted(cfg.items())) or None
        differs = None
        if running and isinstance(live_value, dict):
            devs = _device_rows(p, live_value, cfg, names or {}, normalize)
            live_text = ", ".join(
                f"{r['device']} ({r['majmin']})={r['live']}" if r["device"] else
                f"{r['majmin']}={r['live']}" for r in devs if r["live"] is not None) or "-"
            if cfg:
                differs = any(r["differs"] for r in devs if r["config"] is not None)
    else:
        live_text = live.format_value(p, live_value) if running else None
        config_value = cfg.get("")
        config_text = None
        differs = None
        if config_value is not None:
            pv = P.parse_value(p, config_value)
            config_text = live.format_value(p, pv)
            if running and not isinstance(live_value, CgctlError) and live_value is not None:
                held = compare.in_force(p, pv, live_value, normalize,
                                        (live_values or {}).get(p.period))
                differs = None if held is None else not held
    row = {"param": p.name, "live": live_text, "config": config_text, "differs": differs,
           "unsupported": str(live_value) if isinstance(live_value, CgctlError) else None}
    if devs is not None:
        row["devices"] = devs
    return row


def _device_rows(p: P.Param, live_value: Dict[str, object], cfg: Dict[str, str],
                 names: Dict[str, List[str]], normalize=None) -> List[dict]:
    """One row per device: the operator's name (where the config names it) beside MAJ:MIN;
    a configured device with no live entry, or that resolves to nothing now, differs."""
    rows = []
    seen = set()
    for majmin, value in sorted(live_value.items()):
        for n in [n for n in names.get(majmin, []) if n in cfg] or [None]:
            seen.add(n)
            ctext = cfg.get(n) if n else None
            rows.append({"device": n, "majmin": majmin, "live": P.canonical_text(p, value),
                         "config": ctext,
                         "differs": None if ctext is None else
                         not compare.in_force(p, P.parse_value(p, ctext), value, normalize)})
    for n, ctext in sorted(cfg.items()):
        if n not in seen:
            majmin = next((mm for mm, ns in names.items() if n in ns), None)
            rows.append({"device": n, "majmin": majmin, "live": None, "config": ctext,
                         "differs": True})
    return rows

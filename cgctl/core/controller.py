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

import contextvars
import functools
import os
import time

from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Tuple

from cgctl import consts, log
from cgctl.host import devices, runfiles
from cgctl.core import guestlock, live, profileops, profiles, reading
from cgctl.cgroup import fs, hierarchy, placement
from cgctl.model import params as P
from cgctl.model import units
from cgctl.cgroup import Router
from cgctl.errors import CgctlError, GuestNotRunning, UsageError
from cgctl.core.journal import Journal, current_user, now
from cgctl.core.live import Change
from cgctl.host.runfiles import Guest
from cgctl.core.outcome import (BOTH, CONFIG, CURRENT, LIVE, Outcome, change_dict,  # noqa: F401
                                 log_changes, resolve_mode)

if TYPE_CHECKING:
    from cgctl.core.batch import Batch  # noqa: F401


STALE = "stale:"   # device of a clear for a renumbered device's old MAJ:MIN ("stale:7:0")


TEST_WINDOW_ENV = "CGCTL_TEST_APPLY_WINDOW"

# the command server's journal (cgctl/service/cmdserver.py), set in the thread running a command:
# one connection kept for every command instead of an open and close each (Journal is
# thread-safe); used when it is this controller's journal file
SHARED_JOURNAL: "contextvars.ContextVar[Optional[Journal]]" = contextvars.ContextVar(
    "cgctl_shared_journal", default=None)


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


class Controller:
    def __init__(self, *, journal_path: str = consts.JOURNAL_PATH,
                 uris: Iterable[str] = consts.DEFAULT_URIS, host=None, run_dir: str = None):
        self.journal_path = journal_path
        self.uris = tuple(uris)
        self._host = host
        self._router: Optional[Router] = None
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
        if self._router is None or self._router.host is not self.host:
            self._router = Router(self.host)
        return self._router

    def journal(self, create: bool = True) -> Journal:
        shared = SHARED_JOURNAL.get()
        if shared is not None and shared.path == os.path.abspath(self.journal_path):
            return shared  # the service's, kept open across commands (not closed by close())
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

    def libvirt_tunables(self, guest: Guest, *, persistent: bool) -> Dict[P.Key, str]:
        """libvirt's own <memtune>/<cputune>/<blkiotune> (cgctl/model/tunables.py): of the
        persistent XML (what the next start applies), else of the running guest's (libvirt's
        status file, libvirt when it has none). Never fails: no XML, no tunables."""
        from cgctl.model import tunables
        try:
            return tunables.parse(self.tunables_xml(guest, persistent=persistent))
        except Exception as exc:  # noqa: BLE001 - a report beside the command, never its failure
            log.debug("guest=%s libvirt tunables not read: %s", guest.name, exc)
            return {}

    def tunables_xml(self, guest: Guest, *, persistent: bool) -> Optional[str]:
        """The domain XML ``libvirt_tunables`` reads; None when there is none to be had."""
        if persistent and not guest.persistent:
            return None
        if not persistent and guest.running:
            xml = runfiles.status_domain_xml(guest.driver, guest.name, self.run_dir)
            if xml:
                return xml
        from cgctl import virt  # only now: the persistent XML needs libvirt
        try:
            return virt.guest_xml(guest, inactive=persistent or not guest.running)
        except CgctlError:
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
                        config_changes = {s.key: None if s.removes else s.text()
                                          for s in settings.values()}
                        replaced = _same_file_in_config(settings, old_config)
                        config_changes.update({k: None for k in replaced})
                        tx.set_config(guest.uuid, guest.name, guest.driver, config_changes)
                        changes += [Change(k[0], k[1], old_config[k], None) for k in replaced]
                    else:
                        tx.upsert_guest(guest.uuid, guest.name, guest.driver)
                    tx.add_history(guest.uuid, guest.name, command=command, source=source,
                                   mode=mode, changes=changes, at=at, user=user)
            except BaseException:
                if writes:
                    live.undo(writes, guest.name)
                raise
            # --- settings travel with the guest (cgctl/core/travel.py): after the commit, never
            # fatal. In the service: queued here, under the lock (the journal's order), and
            # written after the answer (cgctl/service/publisher.py); else written just below.
            from cgctl.core import travel
            publish = functools.partial(
                travel.publish, guest, mode,
                {s.key: None if s.removes else s.text() for s in settings.values()},
                live_changes={s.key: s.text() for s in settings.values()}, at=at, user=user)
            deferred = travel.deferring()
            if deferred:
                publish(defer=True)
        log_changes(guest, changes, source, mode)
        outcome = Outcome(guest, mode, changes)
        warning = None if deferred else publish()
        if warning:
            outcome.warnings.append(warning)
        if mode in (CONFIG, BOTH):
            outcome.warnings += self._tunable_warnings(guest, settings.values())
        return outcome

    def _tunable_warnings(self, guest: Guest, settings) -> List[str]:
        """Where the persistent XML's own tunables will meet this config at the next start
        (docs/usage.md#libvirts-own-tunables): one warning each, saying who wins and when."""
        from cgctl.model import tunables
        keys = [s.key for s in settings if not s.removes]
        if not keys:
            return []
        found = tunables.conflicts(self.libvirt_tunables(guest, persistent=True), keys)
        return [tunables.warning(k, text) for k, text in dict(found.values()).items()]

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
        from cgctl.core import travel  # tombstones in the persistent metadata (cgctl/core/travel.py)
        deferred = travel.deferring() and guest.persistent
        with self.locked(guest):
            with self.journal().transaction() as tx:
                config = tx.get_config(guest.uuid)
                drop = {k: None for k in config
                        for name, dev in wanted if k[0] == name and (dev is None or k[1] == dev)}
                if not drop:
                    raise UsageError("nothing to unset: the config holds none of "
                                     + ", ".join(n for n, _ in wanted), guest=guest.name)
                old = tx.set_config(guest.uuid, guest.name, guest.driver, drop)
                changes = [Change(p, d, old[(p, d)], None) for (p, d) in drop]
                tx.add_history(guest.uuid, guest.name, command="unset", source=source,
                               mode=CONFIG, changes=changes, at=at, user=user)
            if deferred:  # queued under the lock, as in set()
                travel.publish(guest, CONFIG, dict(drop), at=at, user=user, defer=True)
        log_changes(guest, changes, source, CONFIG)
        outcome = Outcome(guest, CONFIG, changes)
        warning = travel.publish(guest, CONFIG, dict(drop), at=at, user=user) \
            if guest.persistent and not deferred else None
        if warning:
            outcome.warnings.append(warning)
        return outcome

    def apply_config(self, guest: Guest, *, source: str = "cli", command: str = "apply",
                     journal: Journal = None, once: bool = False,
                     overlay: Optional[Dict[P.Key, str]] = None,
                     batch: Optional["Batch"] = None,
                     need_config: bool = False) -> Optional[Outcome]:
        """Write the guest's journal config into its live cgroups and record the instance.

        All at once when possible; if that is refused, parameter by parameter, so
        one bad setting (a device that is gone) does not keep the others away.
        With ``once``: None, and nothing written, if the journal records that this very
        process (pid + start time) has had its config applied already; decided under the
        guest's lock, so a ``--live`` change made after that apply is kept.
        ``overlay``: key -> text put in force on top of the config (the ``<live>`` settings a
        migrated guest carries in its metadata, docs/fleet.md); not written to the config.
        ``batch`` (cgctl/core/batch.py): the guest's lock is taken for the batch and its records
        go into the batch's one transaction (the log lines follow that commit: one line per
        guest at info, each setting's at debug).
        ``need_config``: None, and nothing written or recorded, when the guest has no config
        (and no overlay); the config is read once, under the lock (a caller need not ask
        ``effective`` first, docs/performance.md section 3 F).
        """
        return self._apply_journal(guest, source=source, command=command, journal=journal,
                                   once=once, overlay=overlay, batch=batch,
                                   need_config=need_config)

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
                       batch: Optional["Batch"] = None,
                       need_config: bool = False) -> Optional[Outcome]:
        journal = journal or self.journal()
        if batch is not None:  # held by the batch until it commits; re-entered just below
            batch.lock(guest.uuid, guest.name, self.lock_wait)
        with self.locked(guest):  # from reading the config to recording what was written
            if once and runfiles.same_instance(journal.get_instance(guest.uuid),
                                      runfiles.instance_of(guest.pid)):
                return None
            config = dict(self.effective(guest.uuid, journal).config)
            for key in _same_file_in_config(overlay or {}, config):
                del config[key]   # a carried live value replaces its file's other parameter
            config.update(overlay or {})
            if need_config and not config:
                return None
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
        with self.locked(guest), fs.one_pass():  # each group directory checked once
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
            outcome.written_ns = time.perf_counter_ns()
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
                if batch is not None:  # a reconcile: one line per guest, the settings at debug
                    log.info("guest=%s applied source=%s: %d change(s), %d error(s)",
                             guest.name, source, len(outcome.changes), len(outcome.errors))
                    log_changes(guest, outcome.changes, source, LIVE, level=log.DEBUG)
                else:
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

    # -- profiles (cgctl/core/profiles.py; the operations: cgctl/core/profileops.py) --
    def effective(self, uuid: str, journal: Optional[Journal] = None) -> "profiles.Effective":
        """The guest's effective config: THE rule, in cgctl/core/profiles.py."""
        return profiles.effective(journal or self.journal(create=False), uuid)

    def use_profile(self, ident: str, profile: str, assignments: Iterable[str] = (),
                    mode: str = CURRENT, **kw) -> Outcome:
        return profileops.use_profile(self, ident, profile, assignments, mode, **kw)

    def push_profile(self, name: str, mode: str, **kw) -> List["Outcome"]:
        return profileops.push_profile(self, name, mode, **kw)

    def forget(self, uuid: str, *, source: str = "cli", command: str = "undefine") -> dict:
        with self.journal().transaction() as tx:
            return tx.forget_guest(uuid, command=command, source=source)

    # -- reading (cgctl/core/reading.py) ------------------------------------------
    def show(self, ident: str) -> dict:
        return reading.show(self, ident)

    def list(self) -> List[dict]:
        return reading.list_guests(self)

    def history(self, ident: Optional[str] = None, limit: Optional[int] = None) -> List[dict]:
        return reading.history(self, ident, limit)


def _same_file_in_config(settings, config) -> List[P.Key]:
    """Config keys a new setting replaces: libvirt's v1-shaped parameter and the v2-native
    one write one kernel file (cpu_shares/cpu_weight, weight/io_weight), so the config keeps
    the one set last."""
    out = []
    for key in settings:
        other = P.same_file_partner(key)
        if other is not None and other in config:
            out.append(other)
    return out

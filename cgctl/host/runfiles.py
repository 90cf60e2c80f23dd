"""Find a running guest from libvirt's runtime files, without importing libvirt.

The fast ``--live`` path and the hook use this module: ``import libvirt`` alone costs 40-55 ms
and a hook must never call libvirt (docs/design.md#the-hook). While a guest is active, libvirt 9.0 keeps in
``/run/libvirt/<driver>/``:

- ``NAME.pid``: the guest's main PID (see below);
- ``NAME.xml``: a ``<domstatus state=.. pid=..>`` holding the live ``<domain>`` (name, uuid),
  mode 0600 (so only root can look guests up here).

Both are removed on a clean stop; after a crash or a host reboot they may remain, and a
process can put anything in its own argv, so a PID is trusted only when all of these hold
(``_verified``):

- the pid file and the status file's ``pid=`` both exist and name the same PID;
- the process started before libvirt wrote the pid file (libvirt writes it after the fork; a
  process that started later got a reused PID), within START_SLACK_S;
- ``/proc/PID/exe`` is the emulator: QEMU, the status XML's ``<emulator>``; LXC, one of
  LXC_CONTROLLERS (a binary that was upgraded under a running guest reads ``... (deleted)``:
  accepted, it is the same path);
- its real and effective uid are root's or (QEMU) the guest's DAC label's or a QEMU user's;
- its argv names this very guest (QEMU ``-uuid UUID``, LXC ``--name NAME``).

The start-time test compares wall clocks: a clock stepped forward by more than START_SLACK_S
between a guest's start and the check makes a running guest look stale here (the callers then
ask libvirt, or skip the early apply).

Which PID (checked on this machine, libvirt 9.0, cgroup v1, no systemd):
- QEMU: ``NAME.pid`` is the qemu-system process. Its main thread sits in
  ``cpu,cpuacct,cpuset:machine/qemu-ID-NAME.libvirt-qemu/emulator`` and in the machine group
  itself for memory, blkio, devices, freezer; vCPU threads are in ``.../vcpuN``. Its argv holds
  ``-uuid UUID``, which identifies it.
- LXC: ``NAME.pid`` is the ``libvirt_lxc`` controller (``libvirt_lxc --name NAME ...``), not the
  container's init (the controller's child). libvirt moves the controller itself into the
  machine group, so ``/proc/PID/cgroup`` shows ``machine/lxc-PID-NAME.libvirt-lxc`` for every
  controller (the ID in the group name is this very PID); the init and its children are in the
  same group. The domain's ID (``virsh domid``) is the same PID.
"""

from __future__ import annotations

import os
import pwd
import xml.etree.ElementTree as ET
from typing import Iterable, Iterator, Optional, Tuple, NamedTuple

from cgctl import consts, errors
from cgctl.consts import DRIVERS
from cgctl.model.units import normalize_uuid
# where distributions install libvirt's LXC controller (Debian, Fedora/RHEL, SUSE)
LXC_CONTROLLERS = ("/usr/lib/libvirt/libvirt_lxc", "/usr/libexec/libvirt_lxc",
                   "/usr/lib64/libvirt/libvirt_lxc")
QEMU_USERS = ("libvirt-qemu", "qemu")  # the user qemu.conf runs guests as (Debian, others)
START_SLACK_S = 2.0  # clock ticks and timestamp granularity between fork and pid file write
SYSTEM_URIS = {"qemu": "qemu:///system", "lxc": "lxc:///system"}


class Guest(NamedTuple):
    """One libvirt guest as cgctl sees it.

    ``driver`` is ``'qemu'`` or ``'lxc'`` (``virt`` may also report other libvirt drivers,
    e.g. ``'test'``); ``running`` means active (running or paused); ``pid`` is the main PID
    while running (see the module docstring), else None.
    Defined here rather than in ``virt`` so that code which must not import libvirt can use it.
    """

    name: str
    uuid: str
    driver: str
    uri: str
    running: bool
    persistent: bool
    pid: Optional[int]


# --------------------------------------------------------------------------- names

from cgctl.model.ident import validate_name  # noqa: E402,F401  (one place: ident.py)


# --------------------------------------------------------------------------- runtime files

def read_pid(driver: str, name: str, run_dir: str = consts.LIBVIRT_RUN_DIR) -> Optional[int]:
    """The PID libvirt recorded for a guest, or None if there is no (valid) pid file."""
    path = os.path.join(run_dir, driver, validate_name(name) + ".pid")
    try:
        with open(path, "rb") as f:
            pid = int(f.read(32).split()[0])
    except (FileNotFoundError, NotADirectoryError, ValueError, IndexError):
        return None
    except OSError as e:
        raise _unreadable(path, e) from e
    return pid if pid > 0 else None


class _Status(NamedTuple):
    name: str
    uuid: str
    pid: Optional[int]  # from <domstatus pid=..>
    emulator: Optional[str] = None  # <devices><emulator> (QEMU)
    dac_uid: Optional[int] = None  # the uid of <seclabel model='dac'><label>


def _read_status(path: str) -> Optional[_Status]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise _unreadable(path, e) from e
    return _parse_status(data)


def _parse_status(data: bytes) -> Optional[_Status]:
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return None  # half-written or foreign file: not a guest we can trust
    return _status_of(root)


def _status_of(root) -> Optional[_Status]:
    dom = root.find("domain") if root.tag == "domstatus" else None
    if dom is None:
        return None
    name, uuid = dom.findtext("name"), normalize_uuid(dom.findtext("uuid") or "")
    if not name or not uuid:
        return None
    try:
        pid = int(root.get("pid", ""))
    except ValueError:
        pid = None
    dac = None
    for label in dom.iterfind("seclabel"):
        if label.get("model") == "dac":
            dac = _dac_uid(label.findtext("label") or "")
    return _Status(name=name, uuid=uuid, pid=pid, emulator=dom.findtext("devices/emulator"),
                   dac_uid=dac)


def _dac_uid(label: str) -> Optional[int]:
    """``+64055:+64055`` or ``libvirt-qemu:kvm`` → the uid; None if it says none."""
    user = label.split(":", 1)[0].strip()
    if user.startswith("+") and user[1:].isdigit():
        return int(user[1:])
    try:
        return pwd.getpwnam(user).pw_uid if user else None
    except KeyError:
        return None


def _unreadable(path: str, exc: OSError) -> errors.LibvirtError:
    return errors.LibvirtError(
        f"cannot read libvirt's runtime state {path}: {exc.strerror} (cgctl needs root here)",
        path=path, errno=exc.errno)


def _status_files(driver: str, run_dir: str) -> Iterator[Tuple[str, str]]:
    """(guest name, path) of every status XML in a driver's run dir."""
    directory = os.path.join(run_dir, driver)
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise _unreadable(directory, e) from e
    for entry in entries:
        if entry.name.endswith(".xml") and entry.is_file(follow_symlinks=False):
            yield entry.name[:-len(".xml")], entry.path


def _statuses(driver: str, run_dir: str, uuid: str) -> Iterator[Tuple[str, _Status]]:
    """(file name, status) of every status XML in a driver's run dir that mentions ``uuid``."""
    needle = uuid.encode()
    for name, path in _status_files(driver, run_dir):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue  # the guest stopped while we looked
        except OSError as e:
            raise _unreadable(path, e) from e
        if needle not in data.lower():
            continue
        status = _parse_status(data)
        if status is not None:
            yield name, status


# --------------------------------------------------------------------------- process identity

def _argv(pid: int, proc_root: str) -> Optional[list]:
    try:
        with open(os.path.join(proc_root, str(pid), "cmdline"), "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if not raw:
        return None  # zombie or kernel thread
    return [a.decode("utf-8", "surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")]


def _exe(pid: int, proc_root: str) -> Optional[str]:
    try:
        exe = os.readlink(os.path.join(proc_root, str(pid), "exe"))
    except OSError:
        return None
    return exe[:-len(" (deleted)")] if exe.endswith(" (deleted)") else exe


def _uids(pid: int, proc_root: str) -> Optional[Tuple[int, int]]:
    """(real, effective) uid of a process, from /proc/PID/status."""
    try:
        with open(os.path.join(proc_root, str(pid), "status"), "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    real, effective = line.split()[1:3]
                    return int(real), int(effective)
    except (OSError, ValueError):
        pass
    return None


def _qemu_uids(status: "_Status") -> set:
    out = {0}
    if status.dac_uid is not None:
        out.add(status.dac_uid)
    for user in QEMU_USERS:
        try:
            out.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            pass
    return out


def _verified(driver: str, name: str, status: "_Status", run_dir: str,
              proc_root: str) -> Optional[int]:
    """The guest's main PID if every check of the module docstring holds, else None."""
    pid_path = os.path.join(run_dir, driver, validate_name(name) + ".pid")
    pid = read_pid(driver, name, run_dir)
    if not pid or status.pid != pid:
        return None
    if not _is_guest_process(driver, pid, name, status.uuid, proc_root):
        return None
    exe = _exe(pid, proc_root)
    if driver == "qemu":
        want = {status.emulator, os.path.realpath(status.emulator)} if status.emulator else set()
        allowed = _qemu_uids(status)
    else:
        want, allowed = set(LXC_CONTROLLERS), {0}
    if exe is None or exe not in want:
        return None
    uids = _uids(pid, proc_root)
    if uids is None or not set(uids) <= allowed:
        return None
    try:
        written = os.stat(pid_path).st_mtime
        if started_at(pid, proc_root) > written + START_SLACK_S:
            return None  # started after libvirt wrote the pid file: a reused PID
    except (OSError, errors.GuestNotRunning, ValueError, IndexError):
        return None
    return pid


def verified_pid(driver: str, name: str, uuid: str, run_dir: str = consts.LIBVIRT_RUN_DIR,
                 proc_root: str = consts.PROC_ROOT) -> Optional[int]:
    """The main PID of the running guest ``name`` with this UUID, checked as the module
    docstring says (the hook's early applier); None while it is not (yet) all there."""
    status = _read_status(os.path.join(run_dir, driver, validate_name(name) + ".xml"))
    if status is None or status.name != name or status.uuid != normalize_uuid(uuid):
        return None
    return _verified(driver, name, status, run_dir, proc_root)


def _is_guest_process(driver: str, pid: int, name: str, uuid: str, proc_root: str) -> bool:
    """True if PID's argv names this guest (one of the checks of ``_verified``)."""
    argv = _argv(pid, proc_root)
    if not argv:
        return False
    if driver == "qemu":
        # qemu-system-* ... -uuid UUID ...
        return any(a == "-uuid" and normalize_uuid(b) == uuid for a, b in zip(argv, argv[1:]))
    if driver == "lxc":
        # libvirt_lxc --name NAME --console ... (the controller; see the module docstring)
        return os.path.basename(argv[0]) == "libvirt_lxc" and any(
            a == "--name" and b == name for a, b in zip(argv, argv[1:]))
    return False


# --------------------------------------------------------------------------- public API

def find_running(ident: str, run_dir: str = consts.LIBVIRT_RUN_DIR, *,
                 etc_dir: str = consts.LIBVIRT_ETC_DIR, proc_root: str = consts.PROC_ROOT,
                 drivers: Iterable[str] = DRIVERS) -> Optional[Guest]:
    """The running guest named ``ident`` (a name or a UUID), or None if none runs.

    None also when libvirt's files are stale (the recorded process is gone or is no longer
    this guest). Never calls libvirt. UsageError for a name that could be read as a path.
    """
    drivers = tuple(drivers)
    uuid = normalize_uuid(ident) if isinstance(ident, str) else None
    if uuid:
        for driver in drivers:
            for name, status in _statuses(driver, run_dir, uuid):
                if status.uuid == uuid and status.name == name:
                    guest = _running(driver, name, status, run_dir, etc_dir, proc_root)
                    if guest:
                        return guest
    # a name (a UUID-shaped string is also a valid name)
    name = validate_name(ident)
    for driver in drivers:
        status = _read_status(os.path.join(run_dir, driver, name + ".xml"))
        if status is not None and status.name == name:
            guest = _running(driver, name, status, run_dir, etc_dir, proc_root)
            if guest:
                return guest
    return None


def _running(driver: str, name: str, status: _Status, run_dir: str, etc_dir: str,
             proc_root: str) -> Optional[Guest]:
    pid = _verified(driver, name, status, run_dir, proc_root)
    if pid is None:
        return None
    return Guest(name=name, uuid=status.uuid, driver=driver, uri=SYSTEM_URIS[driver],
                 running=True, persistent=is_persistent(driver, name, etc_dir), pid=pid)


def running_with_domain(driver: str, name: str, run_dir: str = consts.LIBVIRT_RUN_DIR, *,
                        etc_dir: str = consts.LIBVIRT_ETC_DIR,
                        proc_root: str = consts.PROC_ROOT):
    """(guest, its status file's ``<domain>`` element) of the running guest ``name`` of
    ``driver``, checked as ``find_running`` checks it, or (None, None). One read and one parse
    of the status file, where find_running, status_domain_xml and the metadata's parse of its
    text made three (the service's STARTED path, docs/performance.md section 2 A)."""
    path = os.path.join(run_dir, driver, validate_name(name) + ".xml")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as e:
        raise _unreadable(path, e) from e
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return None, None
    status = _status_of(root)
    if status is None or status.name != name:
        return None, None
    guest = _running(driver, name, status, run_dir, etc_dir, proc_root)
    return (guest, root.find("domain")) if guest else (None, None)


def all_running(run_dir: str = consts.LIBVIRT_RUN_DIR, *,
                etc_dir: str = consts.LIBVIRT_ETC_DIR, proc_root: str = consts.PROC_ROOT,
                drivers: Iterable[str] = DRIVERS) -> dict:
    """UUID → Guest for every running guest, from one pass over libvirt's run files (a host
    with N guests: N files read once, where N calls of find_running would read N² files)."""
    out = {}
    for driver in drivers:
        for name, path in _status_files(driver, run_dir):
            try:
                validate_name(name)
            except errors.UsageError:
                continue
            status = _read_status(path)
            if status is None or status.name != name:
                continue
            guest = _running(driver, name, status, run_dir, etc_dir, proc_root)
            if guest is not None:
                out[guest.uuid] = guest
    return out


def is_persistent(driver: str, name: str, etc_dir: str = consts.LIBVIRT_ETC_DIR) -> bool:
    """A guest is persistent (defined) when libvirt keeps its config in /etc/libvirt/<driver>/."""
    return os.path.isfile(os.path.join(etc_dir, driver, validate_name(name) + ".xml"))


# A process's start is read in one place (``_since_boot``: field 22 of /proc/PID/stat, clock
# ticks after boot, exact and fixed for the process's life). Two anchors turn it into seconds
# since the epoch, each for what it is compared with:
# - ``instance_of``: + /proc/stat's btime (whole seconds). The same number in every process
#   that computes it, so the hook, the service and the CLI agree on "this run of the guest";
#   it is also what psutil's create_time() gives, which wrote the journals of earlier versions.
# - ``started_at``: + (the wall clock now - /proc/uptime). Off by at most a tick from the real
#   start, where btime's truncation is off by up to a second: for comparing with the
#   journal's wall-clock timestamps (drift: "written since this run started").

# Two records of one run agree exactly (integer btime and ticks, a float stored as SQLite
# REAL reads back bit-identical); two starts of one PID are at least a clock tick (10 ms at
# USER_HZ 100) apart. Half a tick absorbs float rounding and never merges two runs.
SAME_START_S = 0.005


def start_ticks(pid: int, proc_root: str = consts.PROC_ROOT) -> int:
    """Field 22 of /proc/PID/stat: clock ticks from boot to the start of ``pid``, the number the
    installed hook script compares as text (cgctl/hook/install.py); GuestNotRunning if gone."""
    try:
        with open(os.path.join(proc_root, str(int(pid)), "stat"), "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        raise errors.GuestNotRunning(f"process {pid} is gone") from None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after "(comm)"


def _since_boot(pid: int, proc_root: str) -> float:
    """Seconds from boot to the start of ``pid``; GuestNotRunning if it is gone."""
    return start_ticks(pid, proc_root) / os.sysconf("SC_CLK_TCK")


def instance_of(pid: int, proc_root: str = consts.PROC_ROOT) -> Tuple[int, float]:
    """(pid, start time) of a process: tells one run of a guest from the next (the value
    the journal stores; see the note above ``SAME_START_S``). GuestNotRunning if it is gone."""
    start = _since_boot(pid, proc_root)
    with open(os.path.join(proc_root, "stat"), "rb") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
    return pid, btime + start


def same_instance(last, inst: Tuple[int, float]) -> bool:
    """The journal's last applied instance (an InstanceRow or None) is ``inst`` (pid, start)."""
    return (last is not None and last.pid == inst[0]
            and abs(last.start_time - inst[1]) < SAME_START_S)


def status_domain_xml(driver: str, name: str, run_dir: str = consts.LIBVIRT_RUN_DIR) -> Optional[str]:
    """The live ``<domain>`` XML of a running guest from libvirt's status file (for disk
    targets → host devices), or None."""
    path = os.path.join(run_dir, driver, validate_name(name) + ".xml")
    try:
        with open(path, "rb") as f:
            root = ET.fromstring(f.read())
    except (OSError, ET.ParseError):
        return None
    dom = root.find("domain") if root.tag == "domstatus" else None
    return ET.tostring(dom, encoding="unicode") if dom is not None else None


def started_at(pid: int, proc_root: str = consts.PROC_ROOT) -> float:
    """When a process started, in wall-clock seconds, to compare with the journal's times
    (see the note above ``SAME_START_S``). GuestNotRunning if the process is gone."""
    import time
    start = _since_boot(pid, proc_root)
    with open(os.path.join(proc_root, "uptime")) as f:
        uptime = float(f.read().split()[0])
    return time.time() - (uptime - start)

"""A faked cgroup filesystem for pyfakefs: cgroup v2 (systemd layout) and cgroup v1.

The development machine (docs/design.md#the-development-machine) has no usable cgroup v2 (docs/design.md#the-development-machine), so the v2 backend is
tested on a pyfakefs tree built here.  Every builder writes what the kernel would show:
the same file names and the same default content, including the trailing newline the
kernel prints ("max\\n", "100\\n"; files the kernel prints empty, such as io.max,
cgroup.procs or an empty cgroup.subtree_control, are ""). Code under test must strip.

The builders also write /proc/self/mounts, /proc/cgroups, /proc/<pid>/cgroup and
/run/libvirt/qemu/<name>.pid, so cgctl.cgroup.hierarchy.detect() and the guest resolver can run
end to end against the fake.

What plain files cannot do (ERANGE on cpu.weight 0, EINVAL on memory.max -1, EBUSY, the
kernel rewriting "-1" as "max"...) is not attempted here.

Usage (pytest with the pyfakefs `fs` fixture):
    host = make_v2_host(fs)
    vm = make_systemd_v2_machine(fs, "vm1", id=3, vcpus=2)
    open(os.path.join(vm.libvirt, "memory.max")).read()   # "max\\n"
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Iterable, Optional

V2_DEFAULT_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")
# Controllers a threaded cgroup may have (kernel: cgrp_dfl_threaded_ss_mask).  perf_event is
# threaded too but implicit on cgroup2: it never appears in cgroup.controllers and has no files.
V2_THREADED = frozenset({"cpuset", "cpu", "pids", "perf_event"})
# Kernel order of subsystems (include/linux/cgroup_subsys.h): cgroup.controllers lists in this order.
_SUBSYS_ORDER = ("cpuset", "cpu", "cpuacct", "io", "memory", "devices", "freezer", "net_cls",
                 "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc")

V1_UNLIMITED = "9223372036854771712"   # PAGE_COUNTER_MAX in bytes, as v1 prints "unlimited"

_PSI = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
_RO = 0o444
_WO = 0o200
_RW = 0o644

_SPEC_ATTR = "_cgctl_fakecg_hosts"


# ---------------------------------------------------------------------------------------------
# small helpers

def _write(fs, path: str, content: str, mode: int = _RW) -> None:
    """Create or overwrite one file in the fake filesystem."""
    if fs.exists(path):
        fs.get_object(path).set_contents(content)
    else:
        fs.create_file(path, contents=content, st_mode=stat.S_IFREG | mode)


def _write_all(fs, directory: str, files: dict) -> None:
    for name, value in files.items():
        content, mode = value if isinstance(value, tuple) else (value, _RW)
        _write(fs, os.path.join(directory, name), content, mode)


def _mkdir(fs, path: str) -> None:
    if not fs.exists(path):
        fs.create_dir(path)


def _ordered(controllers: Iterable[str]) -> list:
    cs = set(controllers)
    known = [c for c in _SUBSYS_ORDER if c in cs]
    return known + sorted(cs - set(known))


def _mask(controllers: Iterable[str]) -> str:
    """How the kernel prints cgroup.controllers / cgroup.subtree_control: "" when empty."""
    names = _ordered(controllers)
    return " ".join(names) + "\n" if names else ""


def _read(fs, path: str) -> str:
    return fs.get_object(path).contents or ""


def systemd_escape(s: str) -> str:
    """systemd's unit-name escaping (unit_name_escape): '-' and other specials -> \\xNN."""
    out = []
    for i, ch in enumerate(s):
        if ch == "/":
            out.append("-")
        elif (ch.isascii() and ch.isalnum()) or ch in ":_" or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.append("".join(f"\\x{b:02x}" for b in ch.encode()))
    return "".join(out)


def machine_name(id: int, name: str, driver: str = "qemu") -> str:
    """libvirt's machine name "qemu-ID-NAME" (virDomainMachineNameAppendValid: hostname chars
    only, no runs of '-'/'.', at most 64 characters, no trailing '-'/'.')."""
    buf = f"{driver}-{id}-"
    skip = True
    for ch in name:
        if len(buf) >= 64:
            break
        if ch in ".-":
            if not skip:
                buf += ch
            skip = True
            continue
        skip = False
        if ch.isascii() and (ch.isalnum() or ch == "-"):
            buf += ch
    return buf.rstrip("-.")


def _write_pidfile(fs, name: str, pid: int, driver: str, run_dir: Optional[str]) -> str:
    run_dir = run_dir or os.environ.get("CGCTL_LIBVIRT_RUN_DIR", "/run/libvirt")
    path = os.path.join(run_dir, driver, f"{name}.pid")
    _write(fs, path, str(pid))          # libvirt writes the number without a newline
    return path


def _write_proc(fs, proc_root: str, mounts: str, cgroups: str) -> None:
    _write(fs, os.path.join(proc_root, "self", "mounts"), mounts, _RO)
    _write(fs, os.path.join(proc_root, "mounts"), mounts, _RO)
    _write(fs, os.path.join(proc_root, "cgroups"), cgroups, _RO)


def _proc_cgroups(hierarchy_of: dict) -> str:
    """/proc/cgroups: legacy names (io is 'blkio'), hierarchy id (0 = cgroup2 or unmounted)."""
    lines = ["#subsys_name\thierarchy\tnum_cgroups\tenabled"]
    for c in ("cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer", "net_cls",
              "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"):
        lines.append(f"{c}\t{hierarchy_of.get(c, 0)}\t1\t1")
    return "\n".join(lines) + "\n"


_BASE_MOUNTS = (
    "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n"
    "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
    "udev /dev devtmpfs rw,nosuid,relatime,size=4012744k,nr_inodes=1003186,mode=755 0 0\n"
    "devpts /dev/pts devpts rw,nosuid,noexec,relatime,gid=5,mode=620,ptmxmode=000 0 0\n"
    "tmpfs /run tmpfs rw,nosuid,nodev,noexec,relatime,size=808976k,mode=755 0 0\n"
    "/dev/vda1 / ext4 rw,relatime,errors=remount-ro 0 0\n"
)


def _mount_point(path: str) -> str:
    """A path as /proc/mounts prints it (space, tab, newline, backslash escaped)."""
    return (path.replace("\\", "\\134").replace(" ", "\\040")
            .replace("\t", "\\011").replace("\n", "\\012"))


# ---------------------------------------------------------------------------------------------
# cgroup v2

@dataclass(frozen=True)
class FakeV2Host:
    root: str
    controllers: tuple
    swap: bool
    bfq: bool
    cpus: str
    mems: str


def _v2_spec(fs, path: str) -> FakeV2Host:
    hosts = getattr(fs, _SPEC_ATTR, {})
    best = None
    for root, spec in hosts.items():
        if isinstance(spec, FakeV2Host) and (path == root or path.startswith(root.rstrip("/") + "/")):
            if best is None or len(root) > len(best.root):
                best = spec
    if best is None:
        raise ValueError(f"{path} is not under a fake cgroup2 root; call make_v2_host() first")
    return best


def _register(fs, root: str, spec) -> None:
    hosts = getattr(fs, _SPEC_ATTR, None)
    if hosts is None:
        hosts = {}
        setattr(fs, _SPEC_ATTR, hosts)
    hosts[root] = spec


def _v2_core_files(root: bool) -> dict:
    files = {
        "cgroup.procs": "",
        "cgroup.threads": "",
        "cgroup.max.depth": "max\n",
        "cgroup.max.descendants": "max\n",
        "cgroup.stat": ("nr_descendants 0\nnr_dying_descendants 0\n", _RO),
        "cgroup.pressure": "1\n",
        "cpu.pressure": _PSI,
        "io.pressure": _PSI,
        "memory.pressure": _PSI,
        "cpu.stat": ("usage_usec 0\nuser_usec 0\nsystem_usec 0\n", _RO),
    }
    if not root:   # CFTYPE_NOT_ON_ROOT core files
        files.update({
            "cgroup.events": ("populated 0\nfrozen 0\n", _RO),
            "cgroup.freeze": "0\n",
            "cgroup.kill": ("", _WO),
        })
    return files


def _v2_controller_files(spec: FakeV2Host, enabled: Iterable[str], parent_effective: tuple) -> dict:
    """Each enabled controller's files in a non-root group, with the kernel's defaults (6.1)."""
    enabled = set(enabled)
    cpus, mems = parent_effective
    files: dict = {}
    if "cpu" in enabled:
        files.update({
            "cpu.weight": "100\n",
            "cpu.weight.nice": "0\n",
            "cpu.max": "max 100000\n",
            "cpu.max.burst": "0\n",
            "cpu.idle": "0\n",
            "cpu.stat": ("usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\n"
                         "nr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n", _RO),
        })
    if "cpuset" in enabled:
        files.update({
            "cpuset.cpus": "\n",          # empty: inherits; prints "\n" (checked on v1 here)
            "cpuset.mems": "\n",
            "cpuset.cpus.effective": (cpus, _RO),
            "cpuset.mems.effective": (mems, _RO),
            "cpuset.cpus.partition": "member\n",
        })
    if "io" in enabled:
        files.update({
            "io.stat": ("", _RO),
            "io.max": "",
            "io.weight": "default 100\n",
            "io.latency": "",
            "io.prio.class": "no-change\n",
        })
        if spec.bfq:
            files["io.bfq.weight"] = "default 100\n"
    if "memory" in enabled:
        files.update({
            "memory.current": ("0\n", _RO),
            "memory.min": "0\n",
            "memory.low": "0\n",
            "memory.high": "max\n",
            "memory.max": "max\n",
            "memory.peak": ("0\n", _RO),
            "memory.oom.group": "0\n",
            "memory.events": ("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n", _RO),
            "memory.events.local": ("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n", _RO),
            "memory.stat": ("anon 0\nfile 0\nkernel 0\nsock 0\nshmem 0\n", _RO),
            "memory.numa_stat": ("anon N0=0\nfile N0=0\n", _RO),
            "memory.reclaim": ("", _WO),
        })
        # memory.swap.* (and memory.zswap.*) are added by mem_cgroup_swap_init() in
        # mm/memcontrol.c, which returns early when swap accounting is off: a kernel built
        # without CONFIG_MEMCG_SWAP/CONFIG_SWAP, or (kernels before 6.1) booted with
        # swapaccount=0 or built with CONFIG_MEMCG_SWAP_ENABLED=n.  Since 6.1 (commit
        # "mm: memcontrol: deprecate swapaccounting=0 mode") swapaccount=0 is ignored and the
        # files always exist when CONFIG_SWAP=y.  No file at all, never a file reading "0".
        if spec.swap:
            files.update({
                "memory.swap.current": ("0\n", _RO),
                "memory.swap.high": "max\n",
                "memory.swap.max": "max\n",
                "memory.swap.events": ("high 0\nmax 0\nfail 0\n", _RO),
                "memory.zswap.current": ("0\n", _RO),
                "memory.zswap.max": "max\n",
            })
    if "pids" in enabled:
        files.update({
            "pids.max": "max\n",
            "pids.current": ("0\n", _RO),
            "pids.events": ("max 0\n", _RO),
        })
    return files


def make_v2_host(fs, root: str = "/sys/fs/cgroup",
                 controllers: Iterable[str] = V2_DEFAULT_CONTROLLERS,
                 swap: bool = True, bfq: bool = False, *,
                 cpus: str = "0-1", mems: str = "0", proc_root: str = "/proc",
                 write_proc: bool = True) -> FakeV2Host:
    """A pure cgroup2 host (systemd): the root with cgroup.controllers = controllers and, as
    systemd leaves it, cgroup.subtree_control = the same.  Writes /proc/self/mounts,
    /proc/mounts and /proc/cgroups to match unless write_proc is False."""
    spec = FakeV2Host(root.rstrip("/") or "/", tuple(_ordered(controllers)), swap, bfq,
                      cpus + "\n", mems + "\n")
    _register(fs, spec.root, spec)
    _mkdir(fs, spec.root)
    files = _v2_core_files(root=True)
    files.update({
        "cgroup.controllers": (_mask(spec.controllers), _RO),
        "cgroup.subtree_control": _mask(spec.controllers),
    })
    if "cpuset" in spec.controllers:
        files.update({"cpuset.cpus.effective": (spec.cpus, _RO),
                      "cpuset.mems.effective": (spec.mems, _RO)})
    if "memory" in spec.controllers:
        files.update({"memory.stat": ("anon 0\nfile 0\n", _RO),
                      "memory.numa_stat": ("anon N0=0\nfile N0=0\n", _RO),
                      "memory.reclaim": ("", _WO)})
    if "io" in spec.controllers:   # io.cost.* exist on the root only
        files.update({"io.stat": ("", _RO), "io.cost.qos": "", "io.cost.model": ""})
    _write_all(fs, spec.root, files)
    if write_proc:
        mounts = (_BASE_MOUNTS
                  + f"cgroup2 {_mount_point(spec.root)} cgroup2 "
                    "rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0\n"
                  + "bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0\n")
        _write_proc(fs, proc_root, mounts, _proc_cgroups({}))
    return spec


def make_group(fs, path: str, controllers: Optional[Iterable[str]] = None,
               threaded: bool = False, *, subtree_control: Iterable[str] = ()) -> str:
    """Create a cgroup2 group (mkdir) with the files the kernel creates for it.

    controllers: the controllers enabled for this group, i.e. written into the parent's
    cgroup.subtree_control first (as one must on a real host); None keeps what the parent's
    subtree_control already has.  They must be in the parent's cgroup.controllers.
    threaded: cgroup.type "threaded"; only threaded controllers (cpuset, cpu, pids) are
    available there, and the parent's cgroup.type turns "domain threaded".  Missing parents
    are created with defaults.  subtree_control: what this group enables for its children.
    Returns the path."""
    path = path.rstrip("/")
    spec = _v2_spec(fs, path)
    if path == spec.root:
        raise ValueError("the root exists already: use make_v2_host()")
    parent = os.path.dirname(path)
    if not fs.exists(os.path.join(parent, "cgroup.controllers")):
        make_group(fs, parent)
    parent_available = set(_read(fs, os.path.join(parent, "cgroup.controllers")).split())
    parent_enabled = set(_read(fs, os.path.join(parent, "cgroup.subtree_control")).split())
    if controllers is not None:
        wanted = set(controllers)
        missing = wanted - parent_available
        if missing:
            raise ValueError(f"{parent} does not offer {sorted(missing)} (cgroup.controllers: "
                             f"{sorted(parent_available)})")
        parent_enabled |= wanted
        _write(fs, os.path.join(parent, "cgroup.subtree_control"), _mask(parent_enabled))
    available = parent_enabled & V2_THREADED if threaded else parent_enabled
    available -= {"perf_event"}           # implicit on cgroup2, never listed
    _mkdir(fs, path)
    parent_eff = (_read(fs, os.path.join(parent, "cpuset.cpus.effective")) or spec.cpus,
                  _read(fs, os.path.join(parent, "cpuset.mems.effective")) or spec.mems)
    files = _v2_core_files(root=False)
    files.update(_v2_controller_files(spec, available, parent_eff))
    sub = set(subtree_control)
    if sub - available:
        raise ValueError(f"{path} cannot enable {sorted(sub - available)} for its children")
    files.update({
        "cgroup.type": "threaded\n" if threaded else "domain\n",
        "cgroup.controllers": (_mask(available), _RO),
        "cgroup.subtree_control": _mask(sub),
    })
    _write_all(fs, path, files)
    if threaded:
        parent_type = os.path.join(parent, "cgroup.type")
        if fs.exists(parent_type) and _read(fs, parent_type) == "domain\n":
            _write(fs, parent_type, "domain threaded\n")
    return path


def _add_task(fs, group: str, pid: int, threads: bool = True) -> None:
    """Put pid in a v2 group's cgroup.procs (and cgroup.threads); mark it and its ancestors populated."""
    for name in ("cgroup.procs",) + (("cgroup.threads",) if threads else ()):
        p = os.path.join(group, name)
        _write(fs, p, _read(fs, p) + f"{pid}\n")
    d = group
    while fs.exists(os.path.join(d, "cgroup.events")):
        _write(fs, os.path.join(d, "cgroup.events"), "populated 1\nfrozen 0\n", _RO)
        d = os.path.dirname(d)


@dataclass(frozen=True)
class V2Machine:
    name: str
    id: int
    pid: int
    machine: str          # the scope: machine.slice/machine-qemu\x2dID\x2dNAME.scope
    libvirt: str          # .../libvirt (memory, cpu.max, io, cpuset go here)
    emulator: str
    vcpus: tuple          # .../libvirt/vcpu0, ...
    cgroup: str           # the guest's path as /proc/PID/cgroup shows it (relative to the root)
    pidfile: str


def make_systemd_v2_machine(fs, name: str, id: int = 1, vcpus: int = 1, *,
                            root: Optional[str] = None, pid: Optional[int] = None,
                            proc_root: str = "/proc", run_dir: Optional[str] = None,
                            thread_controllers: Iterable[str] = ("cpuset", "cpu")) -> V2Machine:
    """A running QEMU guest as libvirt >= 7.1 + systemd-machined lay it out on cgroup2:
    machine.slice/machine-qemu\\x2d{id}\\x2d{name}.scope/libvirt/{emulator,vcpu0,...}.
    The scope and libvirt are domain groups with every host controller; emulator and vcpuN
    are threaded (libvirt writes "threaded" to cgroup.type), so libvirt turns
    "domain threaded" and can enable only threaded controllers for them.  The main pid is in
    emulator.  As the host lane observed it (docs/operations.md): the scope is delegated every
    controller but enables pids for nothing below it, and libvirt enables only cpuset and cpu
    for its threaded groups.  Creates the v2 host with defaults if none exists yet."""
    if root is None:
        hosts = getattr(fs, _SPEC_ATTR, {})
        v2 = sorted((s for s in hosts.values() if isinstance(s, FakeV2Host)),
                    key=lambda s: -len(s.controllers))   # not a hybrid host's empty unified
        spec = v2[0] if v2 else make_v2_host(fs, proc_root=proc_root)
    else:
        spec = _v2_spec(fs, root) if fs.exists(os.path.join(root, "cgroup.controllers")) \
            else make_v2_host(fs, root, proc_root=proc_root)
    pid = pid if pid is not None else 4000 + id
    all_ctrls = spec.controllers
    threaded_ctrls = tuple(c for c in thread_controllers if c in all_ctrls and c in V2_THREADED)
    slice_ = make_group(fs, os.path.join(spec.root, "machine.slice"), all_ctrls,
                        subtree_control=all_ctrls) if not fs.exists(
        os.path.join(spec.root, "machine.slice", "cgroup.controllers")) else \
        os.path.join(spec.root, "machine.slice")
    below_scope = tuple(c for c in all_ctrls if c != "pids")
    scope = make_group(fs, os.path.join(slice_, f"machine-{systemd_escape(machine_name(id, name))}.scope"),
                       all_ctrls, subtree_control=below_scope)
    libvirt = make_group(fs, os.path.join(scope, "libvirt"), below_scope,
                         subtree_control=threaded_ctrls)
    emulator = make_group(fs, os.path.join(libvirt, "emulator"), threaded=True)
    vcpu_paths = tuple(make_group(fs, os.path.join(libvirt, f"vcpu{i}"), threaded=True)
                       for i in range(vcpus))
    _add_task(fs, emulator, pid)
    for i, v in enumerate(vcpu_paths):            # vCPU threads: thread ids only
        p = os.path.join(v, "cgroup.threads")
        _write(fs, p, _read(fs, p) + f"{pid + 1 + i}\n")
    rel = "/" + os.path.relpath(emulator, spec.root)
    _write(fs, os.path.join(proc_root, str(pid), "cgroup"), f"0::{rel}\n", _RO)
    pidfile = _write_pidfile(fs, name, pid, "qemu", run_dir)
    return V2Machine(name, id, pid, scope, libvirt, emulator, vcpu_paths, rel, pidfile)


def make_systemd_v2_lxc(fs, name: str, pid: int = 583, *, memory: int = 128 * 2**20,
                        proc_root: str = "/proc", run_dir: Optional[str] = None) -> V2Machine:
    """A running LXC container as libvirt 9.0 + systemd-machined lay it out on cgroup2, as the
    host lane observed it (docs/operations.md): machine.slice/machine-lxc\\x2d{pid}\\x2d{name}
    .scope (pid: libvirt_lxc's, the one libvirt's NAME.pid holds) with every controller, pids
    not enabled below it; libvirt/ a plain domain group holding libvirt_lxc, the container's
    init and its child (no threaded groups, nothing enabled below it), its memory.max the
    XML's <memory> (libvirt_lxc writes it). The V2Machine has no emulator and no vCPUs."""
    hosts = getattr(fs, _SPEC_ATTR, {})
    v2 = sorted((s for s in hosts.values() if isinstance(s, FakeV2Host)), key=lambda s: -len(s.controllers))
    spec = v2[0] if v2 else make_v2_host(fs, proc_root=proc_root)
    all_ctrls = spec.controllers
    below_scope = tuple(c for c in all_ctrls if c != "pids")
    slice_ = os.path.join(spec.root, "machine.slice")
    if not fs.exists(os.path.join(slice_, "cgroup.controllers")):
        make_group(fs, slice_, all_ctrls, subtree_control=all_ctrls)
    scope = make_group(fs, os.path.join(slice_, f"machine-{systemd_escape(machine_name(pid, name, 'lxc'))}.scope"),
                       all_ctrls, subtree_control=below_scope)
    libvirt = make_group(fs, os.path.join(scope, "libvirt"), below_scope)
    if "memory" in below_scope:
        _write(fs, os.path.join(libvirt, "memory.max"), f"{memory}\n")
    rel = "/" + os.path.relpath(libvirt, spec.root)
    for p in (pid, pid + 2, pid + 3):             # libvirt_lxc, the init, its child
        _add_task(fs, libvirt, p)
        _write(fs, os.path.join(proc_root, str(p), "cgroup"), f"0::{rel}\n", _RO)
    pidfile = _write_pidfile(fs, name, pid, "lxc", run_dir)
    return V2Machine(name, pid, pid, scope, libvirt, None, (), rel, pidfile)


# ---------------------------------------------------------------------------------------------
# cgroup v1

@dataclass(frozen=True)
class FakeV1Host:
    root: str
    mountpoints: dict     # controller -> hierarchy mountpoint ('cpu' and 'cpuacct' may share one)
    ids: dict             # controller -> hierarchy id, as in /proc/cgroups
    memsw: bool
    blkio_weight: str     # 'bfq' | 'cfq' | 'none'
    cpus: str
    mems: str
    unified: Optional[str] = None   # the empty (hybrid) cgroup2 mount, if any
    systemd: Optional[str] = None   # the name=systemd hierarchy


V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")


def _v1_files(spec: FakeV1Host, controllers: Iterable[str], root: bool) -> dict:
    """v1 defaults, copied from the development machine's 6.18 kernel (a fresh child group)."""
    cs = set(controllers)
    files: dict = {"cgroup.procs": "", "tasks": "", "notify_on_release": "0\n",
                   "cgroup.clone_children": "0\n"}
    if root:
        files.update({"release_agent": "", "cgroup.sane_behavior": ("0\n", _RO)})
    if "cpu" in cs:
        files.update({"cpu.shares": "1024\n", "cpu.cfs_period_us": "100000\n",
                      "cpu.cfs_quota_us": "-1\n", "cpu.cfs_burst_us": "0\n", "cpu.idle": "0\n",
                      "cpu.rt_period_us": "1000000\n", "cpu.rt_runtime_us": "0\n",
                      "cpu.stat": ("nr_periods 0\nnr_throttled 0\nthrottled_time 0\n"
                                   "nr_bursts 0\nburst_time 0\n", _RO)})
    if "cpuacct" in cs:
        files.update({"cpuacct.usage": "0\n", "cpuacct.stat": ("user 0\nsystem 0\n", _RO),
                      "cpuacct.usage_percpu": ("0 0 \n", _RO)})
    if "cpuset" in cs:
        # a new v1 cpuset child is empty ("\n"); libvirt copies the parent's cpus/mems into
        # every group it makes (virCgroupV1CpuSetInherit), so guest groups hold the host's.
        files.update({"cpuset.cpus": spec.cpus, "cpuset.mems": spec.mems,
                      "cpuset.effective_cpus": (spec.cpus, _RO),
                      "cpuset.effective_mems": (spec.mems, _RO),
                      "cpuset.cpu_exclusive": "0\n", "cpuset.mem_exclusive": "0\n",
                      "cpuset.memory_migrate": "0\n", "cpuset.sched_load_balance": "1\n"})
    if "memory" in cs:
        files.update({"memory.limit_in_bytes": V1_UNLIMITED + "\n",
                      "memory.soft_limit_in_bytes": V1_UNLIMITED + "\n",
                      "memory.usage_in_bytes": ("0\n", _RO),
                      "memory.max_usage_in_bytes": "0\n", "memory.failcnt": "0\n",
                      "memory.use_hierarchy": "1\n", "memory.swappiness": "60\n",
                      "memory.move_charge_at_immigrate": "0\n",
                      "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                      "memory.stat": ("cache 0\nrss 0\nswap 0\n", _RO),
                      "memory.force_empty": ("", _WO)})
        if spec.memsw:   # same switch as memory.swap.* on v2 (see _v2_controller_files)
            files.update({"memory.memsw.limit_in_bytes": V1_UNLIMITED + "\n",
                          "memory.memsw.usage_in_bytes": ("0\n", _RO),
                          "memory.memsw.max_usage_in_bytes": "0\n",
                          "memory.memsw.failcnt": "0\n"})
    if "blkio" in cs:
        files.update({f"blkio.throttle.{d}_{k}_device": "" for d in ("read", "write")
                      for k in ("bps", "iops")})
        files.update({"blkio.throttle.io_service_bytes": ("Total 0\n", _RO),
                      "blkio.throttle.io_serviced": ("Total 0\n", _RO),
                      "blkio.reset_stats": ("", _WO)})
        if not root and spec.blkio_weight == "bfq":
            # as on this machine: BFQ built in (not vda's scheduler), no blkio.weight.
            # blkio.bfq.weight_device reads "default 100", not "" (checked here).
            files.update({"blkio.bfq.weight": "100\n", "blkio.bfq.weight_device": "default 100\n",
                          "blkio.bfq.io_service_bytes": ("Total 0\n", _RO)})
        elif not root and spec.blkio_weight == "cfq":   # CFQ kernels (< 5.0, RHEL 7)
            files.update({"blkio.weight": "500\n", "blkio.weight_device": ""})
    if "devices" in cs:
        files.update({"devices.list": ("a *:* rwm\n", _RO), "devices.allow": ("", _WO),
                      "devices.deny": ("", _WO)})
    if "freezer" in cs and not root:
        files.update({"freezer.state": "THAWED\n", "freezer.self_freezing": ("0\n", _RO),
                      "freezer.parent_freezing": ("0\n", _RO)})
    if "pids" in cs and not root:
        files.update({"pids.max": "max\n", "pids.current": ("0\n", _RO),
                      "pids.events": ("max 0\n", _RO)})
    return files


def make_v1_host(fs, root: str = "/sys/fs/cgroup", *, cpu_comounted: bool = False,
                 controllers: Iterable[str] = V1_CONTROLLERS, memsw: bool = True,
                 blkio_weight: str = "bfq", unified: bool = True, systemd: bool = True,
                 cpus: str = "0-1", mems: str = "0", proc_root: str = "/proc",
                 write_proc: bool = True) -> FakeV1Host:
    """A cgroup v1 host.  Defaults copy the development machine: cpu and cpuacct mounted
    separately, name=systemd, an empty cgroup2 at <root>/unified (hugetlb only), BFQ
    weights.  cpu_comounted=True gives systemd distributions' cpu,cpuacct (with the cpu and
    cpuacct symlinks systemd makes).  unified=False is pure v1."""
    if blkio_weight not in ("bfq", "cfq", "none"):
        raise ValueError("blkio_weight is 'bfq', 'cfq' or 'none'")
    root = root.rstrip("/")
    ctrls = [c for c in V1_CONTROLLERS if c in set(controllers)]
    groups: list = []           # (mount dir name, controllers)
    for c in ctrls:
        if cpu_comounted and c in ("cpu", "cpuacct"):
            if ("cpu,cpuacct", ("cpu", "cpuacct")) not in groups:
                groups.append(("cpu,cpuacct", ("cpu", "cpuacct")))
        else:
            groups.append((c, (c,)))
    mountpoints, ids = {}, {}
    for i, (d, cs) in enumerate(groups, start=1):
        for c in cs:
            mountpoints[c] = os.path.join(root, d)
            ids[c] = i
    spec = FakeV1Host(root, mountpoints, ids, memsw, blkio_weight, cpus + "\n", mems + "\n",
                      os.path.join(root, "unified") if unified else None,
                      os.path.join(root, "systemd") if systemd else None)
    _register(fs, root + "#v1", spec)
    _mkdir(fs, root)
    lines = [f"tmpfs {_mount_point(root)} tmpfs rw,nosuid,nodev,noexec,relatime,mode=755 0 0"]
    for d, cs in groups:
        mp = os.path.join(root, d)
        _mkdir(fs, mp)
        _write_all(fs, mp, _v1_files(spec, cs, root=True))
        lines.append(f"cgroup {_mount_point(mp)} cgroup rw,nosuid,nodev,noexec,relatime,{','.join(cs)} 0 0")
    if cpu_comounted:
        for c in ("cpu", "cpuacct"):
            link = os.path.join(root, c)
            if c in mountpoints and not fs.exists(link):
                fs.create_symlink(link, "cpu,cpuacct")
    if systemd:
        _mkdir(fs, spec.systemd)
        _write_all(fs, spec.systemd, _v1_files(spec, (), root=True))
        lines.append(f"cgroup {_mount_point(spec.systemd)} cgroup "
                     "rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0")
    if unified:
        spec2 = FakeV2Host(spec.unified, ("hugetlb",), False, False, spec.cpus, spec.mems)
        _register(fs, spec.unified, spec2)
        _mkdir(fs, spec.unified)
        files = _v2_core_files(root=True)
        files.update({"cgroup.controllers": ("hugetlb\n", _RO), "cgroup.subtree_control": ""})
        _write_all(fs, spec.unified, files)
        lines.append(f"cgroup2 {_mount_point(spec.unified)} cgroup2 rw,nosuid,nodev,noexec,relatime 0 0")
    if write_proc:
        _write_proc(fs, proc_root, _BASE_MOUNTS + "\n".join(lines) + "\n", _proc_cgroups(ids))
    return spec


@dataclass(frozen=True)
class V1Machine:
    name: str
    id: int
    pid: int
    layout: str           # 'nosystemd' | 'systemd'
    machine: dict         # controller -> machine group (the .libvirt-qemu group or the scope)
    libvirt: dict         # controller -> libvirt-owned group (= machine for 'nosystemd')
    emulator: dict        # cpu/cpuacct/cpuset -> .../emulator
    vcpus: dict           # cpu/cpuacct/cpuset -> (.../vcpu0, ...)
    cgroup: str           # the text of /proc/PID/cgroup
    pidfile: str


def make_v1_machine(fs, root: str = "/sys/fs/cgroup", name: str = "vm", id: int = 1,
                    vcpus: int = 1, layout: str = "nosystemd", *, pid: Optional[int] = None,
                    proc_root: str = "/proc", run_dir: Optional[str] = None) -> V1Machine:
    """A running QEMU guest on cgroup v1 as libvirt lays it out.
    layout='nosystemd' (this machine): <ctrl>/machine/qemu-{id}-{name}.libvirt-qemu/...
    layout='systemd':  <ctrl>/machine.slice/machine-qemu\\x2d{id}\\x2d{name}.scope/libvirt/...
    Every libvirt controller gets the machine (and, with systemd, libvirt) group; only cpu,
    cpuacct and cpuset get emulator and vcpuN below it (libvirt's VIR_CGROUP_THREAD rule),
    where the main pid sits in emulator.  Creates the host (make_v1_host defaults) if
    needed.  pids is not a libvirt controller: the guest stays where systemd/libvirtd was."""
    if layout not in ("nosystemd", "systemd"):
        raise ValueError("layout is 'nosystemd' or 'systemd'")
    root = root.rstrip("/")
    spec = getattr(fs, _SPEC_ATTR, {}).get(root + "#v1") or make_v1_host(fs, root, proc_root=proc_root)
    pid = pid if pid is not None else 4000 + id
    mname = machine_name(id, name)
    if layout == "nosystemd":
        rel_machine = f"/machine/{mname}.libvirt-qemu"
        rel_libvirt = rel_machine
    else:
        rel_machine = f"/machine.slice/machine-{systemd_escape(mname)}.scope"
        rel_libvirt = rel_machine + "/libvirt"
    machine, libvirt, emulator, vcpu_paths = {}, {}, {}, {}
    done: dict = {}
    for c, mp in spec.mountpoints.items():
        if c == "pids":
            continue
        if mp in done:                      # co-mounted: same directories
            for table in (machine, libvirt, emulator, vcpu_paths):
                if done[mp] in table:
                    table[c] = table[done[mp]]
            continue
        done[mp] = c
        cs = [k for k, v in spec.mountpoints.items() if v == mp]
        parts = rel_libvirt.strip("/").split("/")
        d = mp
        for part in parts:                  # machine, machine.slice, the group, libvirt
            d = os.path.join(d, part)
            if not fs.exists(d):
                _mkdir(fs, d)
                _write_all(fs, d, _v1_files(spec, cs, root=False))
        machine[c] = mp + rel_machine
        libvirt[c] = mp + rel_libvirt
        if set(cs) & {"cpu", "cpuacct", "cpuset"}:
            emulator[c] = os.path.join(libvirt[c], "emulator")
            vcpu_paths[c] = tuple(os.path.join(libvirt[c], f"vcpu{i}") for i in range(vcpus))
            for g in (emulator[c],) + vcpu_paths[c]:
                _mkdir(fs, g)
                _write_all(fs, g, _v1_files(spec, cs, root=False))
            target = emulator[c]
        else:
            target = libvirt[c]
        for f in ("cgroup.procs", "tasks"):
            p = os.path.join(target, f)
            _write(fs, p, _read(fs, p) + f"{pid}\n")
    if spec.systemd and layout == "systemd":     # systemd tracks the scope in name=systemd
        d = spec.systemd
        for part in rel_libvirt.strip("/").split("/"):
            d = os.path.join(d, part)
            if not fs.exists(d):
                _mkdir(fs, d)
                _write_all(fs, d, _v1_files(spec, (), root=False))
        for f in ("cgroup.procs", "tasks"):
            p = os.path.join(d, f)
            _write(fs, p, _read(fs, p) + f"{pid}\n")
    lines = []
    by_mp: dict = {}
    for c, mp in spec.mountpoints.items():
        by_mp.setdefault(mp, []).append(c)
    for mp, cs in sorted(by_mp.items(), key=lambda kv: -spec.ids[kv[1][0]]):
        c = cs[0]
        if c == "pids":
            rel = rel_machine if layout == "systemd" else "/"
        elif c in emulator:
            rel = emulator[c][len(mp):]
        else:
            rel = rel_libvirt
        lines.append(f"{spec.ids[c]}:{','.join(cs)}:{rel}")
    if spec.systemd:
        n = max(spec.ids.values(), default=0) + 1
        lines.insert(0, f"{n}:name=systemd:{rel_libvirt if layout == 'systemd' else '/'}")
    if spec.unified:
        lines.append("0::/")
    text = "\n".join(lines) + "\n"
    _write(fs, os.path.join(proc_root, str(pid), "cgroup"), text, _RO)
    pidfile = _write_pidfile(fs, name, pid, "qemu", run_dir)
    return V1Machine(name, id, pid, layout, machine, libvirt, emulator, vcpu_paths, text, pidfile)

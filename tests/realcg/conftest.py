"""Scratch guests on the real kernel cgroupfs: a process of ours in groups shaped
like libvirt's, under a unique parent that is removed even when a test fails.

The shape follows the host: on cgroup v1 (the development machine) libvirt's layout
without systemd, ``<parent>/qemu-1-NAME.libvirt-qemu/{emulator,vcpu0}`` in every
hierarchy; on a pure cgroup v2 host (inside tests/v2lane/run) the layout libvirt
>= 7.1 and systemd-machined make,
``<parent>/machine.slice/machine-qemu\\x2d1\\x2dNAME.scope/libvirt/{emulator,vcpu0}``
with threaded vCPU and emulator groups.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from cgctl.cgroup import hierarchy
from cgctl.cgroup import Router

try:  # package layout (tests/realcg/__init__.py exists)
    from .conftest_v2 import remove_tree
except ImportError:  # rootdir layout: tests/realcg is on sys.path
    from conftest_v2 import remove_tree  # type: ignore

ROOT = "/sys/fs/cgroup"


def _real_host():
    if os.geteuid() != 0:
        pytest.skip("real cgroup tests need root")
    host = hierarchy.detect()
    if not host.has("memory"):
        pytest.skip("no memory controller on this host")
    return host


def _rmtree_cgroup(path: str) -> None:
    if not os.path.isdir(path):
        return
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        for d in dirnames:
            _rmdir(os.path.join(dirpath, d))
    _rmdir(path)


def _rmdir(path: str) -> None:
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)  # a killed task may take a moment to leave
    os.rmdir(path)


class ScratchGuest:
    """``<parent>/qemu-1-NAME.libvirt-qemu/{emulator,vcpu0}`` in every controller
    this host has, like libvirt without systemd, with a sleeping process inside."""

    def __init__(self, host, name: str, vcpus: int = 1):
        self.host = host
        self.name = name
        self.parent_name = f"cgctl-test-{uuid.uuid4().hex[:8]}"
        self.group = f"qemu-1-{name}.libvirt-qemu"
        self.parents = []
        self.vcpus = vcpus
        self.proc = None

    def dirs(self, controller):
        h = self.host.owner(controller)
        return os.path.join(h.mountpoint, self.parent_name, self.group)

    def create(self):
        seen = set()
        for ctrl in ("memory", "cpu", "cpuset", "io"):
            if not self.host.has(ctrl):
                continue
            h = self.host.owner(ctrl)
            if h.mountpoint in seen:
                continue
            seen.add(h.mountpoint)
            parent = os.path.join(h.mountpoint, self.parent_name)
            os.mkdir(parent)
            self.parents.append(parent)
            base = os.path.join(parent, self.group)
            os.mkdir(base)
            subs = ["emulator"] + [f"vcpu{i}" for i in range(self.vcpus)]
            if "cpuset" in h.controllers:
                for d in (parent, base):
                    _copy_cpuset(h.mountpoint, d)
            if h.controllers & {"cpu", "cpuset", "cpuacct"}:
                for s in subs:
                    os.mkdir(os.path.join(base, s))
                    if "cpuset" in h.controllers:
                        _copy_cpuset(h.mountpoint, os.path.join(base, s))
        self.proc = subprocess.Popen(["sleep", "600"])
        for parent in self.parents:
            base = os.path.join(parent, self.group)
            target = os.path.join(base, "emulator") if os.path.isdir(os.path.join(base, "emulator")) else base
            with open(os.path.join(target, "cgroup.procs"), "w") as f:
                f.write(str(self.proc.pid))
        return self

    def destroy(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        for parent in self.parents:
            _rmtree_cgroup(parent)

    def file(self, controller, name, sub=""):
        return os.path.join(self.dirs(controller), sub, name)

    def read(self, controller, name, sub=""):
        with open(self.file(controller, name, sub)) as f:
            return f.read().strip()


class V2ScratchGuest:
    """A QEMU guest's groups as libvirt >= 7.1 and systemd-machined lay them out
    on cgroup v2, made by hand under a unique parent below the root::

        <parent>/machine.slice/machine-qemu\\x2d1\\x2dNAME.scope/libvirt/{emulator,vcpuN}

    Every controller is enabled down to ``libvirt``; ``emulator`` and ``vcpuN``
    are threaded (libvirt enables only the threaded controllers cpu, cpuset and
    pids for them), which makes ``libvirt`` "domain threaded". Our ``sleep`` is
    moved into ``libvirt`` as a process, then its (only) thread into
    ``emulator`` (the kernel moves a thread into a threaded group only from
    inside the same threaded subtree), so /proc/PID/cgroup ends in
    ``/libvirt/emulator`` as QEMU's does.
    """

    THREADED = ("cpuset", "cpu", "pids")

    def __init__(self, host, name: str, vcpus: int = 1):
        self.host = host
        self.name = name
        self.vcpus = vcpus
        self.proc = None
        self.mount = host.owner("memory").mountpoint
        self.parent = os.path.join(self.mount, f"cgctl-test-{uuid.uuid4().hex[:8]}")
        self.scope = os.path.join(self.parent, "machine.slice",
                                  f"machine-qemu\\x2d1\\x2d{name}.scope")
        self.libvirt = os.path.join(self.scope, "libvirt")
        self.emulator = os.path.join(self.libvirt, "emulator")
        self.vcpu_dirs = [os.path.join(self.libvirt, f"vcpu{i}") for i in range(vcpus)]

    def dirs(self, controller):
        """The machine group (the scope), whatever the controller."""
        return self.scope

    def create(self):
        everything = _read(os.path.join(self.mount, "cgroup.controllers")).split()
        os.mkdir(self.parent)
        d = self.parent
        for sub in ("machine.slice", os.path.basename(self.scope), "libvirt"):
            _write(os.path.join(d, "cgroup.subtree_control"),
                   " ".join("+" + c for c in everything))
            d = os.path.join(d, sub)
            os.mkdir(d)
        threaded = [c for c in self.THREADED if c in everything]
        _write(os.path.join(self.libvirt, "cgroup.subtree_control"),
               " ".join("+" + c for c in threaded))
        for t in [self.emulator] + self.vcpu_dirs:
            os.mkdir(t)
            _write(os.path.join(t, "cgroup.type"), "threaded")
        self.proc = self.start_process()
        _write(os.path.join(self.libvirt, "cgroup.procs"), str(self.proc.pid))
        _write(os.path.join(self.emulator, "cgroup.threads"), str(self.proc.pid))
        return self

    def start_process(self) -> subprocess.Popen:
        """The guest's main process (a single thread: it goes into ``emulator``)."""
        return subprocess.Popen(["sleep", "600"])

    def destroy(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        remove_tree(Path(self.parent))

    def file(self, controller, name, sub=""):
        """``sub`` is relative to the scope: "libvirt", "libvirt/vcpu0", ..."""
        return os.path.join(self.scope, sub, name)

    def read(self, controller, name, sub=""):
        return _read(self.file(controller, name, sub)).strip()


def _read(path):
    with open(path) as f:
        return f.read()


def _write(path, value):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _copy_cpuset(mount, d):
    for f in ("cpuset.cpus", "cpuset.mems"):
        with open(os.path.join(mount, f)) as src:
            val = src.read().strip()
        with open(os.path.join(d, f), "w") as dst:
            dst.write(val)


@pytest.fixture
def real_host():
    return _real_host()


def memory_on_v1(host) -> bool:
    return host.owner("memory").version == 1


@contextlib.contextmanager
def simulated_guests(host, prefix: str, n: int):
    """bench/reconcile_sim.py's n guests (v1 groups, a sleeping process each) under a unique
    parent, removed afterwards with the lock files a killed holder leaves behind."""
    from bench.reconcile_sim import SimGuests, hierarchies
    from cgctl.core import guestlock
    if not memory_on_v1(host):
        pytest.skip("the simulated groups are v1")
    hierarchies(host)
    s = SimGuests(host, f"{prefix}-{uuid.uuid4().hex[:8]}", n)
    try:
        s.create()
        yield s
    finally:
        s.destroy()
        for u in s.uuids:  # a killed holder leaves its (unlocked) lock file
            try:
                os.unlink(guestlock.path_for(u))
            except FileNotFoundError:
                pass


@pytest.fixture
def scratch_guest(real_host):
    """A scratch guest shaped for this host (v1: ScratchGuest, v2: V2ScratchGuest)."""
    cls = ScratchGuest if memory_on_v1(real_host) else V2ScratchGuest
    g = cls(real_host, f"t{uuid.uuid4().hex[:6]}")
    try:
        g.create()
        yield g
    finally:
        g.destroy()


@pytest.fixture
def router(real_host):
    return Router(real_host)

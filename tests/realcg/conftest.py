"""Scratch guests on the real kernel cgroupfs: a process of ours in groups shaped
like libvirt's, under a unique parent that is removed even when a test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from cgctl import hostinfo
from cgctl.cgroup import Router

ROOT = "/sys/fs/cgroup"


def _real_host():
    if os.geteuid() != 0:
        pytest.skip("real cgroup tests need root")
    host = hostinfo.detect()
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


def _copy_cpuset(mount, d):
    for f in ("cpuset.cpus", "cpuset.mems"):
        with open(os.path.join(mount, f)) as src:
            val = src.read().strip()
        with open(os.path.join(d, f), "w") as dst:
            dst.write(val)


@pytest.fixture
def real_host():
    return _real_host()


@pytest.fixture
def scratch_guest(real_host):
    g = ScratchGuest(real_host, f"t{uuid.uuid4().hex[:6]}")
    try:
        g.create()
        yield g
    finally:
        g.destroy()


@pytest.fixture
def router(real_host):
    return Router(real_host)

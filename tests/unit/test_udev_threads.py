"""One libudev context per thread (libudev contexts are not thread-safe): device resolution from
several threads at once on the real udev database, and no context object shared between them."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from cgctl.host import devices

pytest.importorskip("pyudev")


def _block_devices():
    """Real block device nodes of this machine: (path, whole disk MAJ:MIN)."""
    out = []
    for name in sorted(os.listdir("/sys/class/block")):
        node = os.path.join("/dev", name)
        if not os.path.exists(node) or not stat.S_ISBLK(os.stat(node).st_mode):
            continue
        sysdir = os.path.realpath(os.path.join("/sys/class/block", name))
        disk = os.path.dirname(sysdir) if os.path.exists(os.path.join(sysdir, "partition")) \
            else sysdir
        with open(os.path.join(disk, "dev")) as f:
            out.append((node, f.read().strip()))
    return out


DEVICES = _block_devices()


@pytest.mark.skipif(not DEVICES, reason="no block device on this machine")
def test_concurrent_resolution_is_correct_and_each_thread_has_its_own_context():
    threads, rounds = 8, 200
    barrier = threading.Barrier(threads)
    seen = {}  # thread index -> (first context, last context): kept alive, so ids stay unique
    wrong, errors = [], []

    def work(i):
        try:
            barrier.wait(10)  # all of them resolving at the same time
            first = devices.udev_context()
            for n in range(rounds):
                path, want = DEVICES[(i + n) % len(DEVICES)]
                got = devices.resolve(path)
                if got != want:
                    wrong.append((path, want, got))
            seen[i] = (first, devices.udev_context())
        except Exception as e:  # reported below, not lost in the thread
            errors.append(repr(e))

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors and not wrong, (errors, wrong[:5])
    assert len(seen) == threads
    assert all(first is last for first, last in seen.values())  # one per thread, kept
    assert len({id(first) for first, _ in seen.values()}) == threads  # none shared
    assert devices.udev_context() not in [first for first, _ in seen.values()]  # nor with us


def test_the_device_watcher_has_a_context_of_its_own():
    """Its monitor is read in the observer thread: never the starting thread's context."""
    from cgctl.host import udevwatch
    w = udevwatch.DeviceWatcher(lambda *a: None)
    assert w._context is not devices.udev_context()

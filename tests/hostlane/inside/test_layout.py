"""The systemd host as observed (docs/operations.md): where libvirt puts a QEMU guest, what the
scope delegates, and which hand-written files `systemctl daemon-reload` puts back. The facts are
also written to the results share (facts.txt) for the docs."""
import os

import pytest

from .hostkit import read, systemctl, unit_props

FACTS = "/run/hostlane/facts.txt"


def note(line: str) -> None:
    with open(FACTS, "a") as f:
        f.write(line + "\n")


@pytest.fixture(scope="module")
def guest(make_guest):
    return make_guest("hl-layout").start()


def test_qemu_layout(guest):
    scope, lv = guest.scope, guest.cgroup
    p = unit_props(guest.scope_unit, "Delegate", "DelegateControllers", "Slice", "CPUWeight", "MemoryMax")
    note(f"scope: {scope}  props: {p}")
    for d in (scope, lv, *sorted(os.path.join(lv, x) for x in os.listdir(lv) if os.path.isdir(os.path.join(lv, x)))):
        kind = read(d + "/cgroup.type")
        # a threaded group's cgroup.procs cannot be read (EOPNOTSUPP): count its threads
        members = f"threads={len(read(d + '/cgroup.threads').split())}" if kind == "threaded" else \
            f"procs={len(read(d + '/cgroup.procs').split())}"
        note(f"  {os.path.relpath(d, scope)}: type={kind} subtree_control=[{read(d + '/cgroup.subtree_control')}] "
             f"{members} controllers=[{read(d + '/cgroup.controllers')}]")
    assert p["Delegate"] == "yes" and p["Slice"] == "machine.slice", p
    assert os.path.dirname(scope) == "/sys/fs/cgroup/machine.slice"
    assert read(scope + "/cgroup.procs") == ""               # the scope holds no process itself
    assert read(lv + "/cgroup.type") == "domain threaded"
    for sub in ("emulator", "vcpu0"):
        assert read(os.path.join(lv, sub, "cgroup.type")) == "threaded"
    # pids is delegated to the scope but not enabled below it: libvirt/ has no pids.max
    assert {"cpu", "cpuset", "io", "memory"} <= set(read(scope + "/cgroup.subtree_control").split())
    assert {"cpu", "cpuset"} <= set(read(lv + "/cgroup.subtree_control").split())


HAND = {"memory.max": "314572800", "memory.high": "262144000", "cpu.weight": "77", "pids.max": "777",
        "cpu.max": "70000 100000"}


def test_which_hand_written_files_daemon_reload_puts_back(guest):
    scope, lv = guest.scope, guest.cgroup
    before, written = {}, {}
    for d in (scope, lv):
        for f, v in HAND.items():
            path = os.path.join(d, f)
            if os.path.exists(path):
                before[path] = read(path)
                with open(path, "w") as fh:
                    fh.write(v)
                written[path] = read(path)
    systemctl("daemon-reload")
    after = {path: read(path) for path in written}
    kept = sorted(os.path.relpath(p, scope) for p in written if after[p] == written[p])
    back = sorted(f"{os.path.relpath(p, scope)} ({written[p]} -> {after[p]})" for p in written if after[p] != written[p])
    note(f"daemon-reload put back: {back}")
    note(f"daemon-reload kept: {kept}")
    for path, v in before.items():   # leave the guest as it was
        with open(path, "w") as fh:
            fh.write(v)
    # systemd#17938, issue 11: every hand-written file of the scope itself is put back
    assert not [k for k in kept if "/" not in k], kept
    # everything in the delegated libvirt/ subtree stays as written
    assert [k for k in kept if k.startswith("libvirt/")] == sorted(
        os.path.relpath(p, scope) for p in written if p.startswith(lv + "/")), back


def test_lxc_layout(make_guest):
    """An LXC container's groups: libvirt_lxc and the container's init are processes of the
    scope's libvirt/ (no threaded children), which has io and memory for the throttles and
    limits (test_io.py, test_matrix.py)."""
    g = make_guest("hl-layout-ct", "lxc").start()
    scope, lv = g.scope, g.cgroup
    p = unit_props(g.scope_unit, "Delegate", "DelegateControllers", "Slice", "MemoryMax")
    note(f"lxc scope: {scope}  props: {p}")
    for d in (scope, lv):
        note(f"  {os.path.relpath(d, scope)}: type={read(d + '/cgroup.type')} "
             f"subtree_control=[{read(d + '/cgroup.subtree_control')}] procs={len(read(d + '/cgroup.procs').split())} "
             f"controllers=[{read(d + '/cgroup.controllers')}] memory.max={read(d + '/memory.max')}")
    assert p["Delegate"] == "yes" and p["Slice"] == "machine.slice", p
    assert os.path.basename(scope).startswith("machine-lxc\\x2d") and os.path.basename(lv) == "libvirt"
    assert read(scope + "/cgroup.procs") == ""
    assert read(lv + "/cgroup.type") == "domain"
    assert len(read(lv + "/cgroup.procs").split()) >= 2          # libvirt_lxc and the init
    assert not [x for x in os.listdir(lv) if os.path.isdir(os.path.join(lv, x))]
    assert {"cpu", "io", "memory"} <= set(read(lv + "/cgroup.controllers").split())

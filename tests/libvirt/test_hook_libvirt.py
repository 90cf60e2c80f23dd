"""The hook under a real libvirtd (docs/design.md#the-hook): installed for real into /etc/libvirt/hooks,
libvirtd restarted so it sees it, real QEMU and LXC guests started.

Extra test scripts beside ours in qemu.d/ act on this test's guests only (they check the guest
name), so guests of anyone else sharing the sandbox are never refused or probed; libvirt runs
the scripts of a NAME.d directory in alphabetical order, ``00-`` before ``cgctl``.
Everything installed here is removed afterwards, even when a test fails.
"""

from __future__ import annotations

import os
import shlex
import signal
import sqlite3
import sys

import pytest

from cgctl.hook import install as hookinstall
from cgctl.start import applier as hookearly
from tests.clikit import cgctl

HOOKS = "/etc/libvirt/hooks"
LIMIT = 200 * 2**20


class Hooks:
    """cgctl's hook installed in the real hooks dir, plus per-test scripts (removed after)."""

    def __init__(self, sandbox, journal):
        self.sb = sandbox
        self.journal = journal
        self.extra = []

    def add(self, driver: str, filename: str, body: str) -> str:
        path = os.path.join(HOOKS, f"{driver}.d", filename)
        assert not os.path.lexists(path)
        with open(path, "w") as f:
            f.write(body)
        os.chmod(path, 0o755)
        self.extra.append(path)
        return path

    def only_for(self, guest, driver: str, filename: str, command) -> str:
        """A script that runs ``command DRIVER "$@"`` for ``guest`` and does nothing for others."""
        cmd = " ".join(shlex.quote(str(c)) for c in command)
        return self.add(driver, filename, f"""#!/bin/sh
if [ "$1" != {shlex.quote(guest.name)} ]; then cat >/dev/null; exit 0; fi
exec {cmd} {driver} "$@"
""")

    def remove_extra(self) -> None:
        for p in self.extra:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        self.extra.clear()


@pytest.fixture(scope="module")
def hooks(libvirt_sandbox, tmp_path_factory):
    journal = str(tmp_path_factory.mktemp("hook") / "journal.db")
    for d in ("qemu", "lxc"):
        ours = os.path.join(HOOKS, f"{d}.d", hookinstall.SCRIPT_NAME)
        if os.path.lexists(ours) and not hookinstall.is_ours(ours):
            pytest.skip(f"{ours} belongs to someone else")
    h = Hooks(libvirt_sandbox, journal)
    try:
        r = cgctl(journal, "hook", "install", "--hooks-dir", HOOKS)
        assert "restart libvirtd" in r.stdout
        libvirt_sandbox.restart_libvirtd()  # libvirtd looks for hooks only when it starts
        yield h
    finally:
        h.remove_extra()
        cgctl(journal, "hook", "uninstall", "--hooks-dir", HOOKS, check=False)
        assert not os.path.exists(os.path.join(HOOKS, "qemu.d", hookinstall.SCRIPT_NAME))


@pytest.fixture
def extra_hooks(hooks):
    try:
        yield hooks
    finally:
        hooks.remove_extra()


def machine_memory_file(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if "memory" in ctrls.split(","):
                return f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
    raise AssertionError("no memory group")


def read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def history(journal, guest):
    db = sqlite3.connect(journal)
    try:
        return db.execute("SELECT at, command, param, new_value, outcome FROM history "
                          "WHERE uuid = ? ORDER BY id", (guest.uuid,)).fetchall()
    finally:
        db.close()


def history_with(journal, guest, command, within: float = 10.0):
    """The guest's history once it holds a ``command`` row (or as it is after ``within`` s)."""
    import time
    end = time.monotonic() + within
    while True:
        rows = history(journal, guest)
        if any(r[1] == command for r in rows) or time.monotonic() > end:
            return rows
        time.sleep(0.02)


PROBE = r"""#!/bin/sh
# test probe: at `started begin` of one guest, record its memory limit as libvirt's hooks see it
cat >/dev/null
[ "$1" = {name} ] && [ "$2" = started ] || exit 0
pid=$(cat /run/libvirt/{driver}/$1.pid)
path=$(sed -n 's/^[0-9]*:[^:]*memory[^:]*:\(.*\)$/\1/p' /proc/$pid/cgroup)
cat "/sys/fs/cgroup/memory$path/memory.limit_in_bytes" > {out}
exit 0
"""


@pytest.mark.parametrize("driver", ["qemu", "lxc"])
def test_limits_in_force_before_started_begin(extra_hooks, make_guest, tmp_path, driver):
    sb = extra_hooks.sb
    journal = extra_hooks.journal
    guest = make_guest(driver, start=False)
    cgctl(journal, "set", guest.name, "hard_limit=200M", "cpu_shares=300", "--config")
    out = tmp_path / "at-started"
    extra_hooks.add(driver, f"00-cgt-probe-{guest.name}", PROBE.format(
        name=shlex.quote(guest.name), driver=driver, out=shlex.quote(str(out))))

    pid = sb.start_guest(guest.name, guest.uri)

    # in force by the time `virsh start` returns
    assert read_int(machine_memory_file(pid)) == LIMIT
    # the applier records its `started` apply right after its answer (docs/hook.md, "The
    # answer before the commit"): `virsh start` may return before that commit
    rows = history_with(journal, guest, "hook started")
    early = [r for r in rows if r[1] == "hook early"]
    started = [r for r in rows if r[1] == "hook started"]
    assert started and all(r[4] == "ok" for r in started)
    if driver == "qemu":
        # ... and already when libvirt ran `started begin` (the probe runs before cgctl's
        # script), applied by the early applier while QEMU was still paused (-S)
        assert int(out.read_text()) == LIMIT
        assert {(r[2], r[3], r[4]) for r in early} == {("hard_limit", "200M", "ok"),
                                                       ("cpu_shares", "300", "ok")}
        assert max(r[0] for r in early) < min(r[0] for r in started)
    # LXC: libvirt_lxc writes its own memory limit and releases the container's init before
    # `started begin`; the early applier races with that (docs/hook.md), so only the result
    # at `started begin` is certain there
    # the journal knows which instance got the config
    db = sqlite3.connect(journal)
    try:
        assert db.execute("SELECT pid FROM instance WHERE uuid = ?",
                          (guest.uuid,)).fetchone()[0] == pid
    finally:
        db.close()
    # nothing of the hook is left running
    assert not os.path.exists(hookearly.lock_path(driver, guest.name))


@pytest.mark.parametrize("strict", [False, True])
def test_corrupt_journal_blocks_the_start_only_when_strict(extra_hooks, make_guest, tmp_path,
                                                            strict):
    sb = extra_hooks.sb
    guest = make_guest("qemu", start=False)
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a journal at all\n" * 200)
    extra_hooks.only_for(guest, "qemu", f"zz-cgt-corrupt-{guest.name}",
                         [sys.executable, "-m", "cgctl.hook", "--journal", corrupt,
                          "--strict" if strict else "--no-strict"])
    r = sb.virsh("start", guest.name, check=False)
    if strict:
        assert r.returncode != 0
        assert "refusing the start" in r.stderr  # libvirt shows the hook's one line
        assert not sb.is_running(guest.name)
        assert not os.path.exists(guest.pid_file)
    else:
        assert r.returncode == 0, r.stderr
        assert sb.is_running(guest.name)


def test_strict_start_succeeds_when_the_limits_apply(extra_hooks, make_guest):
    sb = extra_hooks.sb
    guest = make_guest("qemu", start=False)
    cgctl(extra_hooks.journal, "set", guest.name, "hard_limit=200M", "--config")
    extra_hooks.only_for(guest, "qemu", f"zz-cgt-strict-{guest.name}",
                         [sys.executable, "-m", "cgctl.hook", "--journal", extra_hooks.journal,
                          "--strict"])
    pid = sb.start_guest(guest.name)
    assert read_int(machine_memory_file(pid)) == LIMIT


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_libvirtd_restart_never_kills_a_running_guest(extra_hooks, make_guest, tmp_path, sig):
    """reconnect begin: even a strict hook that cannot read its journal exits 0, and a guest
    whose config was applied to this very process keeps its --live changes."""
    sb = extra_hooks.sb
    journal = extra_hooks.journal
    guests = [make_guest("qemu", start=False), make_guest("lxc", start=False)]
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"\0garbage" * 500)
    pids = {}
    for g in guests:
        cgctl(journal, "set", g.name, "hard_limit=200M", "--config")
        pids[g.name] = sb.start_guest(g.name, g.uri)
        cgctl(journal, "set", g.name, "hard_limit=300M", "--live")
        extra_hooks.only_for(g, g.driver, f"zz-cgt-corrupt-{g.name}",
                             [sys.executable, "-m", "cgctl.hook", "--journal", corrupt,
                              "--strict"])
    before = {g.name: len(history(journal, g)) for g in guests}

    sb.restart_libvirtd(sig)

    for g in guests:
        assert sb.is_running(g.name, g.uri), f"{g.name} was killed by the restart"
        assert sb.guest_pid(g.name, g.uri) == pids[g.name]
        # same instance: the hook left the --live value alone
        assert read_int(machine_memory_file(pids[g.name])) == 300 * 2**20
        assert len(history(journal, g)) == before[g.name]

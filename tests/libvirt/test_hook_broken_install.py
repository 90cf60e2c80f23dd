"""A broken cgctl install under a real libvirtd (docs/hook.md, "When cgctl itself is broken").

cgctl's hook is installed for real into /etc/libvirt/hooks, pointing at a cgctl that cannot
run (a removed interpreter, or a package whose import raises), and libvirtd is restarted:
running guests must survive the restart (``reconnect begin``), even with ``--strict``; a start
goes on when not strict and is refused, with cgctl's line, when strict.

Probe scripts beside ours (one before it, one after) record libvirt's calls for this test's
guests only, to show libvirt did run the hook directory at those steps and to know when it is
done with a reconnect. Everything installed here is removed
afterwards, even when a test fails. Run under the machine's libvirt lock (HELPERS: flock).
"""

from __future__ import annotations

import os
import shlex

import pytest

from cgctl.hook import install as hookinstall
from tests.clikit import cgctl
from tests.unit.test_hook_script import first_on_path

HOOKS = "/etc/libvirt/hooks"


class BrokenHook:
    def __init__(self, sandbox, tmp_path):
        self.sb = sandbox
        self.tmp = tmp_path
        self.journal = str(tmp_path / "journal.db")
        self.calls = tmp_path / "calls"
        self.probes = []

    def interpreter(self, kind: str) -> str:
        if kind == "missing-interpreter":  # a removed venv or a Python upgrade
            return str(self.tmp / "venv-removed" / "bin" / "python3")
        # an installed package whose import raises, found first by a python wrapper
        pkg = self.tmp / "fake" / "cgctl"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text("raise ImportError('simulated: half-upgraded cgctl')\n")
        (pkg / "hook.py").write_text("")
        wrapper = self.tmp / "python-wrapper"
        wrapper.write_text(first_on_path(self.tmp / "fake"))
        wrapper.chmod(0o755)
        return str(wrapper)

    def install(self, kind: str, strict: bool, guests) -> None:
        cgctl(self.journal, "hook", "install", "--hooks-dir", HOOKS, "--cgctl",
              self.interpreter(kind), "--strict" if strict else "--no-strict")
        names = " ".join(shlex.quote(g.name) for g in guests)
        for driver in ("qemu", "lxc"):
            for order in ("00", "zz"):  # libvirt runs NAME.d/* in name order: before, after ours
                path = os.path.join(HOOKS, f"{driver}.d", f"{order}-cgt-probe-{os.getpid()}")
                with open(path, "w") as f:
                    f.write(f"#!/bin/sh\ncat >/dev/null\nfor n in {names}; do\n"
                            f"  [ \"$1\" = \"$n\" ] && echo \"{order} {driver} $1 $2 $3\" >> "
                            f"{shlex.quote(str(self.calls))}\ndone\nexit 0\n")
                os.chmod(path, 0o755)
                self.probes.append(path)
        self.sb.restart_libvirtd()  # libvirtd reads the hooks directory only when it starts

    def called(self, order: str = "00") -> list:
        try:
            lines = self.calls.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [line.split(" ", 1)[1] for line in lines if line.startswith(order + " ")]

    def wait_reconnected(self, guest) -> None:
        """Until libvirt is done reconnecting ``guest``: the probe after ours ran (libvirt runs
        every script, whatever ours returned), then the reconnect job is over. A QEMU guest is
        reconnected in a thread of its own that holds the guest's job throughout, so a monitor
        command (which needs that job) returns only after it; LXC reconnects before libvirtd
        accepts clients."""
        import time
        want = f"{guest.driver} {guest.name} reconnect begin"
        end = time.monotonic() + 60
        while want not in self.called("zz"):
            assert time.monotonic() < end, f"libvirt never ran the hooks for {want}"
            time.sleep(0.05)
        if guest.driver == "qemu":
            self.sb.virsh("qemu-monitor-command", guest.name, "--hmp", "info status",
                          uri=guest.uri, check=False)

    def remove(self) -> None:
        for p in self.probes:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        cgctl(self.journal, "hook", "uninstall", "--hooks-dir", HOOKS, check=False)


@pytest.fixture
def broken_hook(libvirt_sandbox, tmp_path):
    for d in ("qemu", "lxc"):
        ours = os.path.join(HOOKS, f"{d}.d", hookinstall.SCRIPT_NAME)
        if os.path.lexists(ours) and not hookinstall.is_ours(ours):
            pytest.skip(f"{ours} belongs to someone else")
    os.chmod(tmp_path, 0o755)  # libvirtd runs the probe and the wrapper from here
    h = BrokenHook(libvirt_sandbox, tmp_path)
    try:
        yield h
    finally:
        h.remove()
        for d in ("qemu", "lxc"):
            assert not os.path.exists(os.path.join(HOOKS, f"{d}.d", hookinstall.SCRIPT_NAME))


@pytest.mark.parametrize("kind", ["missing-interpreter", "import-raises"])
def test_libvirtd_restart_keeps_guests_running_under_a_broken_strict_hook(broken_hook,
                                                                           make_guest, kind):
    sb = broken_hook.sb
    guests = [make_guest("qemu"), make_guest("lxc")]
    pids = {g.name: sb.guest_pid(g.name, g.uri) for g in guests}

    broken_hook.install(kind, strict=True, guests=guests)  # restarts libvirtd: reconnect

    for g in guests:
        broken_hook.wait_reconnected(g)
        assert f"{g.driver} {g.name} reconnect begin" in broken_hook.called()
        assert sb.is_running(g.name, g.uri), f"{g.name} was killed at reconnect"
        assert sb.guest_pid(g.name, g.uri) == pids[g.name]
        assert os.path.exists(f"/proc/{pids[g.name]}")


@pytest.mark.parametrize("strict", [False, True])
def test_a_start_with_a_broken_hook_goes_on_unless_strict(broken_hook, make_guest, strict):
    sb = broken_hook.sb
    guest = make_guest("qemu", start=False)
    broken_hook.install("missing-interpreter", strict=strict, guests=[guest])

    r = sb.virsh("start", guest.name, check=False)

    assert f"qemu {guest.name} started begin" in broken_hook.called()
    if strict:  # the guest must not run without its limits, and cgctl cannot apply them
        assert r.returncode != 0
        assert "cgctl cannot run" in r.stderr and "refusing the start" in r.stderr
        assert not sb.is_running(guest.name)
    else:
        assert r.returncode == 0, r.stderr
        assert sb.is_running(guest.name)
        assert "qemu {} prepare begin".format(guest.name) in broken_hook.called()

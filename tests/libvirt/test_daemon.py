"""``cgctl daemon`` against the real libvirtd sandbox and real QEMU/LXC guests.

The service runs as a subprocess with its own journal (tmp_path); effects are awaited by polling
the guest's cgroup file, the journal and the service's log, with a timeout; every process
started here is stopped by PID at the end. The tests that stop libvirtd disturb anyone else
using the sandbox at the same time (guests keep running; libvirt calls fail meanwhile).
"""

from __future__ import annotations

import re
import signal
import subprocess

import pytest

from cgctl.core.journal import Journal
from tests.clikit import cgctl
from tests.daemonkit import Subprocess, mdwe_wrapper, shares, wait_for

CONFIG, LIVE = "777", "555"  # cpu_shares: the permanent value, a --live change
TIMEOUT = 60.0


def wait_shares(guest, want, what=""):
    wait_for(lambda: shares(guest) == want, TIMEOUT,
             f"cpu.shares of {guest.name} to be {want} {what}(it is {shares(guest)})")


def history(journal, guest):
    with Journal(str(journal), create=False) as j:
        return j.history(guest.uuid)


def config(journal, guest):
    with Journal(str(journal), create=False) as j:
        return j.get_config(guest.uuid)


@pytest.fixture
def journal(tmp_path):
    return tmp_path / "journal.db"


@pytest.fixture
def services(tmp_path, journal, libvirt_sandbox):
    """``services(config_text=None)`` starts one more ``cgctl daemon`` and waits until ready."""
    started = []

    def start(config_text: str = "", wrapper=()):
        n = len(started)
        conf = tmp_path / f"cgctl-{n}.toml"
        conf.write_text(config_text)
        svc = Subprocess(["--journal", str(journal), "--config-file", str(conf)],
                         log_path=tmp_path / f"daemon-{n}.log", wrapper=wrapper)
        started.append(svc)
        svc.wait_log("ready:")
        return svc
    yield start
    codes = {svc.pid: svc.stop() for svc in started}
    for svc in started:
        print(f"--- daemon {svc.pid} (exit {codes[svc.pid]}):\n{svc.log()}")
    assert all(c == 0 for c in codes.values()), codes


@pytest.fixture
def managed_save_cleanup(libvirt_sandbox):
    names = []
    yield names.append
    for name in names:  # an image left behind would make undefine fail
        libvirt_sandbox.virsh("managedsave-remove", name, check=False)


def latencies(log: str):
    return [int(m) for m in re.findall(r"applied source=event \(\w+\): .* (\d+) ms after", log)]


@pytest.mark.parametrize("kind", ["qemu", "lxc"])
def test_permanent_settings_come_back_at_every_start(libvirt_sandbox, make_guest, services,
                                                     journal, tmp_path, kind,
                                                     managed_save_cleanup):
    sb = libvirt_sandbox
    g = make_guest(kind, start=False)
    cgctl(journal, "set", g.name, f"cpu_shares={CONFIG}", "--config")
    svc = services()
    sb.start_guest(g.name, g.uri)
    wait_shares(g, CONFIG, "after start ")
    sb.destroy(g.name, g.uri)
    sb.start_guest(g.name, g.uri)
    wait_shares(g, CONFIG, "after destroy + start ")
    starts = 2
    if kind == "qemu":  # LXC has no save/restore
        image = tmp_path / "guest.save"
        sb.virsh("save", g.name, str(image), uri=g.uri)
        assert not sb.is_running(g.name, g.uri)
        sb.virsh("restore", str(image), uri=g.uri)
        wait_shares(g, CONFIG, "after save + restore ")
        managed_save_cleanup(g.name)
        sb.virsh("managedsave", g.name, uri=g.uri)
        assert not sb.is_running(g.name, g.uri)
        sb.start_guest(g.name, g.uri)
        wait_shares(g, CONFIG, "after managedsave + start ")
        starts = 4
    log = svc.wait_log(f"guest={g.name} applied source=event", n=starts)
    assert "(restored)" in log or kind == "lxc"
    rows = [r for r in history(journal, g) if r.source == "event"]
    assert len(rows) == starts and all(r.outcome == "ok" and r.new_value == CONFIG for r in rows)
    print(f"{kind}: event -> applied: {latencies(log)} ms")


@pytest.mark.parametrize("kind", ["qemu", "lxc"])
def test_live_change_gone_after_guest_restart_kept_after_service_restart(
        libvirt_sandbox, make_guest, services, journal, kind):
    sb = libvirt_sandbox
    g = make_guest(kind, start=False)
    cgctl(journal, "set", g.name, f"cpu_shares={CONFIG}", "--config")
    first = services()
    sb.start_guest(g.name, g.uri)
    wait_shares(g, CONFIG)
    first.wait_log(f"guest={g.name} applied source=event")
    cgctl(journal, "set", g.name, f"cpu_shares={LIVE}", "--live")
    assert shares(g) == LIVE
    # the service restarts, the guest does not: its --live change stays
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    second = services()  # ready = reconciled
    assert shares(g) == LIVE
    assert not [r for r in history(journal, g) if r.source == "reconcile"]
    assert re.search(rf"reconcile {re.escape(g.uri)}: \d+ running, 0 applied", second.log())
    # the guest restarts: the --live change is gone, the config is back
    sb.destroy(g.name, g.uri)
    sb.start_guest(g.name, g.uri)
    wait_shares(g, CONFIG, "after the guest restarted ")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_libvirtd_going_away_never_stops_the_service(libvirt_sandbox, make_guest, services,
                                                     journal, sig):
    """libvirtd stopped or killed: the service stays, reconnects and reconciles: a guest that
    kept running keeps its --live change; one started while disconnected gets its config."""
    sb = libvirt_sandbox
    kept = make_guest("qemu", start=False)
    late = make_guest("lxc", start=False)
    for g in (kept, late):
        cgctl(journal, "set", g.name, f"cpu_shares={CONFIG}", "--config")
    # a long first reconnect delay: the late guest starts before the service is back
    svc = services("reconnect_initial = 4.0\nreconnect_max = 8.0\n")
    sb.start_guest(kept.name, kept.uri)
    wait_shares(kept, CONFIG)
    svc.wait_log(f"guest={kept.name} applied source=event")
    cgctl(journal, "set", kept.name, f"cpu_shares={LIVE}", "--live")
    try:
        sb.stop_libvirtd(sig)
        svc.wait_log("lost connection to qemu:///system")
        svc.wait_log("lost connection to lxc:///system")
    finally:
        sb.start_libvirtd()  # whatever happened: the sandbox gets its libvirtd back
    reconnected_before = svc.log().count("connected to lxc:///system (")
    sb.start_guest(late.name, late.uri)
    wait_shares(late, CONFIG, "after reconnecting ")
    log = svc.wait_log("reconcile lxc:///system", n=2, timeout=TIMEOUT)
    svc.wait_log("reconcile qemu:///system", n=2, timeout=TIMEOUT)
    assert svc.proc.poll() is None, "the service exited"
    assert shares(kept) == LIVE  # same instance: not clobbered
    sources = [r.source for r in history(journal, late) if r.mode == "live"]
    if reconnected_before == 1:  # the guest started while the service was disconnected
        assert sources == ["reconcile"], log
    assert log.count("connected to qemu:///system (") == 2


def test_undefine_removes_the_config(libvirt_sandbox, make_guest, services, journal):
    g = make_guest("lxc", start=False)
    cgctl(journal, "set", g.name, f"cpu_shares={CONFIG}", "--config")
    svc = services()
    libvirt_sandbox.undefine(g.name, g.uri)
    wait_for(lambda: not config(journal, g), TIMEOUT, "the config to be dropped")
    svc.wait_log(f"guest={g.name} undefined: config dropped (1 setting(s)); history kept")
    rows = history(journal, g)  # history stays (marked deleted)
    assert [(r.command, r.source, r.old_value, r.new_value) for r in rows] == [
        ("set", "cli", None, CONFIG), ("undefine", "event", CONFIG, None)]


@pytest.mark.parametrize("kind", ["qemu", "lxc"])
def test_two_services_racing_on_one_start(libvirt_sandbox, make_guest, services, journal, kind):
    g = make_guest(kind, start=False)
    cgctl(journal, "set", g.name, f"cpu_shares={CONFIG}", "soft_limit=32M", "--config")
    a, b = services(), services()
    libvirt_sandbox.start_guest(g.name, g.uri)
    for svc in (a, b):
        svc.wait_log(f"guest={g.name} applied source=event")
    wait_shares(g, CONFIG)
    for svc in (a, b):
        assert f"guest={g.name} apply failed" not in svc.log()
    rows = [r for r in history(journal, g) if r.source == "event"]
    assert rows and all(r.outcome == "ok" for r in rows)


@pytest.mark.parametrize("kind", ["qemu", "lxc"])
def test_applies_under_memory_deny_write_execute(libvirt_sandbox, make_guest, services,
                                                 journal, kind):
    """The unit's MemoryDenyWriteExecute=yes, emulated with PR_SET_MDWE: real libvirt
    connections, events and cgroup writes all work without W+X memory."""
    probe = subprocess.run(mdwe_wrapper() + ["-c", "pass"], timeout=60)
    if probe.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
    g = make_guest(kind, start=False)
    cgctl(journal, "set", g.name, f"cpu_shares={CONFIG}", "--config")
    svc = services(wrapper=mdwe_wrapper())
    libvirt_sandbox.start_guest(g.name, g.uri)
    wait_shares(g, CONFIG)
    svc.wait_log(f"guest={g.name} applied source=event")

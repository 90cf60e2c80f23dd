"""cgctl/service/oomwatch.py with real inotify on real files (a tmp dir shaped like a v2
machine group and libvirt's run dir): a guest that starts is watched, an OOM kill and a
memory-limit hit in its memory.events are logged with its name and counted; counts from
before are a baseline, not logged. (The v1 eventfd path needs a real kernel:
tests/libvirt/test_observe.py.)"""

from __future__ import annotations

import logging
import threading

import pytest

from cgctl.cgroup import placement
from cgctl.cgroup.groups import GuestGroups
from cgctl.host import runfiles
from cgctl.service import oomwatch
from tests.daemonkit import wait_for

UUID = "d30eb5b3-72ba-4af9-8591-0ef552da6d8c"
EVENTS = "low 0\nhigh 0\nmax {max}\noom {oom}\noom_kill {kill}\noom_group_kill 0\n"


@pytest.fixture
def world(tmp_path, monkeypatch):
    machine = tmp_path / "cg" / "machine.slice" / "machine-qemu\\x2d1\\x2dweb1.scope"
    machine.mkdir(parents=True)
    (machine / "memory.events").write_text(EVENTS.format(max=5, oom=1, kill=1))
    (machine / "memory.max").write_text("536870912\n")
    run = tmp_path / "run"
    (run / "qemu").mkdir(parents=True)
    guest = runfiles.Guest(name="web1", uuid=UUID, driver="qemu", uri="qemu:///system",
                           running=True, persistent=True, pid=4242)
    running = {}
    monkeypatch.setattr(runfiles, "all_running", lambda *a, **k: dict(running))
    monkeypatch.setattr(placement, "groups_for_pid", lambda pid, host, **kw: GuestGroups(
        guest="web1", driver="qemu", machine={"memory": (str(tmp_path / "cg"), str(machine))},
        v2_controllers=frozenset({"memory"})))
    events = []
    stopping = threading.Event()
    w = oomwatch.start(stopping, on_event=lambda g, ev, n: events.append((g.name, ev, n)),
                       run_dir=str(run), host=object())
    yield {"machine": machine, "run": run, "guest": guest, "running": running,
           "events": events, "watch": w}
    stopping.set()


def test_oom_kill_and_limit_hit_logged_with_the_guest_name(world, caplog):
    caplog.set_level(logging.INFO, logger="cgctl")
    w = world["watch"]
    wait_for(lambda: w._run_wds, what="the run dirs watched")
    # the guest starts: libvirt writes its pid file
    world["running"][UUID] = world["guest"]
    (world["run"] / "qemu" / "web1.pid").write_text("4242")
    wait_for(lambda: UUID in w.guests, what="the guest watched")
    assert world["events"] == []  # the kill from before the watch is the baseline
    (world["machine"] / "memory.events").write_text(EVENTS.format(max=9, oom=2, kill=2))
    wait_for(lambda: ("web1", "oom_kill", 1) in world["events"], what="the OOM kill counted")
    assert ("web1", "max", 4) in world["events"]
    text = caplog.text
    assert "guest=web1 OOM kill: 1 process(es) killed in its memory group (limit 512M; " \
           "2 OOM kill(s) since it started)" in text
    assert "guest=web1 memory limit hit 4 time(s) (limit 512M)" in text
    # the guest stops: its pid file goes, the watch is dropped
    world["running"].clear()
    (world["run"] / "qemu" / "web1.pid").unlink()
    wait_for(lambda: UUID not in w.guests, what="the guest dropped")


def test_limit_hits_are_rate_limited(world, caplog):
    caplog.set_level(logging.INFO, logger="cgctl")
    w = world["watch"]
    wait_for(lambda: w._run_wds, what="the run dirs watched")
    world["running"][UUID] = world["guest"]
    (world["run"] / "qemu" / "web1.pid").write_text("4242")
    wait_for(lambda: UUID in w.guests, what="the guest watched")
    for n in (6, 7, 8):
        (world["machine"] / "memory.events").write_text(EVENTS.format(max=n, oom=1, kill=1))
        wait_for(lambda: w.guests[UUID].counts.get("max") == n, what=f"max {n} read")
    assert [e for e in world["events"] if e[1] == "max"] == [("web1", "max", 1)]
    assert w.guests[UUID].unlogged_max == 2  # in the next line, a minute later at the most


def test_a_watched_guests_status_rewrites_do_not_rescan(world):
    """libvirtd rewrites NAME.xml at every change to a running guest; a rescan parses every
    running guest's status file, so a watched guest's rewrites must not start one
    (docs/performance.md, section 4). Synchronised on memory.events reads, never on time:
    inotify delivers the run dir's and the group's events in the order they happened."""
    w = world["watch"]
    wait_for(lambda: w._run_wds, what="the run dirs watched")
    world["running"][UUID] = world["guest"]
    (world["run"] / "qemu" / "web1.pid").write_text("4242")
    wait_for(lambda: UUID in w.guests, what="the guest watched")
    # the pid file's own later events (modify, close) may come in one batch with a
    # memory.events change, whose rescan runs after the batch's reads: two rounds, so that the
    # second's read means the first batch was handled whole (its rescan included)
    for n in (4, 5):
        (world["machine"] / "memory.events").write_text(EVENTS.format(max=n, oom=1, kill=1))
        wait_for(lambda: w.guests[UUID].counts.get("max") == n, what=f"max {n} read")
    before = w.rescans
    for n in (6, 7, 8, 9):
        if n < 9:  # the last round only makes sure the one before was handled whole
            # as libvirt does it (virFileRewrite): NAME.xml.new, renamed over NAME.xml
            new = world["run"] / "qemu" / "web1.xml.new"
            new.write_text(f"<domstatus n='{n}'/>")
            new.rename(world["run"] / "qemu" / "web1.xml")
        (world["machine"] / "memory.events").write_text(EVENTS.format(max=n, oom=1, kill=1))
        wait_for(lambda: w.guests[UUID].counts.get("max") == n, what=f"max {n} read")
    assert w.rescans == before


def test_a_status_file_of_a_guest_not_watched_yet_still_rescans(world):
    """A start writes NAME.pid and then NAME.xml; a guest not watched when its pid file came
    (no status file yet) is found when the status file is written."""
    w = world["watch"]
    wait_for(lambda: w._run_wds, what="the run dirs watched")
    (world["run"] / "qemu" / "web1.pid").write_text("4242")  # all_running: not yet
    wait_for(lambda: w.rescans >= 2, what="the rescan after the pid file")
    assert UUID not in w.guests
    world["running"][UUID] = world["guest"]
    (world["run"] / "qemu" / "web1.xml").write_text("<domstatus/>")
    wait_for(lambda: UUID in w.guests, what="the guest watched after its status file")

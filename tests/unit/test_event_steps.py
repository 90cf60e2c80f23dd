"""Event → applied, step by step (docs/performance.md, section 2 A): the service's own
perf_counter_ns stamps in its "applied source=event" line, the hand-off to the worker before
the event's log line, and the config read once on the run-files path. Faked cgroup v1 host and
run files, real Controller and journal."""

from __future__ import annotations

import logging
import re

from cgctl.core import profiles
from cgctl.service import events, links as L, worker as W
from cgctl.virt import LifecycleEvent
from tests.unit.conftest import read
from tests.unit.test_event_runfiles import UUID, NoLibvirtd, _started, setup  # noqa: F401

STEPS = re.compile(r"steps ms: queue (\S+) run files (\S+) metadata (\S+) apply (\S+) "
                   r"record (\S+), in force (\S+)")


def test_the_applied_line_carries_each_step_in_order(setup, caplog):
    w, m = setup
    caplog.set_level(logging.INFO, logger="cgctl")
    job = _started("qemu:///system", NoLibvirtd())
    w.run(job)  # as the worker runs it: taken_ns stamped
    assert read(f"{m.machine['cpu']}/cpu.shares") == "333"
    line, = [r.getMessage() for r in caplog.records if "applied source=event" in r.getMessage()]
    queue, files, meta, apply, record, in_force = map(float, STEPS.search(line).groups())
    assert min(queue, files, meta, apply, record) >= 0  # stamps taken in this order
    assert abs(in_force - (queue + files + meta + apply)) < 0.01  # the same stamps (%.3f)


def test_the_run_files_path_reads_the_config_once(setup, monkeypatch):
    w, m = setup
    reads = []
    real = profiles.effective
    monkeypatch.setattr(profiles, "effective",
                        lambda j, u, *a, **kw: (reads.append(u), real(j, u, *a, **kw))[1])
    events.apply_started(w, _started("qemu:///system", NoLibvirtd()))
    assert read(f"{m.machine['cpu']}/cpu.shares") == "333"
    assert reads == [UUID]  # not has_config, then again under the lock


def test_a_guest_without_config_from_the_run_files_is_left_alone(setup):
    w, m = setup
    before = read(f"{m.machine['cpu']}/cpu.shares")
    with w.ctl.journal().transaction() as tx:
        tx.set_config(UUID, "web1", "qemu", {("cpu_shares", ""): None})
    events.apply_started(w, _started("qemu:///system", NoLibvirtd()))
    assert read(f"{m.machine['cpu']}/cpu.shares") == before
    assert w.ctl.journal().get_instance(UUID) is None
    assert w.ctl.journal().history(UUID) == []


class _Recorder:
    def __init__(self, caplog):
        self.caplog, self.seen = caplog, []

    def put(self, job):  # what was logged when the job reached the worker
        self.seen.append([r.getMessage() for r in self.caplog.records])


def test_the_event_reaches_the_worker_before_its_log_line(caplog):
    caplog.set_level(logging.INFO, logger="cgctl")
    rec = _Recorder(caplog)
    links = L.Links(None, rec, lambda msg: None, lambda: None)
    links._links["qemu:///system"] = L.Link("qemu:///system", conn=object(), generation=3)
    links._on_event(LifecycleEvent("qemu:///system", "web1", UUID, "started", "booted"), 3)
    assert len(rec.seen) == 1
    assert not any("event guest=web1" in m for m in rec.seen[0])  # queued first ...
    assert any("event guest=web1 started" in r.getMessage() for r in caplog.records)  # ... then


def test_the_status_file_is_read_and_parsed_once_and_its_live_metadata_applied(setup,
                                                                             monkeypatch):
    import builtins
    import xml.etree.ElementTree as ET
    from cgctl import consts
    from cgctl.model import metadata as MD
    w, m = setup
    path = f"{consts.LIBVIRT_RUN_DIR}/qemu/web1.xml"
    with open(path) as f:
        text = f.read()
    live = MD.Doc(live={("cpu_shares", ""): MD.Entry("555", "2026-01-01T00:00:00+00:00",
                                                     "h", "u")})
    el = MD.serialize(live).replace("<guest ", f"<cgctl:guest xmlns:cgctl='{MD.NS}' ", 1)
    el = el.replace("</guest>", "</cgctl:guest>")
    with open(path, "w") as f:
        f.write(text.replace("</uuid>", f"</uuid><metadata>{el}</metadata>", 1))
    opened, parsed = [], []
    real_open, real_parse = builtins.open, ET.fromstring
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: (
        opened.append(str(p)), real_open(p, *a, **k))[1])
    monkeypatch.setattr(ET, "fromstring", lambda d, *a, **k: (
        parsed.append(1), real_parse(d, *a, **k))[1])
    events.apply_started(w, _started("qemu:///system", NoLibvirtd()))
    assert read(f"{m.machine['cpu']}/cpu.shares") == "555"  # the <live> setting, on top
    assert opened.count(path) == 1 and len(parsed) == 1

"""Usage figures on a real cgroup v2 kernel (the v2 lane: tests/v2lane/run), end to end.

A scratch guest in libvirt's v2 layout (conftest.V2ScratchGuest) whose main process is
one libvirt's run files point at (a fake run dir: ``NAME.xml`` + ``NAME.pid``, the process's
argv names ``-uuid UUID``), so every reader finds it as it finds a real guest: usage.py, the
OOM watcher (oomwatch.py, inotify on ``memory.events``), the metrics collector, and the
``cgctl show`` / ``cgctl top`` commands as processes. Then the kernel is made to count:
memory past ``memory.high`` and into an OOM kill under ``memory.max``, a busy loop under
``cpu.max``, direct writes through an ``io.max`` on the lane's scratch disk; and each reader
must see the kernel's figures (docs/observability.md).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from cgctl.cgroup import Router, hierarchy, usage
from cgctl.cgroup.placement import groups_for_pid
from cgctl.core import live
from cgctl.model import params as P
from cgctl.service import metrics, oomwatch
from tests.daemonkit import wait_for

try:  # package layout (tests/realcg/__init__.py exists)
    from .conftest import V2ScratchGuest
    from .conftest_v2 import keyed, read, requires_v2lane, scratch_disk, start_in
except ImportError:  # rootdir layout: tests/realcg is on sys.path
    from conftest import V2ScratchGuest  # type: ignore
    from conftest_v2 import keyed, read, requires_v2lane, scratch_disk, start_in  # type: ignore

pytestmark = [pytest.mark.realcg, requires_v2lane]
__all__ = ["scratch_disk"]  # a fixture, used by name below

MiB = 1 << 20
BUSY = ["/bin/sh", "-c", "while :; do :; done"]
REPO = Path(__file__).resolve().parents[2]
STATUS = """<domstatus state='running' reason='booted' pid='{pid}'>
  <domain type='kvm' id='1'>
    <name>{name}</name>
    <uuid>{uuid}</uuid>
    <devices><emulator>/bin/sh</emulator></devices>
  </domain>
</domstatus>
"""


class RunFilesGuest(V2ScratchGuest):
    """The scratch guest, plus libvirt's run files for it: its main process is ``/bin/sh``
    (the status XML's emulator) blocked in ``read``, with ``-uuid UUID`` in its argv."""

    def __init__(self, host, name: str, run_dir: Path):
        super().__init__(host, name)
        self.uuid = str(uuid.uuid4())
        self.run_dir = run_dir

    def start_process(self):
        return subprocess.Popen(["/bin/sh", "-c", "read x", "sh", "-uuid", self.uuid],
                                stdin=subprocess.PIPE)

    def create(self):
        super().create()
        d = self.run_dir / "qemu"
        d.mkdir(parents=True)
        (d / f"{self.name}.xml").write_text(STATUS.format(pid=self.proc.pid, name=self.name,
                                                          uuid=self.uuid))
        (d / f"{self.name}.pid").write_text(str(self.proc.pid))  # after the process started
        return self


@pytest.fixture
def guest(tmp_path):
    host = hierarchy.detect()
    g = RunFilesGuest(host, f"u{uuid.uuid4().hex[:6]}", tmp_path / "run")
    try:
        yield g.create()
    finally:
        g.destroy()


@pytest.fixture
def watched(guest, tmp_path):
    """The service's two observers on the guest: the metrics registry and the OOM watcher,
    which counts what it logs into the metrics (as cgctl/service/daemon.py wires them)."""
    m = metrics.Metrics(str(tmp_path / "journal.db"), run_dir=str(guest.run_dir),
                        host=guest.host)
    events = []
    stopping = threading.Event()

    def on_event(g, event, n):
        events.append((g.name, event, n))
        m.health.count_oom(g, event, n)
    w = oomwatch.start(stopping, on_event=on_event, run_dir=str(guest.run_dir), host=guest.host)
    try:
        wait_for(lambda: guest.uuid in w.guests, what="the guest watched")
        yield m, events
    finally:
        stopping.set()
        m.stop()


def groups(g):
    return groups_for_pid(g.proc.pid, g.host, guest=g.name, driver="qemu")


def cgctl(g, tmp_path, *args) -> str:
    """``cgctl ARGS`` as its own process, finding the guest in the fake run dir."""
    env = dict(os.environ, CGCTL_LIBVIRT_RUN_DIR=str(g.run_dir),
               CGCTL_LIBVIRT_ETC_DIR=str(tmp_path / "etc"), CGCTL_CONFIG=str(tmp_path / "none"))
    r = subprocess.run([sys.executable, "-m", "cgctl", "--journal", str(tmp_path / "j.db"),
                        *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def scrape(m) -> dict:
    """{(name, frozenset(labels)): value} of the registry, through the text-format parser."""
    from prometheus_client.parser import text_string_to_metric_families
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(m.text()) for s in f.samples}


def sample(samples, name, **labels):
    got = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(got) == 1, (name, labels, got)
    return got[0]


def swap_total() -> int:
    for line in read(Path("/proc/meminfo")).splitlines():
        if line.startswith("SwapTotal:"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------- memory
def test_memory_high_and_oom_kill_in_usage_show_watcher_and_metrics(guest, watched, tmp_path,
                                                                   caplog):
    if swap_total():
        pytest.skip("swap is on: the allocation would swap instead of being OOM-killed")
    caplog.set_level(logging.INFO, logger="cgctl")
    m, events = watched
    gg = groups(guest)
    live.set_live(Router(guest.host), gg, P.parse_assignments(["soft_limit=16M",
                                                               "hard_limit=48M"]))
    lv = Path(guest.libvirt)
    # past memory.high (16M): dd's 32 MiB buffer is throttled and reclaimed, not killed
    p = start_in(lv, ["dd", "if=/dev/zero", "of=/dev/null", "bs=32M", "count=1", "status=none"])
    assert p.wait(300) == 0
    high = usage.memory(gg)["events"]
    assert high["high"] > 0 and high["oom_kill"] == 0, high
    # past memory.max (48M): a 96 MiB buffer is OOM-killed
    p = start_in(lv, ["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1", "status=none"])
    assert p.wait(300) == -9
    wait_for(lambda: (guest.name, "oom_kill", 1) in events, what="the watcher's OOM kill")

    # usage.py: memory.events of the machine group (hierarchical: the kill was in libvirt/)
    mem = usage.memory(gg)
    ev = keyed(Path(guest.scope) / "memory.events")
    assert mem["events"] == {k: ev[k] for k in ("high", "max", "oom", "oom_kill")}
    assert ev["oom_kill"] == 1 and ev["oom"] >= 1 and ev["max"] >= 1
    assert ev["high"] >= high["high"]
    assert keyed(Path(guest.scope) / "memory.events.local")["oom_kill"] == 0  # it was below
    # memory.peak (5.19+; Debian's 6.1 has it): at least the limit was reached
    if os.path.exists(os.path.join(guest.scope, "memory.peak")):
        assert mem["peak"] >= 40 * MiB
    else:
        assert mem["peak"] is None
    assert mem["swap"] == int(read(Path(guest.scope) / "memory.swap.current")) == 0
    assert mem["current"] < 48 * MiB and mem["kernel"] is not None

    # the watcher's line names the guest and the limit in force
    assert (f"guest={guest.name} OOM kill: 1 process(es) killed in its memory group (limit "
            "48M; 1 OOM kill(s) since it started)") in caplog.text
    # metrics: the kernel's counters, the logged event, PSI
    s = scrape(m)
    who = {"guest": guest.name, "uuid": guest.uuid, "driver": "qemu"}
    assert sample(s, "cgctl_oom_events_logged_total", event="oom_kill", **who) == 1
    assert sample(s, "cgctl_memory_events_total", event="oom_kill", **who) == 1
    assert sample(s, "cgctl_memory_events_total", event="high", **who) >= high["high"]
    assert sample(s, "cgctl_limit", param="hard_limit", source="live", **who) == 48 * MiB
    assert sample(s, "cgctl_pressure_seconds_total", resource="memory", kind="some", **who) > 0

    # show, as a process: the same figures, and the pressure the throttling caused
    out = json.loads(cgctl(guest, tmp_path, "show", guest.name, "--json"))
    u = out["usage"]
    assert u["memory"]["events"]["oom_kill"] == 1
    assert u["memory"]["events"]["high"] >= high["high"]
    assert u["pressure"]["memory"]["some"]["total"] > 0
    assert set(u["pressure"]) == {"cpu", "memory", "io"}
    assert u["accounting"]["memory"] == guest.scope
    text = cgctl(guest, tmp_path, "show", guest.name)
    assert "memory events: high " in text and ", oom_kill 1" in text
    lines = [ln for ln in m.text().splitlines() if guest.name in ln and any(
        w in ln for w in ("memory", "oom", "pressure"))]
    print(f"\nv2 memory: events {ev}, peak {mem['peak']}, "
          f"memory.pressure {u['pressure']['memory']}\n$ cgctl show {guest.name}\n{text}"
          + "".join(r.getMessage() + "\n" for r in caplog.records if "OOM" in r.getMessage())
          + "\n".join(lines))


# ---------------------------------------------------------------------- cpu
def test_busy_loop_under_cpu_max_shows_throttling(guest, tmp_path):
    gg = groups(guest)
    live.set_live(Router(guest.host), gg, P.parse_assignments(["global_quota=10%"]))
    busy = start_in(Path(guest.libvirt), BUSY)
    try:
        rows = json.loads(cgctl(guest, tmp_path, "top", "--once", "--json", "--interval", "2"))
    finally:
        busy.kill()
        busy.wait(30)
    (row,) = rows
    assert row["guest"] == guest.name
    assert row["throttled_percent"] > 0 and row["cpu_percent"] > 0, row
    cpu = usage.cpu(gg, guest.host)
    stat = keyed(Path(guest.libvirt) / "cpu.stat")   # where global_quota is
    assert stat["nr_throttled"] > 0 and stat["throttled_usec"] > 0
    # summed over scope, libvirt, emulator, vcpu0: only libvirt has a quota here
    assert (cpu["nr_throttled"], cpu["throttled_usec"]) == (stat["nr_throttled"],
                                                            stat["throttled_usec"])
    assert cpu["usage_usec"] >= keyed(Path(guest.libvirt) / "cpu.stat")["usage_usec"]
    p = usage.pressure(gg)
    assert p["cpu"]["some"]["total"] > 0    # throttled but runnable: a CPU stall
    text = cgctl(guest, tmp_path, "show", guest.name)
    assert f"throttled in {cpu['nr_throttled']} of" in text
    print(f"\nv2 cpu: {cpu}; top {row}\n$ cgctl show {guest.name}\n{text}")


# ---------------------------------------------------------------------- io
def test_io_through_io_max_counted_per_device(guest, watched, tmp_path, scratch_disk):
    """A --live-only io.max (no config): show names the disk by MAJ:MIN and its /dev node."""
    dev, mm = scratch_disk
    m, _ = watched
    gg = groups(guest)
    live.set_live(Router(guest.host), gg,
                  P.parse_assignments([f"device_write_bytes_sec={dev},1M"]), devnums={dev: mm})
    before = {r["majmin"]: r for r in usage.io(gg)}.get(mm, {"wbytes": 0, "wios": 0})
    count = 192   # 192 x 64 KiB = 12 MiB: about 12 s at 1 MiB/s, while top samples
    p = start_in(Path(guest.libvirt), ["dd", "if=/dev/zero", f"of={dev}", "oflag=direct",
                                       "bs=64k", f"count={count}", "status=none"])
    try:
        rows = json.loads(cgctl(guest, tmp_path, "top", "--once", "--io", "--json",
                                "--interval", "2"))
        running = p.poll() is None
        top_text = cgctl(guest, tmp_path, "top", "--once", "--io", "--interval", "1")
        assert p.wait(300) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
    (top,) = [d for d in rows[0]["io"] if d["majmin"] == mm]
    assert (top["device"], top["node"]) == (None, dev)
    assert top["write_bytes_per_s"] > 0 and top["write_ops_per_s"] > 0
    if running:   # the rate over top's 2 s, all inside dd's run: the throttle's
        assert top["write_bytes_per_s"] <= 1.5 * MiB
    (row,) = [r for r in usage.io(gg, node_of=lambda x: dev if x == mm else None)
              if r["majmin"] == mm]
    assert row["wbytes"] - before["wbytes"] >= count * 64 * 1024
    assert row["wios"] - before["wios"] >= count
    assert row["wbytes"] == int(dict(kv.split("=") for kv in next(
        line for line in read(Path(guest.scope) / "io.stat").splitlines()
        if line.startswith(mm + " ")).split()[1:])["wbytes"])
    out = json.loads(cgctl(guest, tmp_path, "show", guest.name, "--json"))
    (io,) = [r for r in out["usage"]["io"] if r["majmin"] == mm]
    assert (io["device"], io["node"]) == (None, dev)   # the config names no device
    assert io["wbytes"] >= row["wbytes"]
    (d,) = next(r for r in out["params"] if r["param"] == "device_write_bytes_sec")["devices"]
    assert (d["device"], d["majmin"], d["node"], d["live"]) == (None, mm, dev, "1M")
    text = cgctl(guest, tmp_path, "show", guest.name)
    assert f"{mm} ({dev})=1M" in text and f"io {mm} ({dev}): " in text
    s = scrape(m)
    assert sample(s, "cgctl_io_bytes_total", guest=guest.name, device=os.path.basename(dev),
                  direction="write") >= row["wbytes"]
    print(f"\nv2 io: {io}; top --io {top}\n$ cgctl top --once --io --interval 1\n{top_text}"
          f"$ cgctl show {guest.name}\n{text}")

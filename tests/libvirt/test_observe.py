"""Usage, ``cgctl top``, metrics and the OOM log on real guests (real libvirtd, real v1 kernel).

The workloads are processes this test starts and moves into the guest's groups (only its own
processes; killed by PID at the end, also when the test fails): a memory hog in an LXC
container's memory group (limited to 64 MiB by libvirt, no swap on this machine) that the
kernel's OOM killer kills, a busy loop in its CPU group under a 10 % quota, and direct writes
(dd oflag=direct) to a loop device of the test's, in its blkio group under a 1 MiB/s throttle.
Run under the libvirt lock: flock /tmp/cgctl-libvirt.lock .venv/bin/python -m pytest ...
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from cgctl.cgroup import hierarchy
from cgctl.cgroup.placement import groups_for_pid
from tests.clikit import cgctl
from tests.daemonkit import Subprocess, wait_for

TIMEOUT = 60.0
HOG = ("import sys; sys.stdin.readline(); b = []\n"
       "while True: b.append(b'x' * (8 << 20))\n")  # written pages: really charged
BUSY = "import sys; sys.stdin.readline()\nwhile True: pass\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def workload():
    """``workload(code, {group dir: ...})``: a child of this test, moved into those groups
    (cgroup.procs), then told to go. Killed by PID at the end."""
    started = []

    def start(code, dirs):
        p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
        started.append(p)
        for d in dirs:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(p.pid))
        p.stdin.write(b"go\n")
        p.stdin.flush()
        return p
    yield start
    for p in started:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(10)


def groups(guest):
    return groups_for_pid(guest.pid, hierarchy.detect(), guest=guest.name, driver=guest.driver)


def show(journal, guest):
    return json.loads(cgctl(journal, "show", guest.name, "--json").stdout)


def test_oom_kill_shows_in_show_top_metrics_and_the_service_log(make_guest, libvirt_sandbox,
                                                                 tmp_path, workload):
    guest = make_guest("lxc")
    journal = tmp_path / "journal.db"
    cgctl(journal, "set", guest.name, "hard_limit=64M", "--live")
    port = free_port()
    conf = tmp_path / "cgctl.toml"
    conf.write_text(f'metrics_listen = "127.0.0.1:{port}"\n')
    svc = Subprocess(["--journal", str(journal), "--config-file", str(conf)],
                     log_path=tmp_path / "daemon.log")
    try:
        svc.wait_log("ready:")
        before = show(journal, guest)["usage"]["memory"]["events"]["oom_kill"]
        hog = workload(HOG, [groups(guest).machine_dir("memory")])
        assert hog.wait(TIMEOUT) == -signal.SIGKILL  # the kernel's OOM killer
        # the service's log, from memory.oom_control's eventfd (v1)
        svc.wait_log(f"guest={guest.name} OOM kill: ", timeout=TIMEOUT)
        # show
        mem = show(journal, guest)["usage"]["memory"]
        assert mem["events"]["oom_kill"] >= before + 1
        assert mem["peak"] >= 60 * 2**20 and mem["events"]["max"] > 0
        human = cgctl(journal, "show", guest.name).stdout
        assert "oom_kill" in human and "hard_limit" in human
        # top --once --json
        rows = json.loads(cgctl(journal, "top", "--once", "--json", "--interval", "0.2").stdout)
        row = next(r for r in rows if r["guest"] == guest.name)
        assert row["oom_kills"] >= before + 1 and row["mem_limit_bytes"] == 64 * 2**20
        # the metrics, parsed with the Prometheus text-format parser
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            fams = {f.name: f for f in text_string_to_metric_families(r.read().decode())}

        def value(fam, **labels):
            return [s.value for s in fams[fam].samples
                    if all(s.labels.get(k) == v for k, v in labels.items())]
        assert value("cgctl_memory_events", guest=guest.name, event="oom_kill")[0] >= before + 1
        assert value("cgctl_oom_events_logged", guest=guest.name, event="oom_kill")[0] >= 1
        assert value("cgctl_limit", guest=guest.name, param="hard_limit",
                     source="live") == [64 * 2**20]
        assert value("cgctl_journal_bytes")[0] > 0
    finally:
        code = svc.stop()
        print(svc.log())
    assert code == 0


def test_busy_loop_under_a_quota_shows_throttling(make_guest, libvirt_sandbox, tmp_path,
                                                  workload):
    guest = make_guest("lxc")
    journal = tmp_path / "journal.db"
    cgctl(journal, "set", guest.name, "global_period=100000", "global_quota=10000", "--live")
    g = groups(guest)
    from cgctl.cgroup import usage  # cpuacct is its own v1 hierarchy here: the guest is in both
    acct = usage._v1_sibling(g, hierarchy.detect(), "cpu", "cpuacct")
    workload(BUSY, [g.libvirt_dir("cpu")] + ([acct] if acct else []))

    def throttled():
        cpu = show(journal, guest)["usage"]["cpu"]
        return cpu if (cpu["nr_throttled"] or 0) >= 5 else None
    cpu = wait_for(throttled, TIMEOUT, "throttled periods in show --json")
    assert cpu["throttled_usec"] > 0 and cpu["usage_usec"] > 0
    rows = json.loads(cgctl(journal, "top", "--once", "--json", "--interval", "1").stdout)
    row = next(r for r in rows if r["guest"] == guest.name)
    assert row["throttled_percent"] > 50 and 0 < row["cpu_percent"] <= 20  # 10 % of a CPU


MiB = 1 << 20


@pytest.fixture
def loop_device(tmp_path):
    """A loop device on a 16 MiB file in tmp_path; detached at the end, also on failure."""
    if subprocess.run(["sh", "-c", "command -v losetup"], capture_output=True).returncode:
        pytest.skip("losetup is not installed")
    img = str(tmp_path / "disk.img")
    with open(img, "wb") as f:
        f.truncate(16 * MiB)
    try:
        yield subprocess.run(["losetup", "--find", "--show", img], check=True,
                             capture_output=True, text=True).stdout.strip()
    finally:   # whatever is still attached to our file
        out = subprocess.run(["losetup", "-j", img], capture_output=True, text=True).stdout
        for line in out.splitlines():
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]])


def test_io_under_a_throttle_shows_its_rate(make_guest, libvirt_sandbox, tmp_path, loop_device):
    """Direct writes through a 1 MiB/s throttle: show counts them per device under the
    operator's name, top's rate stays near the limit, and the kernel took at least
    bytes / limit to let them through (a lower bound a loaded machine can only lengthen)."""
    dev = loop_device
    st = os.stat(dev)
    majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    guest = make_guest("lxc")
    journal = tmp_path / "journal.db"
    # --perm: the journal keeps the operator's name, which is what show names rows by (a
    # --live-only per-device setting is shown as MAJ:MIN (/dev/loopN))
    cgctl(journal, "set", guest.name, f"device_write_bytes_sec={dev},1M", "--perm")
    blkio = groups(guest).libvirt_dir("io")   # where the throttle is written

    def row():
        rows = [r for r in show(journal, guest)["usage"]["io"] if r["majmin"] == majmin]
        return rows[0] if rows else {"wbytes": 0, "wios": 0}
    before = row()
    count = 128   # 128 x 64 KiB = 8 MiB: about 8 s at 1 MiB/s
    # the test moves sh's PID into the blkio group, then sh execs dd (the same PID)
    p = subprocess.Popen(["sh", "-c", f"read go && exec dd if=/dev/zero of={dev} "
                                      f"oflag=direct bs=64k count={count} status=none"],
                         stdin=subprocess.PIPE)
    try:
        with open(os.path.join(blkio, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
        t0 = time.monotonic()
        p.stdin.write(b"go\n")
        p.stdin.flush()
        # top while dd runs: two samples 2 s apart
        rows = json.loads(cgctl(journal, "top", "--once", "--json", "--interval", "2").stdout)
        top = next(r for r in rows if r["guest"] == guest.name)
        running = p.poll() is None
        assert p.wait(TIMEOUT) == 0
        elapsed = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    after = row()
    written = count * 64 * 1024
    # show --json: the kernel's per-device counters, under the operator's name
    assert after["device"] == dev
    assert after["wbytes"] - before["wbytes"] >= written
    assert after["wios"] - before["wios"] >= count
    human = cgctl(journal, "show", guest.name).stdout
    assert dev in human
    # the kernel let 8 MiB through a 1 MiB/s throttle: never faster than the limit plus one
    # slice's burst (a busy machine only makes it slower)
    assert elapsed > (written - MiB) / MiB
    # top: the rate over its interval, while dd was still writing
    assert top["write_bytes"] >= before["wbytes"]
    if running:
        assert 0 < top["write_bytes_per_s"] <= 1.5 * MiB
    print(f"\n{written // MiB} MiB through a 1 MiB/s throttle in {elapsed:.1f} s; "
          f"top: {top['write_bytes_per_s']} B/s; show: {after}")

"""Usage, ``cgctl top``, metrics and the OOM log on real guests (real libvirtd, real v1 kernel).

The workloads are processes this test starts and moves into the guest's groups (only its own
processes; killed by PID at the end, also when the test fails): a memory hog in an LXC
container's memory group (limited to 64 MiB by libvirt, no swap on this machine) that the
kernel's OOM killer kills, and a busy loop in its CPU group under a 10 % quota.
Run under the libvirt lock: flock /tmp/cgctl-libvirt.lock .venv/bin/python -m pytest ...
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
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

"""cgctl/cgroup/usage.py and the usage in ``cgctl show`` on the faked v1 and v2 kernels
(tests/fakecg.py): each figure read from the file the kernel keeps it in, hierarchical
figures from the machine group only, throttling summed over the quota groups, device names."""

from __future__ import annotations

import json
import os

import pytest

from cgctl.cgroup import usage
from cgctl.cgroup.placement import groups_for_pid
from cgctl.cli import main as cli
from cgctl.cli import top  # imported before pyfakefs patches: its os must be the real module
from tests import fakecg

UUID = "d30eb5b3-72ba-4af9-8591-0ef552da6d8c"
M = 2**20


def put(fs, path, text):
    fakecg._write(fs, path, text)


def show(fake_host):
    rc, out, err = cli.run_captured(["--journal", fake_host.journal_path, "show", "web1",
                                     "--json"])
    assert rc == 0, err
    return json.loads(out)


@pytest.fixture
def v1vm(fake_host):
    m = fake_host.running("web1", UUID)
    fs = fake_host.fs
    mem = m.machine["memory"]
    put(fs, f"{mem}/memory.usage_in_bytes", f"{300 * M}\n")
    put(fs, f"{mem}/memory.max_usage_in_bytes", f"{400 * M}\n")
    put(fs, f"{mem}/memory.memsw.usage_in_bytes", f"{310 * M}\n")
    put(fs, f"{mem}/memory.failcnt", "7\n")
    put(fs, f"{mem}/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    # local lines differ from the hierarchical total_* ones: the total_* are the guest's
    put(fs, f"{mem}/memory.stat", f"cache 1\nrss 1\nswap 0\ntotal_cache {100 * M}\n"
                                  f"total_rss {190 * M}\ntotal_swap {10 * M}\n")
    acct = m.machine["cpuacct"]
    put(fs, f"{acct}/cpuacct.usage", "5000000000\n")  # ns
    put(fs, f"{acct}/cpuacct.stat", "user 300\nsystem 100\n")  # USER_HZ ticks
    # throttling is per group: the machine group and each vcpu/emulator group count their own
    put(fs, f"{m.machine['cpu']}/cpu.stat",
        "nr_periods 10\nnr_throttled 4\nthrottled_time 2000000\n")
    put(fs, f"{m.vcpus['cpu'][0]}/cpu.stat",
        "nr_periods 20\nnr_throttled 5\nthrottled_time 3000000\n")
    put(fs, f"{m.machine['blkio']}/blkio.throttle.io_service_bytes",
        "254:0 Read 4096\n254:0 Write 8192\n254:0 Sync 0\n254:0 Total 12288\nTotal 12288\n")
    put(fs, f"{m.machine['blkio']}/blkio.throttle.io_serviced",
        "254:0 Read 1\n254:0 Write 2\n254:0 Total 3\nTotal 3\n")
    return m


def test_v1_usage_figures(fake_host, v1vm):
    u = show(fake_host)["usage"]
    assert u["memory"] == {"current": 300 * M, "peak": 400 * M, "swap": 10 * M,
                           "anon": 190 * M, "file": 100 * M, "kernel": None,
                           "events": {"high": None, "max": 7, "oom": None, "oom_kill": 2}}
    tick = 1_000_000 // os.sysconf("SC_CLK_TCK")
    assert u["cpu"] == {"usage_usec": 5_000_000, "user_usec": 300 * tick,
                        "system_usec": 100 * tick, "nr_periods": 30, "nr_throttled": 9,
                        "throttled_usec": 5000}
    assert u["io"] == [{"majmin": "254:0", "device": None, "node": None, "rbytes": 4096,
                        "wbytes": 8192, "rios": 1, "wios": 2}]
    assert u["pressure"] is None  # no PSI per group on v1
    assert v1vm.vcpus["cpu"][0] in u["accounting"]["throttling"]


def test_v1_show_prints_usage_beside_limits(fake_host, v1vm):
    rc, out, err = cli.run_captured(["--journal", fake_host.journal_path, "show", "web1"])
    assert rc == 0, err
    hard = next(line for line in out.splitlines() if line.startswith("hard_limit"))
    assert "300.0M (peak 400.0M)" in hard
    assert "USED" in out.splitlines()[1]
    assert "memory events: high -, max 7, oom -, oom_kill 2" in out
    assert "throttled in 9 of 30 periods" in out


def test_v1_device_not_in_config_is_majmin_with_its_node(fake_host, v1vm):
    """No config names 254:0: show gives the kernel's MAJ:MIN and the /dev node it resolves
    to, never a name the operator did not write."""
    fake_host.fs.create_file("/sys/dev/block/254:0/uevent",
                             contents="MAJOR=254\nMINOR=0\nDEVNAME=vda\n")
    fake_host.fs.create_file("/dev/vda")
    (row,) = show(fake_host)["usage"]["io"]
    assert (row["majmin"], row["device"], row["node"]) == ("254:0", None, "/dev/vda")
    fake_host.fs.remove("/dev/vda")  # a number with no node: the number alone
    (row,) = show(fake_host)["usage"]["io"]
    assert (row["device"], row["node"]) == (None, None)


def _v2_disk(fake_host_v2, m, monkeypatch):
    from cgctl.host import devices
    fs = fake_host_v2.fs
    fs.create_file("/sys/dev/block/254:0/uevent", contents="MAJOR=254\nMINOR=0\nDEVNAME=vda\n")
    fs.create_file("/dev/vda")
    fs.create_file("/dev/disk/by-id/virtio-data")
    # the operator's names for the disk (udev would say so on a real host)
    monkeypatch.setattr(devices, "resolve", lambda name, **kw: "254:0")
    put(fs, f"{m.libvirt}/io.max", "254:0 rbps=max wbps=1048576 riops=max wiops=max\n")
    put(fs, f"{m.machine}/io.stat", "254:0 rbytes=0 wbytes=8192 rios=0 wios=2 dbytes=0 dios=0\n")


def test_live_only_device_value_is_shown_as_majmin_and_node(fake_host_v2, monkeypatch):
    """A per-device limit set with --live only (nothing in the config): the parameter's row
    and the usage rows name the kernel's 254:0 with /dev/vda beside it."""
    m = fake_host_v2.running("web1", UUID)
    _v2_disk(fake_host_v2, m, monkeypatch)
    out = show(fake_host_v2)
    (dev,) = next(r for r in out["params"] if r["param"] == "device_write_bytes_sec")["devices"]
    assert (dev["device"], dev["majmin"], dev["node"]) == (None, "254:0", "/dev/vda")
    (io,) = out["usage"]["io"]
    assert (io["device"], io["node"], io["wbytes"]) == (None, "/dev/vda", 8192)
    rc, text, err = cli.run_captured(["--journal", fake_host_v2.journal_path, "show", "web1"])
    assert rc == 0, err
    assert "254:0 (/dev/vda)=1M" in text
    assert "io 254:0 (/dev/vda): read 0B in 0 ops, written 8.0K in 2 ops" in text


def test_device_the_config_names_is_shown_under_the_operators_name(fake_host_v2, monkeypatch):
    m = fake_host_v2.running("web1", UUID)
    _v2_disk(fake_host_v2, m, monkeypatch)
    rc, _, err = cli.run_captured(["--journal", fake_host_v2.journal_path, "set", "web1",
                                   "device_write_bytes_sec=/dev/disk/by-id/virtio-data,1M",
                                   "--config"])
    assert rc == 0, err
    out = show(fake_host_v2)
    (dev,) = next(r for r in out["params"] if r["param"] == "device_write_bytes_sec")["devices"]
    assert (dev["device"], dev["node"]) == ("/dev/disk/by-id/virtio-data", None)
    (io,) = out["usage"]["io"]
    assert io["device"] == "/dev/disk/by-id/virtio-data"
    rc, text, err = cli.run_captured(["--journal", fake_host_v2.journal_path, "show", "web1"])
    assert "io /dev/disk/by-id/virtio-data (254:0): read 0B" in text


def test_v2_usage_figures(fake_host_v2):
    m = fake_host_v2.running("web1", UUID)
    fs = fake_host_v2.fs
    put(fs, f"{m.machine}/memory.current", f"{300 * M}\n")
    put(fs, f"{m.machine}/memory.peak", f"{400 * M}\n")
    put(fs, f"{m.machine}/memory.swap.current", f"{10 * M}\n")
    put(fs, f"{m.machine}/memory.stat", f"anon {190 * M}\nfile {100 * M}\nkernel {5 * M}\n")
    put(fs, f"{m.machine}/memory.events", "low 0\nhigh 3\nmax 9\noom 1\noom_kill 1\n")
    # a child's figures are inside the machine group's already: never added again
    put(fs, f"{m.libvirt}/memory.current", f"{299 * M}\n")
    put(fs, f"{m.machine}/cpu.stat", "usage_usec 7000\nuser_usec 5000\nsystem_usec 2000\n"
                                     "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n")
    put(fs, f"{m.libvirt}/cpu.stat", "usage_usec 6000\nnr_periods 50\nnr_throttled 20\n"
                                     "throttled_usec 900\n")
    put(fs, f"{m.machine}/io.stat",
        "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n")
    put(fs, f"{m.machine}/memory.pressure",
        "some avg10=1.50 avg60=0.20 avg300=0.00 total=12345\n"
        "full avg10=0.50 avg60=0.10 avg300=0.00 total=2345\n")
    u = show(fake_host_v2)["usage"]
    assert u["memory"] == {"current": 300 * M, "peak": 400 * M, "swap": 10 * M,
                           "anon": 190 * M, "file": 100 * M, "kernel": 5 * M,
                           "events": {"high": 3, "max": 9, "oom": 1, "oom_kill": 1}}
    assert u["cpu"] == {"usage_usec": 7000, "user_usec": 5000, "system_usec": 2000,
                        "nr_periods": 50, "nr_throttled": 20, "throttled_usec": 900}
    assert u["io"][0]["rbytes"] == 4096 and u["io"][0]["wios"] == 2
    assert u["pressure"]["memory"]["some"] == {"avg10": 1.5, "avg60": 0.2, "avg300": 0.0,
                                               "total": 12345}
    assert set(u["pressure"]) == {"cpu", "memory", "io"}


def test_v2_without_peak_or_swap_is_none_not_zero(fake_host_v2):
    m = fake_host_v2.running("web1", UUID)
    fake_host_v2.fs.remove(f"{m.machine}/memory.peak")
    fake_host_v2.fs.remove(f"{m.machine}/memory.swap.current")
    u = show(fake_host_v2)["usage"]
    assert u["memory"]["peak"] is None and u["memory"]["swap"] is None


def test_stopped_guest_has_no_usage(fake_host):
    fake_host.stopped_guest("off1", "2a29237e-15bb-4467-a36f-07f04fc1adcf")
    rc, out, err = cli.run_captured(["--journal", fake_host.journal_path, "show", "off1",
                                     "--json"])
    assert rc == 0, err
    assert json.loads(out)["usage"] is None


def test_parsers():
    assert usage.parse_psi("") is None
    assert usage.parse_io_stat("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6\n") == \
        {"8:0": {"rbytes": 1, "wbytes": 2, "rios": 3, "wios": 4}}
    assert usage.parse_blkio("8:0 Read 10\n8:0 Write 20\nTotal 30\n", "8:0 Read 1\n") == \
        {"8:0": {"rbytes": 10, "wbytes": 20, "rios": 1}}


# --------------------------------------------------------------------------- cgctl top

def test_top_rates_from_two_samples(fake_host, v1vm, monkeypatch):
    """CPU %, throttled % and IO/s come from the difference of two samples."""

    clock = iter([100.0, 102.0])
    s = top.Sampler(fake_host.host(), os.environ.get("CGCTL_LIBVIRT_RUN_DIR", "/run/libvirt"),
                    clock=lambda: next(clock))
    first = s.sample()
    assert [r["guest"] for r in first] == ["web1"] and first[0]["cpu_percent"] is None
    fs, acct = fake_host.fs, v1vm.machine["cpuacct"]
    put(fs, f"{acct}/cpuacct.usage", str(5_000_000_000 + 1_000_000_000) + "\n")  # +1 s of CPU
    put(fs, f"{v1vm.machine['cpu']}/cpu.stat",
        "nr_periods 30\nnr_throttled 14\nthrottled_time 2000000\n")  # +20 periods, +10 thr.
    put(fs, f"{v1vm.machine['blkio']}/blkio.throttle.io_service_bytes",
        "254:0 Read 4096\n254:0 Write 1056768\n")  # +1 MiB written
    put(fs, f"{v1vm.machine['memory']}/memory.limit_in_bytes", f"{600 * M}\n")
    (row,) = s.sample()
    assert row["cpu_percent"] == 50.0  # 1 s of CPU in 2 s
    assert row["throttled_percent"] == 50.0
    assert row["write_bytes_per_s"] == 512 * 1024 and row["read_bytes_per_s"] == 0
    assert row["mem_bytes"] == 300 * M and row["mem_limit_bytes"] == 600 * M
    assert row["mem_percent"] == 50.0 and row["oom_kills"] == 2
    text = "\n".join(top.render([row], "cpu"))
    assert "web1" in text and "50.0" in text and "512.0K" in text


def test_top_once_json_and_sort(fake_host):
    fake_host.running("web1", UUID, id=1)
    m2 = fake_host.running("db2", "0d5bd3d4-1a51-4a3c-8b0e-0fa1a1b2c3d4", id=2)
    put(fake_host.fs, f"{m2.machine['memory']}/memory.usage_in_bytes", f"{900 * M}\n")
    rc, out, err = cli.run_captured(["--journal", fake_host.journal_path, "top", "--once",
                                     "--json", "--interval", "0.01", "--sort", "mem"])
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["guest"] for r in rows] == ["db2", "web1"]
    assert rows[0]["mem_bytes"] == 900 * M and rows[0]["cpu_percent"] == 0.0
    rc, out, err = cli.run_captured(["--journal", fake_host.journal_path, "top", "--once",
                                     "--interval", "0.01", "--sort", "name"])
    assert rc == 0, err
    assert out.splitlines()[0].split()[:3] == ["GUEST", "DRIVER", "MEM"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["db2", "web1"]


def test_top_bad_interval_is_a_usage_error(fake_host):
    rc, out, err = cli.run_captured(["top", "--once", "--interval", "0"])
    assert rc == 2 and err.startswith("cgctl: error: --interval") and "Traceback" not in err


def test_top_io_per_device_rates_under_the_operators_names(fake_host_v2, monkeypatch):
    """--io: one entry per device of each guest, named as show names it (the config's name,
    else MAJ:MIN and /dev node), rates from two samples; the names are asked once per guest
    process, not at every refresh."""
    from cgctl.core.controller import Controller
    m = fake_host_v2.running("web1", UUID)
    _v2_disk(fake_host_v2, m, monkeypatch)
    fs = fake_host_v2.fs
    fs.create_file("/sys/dev/block/8:16/uevent", contents="MAJOR=8\nMINOR=16\nDEVNAME=sdb\n")
    fs.create_file("/dev/sdb")
    rc, _, err = cli.run_captured(["--journal", fake_host_v2.journal_path, "set", "web1",
                                   "device_write_bytes_sec=/dev/disk/by-id/virtio-data,1M",
                                   "--config"])
    assert rc == 0, err
    ctl = Controller(journal_path=fake_host_v2.journal_path, host=fake_host_v2.host())
    asked = []

    def names_of(g):
        asked.append(g.name)
        return ctl.device_names(g, [d for (_, d) in ctl.effective(g.uuid).config])
    clock = iter([100.0, 102.0, 104.0])
    s = top.Sampler(fake_host_v2.host(), os.environ.get("CGCTL_LIBVIRT_RUN_DIR",
                                                        "/run/libvirt"),
                    clock=lambda: next(clock), names_of=names_of)
    (first,) = s.sample()
    assert [d["write_bytes_per_s"] for d in first["io"]] == [None]
    put(fs, f"{m.machine}/io.stat",
        "8:16 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n"
        f"254:0 rbytes=0 wbytes={8192 + 2 * M} rios=0 wios=42 dbytes=0 dios=0\n")
    (row,) = s.sample()
    by = {d["majmin"]: d for d in row["io"]}
    vda, sdb = by["254:0"], by["8:16"]
    assert (vda["device"], vda["node"], vda["write_bytes_per_s"], vda["write_ops_per_s"]) == \
        ("/dev/disk/by-id/virtio-data", "/dev/vda", float(M), 20.0)
    assert (sdb["majmin"], sdb["device"], sdb["node"]) == ("8:16", None, "/dev/sdb")
    assert sdb["read_bytes_per_s"] is None  # first seen now: no rate yet
    s.sample()
    assert asked == ["web1"]
    ctl.close()
    text = "\n".join(top.render_io([row]))
    assert text.splitlines()[0].split() == ["GUEST", "DEVICE", "READ/s", "WRITE/s", "READS/s",
                                            "WRITES/s"]
    assert "web1   /dev/disk/by-id/virtio-data" in text and "1.0M" in text
    assert "8:16 (/dev/sdb)" in text
    rc, out, err = cli.run_captured(["--journal", fake_host_v2.journal_path, "top", "--once",
                                     "--io", "--json", "--interval", "0.01"])
    assert rc == 0, err
    (r,) = json.loads(out)
    assert {d["device"] or d["node"] for d in r["io"]} == {"/dev/disk/by-id/virtio-data",
                                                           "/dev/sdb"}
    rc, out, err = cli.run_captured(["--journal", fake_host_v2.journal_path, "top", "--once",
                                     "--io", "--interval", "0.01"])
    assert rc == 0 and "/dev/disk/by-id/virtio-data" in out, err

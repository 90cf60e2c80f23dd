"""cgctl/service/metrics.py: the collector on the faked v1 kernel, scraped over real HTTP and
parsed with prometheus_client's own text-format parser; the textfile mode; the config keys;
the health counters fed by the real service loop (test:///default driver, fake controller)."""

from __future__ import annotations

import math
import socket
import threading
import urllib.request

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from cgctl import config as C  # noqa: E402
from cgctl.core.controller import CONFIG, Controller  # noqa: E402
from cgctl.errors import UsageError  # noqa: E402
from cgctl.service import metrics  # noqa: E402
from tests import fakecg  # noqa: E402

UUID = "d30eb5b3-72ba-4af9-8591-0ef552da6d8c"
M = 2**20


def samples(text):
    """{(metric sample name, frozenset(labels)): value}"""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def one(found, name, **labels):
    hits = [v for (n, ls), v in found.items()
            if n == name and set(labels.items()) <= set(ls)]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def guest(fake_host):
    m = fake_host.running("web1", UUID)
    fs = fake_host.fs
    fakecg._write(fs, f"{m.machine['memory']}/memory.usage_in_bytes", f"{300 * M}\n")
    fakecg._write(fs, f"{m.machine['memory']}/memory.oom_control",
                  "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    fakecg._write(fs, f"{m.machine['cpu']}/cpu.stat",
                  "nr_periods 10\nnr_throttled 4\nthrottled_time 2000000\n")
    fakecg._write(fs, f"{m.machine['blkio']}/blkio.throttle.io_service_bytes",
                  "254:0 Read 4096\n254:0 Write 8192\n")
    ctl = Controller(journal_path=fake_host.journal_path, host=fake_host.host())
    ctl.set("web1", ["hard_limit=1G", "cpu_shares=512"], CONFIG)
    ctl.close()
    return m


def test_scraped_endpoint_parses_and_holds_the_guest(fake_host, guest):
    m = metrics.Metrics(fake_host.journal_path, host=fake_host.host())
    m.listen(f"127.0.0.1:{free_port()}")
    try:
        with urllib.request.urlopen(f"http://{m.address}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        m.stop()
    found = samples(text)
    g = {"guest": "web1", "uuid": UUID, "driver": "qemu"}
    assert one(found, "cgctl_guest_info", **g) == 1
    assert one(found, "cgctl_memory_usage_bytes", **g) == 300 * M
    assert one(found, "cgctl_memory_events_total", event="oom_kill", **g) == 3
    assert one(found, "cgctl_cpu_throttled_periods_total", **g) == 4
    assert one(found, "cgctl_cpu_throttled_seconds_total", **g) == 0.002
    assert one(found, "cgctl_io_bytes_total", direction="write", **g) == 8192
    # configured (journal) and in force (cgroup: nothing applied yet) side by side
    assert one(found, "cgctl_limit", param="hard_limit", source="config", **g) == 2**30
    assert one(found, "cgctl_limit", param="hard_limit", source="live", **g) == math.inf
    assert one(found, "cgctl_limit", param="cpu_shares", source="live", **g) == 1024
    # (its value is checked on real files in tests/libvirt/test_observe.py: pyfakefs here)
    assert ("cgctl_journal_bytes", frozenset()) in found
    assert one(found, "cgctl_applies_total", source="event") == 0
    # bounded labels: nothing beyond guest, uuid, driver and a fixed set per family
    allowed = {"guest", "uuid", "driver", "param", "source", "kind", "event", "device",
               "direction", "resource", "le"}
    assert all(set(dict(ls)) <= allowed for (_, ls) in found)


def test_textfile_mode_writes_the_same_text(fake_host, guest, tmp_path):
    m = metrics.Metrics(fake_host.journal_path, host=fake_host.host())
    path = "/var/lib/node_exporter/cgctl.prom"
    fake_host.fs.create_dir("/var/lib/node_exporter")
    m.write_textfile(path)
    with open(path) as f:
        found = samples(f.read())
    assert one(found, "cgctl_memory_usage_bytes", guest="web1") == 300 * M


def test_config_keys(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('metrics_listen = "127.0.0.1:9613"\n'
                    'metrics_textfile = "/var/lib/node_exporter/cgctl.prom"\n')
    cfg = C.load_config(str(good))
    assert cfg.metrics_listen == "127.0.0.1:9613"
    assert C.Config().metrics_listen == "" and C.Config().metrics_textfile == ""  # off
    for line in ('metrics_listen = "9613"', 'metrics_listen = 9613',
                 'metrics_textfile = "cgctl.prom"', 'metrics_textfile = "/tmp/x.txt"'):
        bad = tmp_path / "bad.toml"
        bad.write_text(line + "\n")
        with pytest.raises(UsageError) as e:
            C.load_config(str(bad))
        assert line.split()[0] in str(e.value)


def test_off_by_default_starts_nothing():
    assert metrics.start(C.Config(), threading.Event()) is None


def test_health_counted_from_the_real_service_loop(tmp_path, monkeypatch, caplog):
    """The log templates HealthHandler counts are the ones the service writes: a STARTED event
    through the real Daemon is one apply and one latency observation."""
    libvirt = pytest.importorskip("libvirt")
    import uuid as uuidlib
    from cgctl import consts
    from cgctl.service import daemon as D
    from tests.daemonkit import TEST_URI, Recorder, domain_xml, in_process, wait_for
    from tests.testdriver import remove_domains
    monkeypatch.setattr(consts, "LIBVIRT_RUN_DIR", str(tmp_path / "run"))  # no real guests
    caplog.set_level("INFO", logger="cgctl")  # the service's default log_level
    rec = Recorder(str(tmp_path / "j.db"))
    cfg = D.Config(uris=(TEST_URI,), journal=rec.journal_path,
                   metrics_listen=f"127.0.0.1:{free_port()}")
    daemon = D.Daemon(cfg, controller_factory=rec.factory, install_signals=False)
    m = metrics.start(cfg, daemon.stopping)  # what daemon.main does
    conn = libvirt.open(TEST_URI)
    uid = str(uuidlib.uuid4())
    dom = conn.defineXML(domain_xml(f"cgm-{uid[:8]}", uid))
    try:
        with in_process(daemon):
            rec.set_config(uid, dom.name(), {"cpu_shares": "512"})
            dom.create()
            wait_for(lambda: rec.of("apply", uid), what="an apply")

            def scraped():
                with urllib.request.urlopen(f"http://{m.address}/metrics", timeout=10) as r:
                    found = samples(r.read().decode())
                return found if one(found, "cgctl_applies_total", source="event") >= 1 else None
            found = wait_for(scraped, what="the apply counted")
        assert one(found, "cgctl_event_to_applied_seconds_count") == 1
        assert one(found, "cgctl_apply_failures_total", source="event") == 0
    finally:
        remove_domains(libvirt, [dom])
        conn.close()
        m.stop()


def test_health_handler_templates():
    """Each counted record, as the service logs it."""
    import logging
    reg = __import__("prometheus_client").CollectorRegistry()
    h = metrics.Health(reg)
    handler = metrics.HealthHandler(h)
    rec = lambda msg, *args: logging.LogRecord("cgctl", 20, "x", 1, msg, args, None)  # noqa
    handler.emit(rec(handler.APPLIED_EVENT, "g", "booted", 2, 1, 12.0, *[0.1] * 6))
    handler.emit(rec(handler.RECONCILED, "qemu:///system", 5, "3 applied, 2 unchanged", 40.0))
    handler.emit(rec(handler.APPLY_FAILED, "g", "reconcile", "no such device"))
    handler.emit(rec(handler.DRIFT_REPAIRED, "g", 2, 0))
    val = reg.get_sample_value
    assert val("cgctl_applies_total", {"source": "event"}) == 1
    assert val("cgctl_applies_total", {"source": "reconcile"}) == 3
    assert val("cgctl_apply_failures_total", {"source": "event"}) == 1
    assert val("cgctl_apply_failures_total", {"source": "reconcile"}) == 1
    assert val("cgctl_drift_repairs_total") == 2
    assert val("cgctl_event_to_applied_seconds_sum") == 0.012

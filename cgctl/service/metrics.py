"""Prometheus metrics of the service (docs/observability.md), with the official client library
``prometheus_client`` (the ``metrics`` extra: ``pip install cgctl[metrics]``).

Two ways out, both off by default (cgctl/config.py):

* ``metrics_listen = "127.0.0.1:9613"``: an HTTP endpoint (``/metrics``), served by
  prometheus_client's own threaded server; the figures are read when scraped, so nothing
  runs between scrapes.
* ``metrics_textfile = "/var/lib/node_exporter/textfile/cgctl.prom"``: for hosts that run
  node_exporter already: the same text written there (atomically: a temporary file renamed)
  every ``TEXTFILE_INTERVAL_S``.

What is exported, per running guest (labels guest, uuid, driver; nothing per value):
limits as configured (the journal) and in force (the cgroup), memory/CPU/IO/PSI usage
(cgctl/cgroup/usage.py) and the kernel's OOM and throttling counters; and cgctl's own health:
applies and failures by source, drift repairs, the event→applied latency, the journal's size,
OOM events the watcher logged (cgctl/service/oomwatch.py).

The health counters are taken from the service's own log records (``HealthHandler``): the
service's modules are not edited for them, and the log line and the counter cannot disagree.
The record templates counted are named in ``HealthHandler``; tests/unit/test_metrics.py runs
the real service loop and fails if one of them changes. Applies and the latency are info
records: with ``log_level = "warning"`` or ``"error"`` only failures are counted.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from typing import Optional

from cgctl import consts
from cgctl.cgroup import Router, hierarchy, placement, usage
from cgctl.config import parse_listen
from cgctl.core import live, profiles
from cgctl.core.journal import Journal
from cgctl.host import devices, runfiles
from cgctl.model import params as P
from cgctl.model.convert import PAGE_COUNTER_MAX
from cgctl.errors import CgctlError, UsageError
from cgctl.service import events

log = logging.getLogger("cgctl")

TEXTFILE_INTERVAL_S = 15.0  # node_exporter reads the file when scraped; this keeps it fresh
GUEST_LABELS = ("guest", "uuid", "driver")
# event -> applied latency buckets (s): an apply is milliseconds; a busy host, seconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _client():
    try:
        import prometheus_client
    except ModuleNotFoundError:
        raise UsageError("metrics need the prometheus_client package "
                         "(pip install 'cgctl[metrics]')") from None
    return prometheus_client


class Health:
    """cgctl's own counters, in one registry with the guests' collector."""

    def __init__(self, registry):
        pc = _client()
        self.applies = pc.Counter("cgctl_applies", "Config applies to running guests, by source "
                                  "(event: a guest started; reconcile: after a (re)connect)",
                                  ["source"], registry=registry)
        self.failures = pc.Counter("cgctl_apply_failures", "Applies that failed (whole or one "
                                   "parameter), by source", ["source"], registry=registry)
        self.drift_repairs = pc.Counter("cgctl_drift_repairs", "Settings written back by the "
                                        "drift repair", registry=registry)
        self.latency = pc.Histogram("cgctl_event_to_applied_seconds", "From libvirt's STARTED "
                                    "event to the config in force", buckets=LATENCY_BUCKETS,
                                    registry=registry)
        self.oom_events = pc.Counter("cgctl_oom_events_logged", "OOM kills and memory-limit "
                                     "hits the service logged (cgctl/service/oomwatch.py)",
                                     list(GUEST_LABELS) + ["event"], registry=registry)
        for s in ("event", "reconcile"):  # present from the start, at 0
            self.applies.labels(s)
            self.failures.labels(s)

    def count_oom(self, guest, event: str, n: int = 1) -> None:
        self.oom_events.labels(guest.name, guest.uuid, guest.driver, event).inc(n)


class HealthHandler(logging.Handler):
    """Counts the service's log records into ``Health`` (see the module doc)."""

    APPLIED_EVENT = events.APPLIED
    APPLY_FAILED_EVENT = "guest=%s apply failed source=event: %s"
    APPLY_FAILED = "guest=%s apply failed source=%s: %s"  # controller: one per parameter
    RECONCILED = "reconcile %s: %d running, %s (%.0f ms)"
    RECONCILE_FAILED = "guest=%s reconcile failed: %s"
    DRIFT_REPAIRED = "guest=%s drift repaired: %d setting(s), %d error(s)"

    def __init__(self, health: Health):
        super().__init__(logging.DEBUG)
        self.health = health

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg, args, h = record.msg, record.args or (), self.health
            if msg == self.APPLIED_EVENT:
                h.applies.labels("event").inc()
                h.latency.observe(float(args[4]) / 1000.0)
                if args[3]:
                    h.failures.labels("event").inc()
            elif msg == self.APPLY_FAILED_EVENT or msg == self.RECONCILE_FAILED:
                h.failures.labels("event" if msg == self.APPLY_FAILED_EVENT
                                  else "reconcile").inc()
            elif msg == self.APPLY_FAILED and args[1] == "reconcile":
                h.failures.labels("reconcile").inc()
            elif msg == self.RECONCILED:
                m = re.search(r"(\d+) applied", str(args[2]))
                if m:
                    h.applies.labels("reconcile").inc(int(m.group(1)))
            elif msg == self.DRIFT_REPAIRED:
                h.drift_repairs.inc(int(args[1]))
        except Exception:  # noqa: BLE001  counting never disturbs logging
            pass


class GuestCollector:
    """Read at scrape time: every running guest's limits and usage, the journal's size."""

    def __init__(self, journal_path: str, run_dir: str = None, host=None):
        self.journal_path = journal_path
        self.run_dir = run_dir or consts.LIBVIRT_RUN_DIR
        self._host = host
        self._lock = threading.Lock()  # one scrape at a time reads the host

    def describe(self):
        return []  # the families vary with the host: no checks at registration

    def collect(self):
        with self._lock:
            return list(self._collect())

    def _collect(self):
        from prometheus_client.core import CounterMetricFamily as C, GaugeMetricFamily as G
        L = list(GUEST_LABELS)
        fam = {
            "info": G("cgctl_guest_info", "A running guest cgctl sees (value 1)", labels=L),
            "limit": G("cgctl_limit", "A parameter's value: source=config (the journal) or "
                       "live (in force in the cgroup); bytes, microseconds, shares or weight "
                       "as the parameter (cgctl params); +Inf = unlimited",
                       labels=L + ["param", "source"]),
            "mem": G("cgctl_memory_usage_bytes", "Memory in use (memory.current / "
                     "memory.usage_in_bytes of the machine group)", labels=L),
            "peak": G("cgctl_memory_peak_bytes", "Highest memory use (memory.peak / "
                      "max_usage_in_bytes)", labels=L),
            "swap": G("cgctl_memory_swap_bytes", "Swap in use", labels=L),
            "stat": G("cgctl_memory_stat_bytes", "memory.stat: anon, file, kernel",
                      labels=L + ["kind"]),
            "events": C("cgctl_memory_events", "The kernel's memory events of the guest's "
                        "groups: high, max, oom, oom_kill (v1: max = failcnt)",
                        labels=L + ["event"]),
            "cpu": C("cgctl_cpu_usage_seconds", "CPU time used", labels=L),
            "periods": C("cgctl_cpu_periods", "CFS periods elapsed in the guest's quota groups",
                         labels=L),
            "throttled": C("cgctl_cpu_throttled_periods", "CFS periods throttled", labels=L),
            "throttled_s": C("cgctl_cpu_throttled_seconds", "Time throttled", labels=L),
            "io_bytes": C("cgctl_io_bytes", "Bytes read/written per device",
                          labels=L + ["device", "direction"]),
            "io_ops": C("cgctl_io_operations", "IO operations per device",
                        labels=L + ["device", "direction"]),
            "psi": C("cgctl_pressure_seconds", "PSI stall time (v2): resource cpu/memory/io, "
                     "kind some/full", labels=L + ["resource", "kind"]),
        }
        host = self._host or hierarchy.detect()
        router = Router(host)
        try:
            guests = runfiles.all_running(self.run_dir)
        except CgctlError as e:
            log.warning("metrics: cannot list the running guests: %s", e)
            guests = {}
        journal = Journal(self.journal_path, create=False)
        try:
            for g in sorted(guests.values(), key=lambda g: g.name):
                lv = [g.name, g.uuid, g.driver]
                try:
                    groups = placement.groups_for_pid(g.pid, host, guest=g.name, driver=g.driver)
                    u = usage.read(groups, host, devices.kernel_name)
                    in_force = live.read_all(router, groups)
                    config = profiles.effective(journal, g.uuid).config  # profile + own
                except CgctlError as e:  # stopped while we looked, or unreadable: next scrape
                    log.debug("metrics: guest=%s skipped: %s", g.name, e)
                    continue
                fam["info"].add_metric(lv, 1)
                for p in P.CATALOGUE:
                    if p.per_device:
                        continue
                    v = in_force.get(p.name)
                    if _number(v):
                        fam["limit"].add_metric(lv + [p.name, "live"], _value(p, v))
                    text = config.get((p.name, ""))
                    if text is not None:
                        try:
                            cv = P.from_text(p.name, "", text).value
                        except CgctlError:
                            continue
                        if _number(cv):
                            fam["limit"].add_metric(lv + [p.name, "config"], _value(p, cv))
                _usage_metrics(fam, lv, u)
        finally:
            journal.close()
        yield from fam.values()
        size = sum(os.path.getsize(p) for p in (self.journal_path, self.journal_path + "-wal")
                   if os.path.exists(p))
        yield G("cgctl_journal_bytes", "Size of the journal (database + WAL)", value=size)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _value(p, v) -> float:
    from cgctl.model.units import UNLIMITED
    if v == UNLIMITED or (p.kind == "bytes" and v >= PAGE_COUNTER_MAX):
        return math.inf
    if p.kind == "quota" and v < 0:  # v1's -1
        return math.inf
    return float(v)


def _usage_metrics(fam: dict, lv: list, u: dict) -> None:
    mem = u.get("memory")
    if mem:
        for key, name in (("current", "mem"), ("peak", "peak"), ("swap", "swap")):
            if mem.get(key) is not None:
                fam[name].add_metric(lv, mem[key])
        for kind in ("anon", "file", "kernel"):
            if mem.get(kind) is not None:
                fam["stat"].add_metric(lv + [kind], mem[kind])
        for ev, n in (mem.get("events") or {}).items():
            if n is not None:
                fam["events"].add_metric(lv + [ev], n)
    cpu = u.get("cpu")
    if cpu:
        if cpu.get("usage_usec") is not None:
            fam["cpu"].add_metric(lv, cpu["usage_usec"] / 1e6)
        if cpu.get("nr_throttled") is not None:
            fam["periods"].add_metric(lv, cpu["nr_periods"])
            fam["throttled"].add_metric(lv, cpu["nr_throttled"])
            fam["throttled_s"].add_metric(lv, (cpu["throttled_usec"] or 0) / 1e6)
    for r in u.get("io") or []:
        dev = r.get("device") or r["majmin"]
        fam["io_bytes"].add_metric(lv + [dev, "read"], r["rbytes"])
        fam["io_bytes"].add_metric(lv + [dev, "write"], r["wbytes"])
        fam["io_ops"].add_metric(lv + [dev, "read"], r["rios"])
        fam["io_ops"].add_metric(lv + [dev, "write"], r["wios"])
    for res, kinds in (u.get("pressure") or {}).items():
        for kind, row in kinds.items():
            if "total" in row:
                fam["psi"].add_metric(lv + [res, kind], row["total"] / 1e6)


class Metrics:
    """The registry (guests' collector + health) and its outputs. ``configure()`` puts the
    outputs where the config says (again at every reload: the counters carry on);
    ``stop()`` ends them."""

    def __init__(self, journal_path: str, *, run_dir: str = None, host=None):
        pc = _client()
        self.registry = pc.CollectorRegistry(auto_describe=False)
        self.health = Health(self.registry)
        self.collector = GuestCollector(journal_path, run_dir, host)
        self.registry.register(self.collector)
        self.handler = HealthHandler(self.health)
        self._server = None
        self._stop = threading.Event()  # the current textfile loop's
        self._lock = threading.Lock()
        self.address = None  # HOST:PORT the endpoint is bound to, None when off
        self.listening = ""  # the metrics_listen / metrics_textfile in force ("" = off)
        self.textfile = ""
        self.stopping: Optional[threading.Event] = None  # the service's, once started

    def text(self) -> str:
        return _client().generate_latest(self.registry).decode()

    def listen(self, address: str) -> None:
        host, port = parse_listen(address)
        self._server, _ = _client().start_http_server(port, addr=host, registry=self.registry)
        self.address = f"{host}:{self._server.server_port}"
        self.listening = address

    def write_textfile(self, path: str) -> None:
        _client().write_to_textfile(path, self.registry)

    def textfile_loop(self, path: str, interval: float = TEXTFILE_INTERVAL_S,
                      stop: threading.Event = None) -> None:
        stop = stop or self._stop
        while True:
            try:
                self.write_textfile(path)
            except Exception as e:  # noqa: BLE001  a full disk never stops the service
                log.error("metrics: cannot write %s: %s", path, e)
            if stop.wait(interval):
                return

    def configure(self, journal: str, listen: str, textfile: str) -> None:
        """Outputs as asked, changing only what changed; never raises (one error line and
        that output stays off). A textfile no longer asked for is removed: node_exporter
        would serve its figures, frozen, as current."""
        self.collector.journal_path = journal
        if listen != self.listening:
            self._close_server()
            if listen:
                try:
                    self.listen(listen)
                    log.info("metrics on http://%s/metrics", self.address)
                except (CgctlError, OSError, ValueError) as e:
                    log.error("metrics not served on %s: %s", listen, e)
            else:
                log.info("metrics endpoint off")
        if textfile != self.textfile:
            old, self.textfile = self.textfile, textfile
            self._stop.set()
            self._stop = threading.Event()
            if old:
                try:
                    os.unlink(old)
                except OSError:
                    pass
            if textfile:
                threading.Thread(target=self.textfile_loop,
                                 args=(textfile, TEXTFILE_INTERVAL_S, self._stop),
                                 name="cgctl-metrics-textfile", daemon=True).start()
                log.info("metrics written to %s every %.0f s", textfile, TEXTFILE_INTERVAL_S)
            else:
                log.info("metrics textfile off")

    def _close_server(self) -> None:
        with self._lock:  # from the test and the stopping thread alike: once
            server, self._server = self._server, None
        self.address, self.listening = None, ""
        if server is not None:
            server.shutdown()
            server.server_close()

    def stop(self) -> None:
        self._stop.set()
        logging.getLogger("cgctl").removeHandler(self.handler)
        self._close_server()


def start(config, stopping: threading.Event, *, run_dir: str = None,
          host=None) -> Optional[Metrics]:
    """Start what the config asks for (nothing by default); never raises: the service runs
    without metrics rather than not at all. Everything ends when ``stopping`` is set."""
    if not (config.metrics_listen or config.metrics_textfile):
        return None
    return reconfigure(config, stopping, run_dir=run_dir, host=host)


def reconfigure(config, stopping: threading.Event, *, run_dir: str = None,
                host=None) -> Optional[Metrics]:
    """At start and at every reload (SIGHUP): the endpoint and the textfile as ``config``
    says now. The first time metrics are asked for, the registry is made (and counts from
    then on, kept through later reloads, also while both outputs are off)."""
    global CURRENT
    if CURRENT is None or CURRENT.stopping is not stopping:  # (tests: one service each)
        if not (config.metrics_listen or config.metrics_textfile):
            return None
        try:
            m = Metrics(config.journal, run_dir=run_dir, host=host)
        except (CgctlError, OSError, ValueError) as e:
            log.error("metrics not started: %s", e)
            return None
        m.stopping = stopping
        logging.getLogger("cgctl").addHandler(m.handler)

        def stop_when_stopping():
            stopping.wait()
            m.stop()
        threading.Thread(target=stop_when_stopping, name="cgctl-metrics-stop",
                         daemon=True).start()
        CURRENT = m
    CURRENT.configure(config.journal, config.metrics_listen, config.metrics_textfile)
    return CURRENT


CURRENT: Optional[Metrics] = None  # the service's, for the OOM watcher's counter


def count_oom(guest, event: str, n: int = 1) -> None:
    """The OOM watcher's hook: count what it logged (no-op with metrics off)."""
    if CURRENT is not None:
        CURRENT.health.count_oom(guest, event, n)


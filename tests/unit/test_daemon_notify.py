"""The systemd readiness/watchdog protocol of ``cgctl daemon`` against a real NOTIFY_SOCKET
datagram socket made by the test (no systemd needed), on libvirt's test:///default driver."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from cgctl.config import Config
from cgctl.service import daemon as D
from cgctl.service.notify import Notifier
from tests.daemonkit import (TEST_URI, NotifySink, Recorder, Subprocess, in_process, wait_for)

try:   # the daemon's own runs use libvirt's test driver; the Notifier tests need no libvirt
    import libvirt  # noqa: F401
except ModuleNotFoundError:
    libvirt = None
needs_libvirt = pytest.mark.skipif(libvirt is None, reason="needs libvirt-python (test:///default)")


@pytest.fixture(params=["path", "abstract"])
def sink(request):
    s = NotifySink(abstract=request.param == "abstract")
    yield s
    s.close()


def test_notifier_without_socket_is_silent():
    n = Notifier(environ={})
    assert n.address is None and n.watchdog_interval is None
    assert n.ready("x") is False and n.watchdog() is False


def test_notifier_watchdog_interval_is_half_and_only_for_our_pid():
    assert Notifier(environ={"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(environ=mine).watchdog_interval == 1.0
    other = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(environ=other).watchdog_interval is None


def test_notifier_sends_datagrams(sink):
    n = Notifier(environ={"NOTIFY_SOCKET": sink.env})
    assert n.ready("all good") and n.watchdog() and n.stopping()
    sink.wait("STOPPING=1")
    assert sink.lines()[:3] == ["READY=1", "STATUS=all good", "WATCHDOG=1"]
    n.close()


def test_notifier_never_raises_when_systemd_is_gone(tmp_path, caplog):
    n = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.ready("x") is False and n.watchdog() is False
    assert sum("cannot notify systemd" in r.message for r in caplog.records) == 1  # once


@needs_libvirt
def test_ready_only_after_the_first_reconcile(sink, tmp_path):
    rec = Recorder(str(tmp_path / "j.db"), gate=threading.Event())  # reconcile blocks on it
    d = D.Daemon(Config(uris=(TEST_URI,), journal=rec.journal_path),
                 controller_factory=rec.factory, install_signals=False,
                 notifier=Notifier(environ={"NOTIFY_SOCKET": sink.env}))
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        sink.wait("STATUS=test:///default reconciling")  # connected, reconcile under way
        assert "READY=1" not in sink.lines() and not d.ready
        rec.gate.set()
        sink.wait("READY=1")
        ready_at = sink.lines().index("READY=1")
        assert sink.lines()[ready_at + 1] == "STATUS=test:///default watching"
    finally:
        rec.gate.set()
        d.stop()
        t.join(15)
    assert not t.is_alive()
    sink.wait("STOPPING=1")


@needs_libvirt
def test_watchdog_pings_only_while_healthy(sink, tmp_path, monkeypatch):
    rec = Recorder(str(tmp_path / "j.db"))
    env = {"NOTIFY_SOCKET": sink.env, "WATCHDOG_USEC": "100000"}  # a ping every 50 ms
    d = D.Daemon(Config(uris=(TEST_URI,), journal=rec.journal_path),
                 controller_factory=rec.factory, install_signals=False,
                 notifier=Notifier(environ=env))
    with in_process(d):
        sink.wait("WATCHDOG=1", n=5)
        assert d.health() is None
        # the event loop stops beating (as if stuck): the pings stop
        monkeypatch.setattr(d, "_beat", lambda: None)
        d._heartbeat -= D.LOOP_STALL_S + 1
        wait_for(lambda: d.health() is not None, 5, "an unhealthy verdict")
        before = sink.count("WATCHDOG=1")
        threading.Event().wait(0.3)  # six ping intervals
        assert sink.count("WATCHDOG=1") <= before + 1  # at most one already on its way


@needs_libvirt
def test_real_process_protocol_and_signals(sink, tmp_path):
    """The real ``cgctl daemon`` process: READY after reconcile, pings, RELOADING/READY on
    SIGHUP, STOPPING on SIGTERM, exit status 0."""
    conf = tmp_path / "cgctl.toml"
    conf.write_text('log_level = "info"\n')
    svc = Subprocess(["-c", TEST_URI, "--journal", str(tmp_path / "j.db"),
                      "--config-file", str(conf)],
                     env_extra={"NOTIFY_SOCKET": sink.env, "WATCHDOG_USEC": "200000"},
                     log_path=tmp_path / "daemon.log")
    try:
        sink.wait("READY=1")
        log = svc.log()
        assert log.index("reconcile test:///default") < log.index("ready:")
        sink.wait("WATCHDOG=1", n=3)
        svc.signal(signal.SIGHUP)
        sink.wait("RELOADING=1")
        sink.wait("READY=1", n=2)
        lines = sink.lines()
        reloading = lines.index("RELOADING=1")
        assert lines[reloading + 1].startswith("MONOTONIC_USEC=")
        assert "READY=1" in lines[reloading:]
        svc.wait_log("reloaded")
        svc.signal(signal.SIGTERM)
        sink.wait("STOPPING=1")
        svc.wait()
    finally:
        rc = svc.stop()
    assert rc == 0, svc.log()
    assert "stopped" in svc.log()

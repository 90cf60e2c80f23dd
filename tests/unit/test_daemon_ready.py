"""``cgctl daemon`` (the real process) becomes ready and stays responsive when libvirtd is not
there (no socket) or hung (a socket that accepts and never answers): READY=1 after the first
round of attempts with a STATUS naming what is not connected, WATCHDOG=1 keeps coming, SIGTERM
ends it. The NOTIFY_SOCKET is a real datagram socket made by the test (tests/daemonkit.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading

import pytest

from tests.daemonkit import NotifySink, Subprocess

pytest.importorskip("libvirt")


@pytest.fixture
def sink():
    s = NotifySink()
    yield s
    s.close()


class HungPeer:
    """A unix socket that accepts every connection and never answers (a hung libvirtd)."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, "hung-libvirt-sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.accepted = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read, never answered

    def close(self):
        self.sock.close()
        for c in self.accepted:
            c.close()


def _service(tmp_path, uri, sink, watchdog_usec=None):
    conf = tmp_path / "cgctl.toml"
    conf.write_text('reconnect_initial = 0.2\nreconnect_max = 1.0\nwatch_devices = false\n')
    env = {"NOTIFY_SOCKET": sink.env}
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return Subprocess(["-c", uri, "--journal", str(tmp_path / "j.db"),
                       "--config-file", str(conf)], env_extra=env,
                      log_path=tmp_path / "daemon.log")


def test_ready_while_libvirtd_is_down_and_status_names_the_uri(sink, tmp_path):
    uri = f"qemu+unix:///system?socket={tmp_path}/nonexistent/libvirt-sock"
    svc = _service(tmp_path, uri, sink)
    try:
        sink.wait("READY=1")
        lines = sink.lines()
        status = lines[lines.index("READY=1") + 1]
        assert status.startswith("STATUS=") and uri in status and "disconnected" in status, lines
        # still trying, with backoff
        svc.wait_log("cannot connect (attempt 3)")
        svc.signal(signal.SIGTERM)
        assert svc.wait() == 0
    finally:
        svc.stop()
    assert "ready:" in svc.log()


def test_a_hung_libvirtd_blocks_neither_readiness_watchdog_nor_sigterm(sink, tmp_path):
    peer = HungPeer(str(tmp_path))
    uri = f"qemu+unix:///system?socket={peer.path}"
    svc = _service(tmp_path, uri, sink, watchdog_usec=1_000_000)  # a ping every 0.5 s
    try:
        sink.wait("READY=1")
        assert peer.accepted, "the service never reached the hung peer"
        lines = sink.lines()
        status = lines[lines.index("READY=1") + 1]
        assert uri in status and "not answering" in status, lines
        pings = sink.count("WATCHDOG=1")
        sink.wait("WATCHDOG=1", n=pings + 3)  # the main loop goes on while the connect hangs
        svc.signal(signal.SIGTERM)
        try:
            rc = svc.wait(15)  # generous: a liveness check, not a speed test
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM did not end the service while libvirtd hangs:\n" + svc.log())
        assert rc == 0, svc.log()
        sink.wait("STOPPING=1")
    finally:
        svc.stop()
        peer.close()

"""A STARTED event on a system URI takes its guest and live XML from libvirt's run files
(cgctl/service/events.py ``from_run_files``), not from libvirtd, which right after a start
answers only once its start job is done; other URIs and files that are not the guest's still
ask libvirtd. Faked cgroup v1 host and run files, real Controller and journal."""

from __future__ import annotations

import pytest

from cgctl.config import Config
from cgctl.core.controller import Controller
from cgctl.host.runfiles import Guest
from cgctl.service import daemon as D, events, worker as W
from cgctl.virt import LifecycleEvent
from tests.unit.conftest import read

UUID = "7a1e0000-0000-4000-8000-000000000001"


class NoLibvirtd:
    """A connection that must not be asked."""

    def __init__(self):
        self.asked = []

    def guest(self, uuid):
        self.asked.append("guest")
        raise AssertionError("libvirtd asked for the guest")

    def domain_xml(self, uuid, inactive=False):
        self.asked.append("xml")
        raise AssertionError("libvirtd asked for the XML")


class Libvirtd(NoLibvirtd):
    def __init__(self, guest):
        super().__init__()
        self.g = guest

    def guest(self, uuid):
        self.asked.append("guest")
        return self.g

    def domain_xml(self, uuid, inactive=False):
        self.asked.append("xml")
        return "<domain/>"


@pytest.fixture
def setup(fake_host):
    m = fake_host.running("web1", UUID)
    ctl = Controller(journal_path=fake_host.journal_path, host=fake_host.host())
    with ctl.journal().transaction() as tx:
        tx.set_config(UUID, "web1", "qemu", {("cpu_shares", ""): "333"})
    d = D.Daemon(Config(journal=fake_host.journal_path, uris=("qemu:///system",)),
                 install_signals=False)
    d.worker.ctl = ctl
    yield d.worker, m
    ctl.close()


def _started(uri, conn, uuid=UUID):
    return W.Job("started", uri, conn, 1,
                 event=LifecycleEvent(uri, "web1", uuid, "started", "booted"))


def test_a_started_event_on_the_system_uri_does_not_ask_libvirtd(setup):
    w, m = setup
    conn = NoLibvirtd()
    events.apply_started(w, _started("qemu:///system", conn))
    assert conn.asked == []
    assert read(f"{m.machine['cpu']}/cpu.shares") == "333"
    assert w.ctl.journal().get_instance(UUID).pid == m.pid


def test_another_uri_or_another_guests_files_ask_libvirtd(setup):
    w, m = setup
    g = Guest(name="web1", uuid=UUID, driver="qemu", uri="qemu:///session", running=True,
              persistent=True, pid=m.pid)
    conn = Libvirtd(g)
    events.apply_started(w, _started("qemu:///session", conn))  # not the files' URI
    assert conn.asked == ["xml", "guest"]
    other = "7a1e0000-0000-4000-8000-000000000002"  # the files are web1's, not this UUID's
    with w.ctl.journal().transaction() as tx:
        tx.set_config(other, "web1", "qemu", {("cpu_shares", ""): "444"})
    conn = Libvirtd(g._replace(uuid=other, uri="qemu:///system"))
    events.apply_started(w, _started("qemu:///system", conn, uuid=other))
    assert conn.asked == ["xml", "guest"]

"""The command socket's per-command work (docs/performance.md, goal 4): the metadata written
after the answer, in the journal's order, on a kept libvirt connection (cgctl/service/publisher.py,
cgctl/core/travel.py), and one journal connection kept for commands (cgctl/service/cmdserver.py)."""

from __future__ import annotations

import os
import threading

import pytest

from cgctl import errors, wire
from cgctl.cli import fast
from cgctl.cli import main as cli
from cgctl.core import controller as controller_mod
from cgctl.core import guestlock, travel
from cgctl.core.controller import CONFIG, LIVE, Controller
from cgctl.core.journal import Journal
from cgctl.service import cmdserver
from cgctl.service.publisher import Publisher
from tests.unit.test_cmdserver import client_env, sock_path  # noqa: F401  (fixtures)
from tests.unit.test_travel_same_file import UUID, FakeMetadata, values


class Guest:
    name, uuid, uri, running, persistent = "web1", UUID, "qemu:///system", True, True


@pytest.fixture
def publisher():
    p = Publisher(opener=lambda uri: FakeConn(uri)).start()
    yield p
    p.stop()


class FakeConn:
    def __init__(self, uri):
        self.uri, self.closed = uri, False

    def close(self):
        self.closed = True


def test_a_deferred_write_waits_for_its_release_and_order_is_kept(publisher):
    done = []
    first = publisher.submit(lambda conn_for: done.append("first"), "g", ready=False)
    second = publisher.submit(lambda conn_for: done.append("second"), "g", ready=True)
    # the second is ready but behind the first, which waits for its command's answer
    assert not second.done.wait(0.2) and done == []
    first.ready.set()
    second.wait()
    assert done == ["first", "second"]


def test_update_defers_in_a_command_thread_and_writes_directly_elsewhere(monkeypatch, publisher):
    import cgctl.virt as virt
    calls = []
    monkeypatch.setattr(virt, "update_metadata",
                        lambda guest, edit, live, config, conn=None: calls.append(conn))
    assert travel._update(Guest(), "change", None, live=True, config=False, defer=True) is None
    assert calls == [None]  # no publisher: written here, on a connection of its own
    pending = []
    travel.PUBLISHER.set(publisher)
    travel.PENDING.set(pending)
    try:
        assert travel._update(Guest(), "change", None, live=True, config=False,
                              defer=True) is None
        assert len(pending) == 1 and not pending[0].done.is_set()
        travel.release(pending)
        pending[0].wait()
        assert isinstance(calls[1], FakeConn)  # the publisher's kept connection
        # a write the caller waits for releases the command's own deferred ones first
        travel._update(Guest(), "change", None, live=True, config=False, defer=True)
        assert travel._update(Guest(), "change", None, live=True, config=False) is None
        assert pending[1].done.is_set() and calls[2] is calls[3] is calls[1]
    finally:
        travel.PUBLISHER.set(None)
        travel.PENDING.set(None)


def test_a_failed_kept_connection_is_replaced_once(monkeypatch, publisher):
    import cgctl.virt as virt
    used = []

    def update(guest, edit, live, config, conn=None):
        used.append(conn)
        if len(used) == 1:
            raise errors.LibvirtError("libvirt: End of file while reading data")

    monkeypatch.setattr(virt, "update_metadata", update)
    item = publisher.submit(lambda conn_for: travel._write(
        Guest(), "change", None, live=True, config=False, conn_for=conn_for), "g", ready=True)
    assert item.wait() is None
    assert used[0] is not used[1] and used[0].closed and not used[1].closed


def test_a_failure_on_a_fresh_connection_is_one_warning(monkeypatch, publisher):
    import cgctl.virt as virt

    def update(guest, edit, live, config, conn=None):
        raise errors.LibvirtError("libvirt: no domain")

    monkeypatch.setattr(virt, "update_metadata", update)
    item = publisher.submit(lambda conn_for: travel._write(
        Guest(), "change", None, live=True, config=False, conn_for=conn_for), "g", ready=True)
    assert "not in the domain's metadata" in item.wait()


def test_set_queues_its_write_under_the_guest_lock(fake_host, monkeypatch, publisher):
    """Queued in commit order: a later change to the guest cannot be queued before it."""
    import cgctl.virt as virt
    fake_host.running("web1", UUID)
    monkeypatch.setenv("CGCTL_METADATA", "1")
    md = FakeMetadata()
    monkeypatch.setattr(virt, "update_metadata",
                        lambda guest, change, *, live, config, conn=None:
                        md(guest, change, live=live, config=config))
    held_when_queued = []
    real_submit = publisher.submit

    def submit(run, guest, *, ready):
        key = os.path.basename(guestlock.path_for(UUID))
        held_when_queued.append(guestlock._held.__dict__.get("depth", {}).get(key, 0) > 0)
        return real_submit(run, guest, ready=ready)

    monkeypatch.setattr(publisher, "submit", submit)
    ctl = Controller(journal_path=fake_host.journal_path, host=fake_host.host())
    pending = []
    travel.PUBLISHER.set(publisher)
    travel.PENDING.set(pending)
    try:
        ctl.set("web1", ["hard_limit=1G"], LIVE)
        ctl.set("web1", ["hard_limit=2G"], LIVE)
        ctl.set("web1", ["soft_limit=512M", "swap_hard_limit=2G"], CONFIG)
        ctl.unset("web1", ["swap_hard_limit"])
        assert md.copies == {True: None, False: None}  # nothing written before the answer
        travel.release(pending)
        for item in pending:
            item.wait()
    finally:
        travel.PUBLISHER.set(None)
        travel.PENDING.set(None)
        ctl.close()
    assert held_when_queued == [True, True, True, True]
    assert values(md.copies[True], "live") == {("hard_limit", ""): "2G"}  # the newer one last
    assert values(md.copies[False], "config") == {("soft_limit", ""): "512M",
                                                  ("swap_hard_limit", ""): None}


# -- the command server ---------------------------------------------------------------------

@pytest.fixture
def served(sock_path, client_env):  # noqa: F811
    log = []

    def runner(argv, who=None):
        j = Controller(journal_path=argv[1]).journal()
        log.append(("journal", j))
        travel._update(Guest(), "change", None, live=True, config=False, defer=True)
        return 0, "done\n", ""

    srv = cmdserver.CommandServer(sock_path, str(client_env / "j.db"), cli, runner=runner)
    assert srv.start()
    srv.publisher.stop()
    srv.publisher = Publisher(opener=FakeConn).start()
    srv.log = log
    yield srv
    srv.stop()


def test_the_metadata_is_written_after_the_answer(served, monkeypatch, sock_path):  # noqa: F811
    import cgctl.virt as virt
    order = []
    written = threading.Event()

    def update(guest, edit, live, config, conn=None):
        order.append("metadata")
        written.set()

    real_encode = wire.encode_reply

    def encode(reply):
        order.append("answer")
        return real_encode(reply)

    monkeypatch.setattr(virt, "update_metadata", update)
    monkeypatch.setattr(cmdserver.wire, "encode_reply", encode)
    Journal(served.journal).close()  # the file exists: the server keeps it open
    assert fast.ask_service(["set", "web1", "hard_limit=1G", "--live"], sock_path) == \
        (0, "done\n", "")
    assert written.wait(10)
    assert order == ["answer", "metadata"]


def test_one_journal_connection_is_kept_and_reopened_when_replaced(served, sock_path):  # noqa: F811
    Journal(served.journal).close()
    argv = ["set", "web1", "hard_limit=1G", "--live"]
    fast.ask_service(argv, sock_path)
    fast.ask_service(argv, sock_path)
    first, second = served.log[0][1], served.log[1][1]
    assert first is second and first.path == served.journal
    os.unlink(served.journal)
    Journal(served.journal).close()  # another file at the path: not the kept connection's
    fast.ask_service(argv, sock_path)
    third = served.log[2][1]
    assert third is not first
    with pytest.raises(Exception):
        first.get_config(UUID)  # the replaced one was closed (no command used it any more)
    assert not controller_mod.SHARED_JOURNAL.get()  # nothing leaks into this thread


# -- the client's side: what `cgctl` imports before it sends -----------------------------------

def test_the_client_imports_nothing_but_its_own_before_it_sends(tmp_path):
    """``bin/cgctl``'s path to the socket: the interpreter's core, ``_socket`` and three small
    modules of cgctl; not ``__future__`` (~0.15 ms), ``socket``, ``re``, ``struct``, ``json``."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import sys; base = set(sys.modules); sys.path.insert(0, %r)\n"
            "from cgctl.cli import fast\n"
            "fast.ask_service(['set', 'g', 'hard_limit=1G', '--live'], %r)\n"
            "print(' '.join(sorted(set(sys.modules) - base)))" % (root, str(tmp_path / "no.sock")))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True).stdout.split()
    assert sorted(m for m in out if m.startswith("cgctl")) == \
        ["cgctl", "cgctl.cli", "cgctl.cli.fast", "cgctl.consts", "cgctl.wire"]
    assert not {"__future__", "socket", "re", "struct", "json", "logging", "typing"} & set(out)

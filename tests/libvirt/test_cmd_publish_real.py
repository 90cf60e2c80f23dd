"""A change served by the command socket is answered before its metadata is written, on a real
guest and a real libvirtd (cgctl/service/publisher.py; docs/fleet.md#what-is-written-where;
docs/performance.md, goal 4): at the answer the value is in force and in the journal, the
domain's metadata gets it right after, in the journal's order; and what a service that dies in
between leaves (the journal wins at the next start on this host).

    flock /tmp/cgctl-libvirt.lock .venv/bin/python -m pytest -p no:cacheprovider \
        tests/libvirt/test_cmd_publish_real.py
"""

from __future__ import annotations

import os
import threading

import pytest

from cgctl import consts, wire
from cgctl.cli import fast
from cgctl.cli import main as cli
from cgctl.core import travel
from cgctl.core.journal import Journal
from cgctl.model import metadata
from cgctl.service import cmdserver
from cgctl.service.publisher import Publisher
from tests.libvirt.test_modes import live_file

MiB = 1 << 20
HL = ("hard_limit", "")


@pytest.fixture
def served(libvirt_sandbox, make_guest, tmp_path, monkeypatch):
    journal = tmp_path / "journal.db"
    monkeypatch.setenv("CGCTL_JOURNAL", str(journal))
    monkeypatch.setenv("CGCTL_METADATA", "1")
    monkeypatch.setattr(consts, "CONFIG_PATH", str(tmp_path / "none.toml"))
    for k in fast._LOCAL_ENV + ("CGCTL_NO_SERVICE", "SUDO_USER"):
        monkeypatch.delenv(k, raising=False)
    guest = make_guest("qemu", start=True)
    sock = f"/tmp/cgctl-lt-{os.getpid()}.sock"
    srv = cmdserver.CommandServer(sock, str(journal), cli)
    assert srv.start()
    try:
        yield srv, guest, journal
    finally:
        srv.stop()


def live_metadata(sandbox, guest):
    """The live copy's cgctl element, read from libvirt now (None: none yet)."""
    r = sandbox.virsh("metadata", guest.name, metadata.NS, "--live", uri=guest.uri, check=False)
    return metadata.parse(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else None


def live_hard_limit(doc):
    return None if doc is None or HL not in doc.live else doc.live[HL].value


def drained(srv):
    """Every write queued so far is made (the queue is one FIFO)."""
    srv.publisher.submit(lambda conn_for: None, "-", ready=True).wait()


def test_answered_before_the_metadata_then_published(served, libvirt_sandbox, monkeypatch):
    srv, guest, journal = served
    at_answer = []
    real_encode = wire.encode_reply

    def encode(reply):  # what the domain's metadata holds when the answer goes out
        at_answer.append(live_hard_limit(live_metadata(libvirt_sandbox, guest)))
        return real_encode(reply)

    monkeypatch.setattr(cmdserver.wire, "encode_reply", encode)
    rc, out, err = fast.ask_service(["set", guest.name, "hard_limit=300M", "--live"], srv.path)
    assert (rc, err) == (0, "") and "hard_limit" in out
    assert live_file(guest, "memory", "memory.limit_in_bytes") == str(300 * MiB)  # in force
    assert at_answer == [None]  # answered before the metadata was written
    drained(srv)
    assert live_hard_limit(live_metadata(libvirt_sandbox, guest)) == "300M"


def test_concurrent_changes_publish_the_journals_last(served, libvirt_sandbox):
    srv, guest, journal = served
    values = [f"{200 + 8 * i}M" for i in range(8)]
    answers = []

    def ask(v):
        answers.append(fast.ask_service(["set", guest.name, f"hard_limit={v}", "--live"],
                                        srv.path))

    threads = [threading.Thread(target=ask, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # a command the service was too busy for comes back None (the client would run it itself)
    assert answers and all(a is None or a[0] == 0 for a in answers), answers
    drained(srv)
    with Journal(str(journal)) as j:
        last = [r for r in j.history(guest.uuid) if r.param == "hard_limit"][-1]
    assert live_hard_limit(live_metadata(libvirt_sandbox, guest)) == last.new_value
    assert live_file(guest, "memory", "memory.limit_in_bytes") == \
        str(int(last.new_value[:-1]) * MiB)


def test_a_service_dying_before_the_write_leaves_the_journal_in_charge(served, libvirt_sandbox):
    """The publisher never runs (the service died after the answer): the change is in force and
    in the journal, not in the metadata; at the guest's next start here the journal's newer
    decision wins over the stale metadata (the conflict rules, docs/fleet.md)."""
    srv, guest, journal = served
    assert fast.ask_service(["set", guest.name, "hard_limit=400M", "--perm"], srv.path)[0] == 0
    drained(srv)  # published: the metadata holds 400M
    srv.publisher.stop()
    srv.publisher = Publisher()  # never started: the queued write is never made
    assert fast.ask_service(["set", guest.name, "hard_limit=500M", "--perm"], srv.path)[0] == 0
    assert live_file(guest, "memory", "memory.limit_in_bytes") == str(500 * MiB)
    xml = libvirt_sandbox.virsh("dumpxml", guest.name, "--inactive", uri=guest.uri).stdout
    assert metadata.find_in_domain(xml).config[HL].value == "400M"  # stale
    # the next start on this host: the hook/service merge the (stale) metadata into the journal
    with Journal(str(journal)) as j:
        overlay, decisions = travel.receive(j, guest.uuid, guest.name, "qemu", xml,
                                            source="event")
        assert j.get_config(guest.uuid)[HL] == "500M"
    assert [d.taken for d in decisions if d.key == HL] == [False]
    assert HL not in overlay

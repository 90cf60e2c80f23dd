"""cgctl's settings in a domain's <metadata>: format, conflict rules, import into a real journal
(SQLite in tmp_path). The real libvirt side is tests/libvirt/test_twohost.py."""

import uuid as uuidlib

import pytest

from cgctl.model import metadata as M
from cgctl.core import travel
from cgctl.core.journal import Journal

UUID = str(uuidlib.uuid4())
T0, T1, T2 = ("2025-05-01T10:00:00.000000+00:00", "2025-05-01T11:00:00.000000+00:00",
              "2025-05-01T12:00:00.000000+00:00")


def domain(doc_text: str, name="g1", uuid=UUID) -> str:
    return (f"<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid>"
            f"<metadata>{doc_text}</metadata></domain>")


def as_libvirt_stores_it(doc: M.Doc) -> str:
    """libvirt puts the root element in the namespace with our prefix; children stay bare."""
    text = M.serialize(doc)
    return text.replace(f"<{M.ROOT} ", f"<{M.PREFIX}:{M.ROOT} xmlns:{M.PREFIX}=\"{M.NS}\" ", 1) \
               .replace(f"</{M.ROOT}>", f"</{M.PREFIX}:{M.ROOT}>")


def test_roundtrip_through_a_domain_xml():
    doc = M.Doc({("hard_limit", ""): M.Entry("1GiB", T1, "hosta", "root(0)"),
                 ("device_read_bytes_sec", "/dev/vda"): M.Entry("10MiB", T1, "hosta", "root(0)"),
                 ("soft_limit", ""): M.Entry(None, T0, "hosta", "root(0)")},
                {("cpu_shares", ""): M.Entry("512", T2, "hosta", "root(0)")})
    got = M.find_in_domain(domain(as_libvirt_stores_it(doc)).encode())
    assert got == doc
    assert M.parse(M.serialize(doc)) == doc


def test_a_domain_without_our_element_has_no_doc():
    assert M.find_in_domain(domain("<other xmlns='urn:x'/>")) is None
    assert M.find_in_domain("<domain><name>x</name></domain>") is None
    assert M.find_in_domain(b"") is None


def test_schema_from_the_future_is_refused_whole():
    text = f"<cgctl:guest xmlns:cgctl='{M.NS}' version='2'><config/></cgctl:guest>"
    with pytest.raises(M.MetadataError, match="version 2, newer"):
        M.find_in_domain(domain(text))


@pytest.mark.parametrize("inner", ["<set param='hard_limit' at='x'/>",
                                   "<set value='1' at='x'/>",
                                   "<set param='hard_limit' value='1G'/>"])
def test_malformed_entries_are_refused(inner):
    text = f"<cgctl:guest xmlns:cgctl='{M.NS}' version='1'><config>{inner}</config></cgctl:guest>"
    with pytest.raises(M.MetadataError):
        M.find_in_domain(domain(text))


def test_decide_newer_wins_tie_keeps_the_journal_same_value_is_no_conflict():
    key = ("hard_limit", "")
    e = M.Entry("2GiB", T1, "hosta", "u")
    assert M.decide({}, {}, {key: e})[0].taken  # nothing here: incoming wins
    assert M.decide({key: "1GiB"}, {key: T0}, {key: e})[0].taken  # older here
    assert not M.decide({key: "1GiB"}, {key: T1}, {key: e})[0].taken  # tie: journal
    assert not M.decide({key: "1GiB"}, {key: T2}, {key: e})[0].taken  # newer here
    assert M.decide({key: "2GiB"}, {key: T2}, {key: e}) == []  # same value: nothing
    tomb = M.Entry(None, T2, "hosta", "u")
    d = M.decide({key: "1GiB"}, {key: T1}, {key: tomb})[0]
    assert d.taken and d.incoming.value is None  # an unset elsewhere, later, removes it here


def doc_xml(config=None, live=None) -> str:
    return domain(as_libvirt_stores_it(M.Doc(config, live)))


@pytest.fixture
def journal(tmp_path):
    j = Journal(str(tmp_path / "j.db"))
    yield j
    j.close()


def test_receive_records_origin_and_is_idempotent(journal):
    key = ("hard_limit", "")
    xml = doc_xml({key: M.Entry("1G", T1, "hosta", "root(0)")})
    overlay, decisions = travel.receive(journal, UUID, "g1", "qemu", xml, source="hook")
    assert journal.get_config(UUID) == {key: "1G"}  # canonical text
    assert [d.taken for d in decisions] == [True]
    rows = journal.history(UUID)
    assert [(r.command, r.source, r.user, r.at, r.new_value) for r in rows] == \
        [("metadata", "hook", "root(0)@hosta", T1, "1G")]
    again = travel.receive(journal, UUID, "g1", "qemu", xml, source="event")
    assert again == ({}, [])
    assert len(journal.history(UUID)) == 1


def test_receive_conflict_journal_newer_is_kept_and_said_once(journal):
    key = ("hard_limit", "")
    with journal.transaction() as tx:
        tx.set_config(UUID, "g1", "qemu", {key: "3GiB"})
        tx.add_history(UUID, "g1", command="set", source="cli", mode="config",
                       changes=[("hard_limit", "", None, "3GiB")], at=T2)
    xml = doc_xml({key: M.Entry("1GiB", T1, "hosta", "root(0)")})
    for _ in range(3):
        travel.receive(journal, UUID, "g1", "qemu", xml, source="hook")
    assert journal.get_config(UUID) == {key: "3GiB"}
    rows = journal.history(UUID)
    assert len(rows) == 2 and rows[1].outcome.startswith("kept: this host's value")
    # a newer decision elsewhere then wins
    xml = doc_xml({key: M.Entry("4GiB", "2025-05-01T13:00:00.000000+00:00", "hostb", "ops")})
    travel.receive(journal, UUID, "g1", "qemu", xml, source="hook")
    assert journal.get_config(UUID) == {key: "4G"}


def test_receive_live_overlay_only_when_newer_than_the_config(journal):
    hl, cs = ("hard_limit", ""), ("cpu_shares", "")
    xml = doc_xml({hl: M.Entry("1GiB", T1, "hosta", "u"), cs: M.Entry("1024", T0, "hosta", "u")},
                  {cs: M.Entry("512", T1, "hosta", "u"), hl: M.Entry("2GiB", T0, "hosta", "u")})
    overlay, _ = travel.receive(journal, UUID, "g1", "qemu", xml, source="hook")
    assert overlay == {cs: "512"}  # hard_limit's --live is older than its --perm/--config
    assert journal.get_config(UUID) == {hl: "1G", cs: "1024"}  # --live never in the config
    overlay, _ = travel.receive(journal, UUID, "g1", "qemu", xml, source="hook", live=False)
    assert overlay == {}


def test_receive_unknown_or_bad_values_are_skipped_not_fatal(journal):
    xml = doc_xml({("no_such_param", ""): M.Entry("1", T1, "h", "u"),
                   ("cpu_shares", ""): M.Entry("not-a-number", T1, "h", "u"),
                   ("hard_limit", ""): M.Entry("1GiB", T1, "h", "u")})
    travel.receive(journal, UUID, "g1", "qemu", xml, source="hook")
    assert journal.get_config(UUID) == {("hard_limit", ""): "1G"}


def test_journal_stamps_ignore_failed_live_and_deleted_rows(journal):
    with journal.transaction() as tx:
        tx.set_config(UUID, "g1", "qemu", {("hard_limit", ""): "1GiB"})
        tx.add_history(UUID, "g1", command="set", source="cli", mode="live",
                       changes=[("cpu_shares", "", None, "5")], at=T2)
        tx.add_history(UUID, "g1", command="set", source="cli", mode="config",
                       changes=[("hard_limit", "", None, "1GiB")], at=T1)
        tx.add_history(UUID, "g1", command="x", source="cli", mode="config",
                       changes=[("hard_limit", "", None, "2GiB")], at=T2, outcome="no")
    assert M.journal_stamps(journal.history(UUID)) == {("hard_limit", ""): T1}
    journal.forget_guest(UUID)
    assert M.journal_stamps(journal.history(UUID)) == {}


def test_record_perm_drops_the_live_entry():
    key = ("cpu_shares", "")
    d = M.record(None, {key: "512"}, section="live", at=T0, host="a", user="u")
    d = M.record(d, {key: "1024"}, section="config", at=T1, host="a", user="u", drop_live=True)
    assert d.live == {} and d.config[key].value == "1024"


# --------------------------------------------------------------------------- through the real hook

def test_hook_prepare_takes_the_metadata_into_the_journal_without_libvirt(tmp_path):
    """`cgctl hook qemu NAME prepare begin` with a domain XML carrying cgctl metadata (a guest
    defined from another host's dumpxml): the journal gets the config with its origin; the hook
    process never imports libvirt; a second call adds nothing."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, CGCTL_LIBVIRT_RUN_DIR=str(tmp_path / "run"),
               CGCTL_HOOK_RUN_DIR=str(tmp_path / "hookrun"), CGCTL_CONFIG=str(tmp_path / "c"),
               CGCTL_JOURNAL=str(tmp_path / "j.db"))
    (tmp_path / "run" / "qemu").mkdir(parents=True)
    xml = doc_xml({("hard_limit", ""): M.Entry("1G", T1, "hosta", "root(0)")})
    out = tmp_path / "modules"
    code = ("import sys, cgctl.hook.main as h;"
            "h.main(['--no-early-apply', 'qemu', 'g1', 'prepare', 'begin', '-']);"
            "bad = [m for m in sys.modules if m in ('libvirt', 'cgctl.virt')];"
            f"open({str(out)!r}, 'w').write(repr(bad))")
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", code], input=xml, capture_output=True,
                           text=True, env=env, timeout=30)
        assert out.read_text() == "[]", r.stderr
    with Journal(env["CGCTL_JOURNAL"]) as j:
        assert j.get_config(UUID) == {("hard_limit", ""): "1G"}
        assert [(r.command, r.source, r.user) for r in j.history(UUID)] == \
            [("metadata", "hook", "root(0)@hosta")]


def test_hook_started_takes_no_metadata_for_a_guest_not_running_as_that_uuid(tmp_path):
    """`started begin` with an XML carrying cgctl metadata, for a guest libvirt's runtime files
    do not show running with that UUID (another guest's XML, a stale call): nothing is merged
    into the journal, which is not even created."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, CGCTL_LIBVIRT_RUN_DIR=str(tmp_path / "run"),
               CGCTL_HOOK_RUN_DIR=str(tmp_path / "hookrun"), CGCTL_CONFIG=str(tmp_path / "c"),
               CGCTL_JOURNAL=str(tmp_path / "j.db"))
    (tmp_path / "run" / "qemu").mkdir(parents=True)
    xml = doc_xml({("hard_limit", ""): M.Entry("1G", T1, "hosta", "root(0)")})
    r = subprocess.run([sys.executable, "-m", "cgctl.hook", "qemu", "g1", "started", "begin",
                        "-"], input=xml, capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(env["CGCTL_JOURNAL"]), r.stderr


# --------------------------------------------------------------------------- profiles by value

def test_profile_roundtrip_and_a_destination_without_it_applies_the_values(journal):
    """<profile> carries the name and the values; a host that does not define the profile
    takes the reference and applies the carried values (cgctl/core/profiles.py)."""
    from cgctl.core import profiles
    pr = M.ProfileEntry("gold", {("cpu_shares", ""): "2048",
                                 ("device_weight", "/dev/vda"): "300"}, T1, "hosta", "root(0)")
    doc = M.Doc({("hard_limit", ""): M.Entry("1GiB", T1, "hosta", "root(0)")}, profile=pr)
    xml = domain(as_libvirt_stores_it(doc))
    assert M.find_in_domain(xml) == doc
    travel.receive(journal, UUID, "g1", "qemu", xml, source="hook")
    eff = profiles.effective(journal, UUID)
    assert (eff.profile, eff.origin) == ("gold", "carried")
    assert eff.config == {("cpu_shares", ""): "2048", ("device_weight", "/dev/vda"): "300",
                          ("hard_limit", ""): "1G"}
    # a host that defines gold applies its own gold (the name is the contract)
    profiles.define(journal, "gold", {("cpu_shares", ""): "4096"})
    assert profiles.effective(journal, UUID).config == {("cpu_shares", ""): "4096",
                                                        ("hard_limit", ""): "1G"}
    # the same metadata again: no new history row
    n = len(journal.history(UUID))
    travel.receive(journal, UUID, "g1", "qemu", xml, source="event")
    assert len(journal.history(UUID)) == n


def test_a_newer_local_profile_choice_is_kept(journal):
    from cgctl.core import profiles
    with journal.transaction() as tx:
        tx.set_guest_profile(UUID, "g1", "qemu", "batch", {})
        tx.add_history(UUID, "g1", command="set", source="cli", mode="config",
                       changes=[("profile", "", None, "batch")], at=T2)
    pr = M.ProfileEntry("gold", {("cpu_shares", ""): "2048"}, T1, "hosta", "root(0)")
    travel.receive(journal, UUID, "g1", "qemu", domain(as_libvirt_stores_it(M.Doc(profile=pr))),
                   source="hook")
    assert journal.get_guest_profile(UUID).profile == "batch"
    assert journal.history(UUID)[-1].outcome.startswith("kept: this host's value")

"""A STARTED event's metadata merge (cgctl/core/travel.py ``receive``) reads only the history
rows the conflict rules need (``Journal.history_heads``), not the guest's whole history, which
grows with every start (docs/performance.md, section 4: the service's RSS and CPU per start
grew with it)."""

from __future__ import annotations

from cgctl.core import journal as J
from cgctl.core import travel
from cgctl.model import metadata

UUID = "6ba0895f-fa92-4fae-88dc-fcb92a3e5016"


def _domain_xml(doc: metadata.Doc) -> str:
    """As libvirt stores our element: the root in our namespace, children bare."""
    M = metadata
    text = M.serialize(doc)
    text = text.replace(f"<{M.ROOT} ", f"<{M.PREFIX}:{M.ROOT} xmlns:{M.PREFIX}=\"{M.NS}\" ",
                        1).replace(f"</{M.ROOT}>", f"</{M.PREFIX}:{M.ROOT}>")
    return (f"<domain type='qemu'><name>g</name><uuid>{UUID}</uuid>"
            f"<metadata>{text}</metadata></domain>")


def _varied_history(j):
    with j.transaction() as tx:
        tx.set_config(UUID, "g", "qemu", {("cpu_shares", ""): "777"})
        for i in range(5):  # starts: live rows, newest last
            tx.add_history(UUID, "g", command="event", source="event", mode="live",
                           changes=[("cpu_shares", "", "1024", "777"),
                                    ("hard_limit", "", "1", "2")])
        tx.add_history(UUID, "g", command="set", source="cli", mode="config",
                       changes=[("cpu_shares", "", "1", "777")], at="2030-01-01T00:00:00+00:00")
        tx.add_history(UUID, "g", command="set", source="cli", mode="config",  # older time
                       changes=[("cpu_shares", "", "1", "700")], at="2020-01-01T00:00:00+00:00")
        tx.add_history(UUID, "g", command="set", source="cli", mode="live+config",
                       changes=[("hard_limit", "", "1", "3")], outcome="failed")
        tx.add_history(UUID, "g", command="set", source="cli", mode="config",
                       changes=[("weight", "", "1", "200")])
        tx.add_history(UUID, "g", command="event", source="event", mode="live",
                       changes=[("cpu_shares", "", "1024", "777")])


def test_history_heads_give_the_rules_what_the_whole_history_gives(tmp_path):
    with J.Journal(str(tmp_path / "j.db")) as j:
        _varied_history(j)
        with j.transaction() as tx:
            whole, heads = tx.history(UUID), tx.history_heads(UUID)
    assert len(heads) < len(whole)
    assert metadata.journal_stamps(heads) == metadata.journal_stamps(whole)
    assert metadata.journal_stamps(heads)[("cpu_shares", "")].startswith("2030-01-01")
    last = lambda rows: {(r.param, r.device): r for r in rows}  # noqa: E731  (travel's)
    assert last(heads) == last(whole)
    assert [r.id for r in heads] == sorted(r.id for r in heads)  # oldest first, as history()


def test_receive_does_not_read_the_whole_history(tmp_path, monkeypatch):
    with J.Journal(str(tmp_path / "j.db")) as j:
        _varied_history(j)

        def whole(*a, **k):
            raise AssertionError("receive read the guest's whole history")
        monkeypatch.setattr(J.Transaction, "history", whole)
        monkeypatch.setattr(J._Reader, "history", whole)
        doc = metadata.Doc({("cpu_shares", ""): metadata.Entry(
            "512", "2040-01-01T00:00:00.000000+00:00", "h2", "root(0)")}, {})
        overlay, decisions = travel.receive(j, UUID, "g", "qemu", _domain_xml(doc),
                                            source="event")
        assert [d.taken for d in decisions] == [True]  # newer than the journal's 2030 one
        assert j.get_config(UUID)[("cpu_shares", "")] == "512"

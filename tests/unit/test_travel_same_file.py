"""A --config change that drops the other parameter of its kernel file (cpu_shares/cpu_weight,
weight/io_weight: params.SAME_FILE) drops it from the domain's metadata too (a tombstone in
<config>, gone from <live>), so a host that receives the guest does not get both parameters
for one file (cgctl/core/travel.py, cgctl/model/metadata.py; docs/fleet.md)."""

from __future__ import annotations

from cgctl.core.controller import BOTH, CONFIG, LIVE, Controller
from cgctl.model import metadata

UUID = "0c6f3a52-7e1d-4b8e-a1a7-5d2f6c9e8b31"


class FakeMetadata:
    """virt.update_metadata on a guest's two copies, kept as Docs."""

    def __init__(self):
        self.copies = {True: None, False: None}   # live?, Doc

    def __call__(self, guest, change, *, live, config):
        for flag, wanted in ((True, live), (False, config)):
            if wanted:
                self.copies[flag] = change(self.copies[flag])


def _setup(fake_host, monkeypatch):
    import cgctl.virt as virt
    fake_host.running("web1", UUID)
    monkeypatch.setenv("CGCTL_METADATA", "1")
    md = FakeMetadata()
    monkeypatch.setattr(virt, "update_metadata", md)
    return md, Controller(journal_path=fake_host.journal_path, host=fake_host.host())


def values(doc, section):
    return {k: e.value for k, e in getattr(doc, section).items()}


def test_config_change_tombstones_the_same_files_other_parameter(fake_host, monkeypatch):
    md, ctl = _setup(fake_host, monkeypatch)
    ctl.set("web1", ["cpu_shares=512", "weight=300"], CONFIG)
    ctl.set("web1", ["cpu_weight=300"], CONFIG)
    assert values(md.copies[False], "config") == {
        ("cpu_weight", ""): "300", ("cpu_shares", ""): None, ("weight", ""): "300"}
    assert ctl.journal().get_config(UUID) == {("cpu_weight", ""): "300", ("weight", ""): "300"}
    ctl.close()


def test_perm_and_live_changes_leave_one_parameter_per_file_in_force(fake_host, monkeypatch):
    md, ctl = _setup(fake_host, monkeypatch)
    ctl.set("web1", ["cpu_shares=512"], LIVE)
    ctl.set("web1", ["cpu_weight=300"], LIVE)
    assert values(md.copies[True], "live") == {("cpu_weight", ""): "300"}
    ctl.set("web1", ["io_weight=700"], BOTH)
    ctl.set("web1", ["weight=200"], BOTH)
    for live in (True, False):
        c = values(md.copies[live], "config")
        assert (c[("weight", "")], c[("io_weight", "")]) == ("200", None), c
    ctl.close()


def test_record_is_where_the_rule_lives():
    kw = dict(at="2025-01-01T00:00:00", host="h", user="u")
    doc = metadata.record(None, {("weight", ""): "300"}, section="config", **kw)
    doc = metadata.record(doc, {("io_weight", ""): "700"}, section="config", **kw)
    assert values(doc, "config") == {("weight", ""): None, ("io_weight", ""): "700"}
    # a partner never recorded gets no tombstone (nothing to drop elsewhere)
    doc = metadata.record(None, {("cpu_weight", ""): "300"}, section="config", **kw)
    assert values(doc, "config") == {("cpu_weight", ""): "300"}


def test_a_carried_live_value_replaces_the_configs_other_parameter(fake_host, monkeypatch):
    """A migrated guest's <live> cpu_shares on top of a config holding cpu_weight: the live
    one is in force (both would write cpu.shares, the later in plan order winning)."""
    from tests.unit.conftest import shares
    md, ctl = _setup(fake_host, monkeypatch)
    ctl.set("web1", ["cpu_weight=300"], CONFIG)
    ctl.apply_config(ctl.find_guest("web1"), overlay={("cpu_shares", ""): "512"})
    assert shares(fake_host.machines["web1"]) == "512"
    ctl.close()

"""`cgctl export` / `cgctl import`: a real journal (SQLite in tmp_path), guests defined on libvirt's
in-process test driver (so the metadata writes are real libvirt calls), the real CLI entry point."""

from __future__ import annotations

import json
import uuid as uuidlib

import pytest

from tests.testdriver import remove_domains

from cgctl.cli import main as cli
from cgctl.model import metadata
from cgctl.core.controller import Controller
from cgctl.host.runfiles import Guest

libvirt = pytest.importorskip("libvirt")
TEST = "test:///default"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Two stopped persistent guests on test:///default, seen by cgctl as QEMU guests."""
    conn = libvirt.open(TEST)
    doms, guests = [], {}
    for name in (f"pol-{uuidlib.uuid4().hex[:6]}", f"pol-{uuidlib.uuid4().hex[:6]}"):
        uuid = str(uuidlib.uuid4())
        doms.append(conn.defineXML(
            f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
            "<memory>65536</memory><os><type>hvm</type></os></domain>"))
        guests[name] = Guest(name=name, uuid=uuid, driver="qemu", uri=TEST, running=False,
                             persistent=True, pid=None)

    def find_guest(self, ident):
        for g in guests.values():
            if ident in (g.name, g.uuid):
                return g
        from cgctl.errors import GuestNotFound
        raise GuestNotFound("no such guest", guest=ident)
    monkeypatch.setattr(Controller, "find_guest", find_guest)
    journal = str(tmp_path / "journal.db")
    try:
        yield journal, list(guests), conn
    finally:
        remove_domains(libvirt, doms)
        conn.close()


def run(journal, *args):
    rc, out, err = cli.run_captured(["--journal", journal, *args])
    return rc, out, err


def config_of(journal, name):
    rc, out, _ = run(journal, "--json", "show", name)
    return {(r["param"]): r["config"] for r in json.loads(out)["params"] if r["config"]}


def write(tmp_path, name, doc, fmt="json"):
    from cgctl.core import policy
    p = tmp_path / name
    p.write_text(policy.dumps(doc, fmt) if isinstance(doc, dict) and fmt else doc)
    return str(p)


def policy_doc(g1, g2, version=1, bad=None):
    doc = {"schema": "cgctl-policy", "version": version, "guests": {
        g1: {"settings": {"hard_limit": "1G", "cpu_shares": 512,
                          "device_read_bytes_sec": {"/dev/vda": "10M"}}},
        g2: {"settings": {"soft_limit": "512M"}}}}
    if bad:
        doc["guests"][g2]["settings"].update(bad)
    return doc


@pytest.mark.parametrize("fmt", ["json", "toml"])
def test_import_then_again_changes_nothing_and_export_roundtrips(env, tmp_path, fmt):
    journal, (g1, g2), conn = env
    path = write(tmp_path, f"p.{fmt}", policy_doc(g1, g2), fmt)
    rc, out, err = run(journal, "import", path, "--dry-run")
    assert rc == 0 and "hard_limit: - -> 1G" in out and "(dry run)" in out
    assert config_of(journal, g1) == {}  # a dry run writes nothing
    rc, out, err = run(journal, "import", path)
    assert rc == 0, err
    assert config_of(journal, g1) == {"hard_limit": "1G", "cpu_shares": "512",
                                      "device_read_bytes_sec": "/dev/vda=10M"}
    assert config_of(journal, g2) == {"soft_limit": "512M"}
    # the settings travel: the persistent definition's metadata holds them
    md = conn.lookupByName(g1).metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata.NS,
                                        libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert set(metadata.parse(md).config) == {("hard_limit", ""), ("cpu_shares", ""),
                                              ("device_read_bytes_sec", "/dev/vda")}
    rc, out, _ = run(journal, "import", path)
    assert rc == 0 and out.strip() == "nothing to change: the host matches the policy"
    # export what is there, import it: nothing to change either
    out_path = str(tmp_path / f"export.{fmt}")
    assert run(journal, "export", "-o", out_path)[0] == 0
    rc, out, _ = run(journal, "import", out_path)
    assert rc == 0 and out.startswith("nothing to change")


def test_import_drops_settings_not_in_the_file(env, tmp_path):
    journal, (g1, g2), _ = env
    run(journal, "import", write(tmp_path, "a.json", policy_doc(g1, g2)))
    doc = policy_doc(g1, g2)
    doc["guests"][g1]["settings"] = {"hard_limit": "2G"}
    rc, out, err = run(journal, "import", write(tmp_path, "b.json", doc))
    assert rc == 0, err
    assert config_of(journal, g1) == {"hard_limit": "2G"}
    assert config_of(journal, g2) == {"soft_limit": "512M"}


@pytest.mark.parametrize("doc_or_text, message", [
    ("policy_doc(g1, g2, version=2)", "schema version 2 is newer"),
    ("policy_doc(g1, g2, bad={'cpu_shares': 'lots'})", "guests." + "{g2}" + ".settings.cpu_shares"),
    ("policy_doc(g1, g2, bad={'no_such': '1'})", "no_such"),
    ("policy_doc(g1, g2, bad={'hard_limit': '1G', 'swap_hard_limit': '100M'})", "swap"),
    ("dict(policy_doc(g1, g2), guests={**policy_doc(g1, g2)['guests'], 'nobody-here': {}})",
     "nobody-here"),
    ("'{\"schema\": \"cgctl-policy\", \"version\": 1, \"guests\": {'", "cannot be parsed"),
])
def test_half_valid_file_writes_nothing(env, tmp_path, doc_or_text, message):
    journal, (g1, g2), conn = env
    doc = eval(doc_or_text)  # the cases name g1/g2 of this test's guests
    path = write(tmp_path, "bad.json", json.dumps(doc) if isinstance(doc, dict) else doc, None)
    rc, out, err = run(journal, "import", path)
    assert rc in (1, 2), (out, err)  # 2: a bad file; 1: a guest this host does not know
    assert message.format(g2=g2) in err and len(err.strip().splitlines()) == 1
    assert config_of(journal, g1) == {} and config_of(journal, g2) == {}
    with pytest.raises(libvirt.libvirtError):  # nor any metadata
        conn.lookupByName(g1).metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata.NS,
                                       libvirt.VIR_DOMAIN_AFFECT_CONFIG)


# --------------------------------------------------------------------------- profiles

def test_profiles_roundtrip_and_a_second_import_changes_nothing(env, tmp_path):
    """Profiles and the guests' references go out with export and come back with import
    (docs/fleet.md#profiles); the domain's metadata carries the profile by value."""
    journal, (g1, g2), conn = env
    doc = {"schema": "cgctl-policy", "version": 1,
           "profiles": {"gold": {"cpu_shares": "2048", "hard_limit": "2G"}},
           "guests": {g1: {"profile": "gold", "settings": {"hard_limit": "1G"}},
                      g2: {"profile": "", "settings": {"soft_limit": "512M"}}}}
    for fmt in ("toml", "json"):
        path = write(tmp_path, f"p.{fmt}", doc, fmt)
        rc, out, err = run(journal, "import", path)
        assert (rc, err) == (0, ""), err
    assert "nothing to change" in out
    d = json.loads(run(journal, "--json", "show", g1)[1])
    assert d["profile"] == "gold"
    by = {r["param"]: r for r in d["params"]}
    assert (by["cpu_shares"]["config"], by["cpu_shares"]["from_profile"]) == ("2048", True)
    assert (by["hard_limit"]["config"], by["hard_limit"]["from_profile"]) == ("1G", False)
    assert json.loads(run(journal, "--json", "show", g2)[1])["profile"] is None
    md = metadata.parse(conn.lookupByName(g1).metadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata.NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG))
    assert (md.profile.name, md.profile.values) == (
        "gold", {("cpu_shares", ""): "2048", ("hard_limit", ""): "2G"})
    rc, out, _ = run(journal, "--json", "export")
    again = json.loads(out)
    assert again["profiles"] == doc["profiles"]
    assert {n: (g.get("profile"), g["settings"]) for n, g in again["guests"].items()} == \
        {n: (g["profile"], g["settings"]) for n, g in doc["guests"].items()}


def test_unknown_profile_in_a_policy_writes_nothing(env, tmp_path):
    journal, (g1, g2), conn = env
    doc = {"schema": "cgctl-policy", "version": 1,
           "profiles": {"gold": {"cpu_shares": "2048"}},
           "guests": {g1: {"profile": "gold"}, g2: {"profile": "silver"}}}
    rc, out, err = run(journal, "import", write(tmp_path, "p.json", doc))
    assert rc == 2 and "unknown profile 'silver'" in err and len(err.splitlines()) == 1
    assert run(journal, "profile", "list", "--json")[1].strip() == "[]"
    assert json.loads(run(journal, "--json", "show", g1)[1])["profile"] is None

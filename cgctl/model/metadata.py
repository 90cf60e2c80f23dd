"""cgctl's settings inside a domain's own ``<metadata>``, so they travel wherever libvirt takes
the guest (live and offline migration, ``virsh dumpxml``/``define``, XML backups).

Pure: no libvirt (``cgctl.virt`` reads and writes the element), so the hook can parse the XML
libvirt gives it on stdin. docs/fleet.md describes the format and the conflict rules.

The element, in the namespace ``NS`` (prefix ``cgctl``)::

    <cgctl:guest xmlns:cgctl="http://cgctl.org/xmlns/guest" version="1">
      <config>                       the journal config: what the next start applies
        <set param="hard_limit" value="1GiB" at="2025-05-01T12:00:00.000001+00:00"
             host="hosta" user="root(0)"/>
        <unset param="soft_limit" at="..." host="..." user="..."/>     (a tombstone)
      </config>
      <live>                         --live changes in force on this running instance
        <set param="cpu_shares" value="512" at="..." host="..." user="..."/>
      </live>
      <profile name="gold" at="..." host="..." user="...">   the guest's profile, by value
        <set param="cpu_shares" value="2048"/>                 (name "": no profile at all)
      </profile>
    </cgctl:guest>

``<profile>`` came after version 1 was released; a reader that does not know it skips it (as
any unknown section), so it did not bump the version: such a reader applies the guest's own
settings without the profile's.

libvirt keeps a live and a persistent copy of the metadata (and copies the persistent one to
the live one at each start): ``--config`` writes the persistent copy's ``<config>``, ``--live``
the live copy's ``<live>``, ``--perm`` both copies' ``<config>`` (and drops the key from
``<live>``). Each entry carries when, where and by whom it was decided; those stamps settle a
conflict with a host's journal (``merge``): per setting, the newer decision wins.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from typing import Dict, List, NamedTuple, Optional, Tuple

NS = "http://cgctl.org/xmlns/guest"
PREFIX = "cgctl"
ROOT = "guest"
VERSION = 1  # the schema this cgctl writes and understands; a newer one is refused whole
MAX_ENTRIES = 1000  # a guest has a few dozen settings; never trust a document without bound

Key = Tuple[str, str]  # (param, device)


class MetadataError(Exception):
    """The cgctl element is there but cannot be used (malformed, from a newer cgctl)."""


class Entry(NamedTuple):
    value: Optional[str]  # canonical text; None: removed (a tombstone)
    at: str  # ISO 8601 UTC, as the journal writes it (sorts as text)
    host: str
    user: str


class ProfileEntry(NamedTuple):
    name: str  # "": the guest uses no profile (not even a host's default)
    values: Dict[Key, str]  # the profile's settings when this was written (canonical text)
    at: str
    host: str
    user: str


class Doc:
    """One copy (live or persistent) of a guest's cgctl metadata."""

    def __init__(self, config: Optional[Dict[Key, Entry]] = None,
                 live: Optional[Dict[Key, Entry]] = None,
                 profile: Optional[ProfileEntry] = None):
        self.config: Dict[Key, Entry] = dict(config or {})
        self.live: Dict[Key, Entry] = dict(live or {})
        self.profile = profile

    def __eq__(self, other) -> bool:
        return isinstance(other, Doc) and (self.config, self.live, self.profile) == \
            (other.config, other.live, other.profile)

    def __repr__(self) -> str:
        return f"Doc(config={self.config!r}, live={self.live!r}, profile={self.profile!r})"


def hostname() -> str:
    return socket.gethostname()


# --------------------------------------------------------------------------- XML

def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_element(elem: ET.Element) -> Doc:
    """The cgctl element (any prefix; children with or without the namespace) → Doc."""
    raw = elem.get("version")
    try:
        version = int(raw)
    except (TypeError, ValueError):
        raise MetadataError(f"cgctl metadata without a valid version ({raw!r})") from None
    if version > VERSION:
        raise MetadataError(f"cgctl metadata has schema version {version}, newer than this "
                            f"cgctl knows ({VERSION}): upgrade cgctl on this host")
    if version < 1:
        raise MetadataError(f"cgctl metadata has schema version {version}")
    doc = Doc()
    count = 0
    for section in elem:
        if _local(section.tag) == "profile":
            doc.profile = _parse_profile(section)
            count += len(doc.profile.values)
            if count > MAX_ENTRIES:
                raise MetadataError(f"cgctl metadata holds more than {MAX_ENTRIES} entries")
            continue
        where = {"config": doc.config, "live": doc.live}.get(_local(section.tag))
        if where is None:
            continue  # an element a later minor revision may add: not ours to judge
        for item in section:
            count += 1
            if count > MAX_ENTRIES:
                raise MetadataError(f"cgctl metadata holds more than {MAX_ENTRIES} entries")
            kind = _local(item.tag)
            if kind not in ("set", "unset"):
                continue
            param = item.get("param") or ""
            if not param:
                raise MetadataError(f"cgctl metadata: <{kind}> without param")
            value = item.get("value") if kind == "set" else None
            if kind == "set" and value is None:
                raise MetadataError(f"cgctl metadata: <set param={param!r}> without value")
            at = item.get("at") or ""
            if not at:
                raise MetadataError(f"cgctl metadata: {param} without a time (at=)")
            where[(param, item.get("device") or "")] = Entry(
                value, at, item.get("host") or "", item.get("user") or "")
    return doc


def _parse_profile(section: ET.Element) -> ProfileEntry:
    name = section.get("name")
    at = section.get("at") or ""
    if name is None or not at:
        raise MetadataError("cgctl metadata: <profile> without name or time (at=)")
    values: Dict[Key, str] = {}
    for item in section:
        if _local(item.tag) != "set":
            continue
        param, value = item.get("param") or "", item.get("value")
        if not param or value is None:
            raise MetadataError(f"cgctl metadata: profile {name!r}: <set> without param or value")
        values[(param, item.get("device") or "")] = value
        if len(values) > MAX_ENTRIES:
            raise MetadataError(f"cgctl metadata holds more than {MAX_ENTRIES} entries")
    return ProfileEntry(name, values, at, section.get("host") or "", section.get("user") or "")


def find_in_domain(domain_xml) -> Optional[Doc]:
    """The cgctl Doc inside a domain XML (bytes, str, or the parsed element), None if it has
    none.

    MetadataError if the domain XML cannot be parsed or the element is unusable."""
    if isinstance(domain_xml, ET.Element):
        root = domain_xml  # parsed already (libvirt's status file, runfiles.running_with_domain)
    else:
        if isinstance(domain_xml, bytes):
            domain_xml = domain_xml.decode("utf-8", "replace")
        if not domain_xml or not domain_xml.strip():
            return None
        try:
            root = ET.fromstring(domain_xml)
        except ET.ParseError as exc:
            raise MetadataError(f"malformed domain XML ({exc})") from None
    if root.tag == "domstatus" and root.find("domain") is not None:
        root = root.find("domain")
    md = root.find("metadata")
    if md is None:
        return None
    elem = md.find(f"{{{NS}}}{ROOT}")
    return None if elem is None else parse_element(elem)


def parse(text: Optional[str]) -> Optional[Doc]:
    """The element's text as libvirt's getMetadata returns it (None/empty: no Doc)."""
    if not text or not text.strip():
        return None
    try:
        elem = ET.fromstring(text)
    except ET.ParseError as exc:
        raise MetadataError(f"malformed cgctl metadata ({exc})") from None
    if _local(elem.tag) != ROOT:
        raise MetadataError(f"cgctl metadata is <{_local(elem.tag)}>, not <{ROOT}>")
    return parse_element(elem)


def serialize(doc: Doc) -> str:
    """The element for libvirt's setMetadata (which puts it in ``NS`` with ``PREFIX``).

    Written without a namespace: libvirt sets the root's namespace itself; the parser
    accepts the children either way."""
    root = ET.Element(ROOT, {"version": str(VERSION)})
    for name, entries in (("config", doc.config), ("live", doc.live)):
        if not entries:
            continue
        section = ET.SubElement(root, name)
        for (param, device), e in sorted(entries.items()):
            attrs = {"param": param}
            if device:
                attrs["device"] = device
            if e.value is not None:
                attrs["value"] = e.value
            attrs.update({"at": e.at, "host": e.host, "user": e.user})
            ET.SubElement(section, "set" if e.value is not None else "unset", attrs)
    if doc.profile is not None:
        pr = doc.profile
        section = ET.SubElement(root, "profile", {"name": pr.name, "at": pr.at,
                                                  "host": pr.host, "user": pr.user})
        for (param, device), value in sorted(pr.values.items()):
            attrs = {"param": param}
            if device:
                attrs["device"] = device
            attrs["value"] = value
            ET.SubElement(section, "set", attrs)
    return ET.tostring(root, encoding="unicode")


# --------------------------------------------------------------------------- changes

def record(doc: Optional[Doc], changes: Dict[Key, Optional[str]], *, section: str, at: str,
           host: str, user: str, drop_live: bool = False) -> Doc:
    """A copy of ``doc`` with ``changes`` (key → canonical text, None = removed) recorded in
    ``section`` ('config' or 'live'); ``drop_live`` removes those keys from ``live``."""
    out = Doc(doc.config if doc else None, doc.live if doc else None,
              doc.profile if doc else None)
    target = out.config if section == "config" else out.live
    for key, value in changes.items():
        target[key] = Entry(value, at, host, user)
        if drop_live:
            out.live.pop(key, None)
        other = _same_file(key) if value is not None else None
        if other is None:
            continue
        # the other parameter of one kernel file (cpu_shares/cpu_weight, weight/io_weight)
        # is replaced, as in the journal's config (cgctl/core/controller.py): a tombstone in
        # <config> so a receiving host drops it too; out of <live>, which holds what is in force
        out.live.pop(other, None)
        if section == "config" and out.config.get(other, Entry(None, "", "", "")).value is not None:
            out.config[other] = Entry(None, at, host, user)
    return out


def _same_file(key: Key) -> Optional[Key]:
    from cgctl.model.params import same_file_partner  # lazily: the hook parses XML first
    return same_file_partner(key)


def record_profile(doc: Optional[Doc], profile: Optional[ProfileEntry]) -> Doc:
    """A copy of ``doc`` whose ``<profile>`` is ``profile`` (None: without one)."""
    return Doc(doc.config if doc else None, doc.live if doc else None, profile)


# --------------------------------------------------------------------------- conflict rules

class Decision(NamedTuple):
    key: Key
    journal: Optional[str]  # the journal's value before
    incoming: Entry
    taken: bool  # the incoming entry won (the journal now holds it)
    why: str


def journal_stamps(history_rows) -> Dict[Key, str]:
    """Per setting, the time of the decision the journal's config holds: the newest history row
    (not of an undefined guest's past) that changed the config and succeeded. Rows imported
    from metadata carry their origin's time (see ``merge``)."""
    stamps: Dict[Key, str] = {}
    for r in history_rows:
        if r.deleted or r.outcome != "ok" or r.mode not in ("config", "live+config"):
            continue
        key = (r.param, r.device)
        if r.at > stamps.get(key, ""):
            stamps[key] = r.at
    return stamps


def decide(config: Dict[Key, str], stamps: Dict[Key, str], incoming: Dict[Key, Entry]) \
        -> List[Decision]:
    """The rules (docs/fleet.md): per setting, the same value is no conflict (nothing to do);
    otherwise the incoming entry wins if the journal has no decision on it or an older one;
    on a tie or a newer journal decision, the journal keeps its value."""
    out = []
    for key, e in sorted(incoming.items()):
        have = config.get(key)
        if have == e.value:
            continue
        stamp = stamps.get(key)
        if stamp is None or e.at > stamp:
            why = (f"from {e.host or '?'} ({e.at})" if stamp is None else
                   f"from {e.host or '?'} ({e.at}), newer than this host's ({stamp})")
            out.append(Decision(key, have, e, True, why))
        else:
            out.append(Decision(key, have, e, False,
                                f"kept: this host's value ({stamp}) is newer than "
                                f"{e.host or '?'}'s ({e.at})"))
    return out


def live_overlay(doc: Optional[Doc], stamps: Dict[Key, str]) -> Dict[Key, str]:
    """The ``<live>`` entries to put in force on top of the config: those newer than the
    journal's decision on the same setting (a later --config/--perm supersedes a --live)."""
    if doc is None:
        return {}
    return {key: e.value for key, e in doc.live.items()
            if e.value is not None and e.at > stamps.get(key, "")}


def origin(e: Entry) -> str:
    """The history row's user for an imported entry: who decided it, and where."""
    return f"{e.user or '?'}@{e.host or '?'}"

"""The facts the hook takes from the domain XML libvirt writes on its stdin: name, UUID and vCPU
count, parsed at most once per call. libvirt's status files (``<domstatus>``, with the PID) are
parsed by ``cgctl/host/runfiles.py`` and the ``<metadata>`` element by ``cgctl/model/metadata.py``.
"""

from __future__ import annotations

from cgctl.start.options import HookFailure


class DomainInfo:
    __slots__ = ("name", "uuid", "vcpus")

    def __init__(self, name, uuid, vcpus):
        self.name, self.uuid, self.vcpus = name, uuid, vcpus


def parse_domain_xml(xml: bytes) -> DomainInfo:
    """Name, UUID and vCPU count from the domain XML; HookFailure if it is not one."""
    import xml.etree.ElementTree as ET
    from cgctl.model.units import normalize_uuid
    if not xml.strip():
        raise HookFailure("no domain XML on stdin")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise HookFailure(f"malformed domain XML on stdin ({exc})") from None
    if root.tag == "domstatus":  # not what libvirt sends, but harmless
        root = root.find("domain") if root.find("domain") is not None else root
    if root.tag != "domain":
        raise HookFailure(f"stdin holds <{root.tag}>, not a <domain> XML")
    uuid = normalize_uuid((root.findtext("uuid") or "").strip())
    if not uuid:
        raise HookFailure("the domain XML on stdin has no valid <uuid>")
    vcpus = 0
    v = root.find("vcpu")
    if v is not None:
        try:
            vcpus = int(v.get("current") or (v.text or "0").strip())
        except ValueError:
            vcpus = 0
    return DomainInfo((root.findtext("name") or "").strip(), uuid, vcpus)


class StdinDomain:
    """The domain XML of this call: its bytes, and its facts parsed on first use only (a call
    that needs none pays nothing; a problem with it is logged once, not by every step)."""

    __slots__ = ("xml", "name", "log", "_info", "_parsed")

    def __init__(self, xml: bytes, name: str, log):
        self.xml, self.name, self.log = xml, name, log
        self._info, self._parsed = None, False

    def info(self):
        """The DomainInfo, or None (logged) if the XML is unusable or names another guest."""
        if not self._parsed:
            self._parsed = True
            self._info = self._parse()
        return self._info

    def _parse(self):
        try:
            info = parse_domain_xml(self.xml)
        except HookFailure as exc:
            self.log(str(exc), error=True)
            return None
        if info.name and info.name != self.name:
            self.log(f"the domain XML on stdin names {info.name!r}, not {self.name!r}; ignored",
                     error=True)
            return None
        return info

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
    """Name, UUID and vCPU count from the domain XML; HookFailure if it is not one.

    Read with expat itself, not ElementTree: this runs in the process libvirt waits for at
    `prepare begin`, and ElementTree's imports (re, copy, ...) cost it ~5 ms. The same parser
    underneath (the same limits on entity expansion); what is taken, as ElementTree's
    ``findtext``/``find`` would: the first ``name``, ``uuid`` and ``vcpu`` children of
    ``<domain>`` (of ``<domstatus>``'s first ``<domain>``), their text before any child."""
    from xml.parsers import expat
    from cgctl.model.ident import normalize_uuid
    if not xml.strip():
        raise HookFailure("no domain XML on stdin")
    f = _Facts()
    p = expat.ParserCreate(namespace_separator="}")
    p.StartElementHandler, p.EndElementHandler = f.start, f.end
    p.CharacterDataHandler = f.text
    # an external entity is an error, as ElementTree made it (nothing is ever read from it)
    p.ExternalEntityRefHandler = lambda *_: 0
    try:
        p.Parse(xml, True)
    except expat.ExpatError as exc:
        raise HookFailure(f"malformed domain XML on stdin ({exc})") from None
    if f.root != "domain" and not (f.root == "domstatus" and f.base == 2):
        raise HookFailure(f"stdin holds <{f.root}>, not a <domain> XML")
    uuid = normalize_uuid("".join(f.fields.get("uuid", ())).strip())
    if not uuid:
        raise HookFailure("the domain XML on stdin has no valid <uuid>")
    vcpus = 0
    if "vcpu" in f.fields:
        try:
            vcpus = int(f.vcpu_current or "".join(f.fields["vcpu"]).strip() or "0")
        except ValueError:
            vcpus = 0
    return DomainInfo("".join(f.fields.get("name", ())).strip(), uuid, vcpus)


class _Facts:
    """expat's callbacks for ``parse_domain_xml``."""

    def __init__(self):
        self.depth, self.root, self.base, self.done = 0, None, None, False
        self.fields, self.cur, self.vcpu_current = {}, None, None

    def start(self, tag, attrs):
        if "}" in tag:
            tag = "{" + tag  # a namespaced element is no libvirt one ({ns}tag, as ElementTree)
        depth, self.depth = self.depth, self.depth + 1
        self.cur = None  # an element's text is what precedes its first child
        if depth == 0:
            self.root = tag
            if tag == "domain":
                self.base = 1
        elif depth == 1 and self.root == "domstatus" and tag == "domain" and self.base is None:
            self.base = 2
        elif not self.done and depth == self.base and tag in ("name", "uuid", "vcpu") \
                and tag not in self.fields:
            self.fields[tag], self.cur = [], tag
            if tag == "vcpu":
                self.vcpu_current = attrs.get("current")

    def end(self, tag):
        self.depth -= 1
        self.cur = None
        if self.base is not None and self.depth == self.base - 1:
            self.done = True  # the (first) <domain> is over

    def text(self, data):
        if self.cur is not None:
            self.fields[self.cur].append(data)


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

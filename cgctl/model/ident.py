"""A guest's identifiers: a UUID's canonical form and a name that can never be a path.

Imports nothing: the hook process libvirt waits for at `prepare begin` checks both before it
forks (docs/hook.md, "What `prepare begin` does before libvirt goes on"), and `re` alone costs it
~3 ms; ``cgctl.model.units`` and ``cgctl.host.runfiles`` re-export them.
"""

from __future__ import annotations

_HEX = frozenset("0123456789abcdefABCDEF")


def normalize_uuid(ident: str):
    """The canonical lower-case form of ``ident`` if it is a UUID (8-4-4-4-12 hex digits, each
    dash optional), else None. String tests, not the uuid module (it imports platform)."""
    if not isinstance(ident, str):
        return None
    parts, i = [], 0
    for n in (8, 4, 4, 4, 12):
        part = ident[i:i + n]
        if len(part) != n or not _HEX.issuperset(part):
            return None
        parts.append(part.lower())
        i += n
        if n != 12 and ident[i:i + 1] == "-":
            i += 1
    return "-".join(parts) if i == len(ident) else None


def validate_name(name: str) -> str:
    """Return ``name`` if it can only ever be a guest name, never a path; else UsageError."""
    if not isinstance(name, str) or not name:
        from cgctl.errors import UsageError
        raise UsageError(f"invalid guest name {name!r}: empty")
    bad = [c for c in ("/", "\0", "\n") if c in name]
    if bad or name in (".", ".."):
        from cgctl.errors import UsageError
        why = "a guest name cannot be '.' or '..'" if not bad else \
            f"a guest name cannot contain {', '.join(repr(c) for c in bad)}"
        raise UsageError(f"invalid guest name {name!r}: {why}")
    return name

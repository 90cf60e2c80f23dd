"""The command socket's wire format, shared by its two ends: the client (cgctl/cli/fast.py) and
the service (cgctl/service/cmdserver.py). Bytes in, bytes out; every ``cgctl`` run imports it,
so it imports nothing (docs/operations.md, "The command socket").

Request: ``MAGIC``, a 4-byte length, then the ``HEADER`` fields and the arguments, NUL between
them (argv and the environment cannot hold NUL). Answer: ``F`` (the client runs the command
itself), or ``R``, the exit status (4 bytes, signed) and two length-prefixed texts (stdout,
stderr). A reader is handed ``recv(n)``, which returns exactly n bytes or raises.
"""

# no `from __future__ import annotations` (~0.15 ms of every `cgctl` run, cgctl/cli/fast.py)

# the commands the service may run for a client
FORWARDED = frozenset({"set", "memtune", "schedinfo", "blkiotune", "cpuset"})
MAGIC = b"cgctl2\n"  # protocol version 2
# the fields before the arguments
HEADER = ("journal from $CGCTL_JOURNAL", "config file", "SUDO_USER", "loginuid")
MAX_REQUEST = 1024 * 1024
MAX_REPLY = 16 * 1024 * 1024


def encode_request(header, argv) -> bytes:
    """``header``: one text per ``HEADER`` field, in that order."""
    body = "\0".join(list(header) + list(argv)).encode("utf-8", "surrogateescape")
    return MAGIC + len(body).to_bytes(4, "big") + body


def read_request(recv):
    """(header fields, argv), or None for a request this version does not read (another
    client's protocol, too large, too few fields): the client then runs the command itself."""
    if recv(len(MAGIC)) != MAGIC:
        return None
    n = int.from_bytes(recv(4), "big")
    if n > MAX_REQUEST:
        return None
    fields = recv(n).decode("utf-8", "surrogateescape").split("\0")
    if len(fields) < len(HEADER):
        return None
    return tuple(fields[:len(HEADER)]), fields[len(HEADER):]


def _text(text: str) -> bytes:
    """UTF-8; bytes a command line carried (surrogate escapes) back as they were, anything
    else that cannot be encoded replaced: an answer must always go out."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def encode_reply(reply) -> bytes:
    """``reply``: (exit status, stdout, stderr), or None for ``F``."""
    if reply is None:
        return b"F"
    rc, out, err = reply
    o, e = _text(out), _text(err)
    return (b"R" + int(rc).to_bytes(4, "big", signed=True) + len(o).to_bytes(4, "big") + o
            + len(e).to_bytes(4, "big") + e)


def read_reply(recv):
    """(exit status, stdout, stderr), or None for ``F``; ValueError for anything else."""
    head = recv(1)
    if head == b"F":
        return None
    if head != b"R":
        raise ValueError(f"unknown answer {head!r}")
    rc = int.from_bytes(recv(4), "big", signed=True)
    texts = []
    for _ in range(2):
        n = int.from_bytes(recv(4), "big")
        if n > MAX_REPLY:
            raise ValueError("answer too large")
        texts.append(recv(n).decode("utf-8", "replace"))
    return rc, texts[0], texts[1]

"""The ``cgctl`` entry point: hand a change to the running service when there is one.

A Python process that imports cgctl's engine spends ~35 ms before it writes
anything; ``virsh`` spends ~20 ms. The service (``cgctl daemon``) has
everything imported already, so for the commands that change guests this
entry point, which imports only ``socket`` and ``json``, sends the command
line to the service's root-only socket and prints its answer. The service
runs exactly what ``cgctl.cli.main`` would run here (same checks, same
journal, same output, same exit status).

Everything else, and every case where the service cannot answer for us,
runs in this process: no service, another journal or URI than the
service's, test overrides in the environment, ``CGCTL_NO_SERVICE=1``.
A request that reached the service but got no answer is NOT run again
here (it may have been applied): that is an error naming what to check.
"""

from __future__ import annotations

import os
import sys

from . import consts

FORWARDED = frozenset({"set", "memtune", "schedinfo", "blkiotune", "cpuset"})
# environment that changes what the command means: only the service's own meaning is forwarded
_LOCAL_ENV = ("CGCTL_CGROUP_ROOT", "CGCTL_PROC_ROOT", "CGCTL_LIBVIRT_RUN_DIR",
              "CGCTL_LIBVIRT_ETC_DIR", "CGCTL_URIS", "CGCTL_DEBUG", "CGCTL_SYS_DEV_BLOCK")
MAGIC = b"cgctl1\n"  # protocol version 1
MAX_REPLY = 16 * 1024 * 1024
REPLY_TIMEOUT_S = 90.0  # the journal may wait 30 s for a lock; the service's answer comes after


def scan(argv):
    """(command, journal path) the command line means, or (None, None) when it is unusual
    (help, another URI) and is best run here."""
    journal = consts.JOURNAL_PATH
    command = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help", "--version", "-c", "--connect") or a.startswith("--connect="):
            return None, None
        if a == "--journal":
            if i + 1 >= len(argv):
                return None, None
            journal = argv[i + 1]
            i += 1
        elif a.startswith("--journal="):
            journal = a.split("=", 1)[1]
        elif command is None and not a.startswith("-"):
            command = a
        i += 1
    return command, os.path.abspath(journal)


def forwardable(argv) -> bool:
    command, _ = scan(argv)
    return (command in FORWARDED and os.environ.get("CGCTL_NO_SERVICE") != "1"
            and not any(os.environ.get(k) for k in _LOCAL_ENV))


def encode_request(argv, journal: str) -> bytes:
    """``MAGIC len body``; body = journal NUL arg NUL arg ... (argv cannot hold NUL)."""
    body = "\0".join([journal] + list(argv)).encode("utf-8", "surrogateescape")
    return MAGIC + len(body).to_bytes(4, "big") + body


def _recv_exact(s, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        b = s.recv(min(65536, n - len(buf)))
        if not b:
            raise EOFError("the connection closed early")
        buf += b
    return buf


def ask_service(argv, path: str = None):
    """(exit status, stdout, stderr) from the service, or None if it did not take the request.

    ``_socket`` rather than ``socket``, and a few length-prefixed fields rather than JSON:
    those two imports alone cost more than the service takes to make the change."""
    import _socket

    path = path or consts.COMMAND_SOCKET
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return None  # no service: run it here
        try:
            s.sendall(encode_request(argv, scan(argv)[1]))
            s.settimeout(REPLY_TIMEOUT_S)
            head = _recv_exact(s, 1)
            if head == b"F":
                return None  # the service declined (another journal, busy...): run it here
            if head != b"R":
                raise ValueError(f"unknown answer {head!r}")
            rc = int.from_bytes(_recv_exact(s, 4), "big", signed=True)
            texts = []
            for _ in range(2):
                n = int.from_bytes(_recv_exact(s, 4), "big")
                if n > MAX_REPLY:
                    raise ValueError("answer too large")
                texts.append(_recv_exact(s, n).decode("utf-8", "replace"))
        except (OSError, ValueError, EOFError) as exc:
            return (1, "", f"cgctl: error: the service at {path} took the request but did not "
                    f"answer ({exc}); it may or may not be applied: check 'cgctl show'\n")
    finally:
        s.close()
    return rc, texts[0], texts[1]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if forwardable(argv):
        answer = ask_service(argv)
        if answer is not None:
            rc, out, err = answer
            sys.stdout.write(out)
            sys.stderr.write(err)
            return rc
    from .cli import main as run_here
    return run_here(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

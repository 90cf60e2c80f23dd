"""The ``cgctl`` entry point: hand a change to the running service when there is one.

A Python process that imports cgctl's engine spends ~35 ms before it writes
anything; ``virsh`` spends ~20 ms. The service (``cgctl daemon``) has
everything imported already, so for the commands that change guests this
entry point, which imports only ``_socket`` and the wire format (cgctl/wire.py), sends the
command line to the service's root-only socket and prints its answer. The service
runs exactly what ``cgctl.cli.main.main`` would run here (same checks, same
journal, same output, same exit status).

This side only guesses cheaply (``precheck``); the service reads the command
line with the CLI's own parser and decides (cgctl/service/cmdserver.py). Everything
else, and every case where the service cannot answer for us, runs in this
process: no service, a command line that means anything else than the
service's own journal and URIs (``--journal``, ``-c``, ``--config-file``,
``-v``, ``--help``...), test overrides in the environment,
``CGCTL_NO_SERVICE=1``.
A request that reached the service but got no answer is NOT run again
here (it may have been applied): that is an error naming what to check.
"""

# no `from __future__ import annotations`: importing __future__ is ~0.15 ms of every run
# (docs/performance.md, goal 4); the annotations here are builtins

import os
import sys

from cgctl import consts, wire
from cgctl.wire import FORWARDED

# environment that changes what the command means: only the service's own meaning is forwarded
_LOCAL_ENV = ("CGCTL_CGROUP_ROOT", "CGCTL_PROC_ROOT", "CGCTL_LIBVIRT_RUN_DIR",
              "CGCTL_LIBVIRT_ETC_DIR", "CGCTL_URIS", "CGCTL_DEBUG", "CGCTL_SYS_DEV_BLOCK")
REPLY_TIMEOUT_S = 90.0  # the journal may wait 30 s for a lock; the service's answer comes after


def precheck(argv) -> bool:
    """Worth asking the service? Its first word is a forwarded command and it asks for no
    help. Only a hint: the service decides with the real parser (cmdserver.refusal)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return command in FORWARDED and not any(a in ("-h", "--help", "--version") for a in argv)


def forwardable(argv) -> bool:
    return (precheck(argv) and os.environ.get("CGCTL_NO_SERVICE") != "1"
            and not any(os.environ.get(k) for k in _LOCAL_ENV))


def _loginuid() -> str:
    try:
        with open("/proc/self/loginuid") as f:
            return f.read().strip()
    except OSError:
        return ""


def encode_request(argv) -> bytes:
    """The request for ``argv`` with this process's ``wire.HEADER`` fields. The client's uid
    is not sent: the service takes it from the kernel (SO_PEERCRED)."""
    journal = os.environ.get("CGCTL_JOURNAL", "")
    header = [os.path.abspath(journal) if journal else "",  # relative: to OUR working directory
              os.path.abspath(consts.CONFIG_PATH),
              os.environ.get("SUDO_USER", ""), _loginuid()]
    return wire.encode_request(header, argv)


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
        sent = True
        try:
            s.sendall(encode_request(argv))
        except OSError:
            # the service closed before reading it all (too many clients): it cannot run a
            # request it did not read whole; its "F" may still be waiting to be read
            sent = False
        try:
            s.settimeout(REPLY_TIMEOUT_S)
            # None: the service declined (another journal, busy...): run it here
            return wire.read_reply(lambda n: _recv_exact(s, n))
        except (OSError, ValueError, EOFError) as exc:
            if not sent:
                return None
            return (1, "", f"cgctl: error: the service at {path} took the request but did not "
                    f"answer ({exc}); it may or may not be applied: check 'cgctl show'\n")
    finally:
        s.close()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if forwardable(argv):
        answer = ask_service(argv)
        if answer is not None:
            rc, out, err = answer
            sys.stdout.write(out)
            sys.stderr.write(err)
            return rc
    from cgctl.cli.main import main as run_here
    return run_here(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

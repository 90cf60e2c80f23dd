"""`cgctl set` handed to the service over its socket (cgctl.fast + cgctl.cmdserver)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading

import pytest

from cgctl import cmdserver, fast

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def sock_path(tmp_path):
    # AF_UNIX paths stop at 107 bytes; pytest's tmp_path can be longer
    path = f"/tmp/cgctl-ut-{os.getpid()}-{threading.get_ident() % 10000}.sock"
    yield path
    if os.path.exists(path):
        os.unlink(path)


@pytest.fixture
def server(sock_path, tmp_path):
    calls = []

    def runner(argv):
        calls.append(list(argv))
        return 3, "out text\n", "err text\n"

    srv = cmdserver.CommandServer(sock_path, str(tmp_path / "j.db"), runner=runner)
    assert srv.start()
    srv.calls = calls
    yield srv
    srv.stop()


def test_forwarded_set_runs_in_the_service(server, tmp_path):
    argv = ["set", "web1", "cpu_shares=300", "--live", "--journal", str(tmp_path / "j.db")]
    assert fast.ask_service(argv, server.path) == (3, "out text\n", "err text\n")
    assert server.calls == [["--journal", str(tmp_path / "j.db")] + argv]
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600


def test_other_journal_or_command_is_declined(server, tmp_path):
    other = ["set", "web1", "cpu_shares=300", "--journal", str(tmp_path / "other.db")]
    assert fast.ask_service(other, server.path) is None
    assert fast.ask_service(["params", "--journal", str(tmp_path / "j.db")], server.path) is None
    assert server.calls == []


def test_forwardable_rules(monkeypatch):
    monkeypatch.delenv("CGCTL_NO_SERVICE", raising=False)
    for k in fast._LOCAL_ENV:
        monkeypatch.delenv(k, raising=False)
    assert fast.forwardable(["set", "g", "cpu_shares=2"])
    assert fast.forwardable(["--json", "memtune", "g", "--hard-limit", "1G"])
    assert not fast.forwardable(["show", "g"])
    assert not fast.forwardable(["set", "g", "x=1", "-c", "qemu:///session"])
    assert not fast.forwardable(["set", "--help"])
    monkeypatch.setenv("CGCTL_NO_SERVICE", "1")
    assert not fast.forwardable(["set", "g", "cpu_shares=2"])
    monkeypatch.delenv("CGCTL_NO_SERVICE")
    monkeypatch.setenv("CGCTL_CGROUP_ROOT", "/elsewhere")
    assert not fast.forwardable(["set", "g", "cpu_shares=2"])


def test_no_service_means_run_here(sock_path):
    assert fast.ask_service(["set", "g", "cpu_shares=2"], sock_path) is None


def test_a_service_that_drops_the_request_is_an_error_not_a_retry(sock_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock_path)
    s.listen(1)

    def drop():
        conn, _ = s.accept()
        conn.recv(65536)
        conn.close()
    t = threading.Thread(target=drop)
    t.start()
    try:
        rc, out, err = fast.ask_service(["set", "g", "cpu_shares=2"], sock_path)
    finally:
        t.join()
        s.close()
    assert rc == 1 and "may or may not be applied" in err and err.count("\n") == 1


def test_a_second_service_does_not_steal_the_socket(server, tmp_path):
    other = cmdserver.CommandServer(server.path, str(tmp_path / "j.db"), runner=lambda a: (0, "", ""))
    assert other.start() is False
    assert fast.ask_service(["set", "g", "cpu_shares=2", "--journal", str(tmp_path / "j.db")],
                            server.path)[0] == 3   # still the first one


def test_a_stale_socket_is_replaced(sock_path, tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock_path)
    s.close()  # a service that died: the file stays, nobody listens
    srv = cmdserver.CommandServer(sock_path, str(tmp_path / "j.db"), runner=lambda a: (0, "ok\n", ""))
    try:
        assert srv.start()
        assert fast.ask_service(["set", "g", "cpu_shares=2", "--journal",
                                 str(tmp_path / "j.db")], sock_path) == (0, "ok\n", "")
    finally:
        srv.stop()
    assert not os.path.exists(sock_path)


def test_other_users_are_refused(server, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    os.chmod(os.path.dirname(server.path), 0o1777)  # /tmp already is; the socket stays 0600
    os.chmod(server.path, 0o666)                     # let nobody reach it: the uid check answers
    code = ("import sys; sys.path.insert(0, %r); from cgctl import fast; "
            "print(fast.ask_service(['set', 'g', 'cpu_shares=2', '--journal', %r], %r))"
            % (ROOT, str(tmp_path / "j.db"), server.path))
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "permission denied" in r.stdout, r.stderr
    assert server.calls == []


def test_cli_output_is_captured_per_call():
    from cgctl import cli
    rc, out, err = cli.run_captured(["params", "--json"])
    assert rc == 0 and out.startswith("[") and err == ""
    rc, out, err = cli.run_captured(["set"])
    assert rc == 2 and out == "" and err.startswith("cgctl: error:")

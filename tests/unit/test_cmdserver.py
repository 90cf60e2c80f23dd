"""`cgctl set` handed to the service over its socket (cgctl.cli.fast, cgctl.wire and
cgctl.service.cmdserver)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import select
import threading

import pytest

from cgctl.service import cmdserver
from cgctl import consts, wire
from cgctl.cli import fast
from cgctl.cli import main as cli
from tests.otheruser import need_python_as_nobody

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def sock_path(tmp_path):
    # AF_UNIX paths stop at 107 bytes; pytest's tmp_path can be longer
    path = f"/tmp/cgctl-ut-{os.getpid()}-{threading.get_ident() % 10000}.sock"
    yield path
    if os.path.exists(path):
        os.unlink(path)


@pytest.fixture
def client_env(tmp_path, monkeypatch):
    """The client's side: its journal is the service's, its config file has nothing."""
    monkeypatch.setenv("CGCTL_JOURNAL", str(tmp_path / "j.db"))
    monkeypatch.setattr(consts, "CONFIG_PATH", str(tmp_path / "none.toml"))
    for k in fast._LOCAL_ENV + ("CGCTL_NO_SERVICE", "SUDO_USER"):
        monkeypatch.delenv(k, raising=False)
    return tmp_path


@pytest.fixture
def server(sock_path, client_env):
    calls, whos = [], []

    def runner(argv, who=None):
        calls.append(list(argv))
        whos.append(who)
        return 3, "out text\n", "err text\n"

    srv = cmdserver.CommandServer(sock_path, str(client_env / "j.db"), cli, runner=runner)
    assert srv.start()
    srv.calls, srv.whos = calls, whos
    yield srv
    srv.stop()


def served_as(srv, argv):
    """What the service runs for a client's argv: its journal and URIs, then the argv."""
    return ["--journal", srv.journal] + [w for u in srv.uris for w in ("-c", u)] + list(argv)


def test_forwarded_set_runs_in_the_service(server, tmp_path):
    argv = ["set", "web1", "cpu_shares=300", "--live"]
    assert fast.ask_service(argv, server.path) == (3, "out text\n", "err text\n")
    assert server.calls == [served_as(server, argv)]
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    argv = ["--json", "memtune", "web1", "--hard-limit", "1G", "--perm"]
    assert fast.ask_service(argv, server.path)[0] == 3
    assert server.calls[-1] == served_as(server, argv)


def test_other_journal_or_command_is_declined(server, tmp_path, monkeypatch):
    monkeypatch.setenv("CGCTL_JOURNAL", str(tmp_path / "other.db"))
    assert fast.ask_service(["set", "web1", "cpu_shares=300"], server.path) is None
    monkeypatch.setenv("CGCTL_JOURNAL", str(tmp_path / "j.db"))
    assert fast.ask_service(["params"], server.path) is None
    assert server.calls == []


OTHER = "/tmp/cgctl-ut-other.db"
# command lines the old scan() read differently from argparse: each one must be run by the
# client itself (answer "F"), never in the service
BYPASSES = [
    ["set", "g", "cpu_shares=2", "--journ", OTHER],               # abbreviation
    ["--journ", OTHER, "set", "g", "cpu_shares=2"],
    ["set", "g", "cpu_shares=2", "--conn", "qemu:///session"],
    ["--conn=qemu:///session", "set", "g", "cpu_shares=2"],
    ["set", "--he"],                                              # help, abbreviated
    ["set", "-h"], ["set", "g", "cpu_shares=2", "--help"], ["set", "-vh"], ["--version", "set"],
    ["-vc", "qemu:///session", "set", "g", "cpu_shares=2"],       # bundled short flags
    ["set", "g", "cpu_shares=2", "-vcqemu:///session"],
    ["set", "g", "cpu_shares=2", "--journal", OTHER],             # --journal after the command
    ["set", "g", "cpu_shares=2", "--journal=" + OTHER],
    ["set", "g", "cpu_shares=2", "--journal", "j.db"],            # relative: the client's cwd
    ["set", "g", "cpu_shares=2", "--config-file", "/tmp/x.toml"],
    ["set", "g", "cpu_shares=2", "-v"],                           # its log belongs to the client
    ["--journ", "set", "hook", "qemu", "g", "prepare", "begin", "-"],   # not served commands
    ["--journ", "set", "daemon"], ["--journ", "set", "forget", "g"],
    ["--journ", "set", "prune"], ["--journ", "set", "history"],
    ["hook", "qemu", "g", "prepare", "begin", "-"], ["daemon"], ["forget", "g"], ["prune"],
    ["history"], ["--journal", "set", "hook", "install"],
]


@pytest.mark.parametrize("argv", BYPASSES, ids=" ".join)
def test_a_command_line_that_means_more_is_run_by_the_client(server, client_env, argv, capsys,
                                                            monkeypatch):
    monkeypatch.chdir(client_env)  # where the relative j.db is the service's journal
    assert fast.ask_service(argv, server.path) is None
    assert server.calls == []
    assert capsys.readouterr().out == ""  # no help text on the service's stdout


@pytest.mark.parametrize("argv", BYPASSES, ids=" ".join)
def test_refusal_names_why(argv, tmp_path):
    why = cmdserver.refusal(cli, argv, str(tmp_path / "j.db"), str(tmp_path / "none.toml"),
                            str(tmp_path / "j.db"), consts.BUILTIN_URIS)
    assert isinstance(why, str) and why


def test_refusal_accepts_what_it_serves(tmp_path):
    j = str(tmp_path / "j.db")
    for argv in (["set", "g", "cpu_shares=2", "--live"], ["--json", "set", "g", "cpu_shares=2"],
                 ["schedinfo", "g", "--cpu-shares", "5", "--json"], ["cpuset", "g"]):
        assert cmdserver.refusal(cli, argv, j, str(tmp_path / "none.toml"), j,
                                 consts.BUILTIN_URIS) is None, argv


def test_the_clients_config_file_and_environment_decide_its_journal(server, client_env,
                                                                   monkeypatch):
    argv = ["set", "g", "cpu_shares=2"]
    monkeypatch.delenv("CGCTL_JOURNAL")
    conf = client_env / "cgctl.toml"
    monkeypatch.setattr(consts, "CONFIG_PATH", str(conf))
    conf.write_text(f'journal = "{client_env}/other.db"\n')
    assert fast.ask_service(argv, server.path) is None   # the client means other.db
    conf.write_text(f'journal = "{client_env}/j.db"\n')
    assert fast.ask_service(argv, server.path)[0] == 3   # the client means the service's
    conf.write_text('uris = ["test:///default"]\n' f'journal = "{client_env}/j.db"\n')
    assert fast.ask_service(argv, server.path) is None   # ... but other URIs
    conf.write_text("journal = [\n")
    assert fast.ask_service(argv, server.path) is None   # broken: the client says so itself
    # a relative $CGCTL_JOURNAL is the client's cwd's, made absolute by the client
    monkeypatch.setattr(consts, "CONFIG_PATH", str(client_env / "none.toml"))
    monkeypatch.chdir(client_env)
    monkeypatch.setenv("CGCTL_JOURNAL", "j.db")
    assert fast.ask_service(argv, server.path)[0] == 3
    assert server.calls == [served_as(server, argv)] * 2


def test_the_service_records_who_asked(server, monkeypatch):
    from cgctl.core import journal
    monkeypatch.setenv("SUDO_USER", "alice-ut")
    assert fast.ask_service(["set", "g", "cpu_shares=2"], server.path)[0] == 3
    assert server.whos == [journal.describe_user(os.geteuid(), journal.read_loginuid(),
                                                 "alice-ut")]
    assert server.whos[0].endswith(" via sudo by alice-ut")


def test_describe_user():
    from cgctl.core.journal import describe_user
    assert describe_user(0) == "root(0)"
    assert describe_user(0, 4294967295, "root") == "root(0)"
    assert describe_user(0, 0, "bob") == "root(0) via sudo by bob"
    assert describe_user(0, 999999, "bob") == "root(0) login ?(999999) via sudo by bob"


def test_an_unencodable_answer_is_still_answered(server):
    server.runner = lambda argv, who=None: (0, "caf\udce9 \ud800 ok\n", "e\udcff\n")
    rc, out, err = fast.ask_service(["set", "g", "cpu_shares=2"], server.path)
    assert rc == 0 and out.startswith("caf") and out.endswith(" ok\n") and err.endswith("\n")


def _idle(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def test_connections_over_the_cap_are_refused_before_a_thread(server):
    from tests.daemonkit import wait_for
    server.max_connections = 2
    idle = [_idle(server.path), _idle(server.path)]
    try:
        wait_for(lambda: getattr(server, "_open", None) == 2, 10, "two connections served")
        threads = [t for t in threading.enumerate() if t.name == "cgctl-command"]
        assert fast.ask_service(["set", "g", "cpu_shares=2"], server.path) is None
        assert [t for t in threading.enumerate() if t.name == "cgctl-command"] == threads
        assert len(threads) == 2 and server.calls == []
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: server._open == 0, 10, "the idle connections to end")
    assert fast.ask_service(["set", "g", "cpu_shares=2"], server.path)[0] == 3


def test_a_slow_client_gets_a_total_deadline_not_one_per_recv(server):
    """slowloris: one byte at a time, each well within any per-recv timeout."""
    server.request_deadline = 1.0
    s = _idle(server.path)
    try:
        s.sendall(wire.MAGIC + (1000).to_bytes(4, "big"))
        ended = False
        for _ in range(150):  # 15 s of dribbling; the deadline is 1 s
            try:
                s.send(b"x")
            except OSError:
                ended = True
                break
            r, _, _ = select.select([s], [], [], 0.1)
            if r:
                assert s.recv(16) in (b"F", b"")  # "run it yourself", or closed
                ended = True
                break
        assert ended, "the service kept reading a request that never ends"
    finally:
        s.close()
    assert server.calls == []


def test_the_real_runner_never_runs_other_commands(tmp_path):
    for argv in (["daemon"], ["hook", "install", "--hooks-dir", str(tmp_path)],
                 ["--journal", str(tmp_path / "j.db"), "forget", "g"]):
        rc, out, err = cli.run_captured(argv, only=wire.FORWARDED)
        assert rc == 2 and "is not run here" in err, (argv, err)
    assert os.listdir(tmp_path) == []


def test_abbreviations_are_refused_by_every_parser(tmp_path):
    from cgctl.cli import main as cli
    from cgctl.hook import install as hookinstall
    from cgctl.start import options as hookoptions
    rc, out, err = cli.run_captured(["set", "g", "cpu_shares=2", "--journ", "/x"])
    assert rc == 2 and "unrecognized arguments: --journ" in err
    rc = hookinstall.install_main("install", ["--hooks", str(tmp_path)], hookoptions.Options(), None)
    assert rc == 2 and os.listdir(tmp_path) == []


def test_help_is_captured_not_printed(capsys):
    rc, out, err = cli.run_captured(["set", "--help"])
    assert rc == 0 and "PARAM=VALUE" in out and capsys.readouterr().out == ""


def test_forwardable_rules(monkeypatch):
    monkeypatch.delenv("CGCTL_NO_SERVICE", raising=False)
    for k in fast._LOCAL_ENV:
        monkeypatch.delenv(k, raising=False)
    assert fast.forwardable(["set", "g", "cpu_shares=2"])
    assert fast.forwardable(["--json", "memtune", "g", "--hard-limit", "1G"])
    assert not fast.forwardable(["show", "g"])
    assert not fast.forwardable(["set", "--help"])  # the rest the service decides
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
    other = cmdserver.CommandServer(server.path, str(tmp_path / "j.db"), cli,
                                    runner=lambda a, w=None: (0, "", ""))
    assert other.start() is False
    assert fast.ask_service(["set", "g", "cpu_shares=2"], server.path)[0] == 3  # still the first


def test_a_stale_socket_is_replaced(sock_path, client_env, tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock_path)
    s.close()  # a service that died: the file stays, nobody listens
    srv = cmdserver.CommandServer(sock_path, str(tmp_path / "j.db"), cli,
                                  runner=lambda a, w=None: (0, "ok\n", ""))
    try:
        assert srv.start()
        assert fast.ask_service(["set", "g", "cpu_shares=2"], sock_path) == (0, "ok\n", "")
    finally:
        srv.stop()
    assert not os.path.exists(sock_path)


def test_other_users_are_refused(server, tmp_path):
    need_python_as_nobody()
    os.chmod(os.path.dirname(server.path), 0o1777)  # /tmp already is; the socket stays 0600
    os.chmod(server.path, 0o666)                     # let nobody reach it: the uid check answers
    code = ("import sys; sys.path.insert(0, %r); from cgctl.cli import fast; "
            "print(fast.ask_service(['set', 'g', 'cpu_shares=2'], %r))" % (ROOT, server.path))
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "permission denied" in r.stdout, r.stderr
    assert server.calls == []


def test_cli_output_is_captured_per_call():
    rc, out, err = cli.run_captured(["params", "--json"])
    assert rc == 0 and out.startswith("[") and err == ""
    rc, out, err = cli.run_captured(["set"])
    assert rc == 2 and out == "" and err.startswith("cgctl: error:")


def _reader(data: bytes):
    """``recv(n)`` over bytes, as each end hands the wire format: exactly n, or EOFError."""
    buf = bytearray(data)

    def recv(n):
        if len(buf) < n:
            raise EOFError("short")
        out = bytes(buf[:n])
        del buf[:n]
        return out
    return recv


def test_wire_round_trip():
    header = ["/j.db", "/etc/cgctl/cgctl.toml", "alice", "1000"]
    argv = ["set", "g\udcff", "cpu_shares=2"]  # a byte that is not UTF-8 comes back as it was
    assert wire.read_request(_reader(wire.encode_request(header, argv))) == (tuple(header), argv)
    reply = (-3, "caf\udce9\n", "err\n")
    assert wire.read_reply(_reader(wire.encode_reply(reply))) == (-3, "caf\ufffd\n", "err\n")
    assert wire.read_reply(_reader(wire.encode_reply(None))) is None


def test_wire_refuses_what_it_does_not_read():
    other = b"cgctl1\n" + wire.encode_request(["", "", "", ""], ["set"])[len(wire.MAGIC):]
    assert wire.read_request(_reader(other)) is None  # another protocol version
    assert wire.read_request(_reader(wire.MAGIC + (wire.MAX_REQUEST + 1).to_bytes(4, "big"))) \
        is None
    assert wire.read_request(_reader(wire.encode_request(["a"], []))) is None  # fields missing
    with pytest.raises(ValueError):
        wire.read_reply(_reader(b"X"))
    with pytest.raises(ValueError):
        wire.read_reply(_reader(b"R" + bytes(4) + (wire.MAX_REPLY + 1).to_bytes(4, "big")))

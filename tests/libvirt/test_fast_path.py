"""`cgctl set` through the running service (cgctl.cli.fast → cgctl.service.cmdserver) on a real guest:
the same effect, output and exit status as running it in the client's own process."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys

import pytest

from tests.daemonkit import Subprocess

BIN = os.path.join(os.path.dirname(sys.executable), "cgctl")


def cgctl(env, *args):
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def service(tmp_path, libvirt_sandbox):
    if not shutil.which(BIN):
        pytest.skip(f"{BIN} is not installed (scripts/setup.sh installs it)")
    journal = tmp_path / "journal.db"
    svc = Subprocess(["--journal", str(journal), "--config-file", str(tmp_path / "none.toml")],
                     log_path=tmp_path / "daemon.log")
    try:
        svc.wait_log("ready:")
        env = dict(os.environ, CGCTL_SOCKET=svc.socket_path, CGCTL_JOURNAL=str(journal))
        env.pop("CGCTL_NO_SERVICE", None)
        yield svc, env
    finally:
        code = svc.stop()
        print(svc.log())
        assert code == 0


def cpu_shares(guest):
    from cgctl.cgroup import hierarchy
    from cgctl.cgroup.placement import groups_for_pid
    g = groups_for_pid(guest.pid, hierarchy.detect(), guest=guest.name, driver=guest.driver)
    with open(os.path.join(g.machine_dir("cpu"), "cpu.shares")) as f:
        return f.read().strip()


def test_set_is_served_by_the_service(service, make_guest):
    svc, env = service
    guest = make_guest("qemu", start=True)
    r = cgctl(env, "set", guest.name, "cpu_shares=345", "--live")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"guest {guest.name} (qemu): live\n  cpu_shares: 1024 -> 345\n"
    assert cpu_shares(guest) == "345"
    assert "served for pid" in svc.log() and "cpu_shares=345" in svc.log()
    # a bad request: the same one-line error and exit status as without the service
    served = cgctl(env, "set", guest.name, "cpu_shares=1")
    local = cgctl(dict(env, CGCTL_NO_SERVICE="1"), "set", guest.name, "cpu_shares=1")
    assert (served.returncode, served.stdout, served.stderr) == \
        (local.returncode, local.stdout, local.stderr) == (2, "", local.stderr)
    assert served.stderr.count("\n") == 1
    # --json through the service
    r = cgctl(env, "--json", "set", guest.name, "cpu_shares=400", "--perm")
    assert r.returncode == 0 and '"mode": "live+config"' in r.stdout
    assert cpu_shares(guest) == "400"


def test_without_the_service_it_runs_alone(tmp_path, make_guest):
    if not shutil.which(BIN):
        pytest.skip(f"{BIN} is not installed")
    guest = make_guest("qemu", start=True)
    env = dict(os.environ, CGCTL_SOCKET=str(tmp_path / "none.sock"),
               CGCTL_JOURNAL=str(tmp_path / "j.db"))
    r = cgctl(env, "set", guest.name, "cpu_shares=222", "--live")
    assert r.returncode == 0, r.stderr
    assert cpu_shares(guest) == "222"


def test_forwarded_set_records_who_asked(service, make_guest):
    """The history names the client (uid from the kernel, its login uid, its SUDO_USER), not
    the service's root(0): the same text a local run records."""
    svc, env = service
    guest = make_guest("qemu", start=True)
    env = dict(env, SUDO_USER="alice-cgctl-test")
    # a login uid of its own (writable once by root): the client's shell logs in as 4242
    r = subprocess.run(["sh", "-c", 'echo 4242 > /proc/self/loginuid && exec "$@"', "sh", BIN,
                        "set", guest.name, "cpu_shares=321", "--live"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert svc.log().count("served for pid") == 1
    try:
        login = pwd.getpwuid(4242).pw_name
    except KeyError:
        login = "?"
    want = f"root(0) login {login}(4242) via sudo by alice-cgctl-test"
    h = cgctl(env, "--json", "history", guest.name)
    rows = [x for x in json.loads(h.stdout) if x["param"] == "cpu_shares"]
    assert [x["user"] for x in rows] == [want]


def test_a_forwarded_hook_or_daemon_is_refused_and_the_service_lives(service, make_guest):
    svc, env = service
    guest = make_guest("qemu", start=True)
    # what the old scan() let through: `--journ` swallowed `set`, argparse then read `hook`
    for argv in (["--journ", "set", "hook", "qemu", guest.name, "reconnect", "begin", "-"],
                 ["--journ", "set", "daemon"], ["--journ", "set", "prune"],
                 ["set", guest.name, "cpu_shares=2", "--journ", "/tmp/cgctl-other.db"]):
        r = cgctl(env, *argv)
        # the client's own run: a usage error (one line, exit 2), as without the service
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (argv, r.stderr)
    assert "runs it itself" in svc.log() and "served for pid" not in svc.log()
    # straight to the socket, past the client's own check
    from cgctl import wire
    for argv in (["hook", "qemu", guest.name, "reconnect", "begin", "-"], ["daemon"],
                 ["forget", guest.name], ["prune"]):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(svc.socket_path)
        s.sendall(wire.encode_request([env["CGCTL_JOURNAL"], "/nonexistent.toml", "", ""], argv))
        assert s.recv(1) == b"F", argv
        s.close()
    # still there, still serving
    r = cgctl(env, "set", guest.name, "cpu_shares=432", "--live")
    assert r.returncode == 0, r.stderr
    assert svc.proc.poll() is None and cpu_shares(guest) == "432"
    assert svc.log().count("served for pid") == 1

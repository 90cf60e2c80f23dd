"""`cgctl set` through the running service (cgctl.fast → cgctl.cmdserver) on a real guest:
the same effect, output and exit status as running it in the client's own process."""

from __future__ import annotations

import os
import shutil
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
    from cgctl import hostinfo
    from cgctl.resolve import groups_for_pid
    g = groups_for_pid(guest.pid, hostinfo.detect(), guest=guest.name, driver=guest.driver)
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

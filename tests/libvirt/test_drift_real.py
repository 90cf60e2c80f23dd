"""Drift: a cgroup file rewritten behind cgctl's back (as systemd's daemon-reload does to a
scope's weights) is found by `cgctl verify`, written back by `--repair` and by the service."""

from __future__ import annotations

import json
import os

from tests.clikit import cgctl
from tests.daemonkit import Subprocess, wait_for

def run(journal, *args):
    return cgctl(journal, *args, check=False)


def shares_file(guest):
    from cgctl.cgroup import hierarchy
    from cgctl.cgroup.placement import groups_for_pid
    g = groups_for_pid(guest.pid, hierarchy.detect(), guest=guest.name, driver=guest.driver)
    return os.path.join(g.machine_dir("cpu"), "cpu.shares")


def behind_cgctls_back(guest, value):
    with open(shares_file(guest), "w") as f:
        f.write(str(value))


def read(path):
    with open(path) as f:
        return f.read().strip()


def test_verify_and_repair(libvirt_sandbox, make_guest, tmp_path):
    journal = tmp_path / "j.db"
    guest = make_guest("qemu", start=True)
    assert run(journal, "set", guest.name, "cpu_shares=500", "--perm").returncode == 0
    r = run(journal, "verify", guest.name)
    assert r.returncode == 0 and "hold what cgctl last wrote" in r.stdout

    behind_cgctls_back(guest, 1024)
    r = run(journal, "--json", "verify", guest.name)
    assert r.returncode == 1
    (entry,) = json.loads(r.stdout)
    assert entry["drift"] == [{"param": "cpu_shares", "device": None, "expected": "500",
                               "live": "1024"}]

    # a --live change made with cgctl is the new reference, not drift
    assert run(journal, "set", guest.name, "cpu_shares=700", "--live").returncode == 0
    assert run(journal, "verify", guest.name).returncode == 0

    behind_cgctls_back(guest, 1024)
    r = run(journal, "verify", guest.name, "--repair")
    assert r.returncode == 0 and "repaired" in r.stdout
    assert read(shares_file(guest)) == "700"
    hist = json.loads(run(journal, "--json", "history", guest.name).stdout)
    assert hist[-1]["command"] == "drift repair" and hist[-1]["new_value"] == "700"
    behind_cgctls_back(guest, 1024)
    r = run(journal, "--json", "verify", "--all")   # every running guest of the journal
    assert r.returncode == 1 and [e["guest"] for e in json.loads(r.stdout)] == [guest.name]
    assert run(journal, "apply", "--all").returncode == 0
    assert read(shares_file(guest)) == "500"        # the config, applied to the running guest

    # a new run of the guest: what cgctl wrote to the old one is no reference
    libvirt_sandbox.destroy(guest.name, guest.uri)
    libvirt_sandbox.start_guest(guest.name, guest.uri)
    behind_cgctls_back(guest, 900)
    assert run(journal, "verify", guest.name).returncode == 0


def test_the_service_repairs_drift(libvirt_sandbox, make_guest, tmp_path):
    journal = tmp_path / "j.db"
    guest = make_guest("qemu", start=True)
    assert run(journal, "set", guest.name, "cpu_shares=600", "--perm").returncode == 0
    conf = tmp_path / "cgctl.toml"
    conf.write_text("drift_interval = 0.5\n")
    svc = Subprocess(["--journal", str(journal), "--config-file", str(conf)],
                     log_path=tmp_path / "daemon.log")
    try:
        svc.wait_log("ready:")
        behind_cgctls_back(guest, 1024)
        path = shares_file(guest)
        wait_for(lambda: read(path) == "600", timeout=15, what="the service's drift repair")
        assert "drift guest=" in svc.log() and "cgctl wrote 600, the cgroup holds 1024" in svc.log()
    finally:
        code = svc.stop()
        print(svc.log())
    assert code == 0

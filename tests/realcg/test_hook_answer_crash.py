"""The applier answers `started begin` before the journal's commit (docs/hook.md, "The answer
before the commit"): a crash in between. Real v1 groups with a real process in them, a real
SQLite journal, the applier (cgctl/start/applier.py's ``serve``) in a child process that SIGKILL
ends once the script's answer is written and the guest's lock file let go, before the commit.

The child is this file run as a script (``python test_hook_answer_crash.py JOURNAL RUN_DIR
GUESTS.json EARLY``): it takes the guest's lock, finds the go file written (``EARLY``: ``yes``
applies early first, as before the vCPUs run) and prints ``answered`` where the commit would start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"hard_limit": "300M", "cpu_shares": "333"}
WANT_HARD = str(300 << 20)
TOKEN = "4242"


def child(journal: str, run_dir: str, guests_file: str, early_on: str) -> None:
    import time
    from cgctl import consts
    from cgctl.core import batch
    from cgctl.core.controller import Controller
    from cgctl.host import runfiles
    from cgctl.host.runfiles import Guest
    from cgctl.start import applier
    consts.HOOK_RUN_DIR = run_dir
    with open(guests_file) as f:
        g = json.load(f)[0]
    guest = Guest(name=g["name"], uuid=g["uuid"], driver="qemu", uri="qemu:///system",
                  running=True, persistent=True, pid=g["pid"])
    # no libvirt here: the guest is the simulated one (its process is verified by libvirt's
    # status files in production: tests/unit/test_runtime_identity.py)
    runfiles.find_running = lambda *a, **k: guest
    applier._ready = lambda *a: guest

    def answered(self):
        print("answered", flush=True)
        time.sleep(3600)  # SIGKILL comes here: answered, not committed
    batch.Batch.commit = answered
    fd = applier.take("qemu", guest.name)
    held = applier.Held("qemu", guest.name, fd)

    def go():  # `started begin` waits: the script wrote its token
        with open(applier.go_path("qemu", guest.name), "w") as f:
            f.write(f"{TOKEN}\n")
    if early_on == "yes":  # the early apply (before the vCPUs run) comes first
        apply_early = applier._apply_early
        applier._apply_early = lambda *a: (apply_early(*a), go())[0]
    else:
        go()
    ctl = Controller(journal_path=journal, uris=())
    applier.serve(ctl, "qemu", guest.name, guest.uuid, 1, time.monotonic() + 30,
                  lambda *a, **k: None, early=early_on == "yes", let_go=held.let_go)


def _run(args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)


@pytest.fixture
def sim(real_host):
    from tests.realcg.conftest import simulated_guests
    with simulated_guests(real_host, "cgctl-test-answer", 1) as s:
        yield s


def _hard(sim) -> str:
    mem = next(k for k, (_, c) in enumerate(sim.hier) if "memory" in c)
    with open(sim.file(0, mem, "memory.limit_in_bytes")) as f:
        return f.read().strip()


@pytest.mark.parametrize("early_on", ["yes", "no"])
def test_a_crash_between_the_answer_and_the_commit_loses_only_that_record(sim, tmp_path,
                                                                        early_on):
    from cgctl.core.journal import Journal
    from cgctl.model import params as P
    from cgctl.start import applier
    from tests.realcg import test_reconcile_crash as reconcile_crash
    journal, run = str(tmp_path / "j.db"), tmp_path / "run"
    run.mkdir()
    name, uid, pid = sim.names[0], sim.uuids[0], sim.procs[0].pid
    config = {(k, ""): P.canonical_text(P.lookup(k), P.parse_value(P.lookup(k), v))
              for k, v in CONFIG.items()}
    with Journal(journal) as j, j.transaction() as tx:
        tx.set_config(uid, name, "qemu", config)
    guests = tmp_path / "guests.json"
    guests.write_text(json.dumps([{"name": name, "uuid": uid, "pid": pid}]))
    assert _hard(sim) != WANT_HARD

    p = _run([journal, str(run), str(guests), early_on])
    try:
        assert p.stdout.readline().strip() == "answered", p.stderr.read()
        # what the script sees at this point: its answer, the lock file let go, limits in force
        assert (run / f"early-qemu-{name}.result").read_text() == f"ok {TOKEN}\n"
        assert not os.path.exists(applier.lock_path("qemu", name, str(run)))
        assert _hard(sim) == WANT_HARD
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(30)

    with Journal(journal, create=False) as j:
        assert j.integrity_check() == "ok"
        commands = [r.command for r in j.history(uid)]
        instance = j.get_instance(uid)
    # lost: the `started` apply's history rows and (without an early apply) the instance row;
    # the early apply, its own committed transaction, keeps its history and the instance
    assert "hook started" not in commands
    if early_on == "yes":
        assert "hook early" in commands and instance is not None and instance.pid == pid
    else:
        assert commands == [] and instance is None

    # the next reconcile (the service's restart): a guest without this instance's row is
    # applied again and recorded; one with it keeps what it has (its limits are in force)
    r = subprocess.run([sys.executable, reconcile_crash.__file__, journal, str(guests)],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr
    assert _hard(sim) == WANT_HARD
    with Journal(journal, create=False) as j:
        assert j.integrity_check() == "ok"
        assert j.get_instance(uid) is not None and j.get_instance(uid).pid == pid
        reconciled = any(r.command == "reconcile" for r in j.history(uid))
    assert reconciled == (early_on == "no")


if __name__ == "__main__":
    child(*sys.argv[1:5])

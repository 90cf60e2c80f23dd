"""A reconcile killed mid-batch (docs/reliability.md, "A crash during a reconcile"): real v1
groups, real processes in them, a real journal, the service's own reconcile in a child process
that SIGKILL ends while a batch (cgctl/core/batch.py) has written cgroups but not committed.

The child is this file run as a script (``python test_reconcile_crash.py JOURNAL GUESTS.json
[STOP_AFTER]``): it reconciles the guests with batches of ``BATCH`` guests; with STOP_AFTER it
prints ``pending`` once that many guests are written (the last STOP_AFTER % BATCH of them not
committed) and waits there to be killed.
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
BATCH = 4
N = 10
STOP_AFTER = 6  # one batch of 4 committed, 2 guests written and not recorded
CONFIG = {"hard_limit": "300M", "cpu_shares": "333"}
WANT_HARD = str(300 << 20)


def child(journal: str, guests_file: str, stop_after: int = 0) -> None:
    import time
    from cgctl.config import Config
    from cgctl.core import batch, controller
    from cgctl.core.controller import Controller
    from cgctl.host.runfiles import Guest
    from cgctl.service import daemon as D, reconcile, worker
    batch.MAX_GUESTS, batch.MAX_AGE_S = BATCH, 3600.0
    with open(guests_file) as f:
        guests = [Guest(name=g["name"], uuid=g["uuid"], driver="qemu", uri="qemu:///system",
                        running=True, persistent=True, pid=g["pid"]) for g in json.load(f)]
    written = []
    apply_settings = controller.Controller.apply_settings

    def counted(self, guest, *a, **kw):
        out = apply_settings(self, guest, *a, **kw)
        written.append(guest.name)
        if len(written) == stop_after:
            print("pending", flush=True)
            time.sleep(3600)  # SIGKILL comes here
        return out
    controller.Controller.apply_settings = counted

    class Lister:
        def running_guests(self):
            return guests
    d = D.Daemon(Config(journal=journal, uris=("test:///default",)), install_signals=False)
    d.worker.ctl = Controller(journal_path=journal, uris=())
    reconcile.reconcile(d.worker, worker.Job("reconcile", "test:///default", Lister(), 1))
    d.worker.ctl.close()
    print("done", flush=True)


def _run(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True, **kw)


@pytest.fixture
def sim(real_host):
    from tests.realcg.conftest import simulated_guests
    with simulated_guests(real_host, "cgctl-test-crash", N) as s:
        yield s


def _hard(sim, i) -> str:
    mem = next(k for k, (_, c) in enumerate(sim.hier) if "memory" in c)
    with open(sim.file(i, mem, "memory.limit_in_bytes")) as f:
        return f.read().strip()


def test_a_reconcile_killed_mid_batch_loses_only_uncommitted_records(sim, tmp_path):
    from cgctl.core.journal import Journal
    from cgctl.model import params as P
    journal = str(tmp_path / "j.db")
    config = {(k, ""): P.canonical_text(P.lookup(k), P.parse_value(P.lookup(k), v))
              for k, v in CONFIG.items()}
    with Journal(journal) as j, j.transaction() as tx:
        for name, uid in zip(sim.names, sim.uuids):
            tx.set_config(uid, name, "qemu", config)
    guests = tmp_path / "guests.json"
    guests.write_text(json.dumps([{"name": n, "uuid": u, "pid": p.pid}
                                  for n, u, p in zip(sim.names, sim.uuids, sim.procs)]))
    before = [_hard(sim, i) for i in range(N)]
    assert WANT_HARD not in before

    p = _run([journal, str(guests), str(STOP_AFTER)])
    try:
        assert p.stdout.readline().strip() == "pending", p.stderr.read()
        os.kill(p.pid, signal.SIGKILL)  # mid-batch: 2 guests written, not committed
    finally:
        p.wait(30)

    # what the crash left: cgroups of the first 6 written; the journal holds exactly the
    # committed batch (4 guests: instance and history both, nothing half)
    assert [_hard(sim, i) == WANT_HARD for i in range(N)] == [True] * STOP_AFTER + \
        [False] * (N - STOP_AFTER)
    with Journal(journal, create=False) as j:
        assert j.integrity_check() == "ok"
        recorded = {u for u in sim.uuids if j.get_instance(u) is not None}
        with_history = {u for u in sim.uuids if j.history(u)}
    assert recorded == with_history == set(sim.uuids[:BATCH])

    p = _run([journal, str(guests)])  # the next reconcile (the service's restart)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and out.strip() == "done", err
    assert all(_hard(sim, i) == WANT_HARD for i in range(N))
    with Journal(journal, create=False) as j:
        assert j.integrity_check() == "ok"
        assert all(j.get_instance(u) is not None for u in sim.uuids)
        reconciled = {u for u in sim.uuids if any(r.command == "reconcile" for r in j.history(u))}
    assert reconciled == set(sim.uuids)  # the 6 left unrecorded were applied again


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)

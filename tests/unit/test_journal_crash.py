"""The journal under SIGKILL and under contention, with real processes on a real file.

The workers are this file run as a script (``python test_journal_crash.py writer PATH``),
so what they do is readable here next to what the tests check.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUEST = "0b5e5a9e-8f1e-4c36-a4c7-00000000c0de"
NAME = "crashme"


def worker(*args: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, __file__, *args], stdout=stdout,
                            stderr=subprocess.PIPE, env=env, text=True)


# -- the workers ---------------------------------------------------------------------------

def run_writer(path: str) -> None:
    """Commit numbered changes forever; print each number once its commit has returned.

    Change n is one transaction: config rows ("seq", str(n)) and ("last", "") plus its
    history row.  It continues from what the journal holds, so numbers stay contiguous
    across kills.
    """
    from cgctl.core.journal import Journal
    journal = Journal(path, create=True)
    while True:
        with journal.transaction() as tx:
            last = tx.get_config(GUEST).get(("last", ""))
            n = 0 if last is None else int(last) + 1
            tx.set_config(GUEST, NAME, "qemu", {("seq", str(n)): str(n), ("last", ""): str(n)})
            tx.add_history(GUEST, NAME, command="set", source="cli", mode="config",
                           changes=[("seq", str(n), None, str(n))])
        print(n, flush=True)


def run_incrementer(path: str, count: int) -> None:
    """``count`` read-modify-write increments of one setting, each with its history row."""
    from cgctl.core.journal import Journal
    with Journal(path, create=True) as journal:
        for _ in range(count):
            with journal.transaction() as tx:
                old = tx.get_config(GUEST).get(("counter", ""), "0")
                new = str(int(old) + 1)
                tx.set_config(GUEST, NAME, "qemu", {("counter", ""): new})
                tx.add_history(GUEST, NAME, command="set", source="cli", mode="config",
                               changes=[("counter", "", old, new)], user=f"pid {os.getpid()}")
    print("done", flush=True)


# -- the tests -----------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_never_loses_an_acknowledged_change_or_half_records_one(tmp_path):
    from cgctl.core.journal import Journal
    path = tmp_path / "cgctl" / "journal.db"  # the first writer creates it (kills may hit that)
    rng = random.Random(int(os.environ.get("CGCTL_CRASH_SEED", time.time_ns())))
    acknowledged: set = set()
    for run in range(30):
        proc = worker("writer", str(path))
        time.sleep(rng.uniform(0.02, 0.5))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err  # it was still running, no traceback
        acknowledged.update(int(line) for line in out.split("\n")[:-1])  # complete lines only

        if not path.exists():
            continue  # killed before it created anything
        with Journal(path, create=False) as journal:
            assert journal.integrity_check() == "ok"
            config = journal.get_config(GUEST)
            history = journal.history(GUEST)
        in_config = {int(device) for (param, device) in config if param == "seq"}
        in_history = [int(row.new_value) for row in history]
        # both or neither: the config rows and the history rows name the same changes
        assert in_config == set(in_history)
        assert sorted(in_history) == in_history == list(range(len(in_history)))
        if in_history:
            assert config[("last", "")] == str(in_history[-1])
        # every acknowledged change is there; a run may add one more: committed, not printed
        assert acknowledged <= in_config
        assert len(in_config - acknowledged) <= run + 1
    assert len(acknowledged) > 30, "the writer hardly ever got to commit: test proves little"


@pytest.mark.slow
def test_concurrent_read_modify_write_loses_nothing(tmp_path):
    from cgctl.core.journal import Journal
    processes, increments = 4, 200
    path = tmp_path / "journal.db"
    procs = [worker("increment", str(path), str(increments)) for _ in range(processes)]
    for proc in procs:  # they race to create the file too
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and out == "done\n", err
        assert err == ""
    with Journal(path, create=False) as journal:
        assert journal.get_config(GUEST) == {("counter", ""): str(processes * increments)}
        history = journal.history(GUEST)
        assert len(history) == processes * increments
        # each increment read the value the previous one wrote: a chain with no gaps
        assert [(int(r.old_value), int(r.new_value)) for r in history] == \
            [(i, i + 1) for i in range(processes * increments)]
        assert len({r.user for r in history}) == processes
        assert journal.integrity_check() == "ok"


def _open_and_increment(path: str, barrier) -> None:
    barrier.wait()  # all at once, for the widest race
    run_incrementer(path, 1)


def test_processes_racing_to_create_the_journal(tmp_path):
    """Forked processes find no file and create and migrate it at the same moment."""
    import multiprocessing
    from cgctl.core.journal import Journal
    ctx = multiprocessing.get_context("fork")
    for round_ in range(40):
        path = tmp_path / str(round_) / "journal.db"
        barrier = ctx.Barrier(6)
        procs = [ctx.Process(target=_open_and_increment, args=(str(path), barrier))
                 for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0] * 6
        with Journal(path, create=False) as journal:
            assert journal.get_config(GUEST) == {("counter", ""): "6"}


if __name__ == "__main__":
    if sys.argv[1] == "writer":
        run_writer(sys.argv[2])
    elif sys.argv[1] == "increment":
        run_incrementer(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(f"unknown worker {sys.argv[1]!r}")

"""The real command killed at random points, and many of them at once (docs/reliability.md).

Crash: ``cgctl set`` processes (a ``--perm`` and a ``--config`` change of a running QEMU guest,
alternately) get SIGKILL after a random delay, many times, against one
journal. After every kill the journal opens, SQLite's integrity check says ok, and every change
whose process exited 0 is in the history and (if it was the newest) in the config.

Load: four processes each make 250 config changes (``--config``) of one shared parameter of the
running guest through the CLI's ``main`` while separate ``cgctl set --live`` processes change the running guest. Every change is in
the history exactly once, each history row's old value is the previous row's new value (no lost
update), the config holds the last one, and no "database is locked" reaches anybody.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.reliability.conftest import PYTHON, REPO, cgctl_env, run_cgctl

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

KILLS = int(os.environ.get("CGCTL_CRASH_RUNS", "60"))


def _open_check(path):
    from cgctl.core.journal import Journal
    with Journal(str(path), create=False) as j:
        assert j.integrity_check() == "ok"
        return j.history(), {g.name: g for g in j.guests()}, j


def test_sigkill_at_random_points_loses_no_acknowledged_change(reliability_guests, tmp_path):
    g = reliability_guests
    journal = tmp_path / "journal.db"
    seed = int(os.environ.get("CGCTL_CRASH_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    acked = {}     # (guest, value) -> True for every exit 0 seen
    last_acked = {}
    killed = finished = 0
    # kill anywhere in a run: calibrate the window on this machine's speed now, so that kills
    # land both before and after the end however fast or loaded it is
    # (each mode the loop uses: --perm also writes the cgroup and the live metadata)
    probe = {"--perm": [], "--config": []}
    for _ in range(3):
        for mode in probe:
            t = time.monotonic()
            subprocess.run([PYTHON, "-m", "cgctl.cli", "--journal", str(tmp_path / "probe.db"),
                            "set", g.running.name, "cpu_shares=999", mode], env=cgctl_env(),
                           cwd=str(REPO), capture_output=True, check=True)
            probe[mode].append(time.monotonic() - t)
    window = 1.6 * max(sorted(times)[1] for times in probe.values())
    for i in range(KILLS):
        # both on the running guest: found from libvirt's run files, so a libvirtd restart by
        # another test cannot fail a run; --perm writes the cgroup and the journal
        guest, mode = g.running.name, ("--perm" if i % 2 == 0 else "--config")
        value = str(1000 + i)
        argv = [PYTHON, "-m", "cgctl.cli", "--journal", str(journal), "set", guest,
                f"cpu_shares={value}", mode]
        p = subprocess.Popen(argv, env=cgctl_env(), cwd=str(REPO), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        if i and i % 10 == 0:  # the machine's speed moves (other load): keep kills on both sides
            if finished < i // 5:
                window *= 1.5
            elif killed < i // 5:
                window /= 1.5
        time.sleep(rng.uniform(0.0, window))
        p.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=60)
        if p.returncode == 0:
            finished += 1
            acked[(guest, value)] = True
            last_acked[guest] = value
        else:
            assert p.returncode == -signal.SIGKILL, f"seed {seed}: exit {p.returncode}: {err}"
            killed += 1
        if journal.exists():
            history, guests, _ = _open_check(journal)
            seen = {(h.name, h.new_value) for h in history if h.param == "cpu_shares"}
            missing = [k for k in acked if k not in seen]
            assert not missing, f"seed {seed}: acknowledged but not in the journal: {missing}"
    assert killed >= KILLS // 5 and finished >= KILLS // 5, (
        f"seed {seed}: the kills should land both before and after the end "
        f"(killed {killed}, finished {finished})")
    from cgctl.core.journal import Journal
    with Journal(str(journal), create=False) as j:
        for guest, value in last_acked.items():
            row = j.find_guest(guest)
            newest = [h for h in j.history(row.uuid) if h.param == "cpu_shares"][-1]
            # the config is the newest committed change: the last acknowledged one or a later
            # one killed after its commit
            assert j.get_config(row.uuid)[("cpu_shares", "")] == newest.new_value
            assert int(newest.new_value) >= int(value)


WORKER = r"""
import io, sys, contextlib
from cgctl.cli import main as cli
journal, guest, k, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bad = 0
for i in range(n):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = cli.main(["--journal", journal, "set", guest, "cpu_shares=%d" % (10000 + k * 1000 + i),
                       "--config"])
    if rc != 0:
        bad += 1
        sys.stderr.write("rc=%d %s" % (rc, err.getvalue()))
print(bad)
"""


def test_concurrent_writers_lose_nothing(reliability_guests, tmp_path):
    g = reliability_guests
    journal = tmp_path / "journal.db"
    workers, per = 4, int(os.environ.get("CGCTL_LOAD_OPS", "250"))
    target = g.running.name  # --config: journal only; found without libvirt
    r = run_cgctl(["set", target, "cpu_shares=999", "--config"], journal=journal)
    assert r.returncode == 0, r.stderr
    procs = [subprocess.Popen([PYTHON, "-c", WORKER, str(journal), target, str(k), str(per)],
                              env=cgctl_env(), cwd=str(REPO), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(workers)]
    # meanwhile: whole `cgctl set --live` processes on the running guest, two at a time
    live_ok, live_errors = 0, []
    t_end = time.monotonic() + 600
    i = 0
    while any(p.poll() is None for p in procs) and time.monotonic() < t_end:
        pair = [subprocess.Popen([PYTHON, "-m", "cgctl.cli", "--journal", str(journal), "set",
                                  g.running.name, f"cpu_shares={2000 + i + j}", "--live"],
                                 env=cgctl_env(), cwd=str(REPO), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True) for j in range(2)]
        for q in pair:
            _, err = q.communicate(timeout=120)
            if q.returncode == 0:
                live_ok += 1
            else:
                live_errors.append(err)
        i += 2
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "0", (out, err)
        assert "locked" not in err, err
    assert not live_errors, live_errors[:3]
    assert live_ok >= 2

    history, guests, _ = _open_check(journal)
    mine = [h for h in history if h.mode == "config" and h.param == "cpu_shares"]
    assert len(mine) == 1 + workers * per, len(mine)
    for prev, cur in zip(mine, mine[1:]):  # serialized read-modify-write: a chain, no gaps
        assert cur.old_value == prev.new_value, (prev, cur)
    values = [h.new_value for h in mine[1:]]
    assert sorted(values) == sorted(str(10000 + k * 1000 + i)
                                    for k in range(workers) for i in range(per))
    from cgctl.core.journal import Journal
    with Journal(str(journal), create=False) as j:
        uuid = j.find_guest(target).uuid
        assert j.get_config(uuid)[("cpu_shares", "")] == mine[-1].new_value
    live_rows = [h for h in history if h.mode == "live"]
    assert len(live_rows) == live_ok
    print(f"load: {workers * per} config changes in {workers} processes + {live_ok} live "
          f"processes; history {len(history)} rows")

"""No lost update between a start-time apply and a concurrent change (docs/reliability.md).

Real processes race on a real running QEMU guest: in every round a `cgctl apply` and the
hook's `started begin` apply (``python -m cgctl.hook``, the domain XML on stdin, as libvirt
runs it) start, and while they are between reading the journal config and writing the cgroup,
a `cgctl set --perm hard_limit=X` with a new X runs. Afterwards the kernel's value, the
journal's config and the reference drift repair defends must all be X.

The window is widened with ``CGCTL_TEST_APPLY_WINDOW`` (read only by
``controller._test_window``): the appliers sleep that long after reading the config, so that
without the guest lock the set lands inside it in (nearly) every round instead of now and
then. With the lock, the sleep only makes the set wait.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cgctl.core import drift
from cgctl.cgroup import hierarchy
from cgctl.host import runfiles
from cgctl.model import params as P
from cgctl.core.controller import Controller
from cgctl.core.journal import Journal
from cgctl.cgroup.placement import groups_for_pid
from tests.clikit import CGCTL, cgctl

ROUNDS = int(os.environ.get("CGCTL_LOST_UPDATE_ROUNDS", "10"))
WINDOW = 0.8      # s each applier sleeps between reading the config and writing
SET_AFTER = 0.25  # s after the appliers start: they have read the config by the time set runs
MiB = 2**20


def _limit_file(guest) -> str:
    g = groups_for_pid(guest.pid, hierarchy.detect(), guest=guest.name, driver="qemu")
    return os.path.join(g.libvirt_dir("memory"), "memory.limit_in_bytes")


def _read(path) -> int:
    with open(path) as f:
        return int(f.read())


def test_no_lost_update_between_start_applies_and_set(libvirt_sandbox, qemu_guest, tmp_path):
    guest, journal = qemu_guest, str(tmp_path / "j.db")
    xml = libvirt_sandbox.virsh("dumpxml", guest.name).stdout
    cgctl(journal, "set", guest.name, "hard_limit=600M", "--perm")
    env = dict(os.environ, CGCTL_TEST_APPLY_WINDOW=str(WINDOW))
    hook = [sys.executable, "-m", "cgctl.hook", "--journal", journal,
            "qemu", guest.name, "started", "begin", "-"]
    limit = _limit_file(guest)
    hard = P.BY_NAME["hard_limit"]
    lost = []
    for i in range(ROUNDS):
        want = (601 + i) * MiB
        apply = subprocess.Popen(CGCTL + ["--journal", journal, "apply", guest.name], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = subprocess.Popen(hook, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        started.stdin.write(xml)
        started.stdin.close()
        time.sleep(SET_AFTER)
        setter = cgctl(journal, "set", guest.name, f"hard_limit={want // MiB}M", "--perm",
                       check=False)
        out, err = apply.communicate(timeout=60)
        assert apply.returncode == 0, err
        assert started.wait(timeout=60) == 0, started.stderr.read()
        started.stderr.close()
        started.stdout.close()
        assert setter.returncode == 0, setter.stderr

        j = Journal(journal, create=False)
        try:
            config = j.get_config(guest.uuid)[("hard_limit", "")]
            running = runfiles.find_running(guest.name)
            reference = drift.expected(j, running)[("hard_limit", "")]
        finally:
            j.close()
        kernel = _read(limit)
        state = {"kernel": kernel, "config": config, "reference": reference}
        if state != {"kernel": want, "config": P.canonical_text(hard, want),
                     "reference": P.canonical_text(hard, want)}:
            lost.append((i, want, state))
    assert lost == [], f"{len(lost)} of {ROUNDS} rounds lost the set: {lost}"

    # the race really ran: both kinds of applier wrote in this run, and verify agrees
    ctl = Controller(journal_path=journal)
    try:
        commands = {r["command"] for r in ctl.history(guest.name)}
    finally:
        ctl.close()
    assert {"apply", "hook started", "set"} <= commands
    assert cgctl(journal, "verify", guest.name, check=False).returncode == 0

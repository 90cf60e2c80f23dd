"""Bad input through the real command, against a real running QEMU guest (docs/reliability.md).

Every row is one ``cgctl`` process (``python -m cgctl.cli``) with one kind of wrong input. Each must
give its exit code (2: the request was wrong; 1: it could not be done), one line on stderr starting
``cgctl: error:`` and no traceback, and leave the guest's cgroup files and the journal exactly as
they were (file digests and SQL dump compared before and after).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import pytest

from tests.reliability.conftest import (assert_one_line_error, run_cgctl, snapshot_cgroups,
                                        snapshot_journal)

pytestmark = pytest.mark.libvirt


RUN, STOP = "{run}", "{stop}"  # placeholders for the session guests' names
USAGE, FAIL = 2, 1


@dataclass
class Case:
    id: str
    args: List[str]
    code: int
    says: str = ""                       # a piece of the message (case-insensitive)
    journal: str = "seeded"              # seeded | missing | corrupt | foreign | ... (see _journal)
    prefix: str = ""                     # "nobody" | "rofs"
    marks: list = field(default_factory=list)


def C(id, args, code, says="", **kw):
    return Case(id, args, code, says, **kw)


def _set(*assign, guest=RUN, mode="--live"):
    return ["set", guest, *assign] + ([mode] if mode else [])


CASES = [
    # --- malformed values ---------------------------------------------------------------
    C("letters", _set("hard_limit=abc"), USAGE, "hard_limit"),
    C("bad-suffix", _set("hard_limit=12XB"), USAGE, "hard_limit"),
    C("empty-value", _set("hard_limit="), USAGE, "hard_limit"),
    C("space-inside", _set("hard_limit=1 2G"), USAGE, "hard_limit"),
    C("two-dots", _set("hard_limit=1.2.3G"), USAGE, "hard_limit"),
    C("hex", _set("hard_limit=0x100000"), USAGE, "hard_limit"),
    C("nan", _set("hard_limit=nan"), USAGE, "hard_limit"),
    C("inf", _set("hard_limit=inf"), USAGE, "hard_limit"),
    C("exponent-huge", _set("hard_limit=1e400"), USAGE, "hard_limit"),
    # Python's int() and re's \d take any Unicode digit: "١٢٣M" was written as 123M
    # (against the stopped guest's config, so that a wrong acceptance touches no live group)
    C("unicode-digits", _set("hard_limit=\u0661\u0662\u0663M", guest=STOP, mode="--config"),
      USAGE, "hard_limit"),
    C("fullwidth-digits", _set("cpu_shares=\uff15\uff11\uff12", guest=STOP, mode="--config"),
      USAGE, "cpu_shares"),
    # --- negative and overflow ----------------------------------------------------------
    C("negative-size", _set("hard_limit=-5"), USAGE, "hard_limit"),
    C("negative-fraction", _set("hard_limit=-1.5G"), USAGE, "hard_limit"),
    C("minus-two", _set("soft_limit=-2"), USAGE, "soft_limit"),
    C("overflow-2^64-bytes", _set("hard_limit=18446744073709551616B"), USAGE, "hard_limit"),
    C("overflow-2^64-kib", _set("hard_limit=18446744073709551616"), USAGE, "hard_limit"),
    C("overflow-exabytes", _set("hard_limit=99999999E"), USAGE, "hard_limit"),
    C("overflow-shares", _set("cpu_shares=18446744073709551617"), USAGE, "cpu_shares"),
    C("overflow-quota", _set("global_quota=18446744073709551616"), USAGE, "global_quota"),
    C("negative-shares", _set("cpu_shares=-512"), USAGE, "cpu_shares"),
    C("negative-rate", _set("device_read_bytes_sec=/dev/vda,-1M"), USAGE, "device_read_bytes_sec"),
    # --- out of range ---------------------------------------------------------------------
    C("shares-below-2", _set("cpu_shares=1"), USAGE, "out of range"),
    C("shares-above-max", _set("cpu_shares=262145"), USAGE, "out of range"),
    C("shares-fraction", _set("cpu_shares=1.5"), USAGE, "cpu_shares"),
    C("period-too-short", _set("global_period=999"), USAGE, "global_period"),
    C("period-too-long", _set("global_period=1000001"), USAGE, "global_period"),
    C("quota-zero-percent", _set("global_quota=0%"), USAGE, "global_quota"),
    C("quota-percent-junk", _set("global_quota=12x%"), USAGE, "global_quota"),
    C("weight-too-low", _set("weight=0"), USAGE, "weight"),
    C("weight-too-high", _set("weight=10001"), USAGE, "weight"),
    C("cpuset-letters", _set("cpuset_cpus=abc"), USAGE, "cpuset_cpus"),
    C("cpuset-reversed", _set("cpuset_cpus=3-1"), USAGE, "cpuset_cpus"),
    C("cpuset-nonexistent-cpu", _set("cpuset_cpus=4000"), None),  # 1 or 2; see the test
    # --- parameters and their combination ------------------------------------------------
    C("unknown-param", _set("hard_limt=1G"), USAGE, "hard_limt"),
    C("no-equals", _set("hard_limit"), USAGE, "PARAM=VALUE"),
    C("empty-name", _set("=5"), USAGE, ""),
    C("twice-different", _set("hard_limit=1G", "hard_limit=2G"), USAGE, "twice"),
    C("soft-above-hard", _set("hard_limit=256M", "soft_limit=512M"), USAGE, "soft_limit"),
    C("soft-above-current-hard", _set("soft_limit=900M"), USAGE, "soft_limit"),
    C("swap-below-hard", _set("hard_limit=512M", "swap_hard_limit=256M"), USAGE, "swap_hard_limit"),
    C("device-no-value", _set("device_read_bytes_sec=/dev/vda"), USAGE, "DEVICE,VALUE"),
    C("device-dotdot", _set("device_read_bytes_sec=/dev/../etc/passwd,1M"), USAGE, ".."),
    C("device-missing", _set("device_read_iops_sec=/dev/cgctl-no-such-disk,100"), None),
    C("min-guarantee-on-v1", _set("min_guarantee=64M"), FAIL, "min_guarantee"),
    C("swap-soft-on-v1", _set("swap_soft_limit=64M"), FAIL, "swap_soft_limit"),
    C("current-with-live", ["set", RUN, "cpu_shares=512", "--current", "--live"], USAGE, "--current"),
    C("no-command", [], USAGE, "no command"),
    C("unknown-command", ["frobnicate", RUN], USAGE, "frobnicate"),
    C("no-assignment", ["set", RUN], USAGE, ""),
    C("apply-guest-and-all", ["apply", RUN, "--all"], USAGE, "--all"),
    # --- guest names ----------------------------------------------------------------------
    C("name-slash", _set("cpu_shares=512", guest="a/b"), USAGE, "name"),
    C("name-dotdot", _set("cpu_shares=512", guest="../../etc/passwd"), USAGE, "name"),
    C("name-just-dotdot", _set("cpu_shares=512", guest=".."), USAGE, "name"),
    C("name-newline", _set("cpu_shares=512", guest="cgt-x\nevil"), USAGE, "name"),
    C("name-empty", _set("cpu_shares=512", guest=""), USAGE, "guest"),
    C("name-unicode-unknown", _set("cpu_shares=512", guest="g\u00e4st-\u540d\u524d-\U0001f600"),
      FAIL, "no such guest"),
    C("name-very-long", _set("cpu_shares=512", guest="x" * 5000), USAGE, "long"),
    C("name-long-unknown", _set("cpu_shares=512", guest="y" * 200), FAIL, ""),
    C("unknown-guest-live", _set("cpu_shares=512", guest="cgt-no-such-guest"), FAIL, "cgt-no-such-guest"),
    C("unknown-guest-config", _set("cpu_shares=512", guest="cgt-no-such-guest", mode="--config"),
      FAIL, "cgt-no-such-guest"),
    C("unknown-uuid", _set("cpu_shares=512", guest="00000000-0000-4000-8000-00000000dead"),
      FAIL, ""),
    C("live-on-stopped", _set("cpu_shares=512", guest=STOP), FAIL, "not running"),
    C("perm-on-stopped", _set("cpu_shares=512", guest=STOP, mode="--perm"), FAIL, "not running"),
    C("show-unknown", ["show", "cgt-no-such-guest"], FAIL, "cgt-no-such-guest"),
    C("history-unknown", ["history", "cgt-no-such-guest"], FAIL, "cgt-no-such-guest"),
    C("forget-unknown", ["forget", "cgt-no-such-guest"], FAIL, "cgt-no-such-guest"),  # docs/usage.md: unknown guest = 1
    # --- the journal ----------------------------------------------------------------------
    C("journal-corrupt", _set("cpu_shares=512"), FAIL, "journal", journal="corrupt"),
    C("journal-truncated", _set("cpu_shares=512"), FAIL, "journal", journal="truncated"),
    C("journal-foreign-sqlite", _set("cpu_shares=512"), FAIL, "not a cgctl journal",
      journal="foreign"),
    C("journal-newer-schema", _set("cpu_shares=512"), FAIL, "upgrade cgctl", journal="newer"),
    C("journal-is-directory", _set("cpu_shares=512"), FAIL, "journal", journal="directory"),
    C("journal-parent-is-file", _set("cpu_shares=512"), FAIL, "journal", journal="parent-file"),
    C("journal-read-only-fs", _set("cpu_shares=512"), FAIL, "EROFS", prefix="rofs"),
    C("journal-read-only-fs-config", _set("cpu_shares=512", guest=STOP, mode="--config"), FAIL,
      "EROFS", prefix="rofs"),
    # --- not root ---------------------------------------------------------------------------
    C("non-root-live", _set("cpu_shares=512"), FAIL, "", prefix="nobody"),
    C("non-root-config", _set("cpu_shares=512", guest=STOP, mode="--config"), FAIL, "",
      prefix="nobody"),
    C("non-root-own-journal", _set("cpu_shares=512"), FAIL, "", prefix="nobody",
      journal="nobody-owned"),
]


@pytest.fixture(scope="module")
def seeded_journal(reliability_guests, tmp_path_factory):
    """A journal holding config for both guests and a live hard limit on the running one."""
    g = reliability_guests
    path = tmp_path_factory.mktemp("seed") / "journal.db"
    for args in (["set", g.running.name, "hard_limit=768M", "--live"],
                 ["set", g.running.name, "cpu_shares=700", "--perm"],
                 ["set", g.stopped.name, "soft_limit=100M", "cpu_shares=300", "--config"]):
        r = run_cgctl(args, journal=path)
        assert r.returncode == 0, r.stderr
    return path


def _journal(kind: str, seed, tmp_path) -> str:
    d = tmp_path / "j"
    d.mkdir()
    path = d / "journal.db"
    if kind in ("seeded", "nobody-owned"):
        shutil.copy(seed, path)
        if kind == "nobody-owned":  # nobody's own journal in nobody's own directory
            os.chmod(tmp_path, 0o755)
            os.chown(d, 65534, 65534)
            os.chown(path, 65534, 65534)
    elif kind == "missing":
        pass
    elif kind == "corrupt":
        data = bytearray(seed.read_bytes())
        for i in range(100, len(data), 97):  # header intact, pages scrambled
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))
    elif kind == "truncated":
        path.write_bytes(seed.read_bytes()[:1500])
    elif kind == "foreign":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        db.execute("INSERT INTO invoices (total) VALUES (9.5)")
        db.commit()
        db.close()
    elif kind == "newer":
        shutil.copy(seed, path)
        db = sqlite3.connect(path)
        db.execute("PRAGMA user_version = 999")
        db.close()
    elif kind == "directory":
        path.mkdir()
    elif kind == "parent-file":
        blocker = d / "notadir"
        blocker.write_text("x")
        path = blocker / "journal.db"
    else:
        raise AssertionError(kind)
    return str(path)


def _prefix(case: Case, journal: str):
    if case.prefix == "nobody":
        setpriv = shutil.which("setpriv")
        if not setpriv:
            pytest.skip("setpriv (util-linux) is not installed")
        return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"], journal
    if case.prefix == "rofs":
        # the seeded journal on a real read-only tmpfs, in a mount namespace of its own
        mnt = os.path.join(os.path.dirname(journal), "ro")
        os.mkdir(mnt)
        inner = os.path.join(mnt, "journal.db")
        script = ('set -e; mount -t tmpfs -o size=8m cgctl-ro "$1"; cp -p "$2" "$1/"; '
                  'mount -o remount,ro "$1"; shift 2; exec "$@"')
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", mnt,
                journal], inner
    return [], journal


@pytest.mark.parametrize("case", [pytest.param(c, marks=c.marks, id=c.id) for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(case, reliability_guests, seeded_journal,
                                                  tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (a real guest's cgroups)")
    g = reliability_guests
    journal = _journal(case.journal, seeded_journal, tmp_path)
    prefix, journal_arg = _prefix(case, journal)
    args = [a.replace(RUN, g.running.name).replace(STOP, g.stopped.name) for a in case.args]
    pid = g.pid()
    cg_before, j_before = snapshot_cgroups(pid), snapshot_journal(journal)

    r = run_cgctl(args, journal=journal_arg, prefix=prefix)

    line = assert_one_line_error(r)
    if case.code is None:  # either answer is defensible; it must still be a clean refusal
        assert r.returncode in (USAGE, FAIL), (r.returncode, line)
    else:
        assert r.returncode == case.code, (r.returncode, line)
    assert case.says.lower() in line.lower(), line
    assert r.stdout == "", r.stdout
    assert snapshot_cgroups(pid) == cg_before, "the guest's cgroup files changed"
    assert snapshot_journal(journal) == j_before, "the journal changed"


def test_table_is_big_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


# -- through the Python API: what argv cannot carry -------------------------------------------

@pytest.mark.parametrize("name", ["cgt\x00evil", "\x00", "../\x00"])
def test_nul_in_a_guest_name_is_refused_by_the_api(name, tmp_path):
    """argv cannot carry NUL (execve stops at it), so the API is the way in."""
    from cgctl.core.controller import Controller
    from cgctl.errors import UsageError
    journal = tmp_path / "journal.db"
    ctl = Controller(journal_path=str(journal))
    try:
        with pytest.raises(UsageError):
            ctl.set(name, ["cpu_shares=512"], "live")
    finally:
        ctl.close()
    assert not journal.exists()


def test_nul_in_a_device_name_is_refused_by_the_api():
    from cgctl.model import params as P
    from cgctl.errors import UsageError
    with pytest.raises(UsageError):
        P.parse_assignments(["device_read_bytes_sec=/dev/vda\x00x,1M"])


def test_argv_cannot_carry_nul():
    with pytest.raises(ValueError):
        subprocess.run(["true", "a\x00b"])

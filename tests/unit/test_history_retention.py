"""The history retention on a real SQLite journal: Journal.prune_history, `cgctl prune`, the
default `cgctl history --limit`, the config keys, and the service's periodic prune."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone

import pytest

from cgctl.core import drift
from cgctl.host import runfiles
from cgctl.errors import UsageError
from cgctl.core.journal import Journal
from cgctl.config import load_config
from tests.clikit import cgctl

A = "6f0c1a52-0d3e-4d6b-9a57-0000000000a1"  # defined, with config
B = "6f0c1a52-0d3e-4d6b-9a57-0000000000b2"  # forgotten (undefined)
TEST_GUEST = "6695eb01-f6a4-8304-79aa-97f2502e193f"  # test:///default's own guest "test"
NOW = datetime.now(timezone.utc)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def add(j, uuid, name, param, new, *, mode="live+config", at, command="set", outcome="ok"):
    with j.transaction() as tx:
        tx.add_history(uuid, name, command=command, source="cli", mode=mode, at=at,
                       changes=[(param, "", None, new)], outcome=outcome, user="t")


@pytest.fixture
def j(tmp_path):
    with Journal(str(tmp_path / "journal.db")) as journal:
        yield journal


def seed(j, a=A):
    """A: hard_limit set 400 days ago (still its config), a failed attempt since, a drift fight
    of 300 live repairs over the last 300 minutes; B: forgotten, all rows old."""
    with j.transaction() as tx:
        tx.set_config(a, "a", "qemu", {("hard_limit", ""): "1073741824"})
        tx.set_config(B, "b", "qemu", {("cpu_shares", ""): "512"})
    add(j, a, "a", "hard_limit", "1073741824", at=ago(400))
    add(j, a, "a", "hard_limit", "5", at=ago(399), outcome="kernel said no")
    add(j, a, "a", "cpu_shares", "100", mode="live", at=ago(398))
    for i in range(300):
        add(j, a, "a", "cpu_shares", str(200 + i % 2), mode="live", command="drift repair",
            at=NOW - timedelta(minutes=300 - i))
    add(j, B, "b", "cpu_shares", "512", at=ago(500))
    j.forget_guest(B, user="t")
    with j.transaction() as tx:  # the forget's own row, dated old too
        tx._db.execute("UPDATE history SET at = ? WHERE uuid = ?", (ago(450).isoformat(), B))


def rows(j, uuid):
    return j.history(uuid)


def test_age_keeps_the_rows_that_explain_the_current_config(j):
    seed(j)
    before = rows(j, A)
    removed = j.prune_history(keep_days=30)
    after = rows(j, A)
    # the config's row stays however old, and the newest failed one of the same param
    assert [(r.param, r.new_value, r.outcome) for r in after[:2]] == [
        ("hard_limit", "1073741824", "ok"), ("hard_limit", "5", "kernel said no")]
    # the old live cpu_shares row is superseded by newer live rows: gone
    assert not any(r.new_value == "100" for r in after)
    assert len(after) == len(before) - 1
    # B (forgotten): every row gone, and the guest with them
    assert rows(j, B) == [] and j.get_guest(B) is None
    assert removed == 1 + 2  # A's old live row; B's set and forget rows


def test_row_cap_per_guest_keeps_the_newest_and_the_protected(j):
    seed(j)
    j.prune_history(keep_rows=50)
    after = rows(j, A)
    assert len(after) == 52  # the newest 50 + the config row + the newest failed row
    assert after[0].new_value == "1073741824" and after[1].outcome == "kernel said no"
    assert [r.id for r in after[2:]] == [r.id for r in rows(j, A)[-50:]]
    assert j.get_config(A) == {("hard_limit", ""): "1073741824"}


def test_drift_reference_survives_the_prune(j):
    """drift.expected (what cgctl last wrote to this run) is the same before and after."""
    g = runfiles.Guest("a", A, "qemu", "qemu:///system", True, True, os.getpid())
    started = runfiles.started_at(os.getpid())
    add(j, A, "a", "hard_limit", "2147483648", mode="live", at=started + 1)
    for i in range(20):
        add(j, A, "a", "cpu_shares", str(300 + i), mode="live", command="drift repair",
            at=started + 2 + i / 100)
    add(j, A, "a", "cpu_shares", "999", mode="live", at=started + 3, outcome="refused")
    want = drift.expected(j, g)
    assert want == {("hard_limit", ""): "2147483648", ("cpu_shares", ""): "319"}
    j.prune_history(keep_rows=2)
    assert drift.expected(j, g) == want


def test_nothing_to_do_and_bad_arguments(j):
    seed(j)
    n = len(j.history())
    assert j.prune_history() == 0 and j.prune_history(keep_days=1000, keep_rows=1000) == 0
    assert len(j.history()) == n
    with pytest.raises(ValueError):
        j.prune_history(keep_days=-1)


def test_config_keys(tmp_path):
    conf = tmp_path / "c.toml"
    assert load_config(str(conf)).history_keep_days > 0  # a default retention, not forever
    conf.write_text("history_keep_days = 30\nhistory_keep_rows = 0\n")
    cfg = load_config(str(conf))
    assert (cfg.history_keep_days, cfg.history_keep_rows) == (30, 0)
    for bad in ("history_keep_days = -1", "history_keep_rows = 1.5", "history_keep_days = true"):
        conf.write_text(bad + "\n")
        with pytest.raises(UsageError, match="history_keep_"):
            load_config(str(conf))


# ------------------------------------------------------------------------- the command line

def test_history_default_limit_all_and_bad_limits(j):
    for i in range(60):
        add(j, A, "a", "cpu_shares", str(100 + i), mode="live", at=ago(1) + timedelta(seconds=i))
    path = j.path

    def hist(*args):
        return json.loads(cgctl(path, "--json", "history", *args).stdout)
    default = hist()
    assert len(default) == 50 and default[-1]["new_value"] == "159"  # the newest 50
    assert len(hist("--limit", "0")) == 60 and len(hist("--all")) == 60
    assert len(hist("--limit", "7")) == 7
    r = cgctl(path, "history")
    assert "--all" in r.stderr  # the human output says it was cut
    for bad in (["--limit", "-1"], ["--limit", "x"], ["--all", "--limit", "5"]):
        r = cgctl(path, "history", *bad, check=False)
        assert r.returncode == 2 and r.stdout == "", (bad, r)
        assert r.stderr.startswith("cgctl: error:") and len(r.stderr.splitlines()) == 1, r.stderr


def test_cli_prune_trims_the_history(j, tmp_path):
    pytest.importorskip("libvirt")
    seed(j, a=TEST_GUEST)  # defined in test:///default: not forgotten
    n = len(j.history(TEST_GUEST))
    j.close()
    conf = tmp_path / "cgctl.toml"
    conf.write_text("history_keep_days = 30\nhistory_keep_rows = 100\n")
    env = dict(os.environ, CGCTL_CONFIG=str(conf))
    r = cgctl(tmp_path / "journal.db", "--json", "-c", "test:///default", "prune", env=env)
    out = json.loads(r.stdout)
    assert (out["history_keep_days"], out["history_keep_rows"]) == (30, 100)
    with Journal(str(tmp_path / "journal.db")) as again:
        assert len(again.history(TEST_GUEST)) == 102  # 100 newest + 2 protected
        assert out["history_rows_removed"] == n - 102 + 2  # + B's two rows
    # the command line wins over the file
    r = cgctl(tmp_path / "journal.db", "--json", "-c", "test:///default", "prune",
              "--keep-rows", "10", "--keep-days", "0", env=env)
    assert json.loads(r.stdout)["history_rows_removed"] == 90
    r = cgctl(tmp_path / "journal.db", "-c", "test:///default", "prune", "--keep-rows", "-3",
              check=False, env=env)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1


# ------------------------------------------------------------------------- the service

def test_the_service_prunes_once_ready(tmp_path):
    pytest.importorskip("libvirt")
    from cgctl.config import Config
    from cgctl.service import daemon as D
    from tests.daemonkit import TEST_URI, Recorder, in_process, wait_for
    rec = Recorder(str(tmp_path / "j.db"))
    with Journal(rec.journal_path) as j:
        seed(j)
        total = len(j.history(A))
    cfg = Config(uris=(TEST_URI,), journal=rec.journal_path, history_keep_rows=20,
                   history_keep_days=0, watch_devices=False, drift_interval=0)
    d = D.Daemon(cfg, controller_factory=rec.factory, install_signals=False)
    with in_process(d), Journal(rec.journal_path) as j:
        wait_for(lambda: len(j.history(A)) < total, 15, "the service's history prune")
        assert len(j.history(A)) == 22

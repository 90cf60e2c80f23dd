"""The service's config file: defaults, checking, and reload on SIGHUP (a bad file keeps the
running configuration)."""

from __future__ import annotations

import signal

import pytest

from cgctl import consts
from cgctl.errors import UsageError
from cgctl.config import Config, load_config, resolve
from tests.daemonkit import TEST_URI, NotifySink, Subprocess

pytest.importorskip("libvirt")


def test_no_file_means_defaults(tmp_path):
    assert load_config(str(tmp_path / "absent.toml")) == Config()
    assert load_config(None) == Config()
    assert Config().uris == consts.DEFAULT_URIS
    assert Config().journal == consts.JOURNAL_PATH


def test_a_full_file(tmp_path):
    f = tmp_path / "cgctl.toml"
    f.write_text('uris = ["qemu:///system"]\njournal = "/srv/j.db"\nlog_level = "DEBUG"\n'
                 "reconnect_initial = 1\nreconnect_max = 10.5\nkeepalive_interval = 10\n"
                 "keepalive_count = 5\nwatch_devices = false\n")
    assert load_config(str(f)) == Config(
        uris=("qemu:///system",), journal="/srv/j.db", log_level="debug",
        reconnect_initial=1.0, reconnect_max=10.5, keepalive_interval=10, keepalive_count=5,
        watch_devices=False)


@pytest.mark.parametrize("text,words", [
    ("uris = [", "not valid TOML"),
    ("urls = []", "unknown key 'urls'"),
    ('uris = "qemu:///system"', "uris must be a list"),
    ('journal = "relative.db"', "journal must be an absolute path"),
    ('log_level = "loud"', "log_level must be one of"),
    ("reconnect_max = 0", "reconnect_max must be a number"),
    ("reconnect_initial = true", "reconnect_initial must be a number"),
    ("reconnect_initial = 20\nreconnect_max = 10", "is more than reconnect_max"),
    ("keepalive_count = 1.5", "keepalive_count must be a whole number"),
    ('watch_devices = "yes"', "watch_devices must be true or false"),
])
def test_a_wrong_file_names_the_file_and_the_key(tmp_path, text, words):
    f = tmp_path / "cgctl.toml"
    f.write_text(text + "\n")
    with pytest.raises(UsageError) as exc:
        load_config(str(f))
    assert words in str(exc.value) and str(f) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_wrong_file_at_start_is_a_usage_error(tmp_path):
    f = tmp_path / "cgctl.toml"
    f.write_text("nonsense = 1\n")
    svc = Subprocess(["-c", TEST_URI, "--journal", str(tmp_path / "j.db"),
                      "--config-file", str(f)], log_path=tmp_path / "daemon.log")
    assert svc.wait(30) == 2
    svc.stop()
    assert "unknown key 'nonsense'" in svc.log()
    assert "Traceback" not in svc.log()


def test_sighup_reloads_and_a_bad_file_keeps_the_old_config(tmp_path):
    f = tmp_path / "cgctl.toml"
    f.write_text(f'uris = ["{TEST_URI}"]\n')
    sink = NotifySink()
    svc = Subprocess(["--journal", str(tmp_path / "j.db"), "--config-file", str(f)],
                     env_extra={"NOTIFY_SOCKET": sink.env}, log_path=tmp_path / "daemon.log")
    try:
        sink.wait("READY=1")
        # 1. a good change: one more URI (unreachable: it is retried, the service stays)
        bad_uri = "qemu+unix:///system?socket=/nonexistent/cgctl-test"
        f.write_text(f'uris = ["{TEST_URI}", "{bad_uri}"]\nlog_level = "debug"\n'
                     "reconnect_initial = 0.1\nreconnect_max = 0.2\n")
        svc.signal(signal.SIGHUP)
        log = svc.wait_log("reloaded")
        assert "changed uris, log_level, reconnect_initial, reconnect_max" in log
        assert f"now watching {bad_uri}" in log
        svc.wait_log("cannot connect (attempt 2)")
        sink.wait("READY=1", n=2)
        # 2. a broken file: one clear line, the running configuration stays
        f.write_text("uris = [\n")
        svc.signal(signal.SIGHUP)
        log = svc.wait_log("keeping the previous configuration")
        sink.wait("READY=1", n=3)
        assert "not valid TOML" in log and "Traceback" not in log
        svc.wait_log("cannot connect (attempt 4)")  # still watching both
        # 3. back to one URI
        f.write_text(f'uris = ["{TEST_URI}"]\n')
        svc.signal(signal.SIGHUP)
        svc.wait_log(f"no longer watching {bad_uri}")
        svc.signal(signal.SIGTERM)
        assert svc.wait() == 0
    finally:
        svc.stop()
        sink.close()


def test_command_line_wins_over_the_file(tmp_path):
    f = tmp_path / "cgctl.toml"
    f.write_text(f'uris = ["qemu+unix:///system?socket=/nonexistent/x"]\n'
                 f'journal = "{tmp_path}/from-file.db"\n')
    svc = Subprocess(["-c", TEST_URI, "--journal", str(tmp_path / "cli.db"),
                      "--config-file", str(f)], log_path=tmp_path / "daemon.log")
    try:
        log = svc.wait_log("ready:")
        assert f"uris={TEST_URI} journal={tmp_path}/cli.db" in log
    finally:
        assert svc.stop() == 0


# --------------------------------------------------------------------------- one loader for all

def test_precedence_command_line_environment_file_default(tmp_path):
    f = tmp_path / "cgctl.toml"
    f.write_text('journal = "/srv/file.db"\nuris = ["test:///default"]\n')
    env = {"CGCTL_JOURNAL": "/srv/env.db"}
    assert resolve(str(tmp_path / "absent.toml"), None, environ={}).journal == \
        consts.BUILTIN_JOURNAL
    assert resolve(str(f), None, environ={}).journal == "/srv/file.db"
    assert resolve(str(f), None, environ=env).journal == "/srv/env.db"
    assert resolve(str(f), {"journal": "/srv/cli.db"}, environ=env).journal == "/srv/cli.db"
    assert resolve(str(f), {"journal": None}, environ={}).journal == "/srv/file.db"  # not given
    assert resolve(str(f), None, environ={}).uris == ("test:///default",)
    assert resolve(str(f), {"uris": ["qemu:///session"]}, environ={}).uris == ("qemu:///session",)


def test_without_tomllib_a_one_line_error_not_a_crash(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_toml(name, *a, **kw):
        if name in ("tomllib", "tomli"):
            raise ModuleNotFoundError(name)
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_toml)
    f = tmp_path / "cgctl.toml"
    f.write_text("hook_strict = true\n")
    with pytest.raises(UsageError) as exc:
        load_config(str(f))
    assert "tomli" in str(exc.value) and "\n" not in str(exc.value)
    msgs = []
    assert load_config(str(f), on_error=msgs.append) == Config()  # the hook: defaults
    assert len(msgs) == 1


def _journal_with_guest(path, name):
    from cgctl.core.journal import Journal
    with Journal(str(path)) as j, j.transaction() as tx:
        tx.set_config("8d2a2f5e-6b3c-4c1e-9a44-3a3a3a3a3a3a", name, "qemu",
                      {("cpu_shares", ""): "300"})


def test_cli_hook_and_service_read_the_same_journal_key(tmp_path):
    """The config file's `journal` is the journal of the CLI, the hook and the service."""
    import json
    import os
    import subprocess
    import sys
    from cgctl.cli import main as cli
    from cgctl.start import applier as hookapply, options as hookoptions
    journal = tmp_path / "from-file.db"
    _journal_with_guest(journal, "web-from-file")
    f = tmp_path / "cgctl.toml"
    f.write_text(f'journal = "{journal}"\nuris = ["{TEST_URI}"]\n')
    env = {k: v for k, v in os.environ.items() if k not in ("CGCTL_JOURNAL", "CGCTL_URIS")}
    # the CLI: --config-file, and $CGCTL_CONFIG
    rc, out, err = cli.run_captured(["--config-file", str(f), "list", "--json"])
    assert rc == 0, err
    assert [g["guest"] for g in json.loads(out)] == ["web-from-file"]
    r = subprocess.run([sys.executable, "-m", "cgctl.cli", "list", "--json"], text=True,
                       capture_output=True, timeout=60, env=dict(env, CGCTL_CONFIG=str(f)))
    assert r.returncode == 0, r.stderr
    assert [g["guest"] for g in json.loads(r.stdout)] == ["web-from-file"]
    # the hook (libvirt gives it no environment: the file is all it has)
    opts = hookoptions.Options()
    opts.config_file = str(f)
    assert hookoptions.read_config_file(str(f))["journal"] == str(journal)
    ctl = hookapply.controller(opts)
    try:
        assert ctl.journal_path == str(journal)
    finally:
        ctl.close()
    # the service
    svc = Subprocess(["--config-file", str(f)], log_path=tmp_path / "daemon.log",
                     env_extra={"CGCTL_JOURNAL": ""})
    try:
        assert f"uris={TEST_URI} journal={journal}" in svc.wait_log("ready:")
    finally:
        assert svc.stop() == 0


def test_sighup_changes_the_command_sockets_journal(tmp_path, monkeypatch):
    """`cgctl set` through the socket writes the journal the reloaded file names."""
    from cgctl.cli import fast
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    f = tmp_path / "cgctl.toml"
    f.write_text(f'journal = "{one}"\nuris = ["{TEST_URI}"]\n')
    svc = Subprocess(["--config-file", str(f)], log_path=tmp_path / "daemon.log",
                     env_extra={"CGCTL_JOURNAL": ""})
    # the client: the same file, nothing in its environment
    monkeypatch.setattr(consts, "CONFIG_PATH", str(f))
    for k in fast._LOCAL_ENV + ("CGCTL_JOURNAL", "CGCTL_NO_SERVICE"):
        monkeypatch.delenv(k, raising=False)
    # the test driver's guest cannot be configured (not qemu/lxc), but the command opens the
    # journal it runs with before it finds that out: which file appears says which journal
    argv = ["set", "test", "cpu_shares=300", "--config"]
    try:
        svc.wait_log("ready:")
        assert fast.ask_service(argv, svc.socket_path) is not None
        assert one.exists() and not two.exists()
        f.write_text(f'journal = "{two}"\nuris = ["{TEST_URI}"]\n')
        svc.signal(signal.SIGHUP)
        svc.wait_log("reloaded")
        assert fast.ask_service(argv, svc.socket_path) is not None, \
            "the socket still serves the old journal only"
        assert two.exists()
        assert svc.log().count("served for pid") == 2
    finally:
        assert svc.stop() == 0


def _scrape(port: int):
    """The endpoint's text, or None when nothing listens there."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sighup_moves_turns_off_and_back_on_the_metrics(tmp_path):
    """A real service process: metrics_listen / metrics_textfile follow the file at SIGHUP
    (moved, off, on again); a textfile no longer asked for is removed."""
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families
    from tests.daemonkit import wait_for
    p1, p2 = _free_port(), _free_port()
    prom = tmp_path / "cgctl.prom"
    f = tmp_path / "cgctl.toml"
    base = f'uris = ["{TEST_URI}"]\n'
    f.write_text(base + f'metrics_listen = "127.0.0.1:{p1}"\n')
    svc = Subprocess(["--journal", str(tmp_path / "j.db"), "--config-file", str(f)],
                     env_extra={"CGCTL_LIBVIRT_RUN_DIR": str(tmp_path / "run")},
                     log_path=tmp_path / "daemon.log")
    try:
        svc.wait_log(f"metrics on http://127.0.0.1:{p1}/metrics")
        svc.wait_log("ready:")  # its SIGHUP handler is in place
        text = _scrape(p1)
        assert "cgctl_applies_total" in text
        # 1. moved to another port, and the textfile on
        f.write_text(base + f'metrics_listen = "127.0.0.1:{p2}"\n'
                            f'metrics_textfile = "{prom}"\n')
        svc.signal(signal.SIGHUP)
        log = svc.wait_log("reloaded")
        assert "changed metrics_listen, metrics_textfile" in log
        assert f"metrics on http://127.0.0.1:{p2}/metrics" in log
        assert _scrape(p1) is None and "cgctl_journal_bytes" in _scrape(p2)
        wait_for(prom.exists, what="the textfile written")
        assert {fam.name for fam in text_string_to_metric_families(prom.read_text())} >= \
            {"cgctl_applies", "cgctl_journal_bytes"}
        # 2. both off: nothing listens, the textfile (stale from now on) is gone
        f.write_text(base)
        svc.signal(signal.SIGHUP)
        log = svc.wait_log("reloaded", n=2)
        assert "metrics endpoint off" in log and "metrics textfile off" in log
        assert _scrape(p2) is None and not prom.exists()
        # 3. on again, on the first port
        f.write_text(base + f'metrics_listen = "127.0.0.1:{p1}"\n')
        svc.signal(signal.SIGHUP)
        svc.wait_log("reloaded", n=3)
        assert {fam.name for fam in text_string_to_metric_families(_scrape(p1))} >= \
            {"cgctl_applies", "cgctl_apply_failures", "cgctl_journal_bytes"}
        svc.signal(signal.SIGTERM)
        assert svc.wait() == 0
        assert _scrape(p1) is None
        assert "Traceback" not in svc.log()
    finally:
        svc.stop()

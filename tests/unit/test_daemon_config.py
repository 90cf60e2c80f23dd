"""The service's config file: defaults, checking, and reload on SIGHUP (a bad file keeps the
running configuration)."""

from __future__ import annotations

import signal

import pytest

from cgctl import consts
from cgctl import daemon as D
from cgctl.errors import UsageError
from cgctl.service_config import load_config, resolve
from tests.daemonkit import TEST_URI, NotifySink, Subprocess

pytest.importorskip("libvirt")


def test_no_file_means_defaults(tmp_path):
    assert load_config(str(tmp_path / "absent.toml")) == D.Config()
    assert load_config(None) == D.Config()
    assert D.Config().uris == consts.DEFAULT_URIS
    assert D.Config().journal == consts.JOURNAL_PATH


def test_a_full_file(tmp_path):
    f = tmp_path / "cgctl.toml"
    f.write_text('uris = ["qemu:///system"]\njournal = "/srv/j.db"\nlog_level = "DEBUG"\n'
                 "reconnect_initial = 1\nreconnect_max = 10.5\nkeepalive_interval = 10\n"
                 "keepalive_count = 5\nwatch_devices = false\n")
    assert load_config(str(f)) == D.Config(
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

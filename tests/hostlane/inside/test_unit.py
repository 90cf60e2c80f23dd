"""cgctl's unit under the real systemd, installed per README.md: Type=notify reaches active,
logs land in journald with their priorities, `systemctl reload` re-reads the config file."""
import os

from .hostkit import journal, now_stamp, systemctl, unit_props, wait_for

CONFIG = "/etc/cgctl/cgctl.toml"


def test_type_notify_reaches_active_with_status():
    p = unit_props("cgctl.service", "Type", "ActiveState", "SubState", "StatusText", "MainPID",
                   "WatchdogUSec", "ExecMainStatus")
    assert (p["Type"], p["ActiveState"], p["SubState"]) == ("notify", "active", "running"), p
    assert "qemu:///system" in p["StatusText"] and "watching" in p["StatusText"], p
    assert p["WatchdogUSec"] == "30s", p
    # the main process is the venv's cgctl daemon the README's drop-in points at
    with open(f"/proc/{p['MainPID']}/cmdline") as f:
        argv = f.read().split("\0")
    assert "/opt/cgctl/venv/bin/cgctl" in argv and "daemon" in argv, argv


def test_logs_land_in_journald_with_priorities():
    entries = journal("cgctl.service", "-1h")
    ours = [e for e in entries if e.get("_PID") and e.get("SYSLOG_IDENTIFIER") != "systemd"]
    msgs = {e["MESSAGE"]: e.get("PRIORITY") for e in ours if isinstance(e.get("MESSAGE"), str)}
    ready = [m for m in msgs if m.startswith("ready:") or "connected to qemu:///system" in m]
    assert ready, sorted(msgs)
    assert all(msgs[m] == "6" for m in ready), {m: msgs[m] for m in ready}
    # the "<6>" prefix is parsed by journald, never left in the text
    assert not [m for m in msgs if m.startswith("<")], sorted(msgs)


def test_reload_rereads_config_and_keeps_running_on_a_bad_one():
    pid = unit_props("cgctl.service", "MainPID")["MainPID"]
    os.makedirs(os.path.dirname(CONFIG), exist_ok=True)
    try:
        since = now_stamp()
        with open(CONFIG, "w") as f:
            f.write('uris = ["qemu:///system"]\n')
        systemctl("reload", "cgctl.service")   # returns once RELOADING=1 ... READY=1 came
        p = unit_props("cgctl.service", "ActiveState", "MainPID", "StatusText")
        assert (p["ActiveState"], p["MainPID"]) == ("active", pid), p
        assert "lxc:///system" not in p["StatusText"], p
        msgs = {e["MESSAGE"]: e.get("PRIORITY") for e in journal("cgctl.service", since)}
        assert any(m.startswith("reloaded /etc/cgctl/cgctl.toml") and pr == "6" for m, pr in msgs.items()), msgs

        since = now_stamp()
        with open(CONFIG, "w") as f:
            f.write('uris = [this is not toml\n')
        systemctl("reload", "cgctl.service")
        p = unit_props("cgctl.service", "ActiveState", "MainPID")
        assert (p["ActiveState"], p["MainPID"]) == ("active", pid), p
        msgs = wait_for(lambda: {e["MESSAGE"]: e.get("PRIORITY") for e in journal("cgctl.service", since)
                                 if "keeping the previous configuration" in str(e.get("MESSAGE"))},
                        "the reload error in the journal", timeout=20)
        assert set(msgs.values()) == {"3"}, msgs
    finally:
        if os.path.exists(CONFIG):
            os.unlink(CONFIG)
        systemctl("reload", "cgctl.service", check=False)
    assert "lxc:///system" in unit_props("cgctl.service", "StatusText")["StatusText"]

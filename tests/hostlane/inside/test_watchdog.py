"""The unit's watchdog under the real systemd: a SIGSTOPped service is killed and restarted.
A runtime drop-in shortens WatchdogSec so the test does not wait 30 s."""
import os
import signal

from .hostkit import journal, now_stamp, systemctl, unit_props, wait_for

DROPIN = "/run/systemd/system/cgctl.service.d/50-hostlane-watchdog.conf"


def test_watchdog_restarts_a_stopped_service():
    os.makedirs(os.path.dirname(DROPIN), exist_ok=True)
    with open(DROPIN, "w") as f:
        f.write("[Service]\nWatchdogSec=6\n")
    pid = None
    try:
        systemctl("daemon-reload")
        systemctl("restart", "cgctl.service")
        p = unit_props("cgctl.service", "MainPID", "NRestarts", "WatchdogUSec")
        assert p["WatchdogUSec"] == "6s", p
        pid, n0 = int(p["MainPID"]), int(p["NRestarts"])
        since = now_stamp()
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: (lambda q: q["MainPID"] not in ("0", str(pid)) and q["ActiveState"] == "active")(
            unit_props("cgctl.service", "MainPID", "ActiveState")), "a new cgctl process, active", 90)
        assert int(unit_props("cgctl.service", "NRestarts")["NRestarts"]) == n0 + 1
        assert any("atchdog timeout" in str(e.get("MESSAGE")) for e in journal("cgctl.service", since))
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        if pid and os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGCONT)
        os.unlink(DROPIN)
        systemctl("daemon-reload")
        systemctl("restart", "cgctl.service")

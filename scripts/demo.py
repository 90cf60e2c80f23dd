"""cgctl's main job, shown on a real libvirtd and a real QEMU guest.

A permanent change (--perm) survives a guest restart; a dynamic one (--live)
does not; a static one (--config) waits for the next start. The listener
service (`cgctl daemon`) puts the config back at every start.

Run through scripts/demo.sh (it installs what is needed first).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tests.harness.libvirtd import LibvirtSandbox  # noqa: E402

CGCTL = [os.path.join(os.path.dirname(sys.executable), "cgctl")]


def run(*args, check=True, quiet=False):
    if not quiet:
        print(f"\n$ cgctl {' '.join(shlex.quote(a) for a in args)}", flush=True)
    r = subprocess.run(CGCTL + list(args), text=True, capture_output=True)
    if not quiet:
        sys.stdout.write(r.stdout)
    sys.stdout.write(r.stderr)
    if check and r.returncode != 0:
        raise SystemExit(f"demo: cgctl failed with {r.returncode}")
    return r


def step(text):
    print(f"\n=== {text}", flush=True)


def wait_applied(journal, uuid, count, timeout=20.0):
    """Wait until the service has recorded ``count`` applies for the guest."""
    import sqlite3
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            db = sqlite3.connect(journal)
            n = db.execute("SELECT count(*) FROM history WHERE uuid = ? AND source = 'event'",
                           (uuid,)).fetchone()[0]
            db.close()
            if n >= count:
                return
        except sqlite3.Error:
            pass
        time.sleep(0.1)
    raise SystemExit("demo: the service did not apply the config in time")


def main() -> int:
    workdir = tempfile.mkdtemp(prefix="cgctl-demo-")
    journal = os.path.join(workdir, "journal.db")
    os.environ["CGCTL_JOURNAL"] = journal
    sb = LibvirtSandbox.attach()
    owned = sb is None
    if owned:
        step("starting a private libvirtd + virtlogd (own mount namespace, no systemd here)")
        sb = LibvirtSandbox().start()
    daemon = None
    guest = None
    try:
        guest = sb.new_guest("qemu", start=False)
        name = guest.name
        step(f"defined a tiny TCG guest {name} (64 MiB, 1 vCPU, no disk)")
        run("host")

        step("starting the listener service: it re-applies the journal at every guest start")
        daemon = subprocess.Popen(CGCTL + ["daemon", "-v"], stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)

        step("static change while stopped: remembered for the next start")
        run("set", name, "hard_limit=1G", "cpu_shares=512", "--config")

        step("start the guest: the service applies the config")
        sb.start_guest(name, guest.uri)
        wait_applied(journal, guest.uuid, 1)
        run("show", name)

        step("permanent change (now and from the next start) and a dynamic one (now only)")
        run("set", name, "cpu_shares=2048", "--perm")
        run("memtune", name, "--hard-limit", "768M", "--live")
        run("show", name)

        step("restart the guest: the permanent change survives, the dynamic one is gone")
        sb.destroy(name, guest.uri)
        sb.start_guest(name, guest.uri)
        wait_applied(journal, guest.uuid, 2)
        run("show", name)
        r = run("--json", "show", name, quiet=True)
        import json
        rows = {row["param"]: row for row in json.loads(r.stdout)["params"]}
        ok = rows["cpu_shares"]["live"] == "2048" and rows["hard_limit"]["live"] == "1G"
        run("history", name)
        print("\ndemo: " + ("OK: cpu_shares=2048 (permanent) kept, hard_limit back to 1G "
                            "(the dynamic 768M was lost at restart)" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                _, err = daemon.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                _, err = daemon.communicate()
            print("\n--- service log ---\n" + err.strip())
        if guest is not None:
            sb.remove(guest.name, guest.uri)
        if owned:
            sb.stop()


if __name__ == "__main__":
    sys.exit(main())

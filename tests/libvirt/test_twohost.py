"""Settings travel with the guest: a real live migration between two libvirt daemons acting as two
hosts (tests/harness/twohost.py), and an offline dumpxml/define/start on the other host.

Run under the machine's libvirt lock (the hosts' hook directories are private, but the sandbox and
these hosts share QEMU and the cgroup tree):
    flock /tmp/cgctl-libvirt.lock .venv/bin/python -m pytest -p no:cacheprovider \
        tests/libvirt/test_twohost.py -s
``-s`` shows the figures (migration time, when the limits were written vs when the vCPUs
resumed on the destination).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest

from tests.harness import twohost
from tests.harness.libvirtd import qemu_xml, unique_name

pytestmark = pytest.mark.skipif(twohost.skip_reason() is not None,
                                reason=twohost.skip_reason() or "")

V1_UNLIMITED = 9223372036854771712
MiB = 1 << 20


def _cgctl_hook() -> str:
    from cgctl.start.options import Options
    from cgctl.hook.install import hook_command, script_text
    return script_text("qemu", hook_command(sys.executable, Options()))


@pytest.fixture(scope="module")
def hosts():
    hook = {"cgctl": _cgctl_hook()}
    th = twohost.TwoHosts(hooks_a=hook, hooks_b=hook)
    a, b = th.start()
    try:
        yield a, b
    finally:
        problems = th.stop()
        assert not problems, problems


def machine_dir(pid: int, controller: str) -> str:
    """The guest's machine group in one v1 hierarchy (from /proc/PID/cgroup)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if controller in ctrls.split(","):
                parts = path.strip("/").split("/")
                while parts and (parts[-1] == "emulator" or parts[-1].startswith("vcpu")):
                    parts.pop()
                return os.path.join("/sys/fs/cgroup", controller, *parts)
    raise AssertionError(f"no {controller} line for {pid}")


def kernel(host, name) -> dict:
    pid = host.guest_pid(name)
    assert pid, f"{name} does not run on {host.name}"
    mem, cpu = machine_dir(pid, "memory"), machine_dir(pid, "cpu")

    def rd(path):
        with open(path) as f:
            return int(f.read().strip())
    return {"hard_limit": rd(f"{mem}/memory.limit_in_bytes"),
            "soft_limit": rd(f"{mem}/memory.soft_limit_in_bytes"),
            "cpu_shares": rd(f"{cpu}/cpu.shares"),
            "vcpu_quota": rd(f"{cpu}/vcpu0/cpu.cfs_quota_us"),
            "group": os.path.basename(mem)}


def cg(host, *args):
    r = host.cgctl(*args)
    assert "warning:" not in r.stdout, r.stdout  # the metadata was written
    return r


def show_config(host, name) -> dict:
    d = json.loads(host.cgctl("--json", "show", name).stdout)
    return {r["param"]: r["config"] for r in d["params"] if r["config"] is not None}


def history(host, name) -> list:
    return json.loads(host.cgctl("--json", "history", name).stdout)


def define(host, name, vcpus=1) -> None:
    path = os.path.join(host.root, f"{name}.xml")
    with open(path, "w") as f:
        f.write(qemu_xml(name, vcpus=vcpus))
    host.virsh("define", path)


class Events:
    """``virsh event --loop --timestamp`` on a host, stopped by PID."""

    def __init__(self, host):
        self.proc = subprocess.Popen(["virsh", "-c", host.uri, "event", "--all", "--loop",
                                      "--timestamp"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                     text=True)
        time.sleep(0.5)  # registered before anything happens (no assert depends on speed)

    def stop(self) -> list:
        self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        events = []
        for line in out.splitlines():
            # 2025-05-01 12:00:00.123+0000: event 'lifecycle' for domain 'x': Resumed Migrated
            stamp, _, rest = line.partition(": event ")
            if not rest:
                continue
            at = datetime.strptime(stamp.strip(), "%Y-%m-%d %H:%M:%S.%f%z")
            events.append((at, rest.split(": ", 1)[-1].strip()))
        return events


def ts(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def test_live_migration_carries_permanent_and_dynamic_settings_static_at_next_start(hosts):
    a, b = hosts
    name = unique_name()
    define(a, name)
    a.virsh("start", name)
    try:
        cg(a, "set", name, "hard_limit=1536M", "cpu_shares=512", "--perm")  # permanent
        cg(a, "set", name, "soft_limit=1G", "--config")  # static: from the next start
        cg(a, "set", name, "vcpu_quota=40000", "--live")  # dynamic: this run only
        before = kernel(a, name)
        assert (before["hard_limit"], before["cpu_shares"], before["vcpu_quota"],
                before["soft_limit"]) == (1536 * MiB, 512, 40000, V1_UNLIMITED)
        live_md = a.virsh("metadata", name, "http://cgctl.org/xmlns/guest", "--live").stdout
        assert 'param="vcpu_quota"' in live_md and 'param="soft_limit"' not in live_md
        assert 'param="soft_limit"' in a.virsh("metadata", name, "http://cgctl.org/xmlns/guest",
                                                "--config").stdout

        events = Events(b)
        t0 = time.monotonic()
        a.virsh("migrate", "--live", "--persistent", name, b.uri, "--migrateuri",
                "tcp://127.0.0.1")
        wall = time.monotonic() - t0
        seen = events.stop()

        # every live value is in force on the destination's own (new) cgroup
        after = kernel(b, name)
        assert after["group"] != before["group"]
        assert (after["hard_limit"], after["cpu_shares"], after["vcpu_quota"],
                after["soft_limit"]) == (1536 * MiB, 512, 40000, V1_UNLIMITED)

        # destination's journal: the config came with the guest, with its origin
        assert show_config(b, name) == {"hard_limit": "1536M", "cpu_shares": "512"}
        rows = history(b, name)
        imported = [r for r in rows if r["command"] == "metadata"]
        assert {(r["param"], r["new_value"], r["user"].split("@")[-1]) for r in imported} == \
            {("hard_limit", "1536M", "hosta"), ("cpu_shares", "512", "hosta")}
        applies = [r for r in rows if r["source"] == "hook" and r["mode"] == "live"
                   and r["outcome"] == "ok"]
        assert {r["param"] for r in applies} >= {"hard_limit", "cpu_shares", "vcpu_quota"}

        # the source's journal is as it was: three changes, the config of the guest it defines
        assert show_config(a, name) == {"hard_limit": "1536M", "cpu_shares": "512",
                                        "soft_limit": "1G"}
        assert [r["command"] for r in history(a, name)] == ["set"] * 4

        # exposure: the limits were written before the destination resumed the vCPUs
        resumed = [at for at, what in seen if what == "Resumed Migrated"]
        started = [at for at, what in seen if what == "Started Migrated"]
        assert resumed and started, seen
        started_apply = max(ts(r["at"]) for r in applies if r["command"] == "hook started")
        exposure_ms = (started_apply - resumed[0]).total_seconds() * 1000
        print(f"\nlive migration {wall:.2f} s; destination: STARTED/MIGRATED -> "
              f"'hook started' apply {(started_apply - started[0]).total_seconds() * 1000:.1f} ms,"
              f" apply -> RESUMED/MIGRATED {-exposure_ms:.1f} ms (exposure "
              f"{max(exposure_ms, 0):.1f} ms)")
        assert started_apply < resumed[0]

        # next start on the destination: static applies, dynamic is gone (seed CASE A/B/C)
        b.virsh("destroy", name)
        b.virsh("start", name)
        again = kernel(b, name)
        assert (again["hard_limit"], again["cpu_shares"], again["soft_limit"],
                again["vcpu_quota"]) == (1536 * MiB, 512, 1 << 30, -1)
        assert show_config(b, name)["soft_limit"] == "1G"

        # a change on B, then back to A: A's journal had an older decision: B's wins
        cg(b, "set", name, "cpu_shares=700", "--perm")
        b.virsh("migrate", "--live", "--persistent", "--undefinesource", name, a.uri,
                "--migrateuri", "tcp://127.0.0.1")
        back = kernel(a, name)
        assert (back["cpu_shares"], back["hard_limit"], back["soft_limit"]) == \
            (700, 1536 * MiB, 1 << 30)
        assert show_config(a, name)["cpu_shares"] == "700"
        taken = [r for r in history(a, name) if r["command"] == "metadata"]
        assert [(r["param"], r["old_value"], r["new_value"]) for r in taken] == \
            [("cpu_shares", "512", "700")]
    finally:
        for h in (a, b):
            h.virsh("destroy", name, check=False)
            h.virsh("undefine", name, check=False)


def test_offline_dumpxml_define_start_on_another_host(hosts):
    a, b = hosts
    name = unique_name()
    define(a, name)
    try:
        cg(a, "set", name, "hard_limit=1G", "cpu_shares=300", "--config")
        xml = a.virsh("dumpxml", "--inactive", name).stdout
        a.virsh("undefine", name)
        path = os.path.join(b.root, f"{name}.xml")
        with open(path, "w") as f:
            f.write(xml)
        b.virsh("define", path)
        b.virsh("start", name)
        k = kernel(b, name)
        assert (k["hard_limit"], k["cpu_shares"]) == (1 << 30, 300)
        assert show_config(b, name) == {"hard_limit": "1G", "cpu_shares": "300"}
        assert {r["user"].split("@")[-1] for r in history(b, name)
                if r["command"] == "metadata"} == {"hosta"}
    finally:
        for h in (a, b):
            h.virsh("destroy", name, check=False)
            h.virsh("undefine", name, check=False)


def test_a_profile_the_destination_lacks_travels_by_value(hosts):
    """docs/fleet.md#profiles: the metadata carries the profile's values, so host B, which has
    no profile 'gold', applies gold's values (with the guest's own override on top) before the
    vCPUs resume, and again at the guest's next start there."""
    a, b = hosts
    name = unique_name()
    define(a, name)
    try:
        cg(a, "profile", "set", "gold", "cpu_shares=600", "hard_limit=1G", "--config")
        cg(a, "set", name, "hard_limit=1536M", "--profile", "gold", "--config")
        a.virsh("start", name)
        assert (kernel(a, name)["cpu_shares"], kernel(a, name)["hard_limit"]) == \
            (600, 1536 * MiB)
        assert "gold" not in b.cgctl("profile", "list").stdout
        a.virsh("migrate", "--live", "--persistent", name, b.uri, "--migrateuri",
                "tcp://127.0.0.1")
        k = kernel(b, name)
        assert (k["cpu_shares"], k["hard_limit"]) == (600, 1536 * MiB)
        d = json.loads(b.cgctl("--json", "show", name).stdout)
        assert (d["profile"], d["profile_origin"], d["profile_reference"]) == \
            ("gold", "carried", "gold")
        assert {r["param"]: r["from_profile"] for r in d["params"] if r["config"]} == \
            {"cpu_shares": True, "hard_limit": False}
        b.virsh("destroy", name)
        b.virsh("start", name)
        k = kernel(b, name)
        assert (k["cpu_shares"], k["hard_limit"]) == (600, 1536 * MiB)
        assert "gold" not in b.cgctl("profile", "list").stdout  # carried, not defined on B
    finally:
        for h in (a, b):
            h.virsh("destroy", name, check=False)
            h.virsh("undefine", name, check=False)

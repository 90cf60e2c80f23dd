"""cgctl's libvirt hook, installed per README.md into the libvirt systemd started: a guest's
journal config is in force when `virsh start` returns, even with the service stopped, and
restarting libvirtd with a running guest kills nothing and keeps its --live changes."""
import os

from .hostkit import cgctl, cgctl_json, effective_memory_max, read, systemctl, virsh, wait_for

MiB = 1024 * 1024


def test_hook_scripts_installed_per_readme():
    for driver in ("qemu", "lxc"):
        path = f"/etc/libvirt/hooks/{driver}.d/cgctl"
        assert os.access(path, os.X_OK), path
        assert "cgctl-hook" in read(path), read(path)
        assert "/opt/cgctl/venv/" in read(path), read(path)


def test_limits_in_force_when_start_returns_without_the_service(make_guest):
    g = make_guest("hl-hook")
    cgctl("set", g.name, "hard_limit=180M", "vcpu_quota=30%", "--config")
    systemctl("stop", "cgctl.service")
    try:
        g.start()
        # no waiting: the hook ran inside `virsh start`
        assert effective_memory_max(g.cgroup, g.scope) == 180 * MiB
        assert read(os.path.join(g.cgroup, "vcpu0", "cpu.max")).split()[0] == "30000"
        hist = cgctl_json("history", g.name)
        rows = hist if isinstance(hist, list) else hist.get("history", hist.get("rows", []))
        assert any(str(r.get("source")) == "hook" for r in rows), rows
    finally:
        systemctl("start", "cgctl.service")


def test_libvirtd_restart_kills_nothing_and_keeps_live_changes(make_guest):
    g = make_guest("hl-keep")
    cgctl("set", g.name, "hard_limit=160M", "--config")
    g.start()
    wait_for(lambda: effective_memory_max(g.cgroup, g.scope) == 160 * MiB, "config applied at start", 30)
    cgctl("set", g.name, "hard_limit=170M", "--live")
    pid = g.pid
    systemctl("restart", "libvirtd.service")
    wait_for(lambda: virsh("list", check=False).returncode == 0, "libvirtd answering again")
    assert g.running() and g.pid == pid and os.path.exists(f"/proc/{pid}")
    # the hook's `reconnect begin` and the service's reconcile both see the same instance
    assert effective_memory_max(g.cgroup, g.scope) == 170 * MiB
    systemctl("restart", "cgctl.service")
    assert effective_memory_max(g.cgroup, g.scope) == 170 * MiB


def test_virsh_start_time_with_and_without_the_hook(make_guest):
    """A figure for docs/testing.md (written to the results' facts.txt), not an assertion on speed."""
    import statistics
    import time

    g = make_guest("hl-timing")
    cgctl("set", g.name, "hard_limit=150M", "vcpu_quota=50%", "--config")

    def starts(n=3):
        out = []
        for _ in range(n):
            t0 = time.monotonic()
            g.start()
            out.append(time.monotonic() - t0)
            g.destroy()
        return out

    with_hook = starts()
    cgctl("hook", "uninstall")
    try:
        systemctl("restart", "libvirtd.service")
        without = starts()
    finally:
        cgctl("hook", "install")          # as README.md installs it
        systemctl("restart", "libvirtd.service")
    with open("/run/hostlane/facts.txt", "a") as f:
        f.write(f"virsh start (QEMU, nested TCG), 3 each: with the hook {[round(x, 2) for x in with_hook]} "
                f"median {statistics.median(with_hook):.2f}s; without {[round(x, 2) for x in without]} "
                f"median {statistics.median(without):.2f}s\n")
    assert os.access("/etc/libvirt/hooks/qemu.d/cgctl", os.X_OK)

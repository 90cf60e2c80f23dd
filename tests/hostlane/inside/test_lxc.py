"""An LXC container under systemd + cgroup v2: libvirt_lxc and the container's init sit in
machine.slice/machine-lxc\\x2dPID\\x2dNAME.scope/libvirt; cgctl's limits land there and stay."""
import os

from .hostkit import cgctl, effective_memory_max, read, systemctl

MiB = 1024 * 1024


def test_lxc_limits_live_and_perm(make_guest):
    g = make_guest("hl-ct", "lxc").start()
    assert os.path.basename(g.scope).startswith("machine-lxc\\x2d"), g.scope
    assert os.path.basename(g.cgroup) == "libvirt", g.cgroup
    cgctl("set", g.name, "hard_limit=100M", "--live")
    assert effective_memory_max(g.cgroup, g.scope) == 100 * MiB
    systemctl("daemon-reload")
    assert effective_memory_max(g.cgroup, g.scope) == 100 * MiB

    cgctl("set", g.name, "hard_limit=90M", "--perm")
    assert effective_memory_max(g.cgroup, g.scope) == 90 * MiB
    g.destroy()
    g.start()
    # the hook's `started begin` has applied it when `virsh start` returns (docs/hook.md: for LXC
    # only that one is a guarantee)
    assert effective_memory_max(g.cgroup, g.scope) == 90 * MiB
    assert read(os.path.join(g.cgroup, "memory.max")) == str(90 * MiB)

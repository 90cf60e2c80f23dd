"""The VM is the host the lane claims: systemd as PID 1 on a pure cgroup v2 hierarchy."""
import os


def test_systemd_is_pid1_on_pure_cgroup_v2():
    assert os.readlink("/proc/1/exe").endswith("/systemd")
    assert os.statvfs("/sys/fs/cgroup") and open("/proc/self/mounts").read().count(" /sys/fs/cgroup cgroup2 ") == 1

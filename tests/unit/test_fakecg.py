"""The fake cgroup trees look to cgctl.cgroup.hierarchy (and to a reader of files) like the real thing."""

import os

import pytest

from cgctl.cgroup import hierarchy
from tests import fakecg


def read(path):
    with open(path) as f:
        return f.read()


def parse_proc_cgroup(text):
    return [line.split(":", 2) for line in text.splitlines()]


# ---------------------------------------------------------------- v2

def test_v2_host_is_detected_as_v2(fs):
    fakecg.make_v2_host(fs)
    host = hierarchy.detect("/proc")
    assert host.mode == "v2"
    (h,) = host.hierarchies
    assert h.mountpoint == "/sys/fs/cgroup"
    assert h.controllers == {"cpuset", "cpu", "io", "memory", "pids"}
    assert host.owner("blkio") is h
    assert read("/sys/fs/cgroup/cgroup.controllers") == "cpuset cpu io memory pids\n"


def test_v2_root_has_no_limit_files(fs):
    fakecg.make_v2_host(fs)
    for f in ("memory.max", "cpu.max", "cpu.weight", "io.max", "cgroup.type", "memory.swap.max"):
        assert not os.path.exists(f"/sys/fs/cgroup/{f}")
    assert os.path.exists("/sys/fs/cgroup/io.cost.qos")


def test_v2_group_has_kernel_defaults(fs):
    fakecg.make_v2_host(fs)
    g = fakecg.make_group(fs, "/sys/fs/cgroup/test.slice")
    expected = {
        "memory.max": "max\n", "memory.high": "max\n", "memory.low": "0\n", "memory.min": "0\n",
        "memory.swap.max": "max\n", "memory.swap.high": "max\n", "memory.current": "0\n",
        "cpu.weight": "100\n", "cpu.max": "max 100000\n", "cpuset.cpus": "\n", "cpuset.mems": "\n",
        "io.weight": "default 100\n", "io.max": "", "cgroup.type": "domain\n",
        "cgroup.procs": "", "cgroup.threads": "", "cgroup.subtree_control": "",
        "cgroup.controllers": "cpuset cpu io memory pids\n",
    }
    for name, content in expected.items():
        assert read(os.path.join(g, name)) == content, name
    assert not os.path.exists(os.path.join(g, "io.bfq.weight"))


def test_v2_without_swap_accounting_has_no_swap_files(fs):
    fakecg.make_v2_host(fs, swap=False)
    g = fakecg.make_group(fs, "/sys/fs/cgroup/a")
    assert os.path.exists(os.path.join(g, "memory.max"))
    assert not [f for f in os.listdir(g) if f.startswith(("memory.swap.", "memory.zswap."))]


def test_v2_bfq_adds_io_bfq_weight(fs):
    fakecg.make_v2_host(fs, bfq=True)
    g = fakecg.make_group(fs, "/sys/fs/cgroup/a")
    assert read(os.path.join(g, "io.bfq.weight")) == "default 100\n"


def test_v2_group_only_gets_files_of_enabled_controllers(fs):
    fakecg.make_v2_host(fs)
    fs.get_object("/sys/fs/cgroup/cgroup.subtree_control").set_contents("memory\n")
    g = fakecg.make_group(fs, "/sys/fs/cgroup/a")
    assert read(os.path.join(g, "cgroup.controllers")) == "memory\n"
    assert os.path.exists(os.path.join(g, "memory.max"))
    assert not os.path.exists(os.path.join(g, "cpu.max"))
    # asking for a controller enables it in the parent first, as on a real host
    b = fakecg.make_group(fs, "/sys/fs/cgroup/b", controllers=("cpu",))
    assert os.path.exists(os.path.join(b, "cpu.max"))
    assert read("/sys/fs/cgroup/cgroup.subtree_control") == "cpu memory\n"


def test_v2_controller_the_parent_lacks_is_refused(fs):
    fakecg.make_v2_host(fs, controllers=("cpu", "memory"))
    with pytest.raises(ValueError, match="does not offer"):
        fakecg.make_group(fs, "/sys/fs/cgroup/a", controllers=("io",))


def test_systemd_v2_machine_layout(fs):
    fakecg.make_v2_host(fs)
    vm = fakecg.make_systemd_v2_machine(fs, "my-vm", id=3, vcpus=2)
    scope = "/sys/fs/cgroup/machine.slice/machine-qemu\\x2d3\\x2dmy\\x2dvm.scope"
    assert vm.machine == scope
    assert vm.libvirt == scope + "/libvirt"
    assert vm.emulator == scope + "/libvirt/emulator"
    assert vm.vcpus == (scope + "/libvirt/vcpu0", scope + "/libvirt/vcpu1")
    # the libvirt group is a domain with memory and io; its threaded children are not
    assert read(vm.libvirt + "/memory.max") == "max\n"
    assert read(vm.libvirt + "/io.max") == ""
    assert read(vm.libvirt + "/cgroup.type") == "domain threaded\n"
    assert read(scope + "/cgroup.type") == "domain\n"
    # as the host lane observed it (Debian 12, systemd 252, libvirt 9.0; docs/operations.md):
    # the scope is delegated pids too but does not enable it below itself, and libvirt enables
    # only cpuset and cpu for its threaded groups
    assert read(scope + "/cgroup.controllers") == "cpuset cpu io memory pids\n"
    assert read(scope + "/cgroup.subtree_control") == "cpuset cpu io memory\n"
    assert read(vm.libvirt + "/cgroup.controllers") == "cpuset cpu io memory\n"
    assert read(vm.libvirt + "/cgroup.subtree_control") == "cpuset cpu\n"
    assert not os.path.exists(vm.libvirt + "/pids.max")
    for g in (vm.emulator,) + vm.vcpus:
        assert read(g + "/cgroup.type") == "threaded\n"
        assert read(g + "/cgroup.controllers") == "cpuset cpu\n"
        assert read(g + "/cpu.max") == "max 100000\n"
        assert not os.path.exists(g + "/memory.max")
        assert not os.path.exists(g + "/io.max")
    # the guest's main process
    assert read(f"/proc/{vm.pid}/cgroup") == f"0::{vm.emulator[len('/sys/fs/cgroup'):]}\n"
    assert vm.cgroup == "/machine.slice/machine-qemu\\x2d3\\x2dmy\\x2dvm.scope/libvirt/emulator"
    assert read(vm.emulator + "/cgroup.procs") == f"{vm.pid}\n"
    assert read(vm.pidfile) == str(vm.pid)
    assert vm.pidfile == "/run/libvirt/qemu/my-vm.pid"
    assert read(scope + "/cgroup.events").startswith("populated 1")


def test_two_v2_machines_share_machine_slice(fs):
    a = fakecg.make_systemd_v2_machine(fs, "a", id=1)   # makes the host itself
    b = fakecg.make_systemd_v2_machine(fs, "b", id=2)
    assert os.path.dirname(a.machine) == os.path.dirname(b.machine)
    assert a.pid != b.pid
    assert hierarchy.detect().mode == "v2"


def test_machine_name_follows_libvirt_and_systemd():
    assert fakecg.machine_name(1, "vm_1.test") == "qemu-1-vm1.test"
    assert fakecg.machine_name(7, "--x--") == "qemu-7-x"
    assert len(fakecg.machine_name(1, "a" * 100)) == 64
    assert fakecg.systemd_escape("qemu-1-vm") == "qemu\\x2d1\\x2dvm"


# ---------------------------------------------------------------- v1

def test_v1_host_like_this_machine_is_hybrid_with_v1_owning_everything_we_use(fs):
    fakecg.make_v1_host(fs)
    host = hierarchy.detect("/proc")
    assert host.mode == "hybrid"
    for c in ("memory", "cpu", "cpuacct", "cpuset", "blkio"):
        h = host.owner(c)
        assert h.version == 1 and h.mountpoint == f"/sys/fs/cgroup/{c}"
    assert host.v2.mountpoint == "/sys/fs/cgroup/unified"
    assert host.v2.controllers == {"hugetlb"}
    assert host.owner("io").mountpoint == "/sys/fs/cgroup/blkio"


def test_pure_v1_comounted(fs):
    fakecg.make_v1_host(fs, cpu_comounted=True, unified=False)
    host = hierarchy.detect("/proc")
    assert host.mode == "v1"
    assert host.owner("cpu") is host.owner("cpuacct")
    assert host.owner("cpu").mountpoint == "/sys/fs/cgroup/cpu,cpuacct"
    assert os.path.islink("/sys/fs/cgroup/cpu")
    assert read("/sys/fs/cgroup/cpu/cpu.shares") == "1024\n"


def test_v1_machine_nosystemd_like_this_machine(fs):
    vm = fakecg.make_v1_machine(fs, "/sys/fs/cgroup", "vm1", 5, vcpus=2)
    g = "machine/qemu-5-vm1.libvirt-qemu"
    assert vm.machine["memory"] == f"/sys/fs/cgroup/memory/{g}"
    assert vm.libvirt == vm.machine
    assert vm.emulator["cpu"] == f"/sys/fs/cgroup/cpu/{g}/emulator"
    assert vm.vcpus["cpuset"][1] == f"/sys/fs/cgroup/cpuset/{g}/vcpu1"
    assert "memory" not in vm.emulator and "blkio" not in vm.emulator
    m = vm.machine
    assert read(m["memory"] + "/memory.limit_in_bytes") == "9223372036854771712\n"
    assert read(m["memory"] + "/memory.soft_limit_in_bytes") == "9223372036854771712\n"
    assert read(m["memory"] + "/memory.memsw.limit_in_bytes") == "9223372036854771712\n"
    assert read(m["cpu"] + "/cpu.shares") == "1024\n"
    assert read(m["cpu"] + "/cpu.cfs_period_us") == "100000\n"
    assert read(vm.vcpus["cpu"][0] + "/cpu.cfs_quota_us") == "-1\n"
    assert read(m["cpuset"] + "/cpuset.cpus") == "0-1\n"
    assert read(m["cpuset"] + "/cpuset.mems") == "0\n"
    assert read(m["blkio"] + "/blkio.bfq.weight") == "100\n"
    assert read(m["blkio"] + "/blkio.bfq.weight_device") == "default 100\n"
    assert read(m["blkio"] + "/blkio.throttle.read_bps_device") == ""
    assert not os.path.exists(m["blkio"] + "/blkio.weight")
    lines = {c: path for _, c, path in parse_proc_cgroup(read(f"/proc/{vm.pid}/cgroup"))}
    assert lines["memory"] == f"/{g}"
    assert lines["blkio"] == f"/{g}"
    assert lines["cpu"] == f"/{g}/emulator"
    assert lines["cpuacct"] == f"/{g}/emulator"
    assert lines["cpuset"] == f"/{g}/emulator"
    assert lines["pids"] == "/"
    assert lines[""] == "/"
    assert f"{vm.pid}\n" in read(vm.emulator["cpu"] + "/tasks")
    assert f"{vm.pid}\n" in read(m["memory"] + "/cgroup.procs")


def test_v1_proc_cgroup_ids_match_proc_cgroups(fs):
    vm = fakecg.make_v1_machine(fs, name="x")
    ids = {line.split()[0]: line.split()[1] for line in read("/proc/cgroups").splitlines()[1:]}
    for hid, ctrls, _ in parse_proc_cgroup(read(f"/proc/{vm.pid}/cgroup")):
        for c in ctrls.split(","):
            if c and not c.startswith("name="):
                assert ids[c] == hid


def test_v1_machine_systemd_comounted(fs):
    fakecg.make_v1_host(fs, cpu_comounted=True, blkio_weight="cfq", unified=False)
    vm = fakecg.make_v1_machine(fs, "/sys/fs/cgroup", "web", 2, vcpus=1, layout="systemd")
    scope = "machine.slice/machine-qemu\\x2d2\\x2dweb.scope"
    assert vm.machine["memory"] == f"/sys/fs/cgroup/memory/{scope}"
    assert vm.libvirt["memory"] == f"/sys/fs/cgroup/memory/{scope}/libvirt"
    assert vm.emulator["cpu"] == vm.emulator["cpuacct"] == f"/sys/fs/cgroup/cpu,cpuacct/{scope}/libvirt/emulator"
    assert read(vm.machine["blkio"] + "/blkio.weight") == "500\n"
    lines = {c: path for _, c, path in parse_proc_cgroup(read(f"/proc/{vm.pid}/cgroup"))}
    assert lines["cpu,cpuacct"] == f"/{scope}/libvirt/emulator"
    assert lines["memory"] == f"/{scope}/libvirt"
    assert lines["name=systemd"] == f"/{scope}/libvirt"
    assert lines["pids"] == f"/{scope}"
    host = hierarchy.detect()
    assert host.mode == "v1"
    # what a resolver does: mountpoint of the owner + the path from /proc/PID/cgroup
    assert os.path.isdir(host.owner("cpu").mountpoint + lines["cpu,cpuacct"])


def test_v1_without_memsw(fs):
    vm = fakecg.make_v1_host(fs, memsw=False) and fakecg.make_v1_machine(fs, name="v")
    assert not os.path.exists(vm.machine["memory"] + "/memory.memsw.limit_in_bytes")
    assert os.path.exists(vm.machine["memory"] + "/memory.limit_in_bytes")


def test_v1_escaped_root_is_read_back(fs):
    fakecg.make_v1_host(fs, "/srv/cg root", unified=False, systemd=False)
    host = hierarchy.detect()
    assert host.owner("memory").mountpoint == "/srv/cg root/memory"


def test_systemd_v2_lxc_layout(fs):
    """The LXC container's layout as the host lane observed it (test_layout.py::test_lxc_layout)."""
    fakecg.make_v2_host(fs)
    ct = fakecg.make_systemd_v2_lxc(fs, "hl-layout-ct", pid=583)
    scope = "/sys/fs/cgroup/machine.slice/machine-lxc\\x2d583\\x2dhl\\x2dlayout\\x2dct.scope"
    assert (ct.machine, ct.libvirt) == (scope, scope + "/libvirt")
    assert read(scope + "/cgroup.controllers") == "cpuset cpu io memory pids\n"
    assert read(scope + "/cgroup.subtree_control") == "cpuset cpu io memory\n"
    assert read(scope + "/cgroup.procs") == ""
    assert read(ct.libvirt + "/cgroup.type") == "domain\n"
    assert read(ct.libvirt + "/cgroup.controllers") == "cpuset cpu io memory\n"
    assert read(ct.libvirt + "/cgroup.subtree_control") == ""
    assert len(read(ct.libvirt + "/cgroup.procs").split()) == 3
    assert read(ct.libvirt + "/memory.max") == f"{128 * 2**20}\n"
    assert read(f"/proc/{ct.pid}/cgroup") == f"0::{ct.libvirt[len('/sys/fs/cgroup'):]}\n"
    assert ct.pidfile == "/run/libvirt/lxc/hl-layout-ct.pid"

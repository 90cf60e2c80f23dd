"""cgctl.host.runfiles against fake libvirt run dirs and a fake /proc (no libvirt, no root)."""

from __future__ import annotations

import os
import subprocess
import sys
from xml.sax.saxutils import escape

import pytest

from cgctl import errors
from cgctl.host import runfiles

QEMU_UUID = "d30eb5b3-72ba-4af9-8591-0ef552da6d8c"
LXC_UUID = "2a29237e-15bb-4467-a36f-07f04fc1adcf"

# trimmed from what libvirt 9.0 wrote on the development machine (docs/design.md#the-development-machine)
STATUS = """<!--
WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE
OVERWRITTEN AND LOST.
-->

<domstatus state='running' reason='booted' pid='{pid}'>
  <taint flag='high-privileges'/>
  <vcpus>
    <vcpu id='0' pid='{vcpu}'/>
  </vcpus>
  <domain type='{driver}' id='1'>
    <name>{name}</name>
    <uuid>{uuid}</uuid>
    <memory unit='KiB'>65536</memory>
    <devices>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
    </devices>
  </domain>
</domstatus>
"""


class Host:
    """A fake /run/libvirt, /etc/libvirt and /proc under tmp_path."""

    def __init__(self, root):
        self.run = root / "run"
        self.etc = root / "etc"
        self.proc = root / "proc"
        for d in (self.run / "qemu", self.run / "lxc", self.etc / "qemu", self.etc / "lxc", self.proc):
            d.mkdir(parents=True)
        (self.proc / "uptime").write_text("1000.00 2000.00\n")

    def guest(self, driver, name, uuid, pid, *, persistent=True, argv=None, status_pid=None,
              pidfile=True):
        (self.run / driver / f"{name}.xml").write_text(STATUS.format(
            pid=pid if status_pid is None else status_pid, vcpu=pid + 4, driver=driver,
            name=escape(name), uuid=uuid))
        if pidfile:
            (self.run / driver / f"{name}.pid").write_text(str(pid))
        if persistent:
            (self.etc / driver / f"{name}.xml").write_text("<domain/>")
        if argv is None:
            argv = (["/usr/bin/qemu-system-x86_64", "-name", f"guest={name},debug-threads=on",
                     "-uuid", uuid, "-display", "none"] if driver == "qemu" else
                    ["/usr/lib/libvirt/libvirt_lxc", "--name", name, "--console", "23"])
        if argv is not False:
            self.process(pid, argv)

    def process(self, pid, argv, *, exe=None, uid=0):
        """A fake /proc/PID: argv, exe (argv[0] by default), uid, started 1 s ago."""
        d = self.proc / str(pid)
        d.mkdir(exist_ok=True)
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
        if os.path.lexists(d / "exe"):
            os.unlink(d / "exe")
        os.symlink(exe or (argv[0] if argv else "/nonexistent"), d / "exe")
        (d / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        ticks = 999 * os.sysconf("SC_CLK_TCK")  # /proc/uptime says 1000 s
        (d / "stat").write_text(f"{pid} (x) S " + "0 " * 18 + f"{ticks} 0 0\n")

    def find(self, ident):
        return runfiles.find_running(ident, str(self.run), etc_dir=str(self.etc),
                                    proc_root=str(self.proc))


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def test_running_qemu_by_name(host):
    host.guest("qemu", "vm1", QEMU_UUID, 4242)
    assert host.find("vm1") == runfiles.Guest(
        name="vm1", uuid=QEMU_UUID, driver="qemu", uri="qemu:///system", running=True,
        persistent=True, pid=4242)


@pytest.mark.parametrize("ident", [QEMU_UUID, QEMU_UUID.upper(), QEMU_UUID.replace("-", "")])
def test_lookup_by_uuid(host, ident):
    host.guest("qemu", "other", "11111111-2222-3333-4444-555555555555", 4000)
    host.guest("qemu", "vm1", QEMU_UUID, 4242)
    guest = host.find(ident)
    assert (guest.name, guest.uuid, guest.pid) == ("vm1", QEMU_UUID, 4242)


def test_lxc_by_name_and_uuid(host):
    host.guest("lxc", "ct1", LXC_UUID, 5151, persistent=False)
    by_name, by_uuid = host.find("ct1"), host.find(LXC_UUID)
    assert by_name == by_uuid
    assert (by_name.driver, by_name.uri, by_name.pid, by_name.persistent) == \
        ("lxc", "lxc:///system", 5151, False)


def test_transient_guest_is_not_persistent(host):
    host.guest("qemu", "vm1", QEMU_UUID, 4242, persistent=False)
    assert host.find("vm1").persistent is False


def test_not_running_guest_is_none(host):
    # defined (config in etc) but no runtime files
    (host.etc / "qemu" / "vm1.xml").write_text("<domain/>")
    assert host.find("vm1") is None
    assert host.find(QEMU_UUID) is None


def test_stale_pid_file_process_gone(host):
    host.guest("qemu", "vm1", QEMU_UUID, 4242, argv=False)  # no /proc/4242: crashed, files left
    assert host.find("vm1") is None
    assert host.find(QEMU_UUID) is None


@pytest.mark.parametrize("argv", [
    ["/bin/bash"],  # PID reused by something else
    ["/usr/bin/qemu-system-x86_64", "-uuid", "11111111-2222-3333-4444-555555555555"],  # another guest
    ["/usr/bin/qemu-system-x86_64", "-name", "guest=vm1"],  # no uuid to prove identity
])
def test_stale_pid_file_pid_reused(host, argv):
    host.guest("qemu", "vm1", QEMU_UUID, 4242, argv=argv)
    assert host.find("vm1") is None


def test_lxc_pid_reused_by_other_container(host):
    host.guest("lxc", "ct1", LXC_UUID, 5151,
               argv=["/usr/lib/libvirt/libvirt_lxc", "--name", "ct2", "--console", "23"])
    assert host.find("ct1") is None


def test_zombie_has_empty_cmdline(host):
    host.guest("qemu", "vm1", QEMU_UUID, 4242, argv=[])
    (host.proc / "4242" / "cmdline").write_bytes(b"")
    assert host.find("vm1") is None


def test_pid_file_and_status_disagree(host):
    host.guest("qemu", "vm1", QEMU_UUID, 4242, status_pid=999)
    assert host.find("vm1") is None


def test_pid_file_missing_is_not_running(host):
    # both of libvirt's records must name the PID (cgctl/runfiles.py)
    host.guest("qemu", "vm1", QEMU_UUID, 4242, pidfile=False)
    assert host.find("vm1") is None


def test_status_xml_name_must_match_file_name(host):
    host.guest("qemu", "vm1", QEMU_UUID, 4242)
    os.rename(host.run / "qemu" / "vm1.xml", host.run / "qemu" / "vm2.xml")
    os.rename(host.run / "qemu" / "vm1.pid", host.run / "qemu" / "vm2.pid")
    assert host.find("vm2") is None
    assert host.find(QEMU_UUID) is None


@pytest.mark.parametrize("content", ["", "<domstatus", "<domain><name>vm1</name></domain>",
                                     "<domstatus pid='4242'><domain><name>vm1</name></domain></domstatus>"])
def test_corrupt_status_is_none(host, content):
    host.guest("qemu", "vm1", QEMU_UUID, 4242)
    (host.run / "qemu" / "vm1.xml").write_text(content)
    assert host.find("vm1") is None


def test_uuid_shaped_name(host):
    name = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    host.guest("qemu", name, QEMU_UUID, 4242)
    assert host.find(name).name == name


@pytest.mark.parametrize("name", ["../qemu/vm1", "a/b", "/etc/passwd", ".", "..", "vm\n1", "vm\x001", ""])
def test_path_like_names_are_refused(host, name):
    host.guest("qemu", "vm1", QEMU_UUID, 4242)
    with pytest.raises(errors.UsageError) as exc:
        host.find(name)
    assert repr(name) in str(exc.value)


def test_name_never_reaches_outside_run_dir(host, tmp_path):
    # a status file one level up must not be found through '../'
    (tmp_path / "run" / "evil.xml").write_text(STATUS.format(
        pid=4242, vcpu=1, driver="qemu", name="evil", uuid=QEMU_UUID))
    with pytest.raises(errors.UsageError):
        host.find("../evil")


def test_names_with_odd_but_legal_characters(host):
    name = "vm 1,with'quotes\"&<>"
    host.guest("qemu", name, QEMU_UUID, 4242)
    assert host.find(name).name == name


def test_missing_run_dir(tmp_path):
    assert runfiles.find_running("vm1", str(tmp_path / "nothing"), etc_dir=str(tmp_path),
                                proc_root=str(tmp_path)) is None
    assert runfiles.find_running(QEMU_UUID, str(tmp_path / "nothing"), etc_dir=str(tmp_path),
                                proc_root=str(tmp_path)) is None


def test_read_pid(host):
    (host.run / "qemu" / "a.pid").write_text("123\n")
    (host.run / "qemu" / "b.pid").write_text("garbage")
    assert runfiles.read_pid("qemu", "a", str(host.run)) == 123
    assert runfiles.read_pid("qemu", "b", str(host.run)) is None
    assert runfiles.read_pid("qemu", "c", str(host.run)) is None


def test_instance_of_self():
    """The value earlier versions stored (psutil's create_time): their journals still match."""
    psutil = pytest.importorskip("psutil")
    pid, started = runfiles.instance_of(os.getpid())
    assert pid == os.getpid()
    assert runfiles.same_instance(_Row(pid, psutil.Process().create_time()), (pid, started))


def test_instance_of_needs_no_psutil():
    code = ("import os, sys; import cgctl.host.runfiles as r; r.instance_of(os.getpid()); "
            "sys.exit('psutil' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


class _Row:
    def __init__(self, pid, start_time):
        self.pid, self.start_time = pid, start_time


def test_same_instance_is_one_test_with_one_tolerance():
    """The hook (apply once) and the service (reconcile) ask runfiles.same_instance: a run is
    the same when pid and start agree; one clock tick later is another run."""
    start = 1_700_000_000.25
    assert runfiles.same_instance(_Row(42, start), (42, start))
    assert not runfiles.same_instance(_Row(42, start), (42, start + 0.01))
    assert not runfiles.same_instance(_Row(43, start), (42, start))
    assert not runfiles.same_instance(None, (42, start))


def test_instance_and_started_at_read_one_start():
    """Both anchor the same /proc/PID/stat start: they differ by btime's truncation only."""
    _, inst = runfiles.instance_of(os.getpid())
    assert abs(runfiles.started_at(os.getpid()) - inst) < 1.05


def test_instance_of_gone_process():
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(errors.GuestNotRunning):
        runfiles.instance_of(proc.pid)


def test_instance_differs_between_runs():
    a = subprocess.Popen(["sleep", "5"])
    try:
        first = runfiles.instance_of(a.pid)
        assert runfiles.instance_of(a.pid) == first
    finally:
        a.kill()
        a.wait()


def test_runtime_does_not_import_libvirt():
    code = ("import sys; import cgctl.host.runfiles as r; "
            "r.find_running('x', '/nonexistent'); "
            "sys.exit('libvirt' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_started_at_is_wall_clock():
    import subprocess
    import time
    before = time.time()
    p = subprocess.Popen(["sleep", "5"])
    try:
        started = runfiles.started_at(p.pid)
    finally:
        p.kill()
        p.wait()
    # one clock tick (10 ms) of resolution, whatever btime says
    assert before - 0.02 <= started <= time.time()


def test_all_running_agrees_with_find_running(host):
    host.guest("qemu", "vm1", QEMU_UUID, 4242)
    host.guest("lxc", "ct1", LXC_UUID, 5151, persistent=False)
    host.guest("qemu", "gone", "11111111-2222-3333-4444-555555555555", 4000, argv=False)  # stale
    (host.run / "qemu" / "junk.xml").write_text("<not-a-status/>")
    found = runfiles.all_running(str(host.run), etc_dir=str(host.etc), proc_root=str(host.proc))
    assert found == {QEMU_UUID: host.find("vm1"), LXC_UUID: host.find("ct1")}
    assert runfiles.all_running(str(host.run / "nowhere")) == {}

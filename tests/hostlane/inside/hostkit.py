"""What the host lane's tests share: run a command, wait for a state, tiny guests, the cgroup files
of the groups libvirt put a guest in. Only the installed command line (`cgctl`, `systemctl`,
`virsh`, `journalctl`) and the kernel's files: nothing of cgctl is imported."""
import json
import os
import re
import subprocess
import time
import uuid as uuidlib
from typing import Callable, Dict, Optional

CG = "/sys/fs/cgroup"
# the files a guest's settings can land in (docs/parameters.md, v2 column)
SETTING_FILES = ("memory.max", "memory.high", "memory.swap.max", "memory.min", "cpu.weight",
                 "cpu.max", "cpuset.cpus", "io.weight", "io.bfq.weight", "io.max")


def sh(*cmd: str, check: bool = True, timeout: float = 120, input: Optional[str] = None,
       ) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return p


def cgctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("cgctl", *args, check=check)


def cgctl_json(*args: str):
    return json.loads(cgctl("--json", *args).stdout)


def virsh(*args: str, uri: str = "qemu:///system", check: bool = True) -> subprocess.CompletedProcess:
    return sh("virsh", "-c", uri, *args, check=check)


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("systemctl", *args, check=check)


def unit_props(unit: str, *props: str) -> Dict[str, str]:
    out = systemctl("show", unit, *(f"-p{p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(pred: Callable[[], object], what: str, timeout: float = 60, every: float = 0.2):
    """Poll until ``pred()`` is truthy (a state to reach, not a speed to assert)."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(every)


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


# ---------------------------------------------------------------- guests
def disk_xml(dev: Optional[str]) -> str:
    """A host block device (a loop device: loop_device()) as the guest's virtio disk: what the
    IO parameters act on. Blank, so the guest's BIOS finds nothing to boot and idles."""
    if not dev:
        return ""
    return (f"<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
            f"<source dev='{dev}'/><target dev='vda' bus='virtio'/></disk>")


def qemu_xml(name: str, uid: str, disk: Optional[str] = None) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name><uuid>{uid}</uuid>
  <memory unit='KiB'>65536</memory><currentMemory unit='KiB'>65536</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/><memballoon model='none'/>{disk_xml(disk)}</devices>
</domain>"""


def lxc_xml(name: str, uid: str) -> str:
    return f"""<domain type='lxc'>
  <name>{name}</name><uuid>{uid}</uuid>
  <memory unit='KiB'>131072</memory><vcpu placement='static'>1</vcpu>
  <os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg>
    <initarg>trap 'exit 0' TERM; sleep 1000000 &amp; wait</initarg></os>
  <on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash>
  <devices><console type='pty'/></devices>
</domain>"""


class Guest:
    """A persistent tiny guest, defined through virsh (what an operator has)."""

    def __init__(self, name: str, driver: str = "qemu", disk: Optional[str] = None):
        self.name, self.driver, self.disk = name, driver, disk
        self.uri = f"{driver}:///system"
        self.uuid = str(uuidlib.uuid4())

    def virsh(self, *args: str, check: bool = True):
        return virsh(*args, uri=self.uri, check=check)

    def define(self) -> "Guest":
        path = f"/tmp/{self.name}.xml"
        with open(path, "w") as f:
            f.write(qemu_xml(self.name, self.uuid, self.disk) if self.driver == "qemu"
                    else lxc_xml(self.name, self.uuid))
        self.virsh("define", path)
        return self

    def start(self) -> "Guest":
        self.virsh("start", self.name, check=True)
        return self

    def destroy(self) -> None:
        self.virsh("destroy", self.name, check=False)

    def remove(self) -> None:
        self.destroy()
        self.virsh("undefine", self.name, check=False)
        cgctl("forget", self.name, check=False)

    @property
    def pid(self) -> int:
        return int(read(f"/run/libvirt/{self.driver}/{self.name}.pid"))

    def running(self) -> bool:
        return self.virsh("domstate", self.name, check=False).stdout.strip() == "running"

    @property
    def cgroup(self) -> str:
        """The guest's own group as libvirt made it: its process's cgroup with the trailing
        emulator/vcpuN component stripped (…/machine-qemu\\x2dN\\x2dNAME.scope/libvirt)."""
        line = [ln for ln in read(f"/proc/{self.pid}/cgroup").splitlines() if ln.startswith("0::")][0]
        path = line[3:]
        path = re.sub(r"/(emulator|vcpu\d+|iothread\d+)$", "", path)
        return CG + path

    @property
    def scope(self) -> str:
        """The machine scope systemd-machined made (the guest's group among its siblings)."""
        d = self.cgroup
        while not d.endswith(".scope"):
            d = os.path.dirname(d)
            assert d.startswith(CG + "/"), f"no .scope above {self.cgroup}"
        return d

    @property
    def scope_unit(self) -> str:
        return os.path.basename(self.scope)


def loop_device(path: str, size: int = 64 * 2**20) -> str:
    """A sparse file of ``size`` bytes attached to a free loop device: its /dev path. A real
    block device of the host (blk-mq, scheduler none), so io.max has a MAJ:MIN to key on."""
    sh("modprobe", "loop", check=False)
    with open(path, "wb") as f:
        f.truncate(size)
    return sh("losetup", "--find", "--show", path).stdout.strip()


def majmin(dev: str) -> str:
    st = os.stat(dev)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def io_max(group: str, dev: str) -> Dict[str, str]:
    """The device's line of the group's io.max as {rbps, wbps, riops, wiops}; {} without one."""
    mm = majmin(dev)
    for line in read(os.path.join(group, "io.max")).splitlines():
        key, *fields = line.split()
        if key == mm:
            return dict(f.split("=", 1) for f in fields)
    return {}


def weight_file(group: str):
    """(file, content) of the block-IO weight cgctl writes in ``group``: io.bfq.weight when the
    kernel has BFQ loaded, else io.weight (docs/parameters.md). The default line only."""
    for f in ("io.bfq.weight", "io.weight"):
        path = os.path.join(group, f)
        if os.path.exists(path):
            return f, read(path).splitlines()[0]
    return None, None


def note(line: str) -> None:
    """A fact for docs/ (the results' facts.txt, printed at the end of the run)."""
    with open("/run/hostlane/facts.txt", "a") as f:
        f.write(line + "\n")


def snapshot(top: str) -> Dict[str, str]:
    """Every setting file (SETTING_FILES) in ``top`` and below: {relative path: content}."""
    out = {}
    for d, dirs, files in os.walk(top):
        for f in SETTING_FILES:
            if f in files:
                try:
                    out[os.path.relpath(os.path.join(d, f), top)] = read(os.path.join(d, f))
                except OSError:
                    pass
    return out


def effective_memory_max(group: str, stop: str) -> int:
    """The memory limit in force for ``group``: the smallest memory.max from it up to ``stop``."""
    best = None
    d = group
    while True:
        v = read(os.path.join(d, "memory.max")) if os.path.exists(os.path.join(d, "memory.max")) else "max"
        if v != "max":
            best = int(v) if best is None else min(best, int(v))
        if d == stop or d == CG:
            return best if best is not None else -1
        d = os.path.dirname(d)


def journal(unit: str, since: str) -> list:
    """The unit's journal entries since ``since`` (a `journalctl --since` time), as dicts."""
    out = sh("journalctl", "-u", unit, "--since", since, "-o", "json", "--no-pager").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def now_stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 1))

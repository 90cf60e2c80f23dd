"""The seed state-transition matrices' table (docs/design.md#change-modes), shared by the real
libvirt lane on cgroup v1 (tests/libvirt/test_modes.py) and the systemd host lane on cgroup v2
(tests/hostlane/inside/test_matrix.py). Plain data: nothing of cgctl is imported, so the host
lane, which drives only the installed command line, can use it too.

Each family: the parameter, its config X and its change Y (as given to `cgctl set`), and how the
kernel spells X and Y, per layout:
- ``v1``: (controller, file of the machine group, X, Y), or None: not run on v1;
- ``v2``: (group, ((file, X, Y), ...)): the group is ``"libvirt"`` (the scope's delegated
  ``libvirt/``) or ``"scope"`` (the machine scope itself: weights); the first file the host has
  is the one cgctl writes (docs/parameters.md: ``io.bfq.weight``, else ``io.weight``).
``{dev}`` and ``{majmin}`` stand for a block device of the host and its MAJ:MIN."""
from collections import namedtuple

Family = namedtuple("Family", "param x y v1 v2")

MiB = 2**20

SEED_FAMILIES = {
    "memory": Family("hard_limit", "1G", "768M",
                     ("memory", "memory.limit_in_bytes", str(2**30), str(768 * MiB)),
                     ("libvirt", (("memory.max", str(2**30), str(768 * MiB)),))),
    # v2: shares -> cpu.weight by the runc/crun formula (512 -> 59, 2048 -> 174)
    "cpu": Family("cpu_shares", "512", "2048",
                  ("cpu", "cpu.shares", "512", "2048"),
                  ("scope", (("cpu.weight", "59", "174"),))),
    # v2: io.bfq.weight as given; io.weight converted 1 + (w - 10) * 9999 // 990
    "blkio": Family("weight", "200", "800",
                    ("io", "blkio.bfq.weight", "200", "800"),
                    ("scope", (("io.bfq.weight", "200", "800"),
                               ("io.weight", "default 1920", "default 7980")))),
    # per-device throttles: the host lane's loop device (tests/hostlane/inside/test_matrix.py)
    "blkio_throttle": Family("device_read_bytes_sec", "{dev},1M", "{dev},512K", None,
                             ("libvirt", (("io.max", "{majmin} rbps=1048576 wbps=max riops=max wiops=max",
                                           "{majmin} rbps=524288 wbps=max riops=max wiops=max"),))),
}

# case, flag, what the live value is right after the change and after the next start
SEED_MODES = (("A", "--live"), ("B", "--config"), ("C", "--perm"))
SEED_MODE_NAME = {"A": "live", "B": "config", "C": "live+config"}
LIVE_AFTER_CHANGE = {"A": "y", "B": "x", "C": "y"}
LIVE_AFTER_RESTART = {"A": "x", "B": "y", "C": "y"}

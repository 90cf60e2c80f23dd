"""What the cgroup v2 kernel does on a write, for files on a pyfakefs tree.

Plain fake files accept anything; the kernel does not. ``FakeKernel``
replaces ``cgctl.cgroup.fs.write`` (the one place cgctl writes cgroup files)
with the refusals and the keyed-file semantics seen on a real 6.1 kernel in
the v2 lane (tests/realcg/test_v2_kernel_facts.py checks them there):

- cpu.weight outside 1..10000 → ERANGE; cpu.max quota < 1000 → EINVAL;
  memory.* limits ``-1`` → EINVAL (v2 spells unlimited ``max``);
- io.max merges ``key=value`` per device, a line whose keys are all ``max``
  disappears; io.weight / io.bfq.weight keep a ``default`` line and
  per-device lines (``MAJ:MIN default`` removes one);
- per-device io.weight → EOPNOTSUPP unless iocost is on for the device;
  writing ``MAJ:MIN enable=…`` to the root's io.cost.qos attaches iocost to the
  disk for good: per-device io.weight keeps working after ``enable=0``;
  per-device io.bfq.weight → EOPNOTSUPP unless the disk uses bfq;
- memory.* limits take K/M/G/T suffixes and are rounded down to whole pages;
- cpuset.cpus naming a CPU beyond the root's → ERANGE, cpuset.mems naming a
  node the root does not have → EINVAL (tests/realcg/test_engine_v2.py).
"""

from __future__ import annotations

import errno
import os
import re

from cgctl.cgroup import fs as cgfs

_MEMORY = {"memory.max", "memory.high", "memory.low", "memory.min", "memory.swap.max",
           "memory.swap.high"}
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
PAGE = 4096


def _err(code, path):
    return OSError(code, os.strerror(code), path)


class FakeKernel:
    def __init__(self, monkeypatch, *, iocost=(), bfq_devices=(), fail_on=None):
        self.iocost = set(iocost)
        self.bfq_devices = set(bfq_devices)
        self.fail_on = fail_on or {}  # basename -> errno, to inject a refusal
        self.writes = []
        self._plain = cgfs.write
        monkeypatch.setattr(cgfs, "write", self.write)

    def _read(self, path):
        with open(path) as f:
            return f.read()

    def _store(self, path, text):
        with open(path, "w") as f:
            f.write(text)

    def write(self, path, data):
        name = os.path.basename(path)
        self.writes.append((path, data))
        if name in self.fail_on:
            raise _err(self.fail_on[name], path)
        d = data.strip()
        if name == "cpu.weight":
            if not d.isdigit() or not 1 <= int(d) <= 10000:
                raise _err(errno.ERANGE, path)
        elif name == "cpu.max":
            parts = d.split()
            if parts[0] != "max" and (not parts[0].isdigit() or int(parts[0]) < 1000):
                raise _err(errno.EINVAL, path)
            period = int(parts[1]) if len(parts) > 1 else int(self._read(path).split()[1])
            if not 1000 <= period <= 1000000:
                raise _err(errno.EINVAL, path)
            return self._store(path, f"{parts[0]} {period}\n")
        elif name in _MEMORY:
            if d != "max":
                m = re.fullmatch(r"(\d+)([KMGT]?)", d, re.I)
                if not m:
                    raise _err(errno.EINVAL, path)
                d = str(int(m.group(1)) * _SUFFIX[m.group(2).upper()] // PAGE * PAGE)
        elif name == "io.cost.qos":
            dev = d.split(" ", 1)[0]
            if not re.fullmatch(r"\d+:\d+", dev):
                raise _err(errno.EINVAL, path)
            self.iocost.add(dev)   # attached for good, whatever enable= says
        elif name in ("cpuset.cpus", "cpuset.mems"):
            self._cpuset(path, name, d)
        elif name == "io.max":
            return self._io_max(path, d)
        elif name in ("io.weight", "io.bfq.weight"):
            return self._weight(path, name, d)
        self._store(path, d + "\n")

    def _cpuset(self, path, name, d):
        """v2 only checks the list against what the machine has (the root's
        effective set); a child may name CPUs its parent lacks (.effective narrows)."""
        root = os.path.dirname(path)
        while os.path.exists(os.path.join(os.path.dirname(root), "cgroup.controllers")) \
                and os.path.dirname(root) != root:
            root = os.path.dirname(root)
        have = _cpulist(self._read(os.path.join(root, name + ".effective")))
        try:
            want = _cpulist(d)
        except ValueError:
            raise _err(errno.EINVAL, path) from None
        if want - have:
            raise _err(errno.ERANGE if name == "cpuset.cpus" else errno.EINVAL, path)

    def _io_max(self, path, d):
        dev, _, rest = d.partition(" ")
        if not re.fullmatch(r"\d+:\d+", dev):
            raise _err(errno.EINVAL, path)
        lines = {}
        for line in self._read(path).splitlines():
            head, _, body = line.partition(" ")
            lines[head] = dict(kv.split("=") for kv in body.split())
        cur = lines.get(dev, {k: "max" for k in ("rbps", "wbps", "riops", "wiops")})
        for kv in rest.split():
            k, _, v = kv.partition("=")
            if k not in cur or not (v == "max" or v.isdigit()):
                raise _err(errno.EINVAL, path)
            if v == "0":   # seen on 6.1: v1's "0 removes" has no v2 twin
                raise _err(errno.ERANGE, path)
            cur[k] = v
        lines[dev] = cur
        out = [f"{dev} " + " ".join(f"{k}={v}" for k, v in kv.items())
               for dev, kv in sorted(lines.items()) if any(v != "max" for v in kv.values())]
        self._store(path, "".join(line + "\n" for line in out))

    def _weight(self, path, name, d):
        head, _, rest = d.partition(" ")
        text = self._read(path)
        default = "100"
        per = {}
        for line in text.splitlines():
            h, _, v = line.partition(" ")
            if h == "default":
                default = v
            elif h:
                per[h] = v
        if head == "default" or head.isdigit():
            value = rest if head == "default" else head
            if not value.isdigit() or not 1 <= int(value) <= (10000 if name == "io.weight" else 1000):
                # seen on 6.1: io.weight says EINVAL, io.bfq.weight ERANGE
                raise _err(errno.EINVAL if name == "io.weight" else errno.ERANGE, path)
            default = value
        else:
            allowed = self.iocost if name == "io.weight" else self.bfq_devices
            if head not in allowed:
                raise _err(errno.EOPNOTSUPP, path)
            if rest == "default":
                per.pop(head, None)
            else:
                per[head] = rest
        self._store(path, f"default {default}\n" + "".join(
            f"{k} {v}\n" for k, v in sorted(per.items())))


def _cpulist(text):
    out = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out

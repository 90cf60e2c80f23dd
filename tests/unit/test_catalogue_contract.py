"""The catalogue is the one source of file names: every backend keeps to its row.

For every parameter and each backend (v1 and v2 on the faked kernels of tests/fakecg.py, each
with the host's first file and with the alternative one): a set writes exactly the row's file
for that version, or is refused, before any write, with the row's reason (v1_note/v2_note).
Reading the parameter back uses the same file, or is refused the same way.
"""

from __future__ import annotations

import os

import pytest

from cgctl.cgroup import Router, hierarchy
from cgctl.cgroup import fs as cgfs
from cgctl.cgroup.placement import groups_for_pid
from cgctl.core import live
from cgctl.errors import Unsupported
from cgctl.model import params as P
from tests import fakecg
from tests.fakekernel import FakeKernel

DISK = "8:16"
SAMPLE = {P.BYTES: "1G", P.SHARES: "512", P.PERIOD: "50000", P.QUOTA: "20000",
          P.CPULIST: "0", P.WEIGHT: "300", P.RATE: "10M", P.IOPS: "100",
          P.CPU_WEIGHT: "200", P.IO_WEIGHT: "300"}
SAMPLE_OF = {"swap_hard_limit": "unlimited"}   # alone: at least hard_limit (unlimited)
# (cgroup version, the host has the first of a row's files (BFQ's) or only the alternative)
HOSTS = [(1, True), (1, False), (2, True), (2, False)]


def _host(fs, monkeypatch, version, first):
    if version == 1:
        fakecg.make_v1_host(fs, blkio_weight="bfq" if first else "cfq")
        m = fakecg.make_v1_machine(fs, name="vm", vcpus=1)
    else:
        fakecg.make_v2_host(fs, bfq=first)
        m = fakecg.make_systemd_v2_machine(fs, "vm", id=1, vcpus=1)
    # v2: what the kernel accepts (tests/fakekernel.py); v1: plain files, recorded
    kernel = FakeKernel(monkeypatch, iocost=[DISK], bfq_devices=[DISK]) if version == 2 \
        else _Recorder(monkeypatch)
    host = hierarchy.detect("/proc")
    groups = groups_for_pid(m.pid, host, guest="vm", driver="qemu", proc_root="/proc")
    return Router(host), groups, kernel


class _Recorder:
    def __init__(self, monkeypatch):
        self.writes = []
        self._plain = cgfs.write
        monkeypatch.setattr(cgfs, "write", self.write)

    def write(self, path, data):
        self.writes.append((path, data))
        self._plain(path, data)


def _assignment(p):
    value = SAMPLE_OF.get(p.name, SAMPLE[p.kind])
    return f"{p.name}=/dev/sdb,{value}" if p.per_device else f"{p.name}={value}"


@pytest.mark.parametrize("version, first", HOSTS, ids=["v1", "v1-alt", "v2", "v2-alt"])
@pytest.mark.parametrize("name", [p.name for p in P.CATALOGUE])
def test_a_set_writes_the_rows_file_or_is_refused_with_its_reason(fs, monkeypatch, name,
                                                                   version, first):
    p = P.BY_NAME[name]
    router, groups, kernel = _host(fs, monkeypatch, version, first)
    settings = P.parse_assignments([_assignment(p)])
    files = p.files(version)
    if not files:
        with pytest.raises(Unsupported) as exc:
            live.set_live(router, groups, settings, {"/dev/sdb": DISK})
        assert p.note(version).rstrip(".") in str(exc.value) and exc.value.param == name
        assert kernel.writes == []
        with pytest.raises(Unsupported, match=p.note(version).rstrip(".")):
            live.read_value(router, groups, p)
        return
    _, writes = live.set_live(router, groups, settings, {"/dev/sdb": DISK})
    want = files[0] if first or len(files) == 1 else files[1]
    assert {os.path.basename(w.path) for w in writes if w.param == name} == {want}
    for w in writes:   # what else a set writes (v2's swap.max after memory.max) is a row's too
        assert os.path.basename(w.path) in P.BY_NAME[w.param].files(version)
    assert [os.path.basename(path) for path, _ in kernel.writes] == \
        [os.path.basename(w.path) for w in writes]
    live.read_value(router, groups, p)   # reads back from the row's file(s), no refusal


def test_every_row_is_complete():
    for p in P.CATALOGUE:
        assert p.family in P.FAMILIES and (not p.virsh or P.lookup(p.virsh) is p)
        for version in (1, 2):
            assert p.files(version) or p.note(version), (p.name, version)
        if p.period:   # a quota names its period, with the same groups and files
            period = P.BY_NAME[p.period]
            assert (p.kind, period.kind) == (P.QUOTA, P.PERIOD)
            assert (period.target, period.v2_files) == (p.target, p.v2_files)
    assert {q.name for _, q in P.BANDWIDTH} == {p.name for p in P.CATALOGUE if p.kind == P.QUOTA}


def test_the_virsh_commands_are_the_catalogues():
    from cgctl.cli import main
    assert main._VIRSH == {fam: [p.virsh for p in P.family(fam) if p.virsh]
                           for fam in P.FAMILIES}
    assert sorted(o for opts in main._VIRSH.values() for o in opts) == \
        sorted(p.virsh for p in P.CATALOGUE if p.virsh)
    # virsh has no option for the v2-native parameters: `cgctl set` only
    assert {p.name for p in P.CATALOGUE if not p.virsh} == {"cpu_weight", "io_weight", "device_io_weight",
                                                            "memory_low"}

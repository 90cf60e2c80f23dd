"""Generate docs/parameters.md from the catalogue (``python -m cgctl.model.docgen``).

tests/unit/test_docs.py fails when the committed file differs from this output.
"""

from __future__ import annotations

import sys

from cgctl.model import params as P

HEADER = """# Parameters

Generated from `cgctl/model/params.py` by `python -m cgctl.model.docgen > docs/parameters.md`; a test keeps it
current. Names are libvirt's (`virsh memtune`, `schedinfo`, `blkiotune`); `cgctl set` also takes the
virsh spellings with dashes (`hard-limit`). `cpu_weight`, `io_weight` and `memory_low` are cgroup v2's
own knobs, written as given on v2 (no conversion, so cgctl, libvirt and systemd agree on the number);
virsh has no option for them, so only `cgctl set` takes them.

Values: memory sizes take `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB` (binary), `KB`/`MB`/`GB`
(decimal); a bare memory number is **KiB**, exactly as in virsh; `unlimited`, `-1` and `max` mean no
limit, and so do v1's read-back "no limit" (PAGE_COUNTER_MAX) and libvirt's `9007199254740991` (KiB).
Memory is rounded down to whole pages of the running kernel (`getconf PAGESIZE`: 4 KiB, or 64 KiB
on some arm64/ppc64le kernels), as the kernel does. Times take `us`, `ms`, `s`
(bare: microseconds). A quota may be a share of CPUs: `150%` is 1.5 CPUs at the period in force.
Per-device parameters take `DEVICE,VALUE[,DEVICE,VALUE...]`; a value of `0` (or `unlimited` for
throttles) removes the device's entry. Where the parameter is written: **libvirt group** is the
guest's own group (`.../libvirt` on systemd hosts); **machine group** is the guest's group among its
siblings (weights are relative to siblings); **vcpuN** / **emulator** are QEMU's per-thread groups.

Each table row is one row of the catalogue (`cgctl/model/params.py`), the only place file names live:
the v1 and v2 backends (`cgctl/cgroup/v1.py`, `v2.py`) write exactly the file named here (the first
of "X, else Y" that the host has) or refuse with the reason in brackets, which
`tests/unit/test_catalogue_contract.py` checks for every parameter on both. `cgctl show` and drift
repair judge "live differs from config" with one function (`cgctl/core/compare.py`).
"""

TARGETS = {P.LIBVIRT: "libvirt group", P.MACHINE: "machine group", P.VCPUS: "every vcpuN",
           P.EMULATOR: "emulator"}


def render() -> str:
    out = [HEADER]
    for fam in P.FAMILIES:
        out.append(f"\n## {fam}\n")
        out.append("| parameter | unit | range | written to | cgroup v1 | cgroup v2 | meaning |")
        out.append("|---|---|---|---|---|---|---|")
        for p in P.family(fam):
            v1, v2 = (", else ".join(f"`{f}`" for f in p.files(n)) or "unsupported"
                      for n in (1, 2))
            if p.v1_note:
                v1 += f" ({p.v1_note.rstrip('.')})"
            if p.v2_note:
                v2 += f" ({p.v2_note.rstrip('.')})"
            extra = " QEMU only." if p.qemu_only else ""
            out.append(f"| `{p.name}` | {p.unit()} | {p.range_text()} | {TARGETS[p.target]} "
                       f"| {v1} | {v2} | {p.doc}{extra} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render())

"""The exposure window on a systemd host, by bench/exposure.py's method (docs/hook.md, "Exposure:
measured"): QEMU's own RESUME timestamp (`virsh qemu-monitor-event`) against the first read of
the guest's ``…scope/libvirt/memory.max`` showing its journal limit. With the hook as README.md
installs it (early applier) and with the hook at `started begin` only; cgctl's service runs in
both (as on a host). The figures go to the results' facts.txt; what is asserted is only that
the limit was in force at all, never how fast."""
import statistics
import time

from bench.exposure import LIMIT, Events, Poller

from .hostkit import cgctl, note

RUNS = 3


def test_exposure_with_the_early_applier_and_without(make_guest):
    g = make_guest("hl-expo")
    cgctl("set", g.name, f"hard_limit={LIMIT}B", "--config")
    events = Events()
    n = 0
    out = {}
    try:
        for mode, opts in (("early", []), ("started", ["--no-early-apply"])):
            cgctl("hook", "install", *opts)   # the same script file: libvirtd needs no restart
            out[mode] = runs = []
            for _ in range(RUNS):
                poller = Poller(g.name, timeout=120)
                poller.start()
                t0 = time.monotonic()
                g.start()
                took = time.monotonic() - t0
                n += 1
                resume = events.wait(g.name, n, timeout=30)
                poller.join(30)
                poller.stop = True
                assert poller.at is not None, f"{mode}: hard_limit never in force"
                runs.append(((poller.at - resume) * 1000, took))
                g.destroy()
    finally:
        events.close()
        cgctl("hook", "install")   # as README.md installs it
    for mode, runs in out.items():
        ms = [r[0] for r in runs]
        note(f"exposure ({mode}{' applier' if mode == 'early' else ' begin only'}, service running; "
             f"in force - RESUME, ms): {[round(x, 1) for x in ms]} median {statistics.median(ms):+.1f}; "
             f"virsh start {[round(r[1], 2) for r in runs]} s")

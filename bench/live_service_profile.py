"""Where the command server's time per `set --live` goes (docs/performance.md, goal 4): an
in-process CommandServer (the real CLI, the real sandbox guest), 60 requests through the real
client code, cProfile of the command runs (cumulative, cgctl's functions).

    flock /tmp/cgctl-libvirt.lock .venv/bin/python bench/live_service_profile.py
"""
import os, sys, time, statistics, tempfile, cProfile, pstats, io, threading
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import sandbox, qemu_guest
from cgctl import consts
from cgctl.cli import fast, main as cli
from cgctl.service import cmdserver
import cgctl.core.controller
with sandbox() as sb, qemu_guest(sb) as g, tempfile.TemporaryDirectory() as tmp:
    j = os.path.join(tmp, "j.db"); os.environ["CGCTL_JOURNAL"] = j
    consts.CONFIG_PATH = os.path.join(tmp, "none.toml")
    sock = os.path.join(tmp, "s.sock")
    srv = cmdserver.CommandServer(sock, j, cli); srv.start()
    t = {"refusal": [], "runner": []}
    real_ref = cmdserver.refusal
    def ref(*a, **k):
        t0 = time.perf_counter(); r = real_ref(*a, **k); t["refusal"].append((time.perf_counter()-t0)*1e3); return r
    cmdserver.refusal = ref
    real_run = srv.runner
    prof = cProfile.Profile()
    def run(argv, who):
        t0 = time.perf_counter(); prof.enable(); r = real_run(argv, who); prof.disable(); t["runner"].append((time.perf_counter()-t0)*1e3); return r
    srv.runner = run
    for i in range(60):
        a = fast.ask_service(["set", g.name, f"hard_limit={300 + i % 2}M", "--live"], sock)
        assert a[0] == 0, a
    srv.stop()
    for k, v in t.items(): print(k, "median %.2f ms" % statistics.median(v[5:]))
    s = io.StringIO(); pstats.Stats(prof, stream=s).sort_stats("cumtime").print_stats("cgctl", 25); print(s.getvalue()[:6000])

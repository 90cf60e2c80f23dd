"""``python -m bench [NAME...]``: run the benchmarks (all by default), print their tables and
write bench/results/NAME.json. Names: live_set, scale, events (the default set) and soak
(long: ``bench/soak`` runs it alone). ``--runs N``: runs per contender (live_set 40, events 10),
cycles for soak (100)."""

from __future__ import annotations

import argparse
import sys
import traceback

from bench.common import Skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench")
    ap.add_argument("names", nargs="*", default=["live_set", "scale", "events"])
    ap.add_argument("--runs", type=int, default=None,
                    help="runs per contender (live_set: 40, events: 10); soak: cycles (100)")
    args = ap.parse_args(argv)
    failed = 0
    for name in args.names:
        print(f"\n##### {name}", flush=True)
        try:
            if name == "live_set":
                from bench import live_set
                live_set.run(args.runs or 40)
            elif name == "scale":
                from bench import scale
                scale.run()
            elif name == "events":
                from bench import events
                events.run(args.runs or 10)
            elif name == "soak":
                from bench import soak
                soak.run(cycles=args.runs or 100)
            else:
                print(f"unknown benchmark {name!r}")
                failed += 1
        except Skip as e:
            print(f"skipped: {e}")
        except Exception:
            traceback.print_exc()
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

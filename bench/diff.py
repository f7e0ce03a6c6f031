"""`memtrace diff` speed, on demand (never in tests; issue 10).

    python bench/diff.py [--trace TRACE.txt] [--events 1000000] [--snapshot A.snapshot [--snapshot2 B.snapshot]]
                         [--workdir DIR] [--repeat N] [--json-out FILE]

Captures: two text captures of at least --events events each, built as bench/ingest.py builds its
capture (a real lab capture repeated with shifted timestamps; default: out/restart/trace.txt),
in folders of their own (no truth.json beside them). Timed in this process, medians of --repeat
runs: loading both (``load_trace`` twice) against ``diff_inputs`` of the two (which loads both
and compares them); target: the diff within 2.5x the two loads.

Snapshots: ``diff_inputs`` of two snapshot files (default: bench/report_leftover.py's
1M + 1M-element snapshot against itself); target: under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _median_times(fn, repeat: int) -> list[float]:
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return ts


def main() -> None:
    from ingest import machine, make_text

    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default=str(HERE.parent / "out" / "restart" / "trace.txt"))
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--snapshot", default="/tmp/memtrace-bench-snapshot/big-6.12/big.snapshot")
    ap.add_argument("--snapshot2", default=None, help="NEW snapshot (default: --snapshot again)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json-out", type=Path, default=HERE / "diff-results.json")
    a = ap.parse_args()
    from memtrace.diffing import diff_inputs
    from memtrace.sources.trace import load_trace

    wd = Path(a.workdir or tempfile.mkdtemp(prefix="memtrace-bench-diff-"))
    res: dict = {"cpus": os.cpu_count(), "machine_before": machine()}
    if not os.path.exists(a.trace):
        sys.exit(f"bench/diff.py: {a.trace}: no such file (give --trace, a real lab ftrace capture)")
    caps = []
    for side in ("base", "new"):
        d = wd / side
        d.mkdir(parents=True, exist_ok=True)
        p = d / "trace.txt"
        if not p.exists():
            make_text(a.trace, str(p), a.events)
        caps.append(p)
    load_s = _median_times(lambda: [load_trace(str(c)) for c in caps], a.repeat)
    n = [len(load_trace(str(c))[0]) for c in caps]
    holder = {}
    diff_s = _median_times(lambda: holder.update(r=diff_inputs(caps[0], caps[1])), a.repeat)
    r = holder["r"]
    res["captures"] = {
        "source": a.trace, "events": n, "bytes": [c.stat().st_size for c in caps],
        "load_both_s": load_s, "diff_s": diff_s,
        "load_both_s_median": statistics.median(load_s), "diff_s_median": statistics.median(diff_s),
        "rows": int(len(r.rows)), "verdict": r.verdict(),
    }
    res["captures"]["ratio_diff_over_load_both"] = res["captures"]["diff_s_median"] / res["captures"]["load_both_s_median"]
    res["captures"]["target_at_most_2.5x"] = res["captures"]["ratio_diff_over_load_both"] <= 2.5
    if a.snapshot and os.path.exists(a.snapshot):
        from memtrace.tables.snapshot_file import load

        s2 = a.snapshot2 or a.snapshot
        snap = load(a.snapshot)
        load_s = _median_times(lambda: (load(a.snapshot), load(s2)), a.repeat)
        diff_s = _median_times(lambda: holder.update(r=diff_inputs(a.snapshot, s2)), a.repeat)
        r = holder["r"]
        res["snapshots"] = {
            "base": a.snapshot, "new": s2, "allocation_rows": int(len(snap.allocations)),
            "maps": int(len(snap.maps)), "memcgs": int(len(snap.memcgs)),
            "load_both_s_median": statistics.median(load_s), "diff_s": diff_s,
            "diff_s_median": statistics.median(diff_s), "rows": int(len(r.rows)), "verdict": r.verdict(),
        }
        res["snapshots"]["target_under_1s"] = res["snapshots"]["diff_s_median"] < 1.0
    else:
        res["snapshots"] = {"note": f"{a.snapshot}: no such file (make one with bench/report_leftover.py)"}
    res["machine_after"] = machine()
    a.json_out.write_text(json.dumps(res, indent=1) + "\n")
    c = res["captures"]
    print(f"captures of {c['events']} events: load both {c['load_both_s_median']:.2f} s, diff {c['diff_s_median']:.2f} s "
          f"= {c['ratio_diff_over_load_both']:.2f}x")
    if "diff_s_median" in res["snapshots"]:
        s = res["snapshots"]
        print(f"snapshots of {s['allocation_rows']:,} allocation rows: diff {s['diff_s_median']:.3f} s "
              f"(loading both: {s['load_both_s_median']:.3f} s)")
    print(f"wrote {a.json_out}")


if __name__ == "__main__":
    main()

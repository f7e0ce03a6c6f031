"""Benchmark `memtrace report leftover --from SNAP` against loading the snapshot file.

The snapshot is the 1M prealloc + 1M no-prealloc hash of bench/snapshot_big.sh (a lab run
with 2 GiB, made once, or --run DIR). Target (issue 8): the report under 1 s and at most
1.5x the time of loading the file. Both are timed in this process, medians of --repeat runs;
the ratio is the report (load + analyses) over the load alone. Writes the JSON result to
--json-out (default: bench/report-leftover-results-<kernel>.json).

    python bench/report_leftover.py [--run DIR] [--kernel 6.12] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, help="an existing lab run of bench/snapshot_big.sh (else one is made)")
    ap.add_argument("--kernel", default="6.12")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/memtrace-bench-snapshot"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    run = a.run or a.workdir / f"big-{a.kernel}"
    if not (run / "vmcore").exists():
        from memtrace.lab.run import run as lab_run

        a.workdir.mkdir(parents=True, exist_ok=True)
        lab_run(str(HERE / "snapshot_big.sh"), a.kernel, run, memory_mb=2048, force=True, scenario_timeout=3600)
    snap = run / "big.snapshot"
    if not snap.exists():
        meta = json.loads((run / "meta.json").read_text())
        subprocess.run([sys.executable, "-m", "memtrace", "snapshot", "--vmcore", str(run / "vmcore"), "--vmlinux",
                        meta["kernel"]["vmlinux"], "-o", str(snap)], check=True, capture_output=True)
    from memtrace.analyses.leftover import charged_per_map_memcg, leftover_maps, leftover_memcgs
    from memtrace.tables.snapshot_file import load

    loads, reports = [], []
    for _ in range(a.repeat):
        t = time.perf_counter()
        s = load(snap)
        loads.append(time.perf_counter() - t)
        t = time.perf_counter()
        s = load(snap)
        per = charged_per_map_memcg(s.allocations)  # as the CLI does: one pass over the rows
        maps = leftover_maps(s.maps, s.allocations, s.memcgs, per)
        memcgs = leftover_memcgs(s.maps, s.allocations, s.memcgs, per)
        reports.append(time.perf_counter() - t)
    res = {
        "run": str(run), "snapshot_file": str(snap), "snapshot_bytes": snap.stat().st_size,
        "allocation_rows": int(len(s.allocations)), "maps": int(len(maps)), "memcgs": int(len(memcgs)),
        "load_s_median": statistics.median(loads), "report_s_median": statistics.median(reports),
        "load_s": loads, "report_s": reports,
    }
    res["ratio_report_over_load"] = res["report_s_median"] / res["load_s_median"]
    res["targets"] = {"report_under_1s": res["report_s_median"] < 1.0, "ratio_at_most_1.5": res["ratio_report_over_load"] <= 1.5}
    out = a.json_out or HERE / f"report-leftover-results-{a.kernel}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"{res['allocation_rows']:,} allocation rows: load {res['load_s_median']:.3f} s, report (load + analyses) "
          f"{res['report_s_median']:.3f} s = {res['ratio_report_over_load']:.2f}x load; wrote {out}")


if __name__ == "__main__":
    main()

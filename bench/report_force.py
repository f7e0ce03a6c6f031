"""`report force` and `report recharge` (effects) on a capture of 10M+ events, against ingesting it;
on demand (never in tests).

    python bench/report_force.py --run LABDIR [--recharge-run LABDIR] [--events 10000000] [--workdir DIR]

LABDIR: a lab run made with memtrace's probes (`memtrace lab run ghost --kernel 6.12
--kprobe-events KP --no-vmcore`, KP from `memtrace probes --format kprobe_events`): its
trace.txt is repeated with shifted timestamps until it holds --events events, and its
truth.json is given with --truth. Each measurement runs in a fresh process: `ingest` loads the
whole capture as one event table (what `memtrace ingest` does); `force` is `memtrace report
force CAPTURE --truth TRUTH --json` as the CLI runs it (the capture read in frames, only its
charge tables kept). Peak memory is the child's VmHWM (its own peak RSS) less its RSS before
the work. Targets (issue 8): the report within 1.3x the ingest time, its peak at most 1.5 GB.
With --recharge-run (a `recharge` lab run with the probes), the same for `report recharge
CAPTURE --truth --old /pod --new /pod/gen2`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import machine, make_text  # noqa: E402

CHILD = r"""
import contextlib, io, json, resource, sys, time, gc
mode, path, *rest = sys.argv[1:]
def rss_kb(key='VmRSS:'):
    with open('/proc/self/status') as f:
        for l in f:
            if l.startswith(key): return int(l.split()[1])
import pandas, pyarrow, numpy
from memtrace.sources.trace import load_trace
from memtrace.cli.app import _register, app
import memtrace.sources.trace.ftrace_text, memtrace.analyses.force, memtrace.analyses.recharge, memtrace.cli.report
_register()
gc.collect()
base = rss_kb()
_ru = resource.getrusage(resource.RUSAGE_SELF)
cpu0 = _ru.ru_utime + _ru.ru_stime
t = time.perf_counter()
res = {}
if mode == 'ingest':
    df, st = load_trace(path)
    res['events'] = len(df)
    res['frame_mb'] = round(df.memory_usage(deep=True).sum() / 2**20, 1)
else:
    out = io.StringIO()
    args = (['report', 'force', path, '--truth', rest[0], '--json'] if mode == 'force' else
            ['report', 'recharge', path, '--truth', rest[0], '--old', rest[1], '--new', rest[2], '--json'])
    with contextlib.redirect_stdout(out):
        rc = app(args, standalone_mode=False)
    doc = json.loads(out.getvalue())
    res['rc'] = rc or 0
    res['totals'] = doc.get('totals') or doc.get('summary')
res['seconds'] = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
res['cpu_seconds'] = ru.ru_utime + ru.ru_stime - cpu0
res['peak_mb'] = round((rss_kb('VmHWM:') - base) / 1024, 1)
print(json.dumps(res))
"""


def child(*args: str) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{args[0]} failed: {p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def one(kind: str, run: Path, events: int, wd: Path, extra: list[str]) -> dict:
    big = wd / f"{kind}-{events}.txt"
    t0 = time.perf_counter()
    n = make_text(str(run / "trace.txt"), str(big), events)
    made_s = round(time.perf_counter() - t0, 1)
    before = machine()
    ingest = child("ingest", str(big))
    report = child(kind, str(big), str(run / "truth.json"), *extra)
    after = machine()
    size = big.stat().st_size
    big.unlink()
    return {
        "report": kind, "source_run": str(run), "capture_lines": n, "capture_bytes": size, "made_s": made_s,
        "events": ingest["events"], "ingest": ingest, "report_run": report,
        "report_over_ingest": round(report["seconds"] / ingest["seconds"], 2),
        "report_over_ingest_cpu": round(report["cpu_seconds"] / ingest["cpu_seconds"], 2),
        "report_peak_mb": report["peak_mb"], "ingest_peak_mb": ingest["peak_mb"],
        "targets": {"report_over_ingest_max": 1.3, "peak_mb_max": 1500},
        "met": report["seconds"] <= 1.3 * ingest["seconds"] and report["peak_mb"] <= 1500,
        "machine_before": before, "machine_after": after,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, type=Path, help="a lab run with memtrace's probes (trace.txt, truth.json)")
    ap.add_argument("--recharge-run", type=Path, help="a recharge lab run with the probes, for report recharge")
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json-out", default=None, help="write the results here too")
    a = ap.parse_args()
    wd = Path(a.workdir or tempfile.mkdtemp(prefix="memtrace-bench-force-"))
    wd.mkdir(parents=True, exist_ok=True)
    results = [one("force", a.run, a.events, wd, [])]
    if a.recharge_run:
        results.append(one("recharge", a.recharge_run, a.events, wd, ["/pod", "/pod/gen2"]))
    doc = {"cpus": os.cpu_count(), "results": results}
    text = json.dumps(doc, indent=1)
    print(text)
    if a.json_out:
        Path(a.json_out).write_text(text + "\n")
    for r in results:
        print(f"{r['report']}: {r['events']:,} events; ingest {r['ingest']['seconds']:.1f} s, peak {r['ingest_peak_mb']:.0f} MB; "
              f"report {r['report_run']['seconds']:.1f} s ({r['report_over_ingest']}x, target 1.3x), "
              f"peak {r['report_peak_mb']:.0f} MB (target 1500 MB): {'met' if r['met'] else 'NOT met'}", file=sys.stderr)


if __name__ == "__main__":
    main()

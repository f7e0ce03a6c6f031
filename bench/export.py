"""`memtrace export` speed against ingesting the same capture, on demand (never in tests).

    python bench/export.py [--trace TRACE.txt] [--truth truth.json] [--events 1000000] [--repeat N] [--workdir DIR]
                           [--also TRACE.txt truth.json ...]

Builds a text capture of at least --events events by repeating a real lab capture with shifted
timestamps (bench/ingest.py's `make_text`; default: the committed force-6.12 page_counter
excerpt, every event of which is a page_counter probe or a step marker, so nearly every event
becomes a counter value: the heaviest case for export), then, each in a fresh subprocess,
times `load_trace` alone (ingest) and the whole export (load_trace, the timeline analyses and
the perfetto writer, as `memtrace export --truth` runs them). The ratio export / ingest is
measured in this run. With --repeat N each runs N times and the median is reported. Each
--also TRACE TRUTH pair is measured the same way after it, into ``also``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
mode, path, truth, dest = sys.argv[1:5]
from memtrace.sources.trace import load_trace
from memtrace.tables.lab_truth import load_truth
from memtrace.analyses import timeline as tl
from memtrace.analyses.force import check_same_run
from memtrace.render import perfetto_export as pe
import perfetto.trace_builder.proto_builder
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
res = {}
events, _ = load_trace(path)
res['events'] = len(events)
res['load_s'] = time.perf_counter() - t
if mode == 'export':
    tt = load_truth(truth) if truth != '-' else None
    if tt is not None:
        check_same_run(events, tt, path, truth)
    t1 = time.perf_counter()
    series, tracks = tl.memcg_counters(events, tt)
    path_of = {int(c): str(p) for c, p in zip(tracks['cgroup_id'], tracks['path']) if p is not None and p == p}
    inst = tl.charge_instants(events, path_of, tracks.attrs.get('forced'))
    sl = tl.step_slices(events)
    mp = tl.map_events(events)
    res['analyses_s'] = time.perf_counter() - t1
    t2 = time.perf_counter()
    res.update(pe.write_trace(dest, series, tracks, inst, sl, mp, tl.capture_span(events)[0]))
    res['write_s'] = time.perf_counter() - t2
    res['file_bytes'] = __import__('os').path.getsize(dest)
res['seconds'] = time.perf_counter() - t
r1 = resource.getrusage(resource.RUSAGE_SELF)
res['cpu_seconds'] = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
print(json.dumps(res))
"""


def _ingest_bench():
    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "bench" / "ingest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def child(mode, path, truth, dest):
    p = subprocess.run([sys.executable, "-c", CHILD, mode, path, truth or "-", dest], capture_output=True, text=True,
                       cwd=ROOT)
    if p.returncode:
        raise SystemExit(f"{mode} {path} failed: {p.stderr}")
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default=str(ROOT / "fixtures" / "captures" / "force-6.12.page_counter.txt"))
    ap.add_argument("--truth", default=str(ROOT / "fixtures" / "captures" / "force-6.12.truth.json"))
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--also", nargs=2, action="append", default=[], metavar=("TRACE", "TRUTH"),
                    help="another capture and its truth, measured the same way")
    a = ap.parse_args()
    wd = a.workdir or tempfile.mkdtemp(prefix="memtrace-bench-export-")
    os.makedirs(wd, exist_ok=True)
    before = _ingest_bench().machine()
    res = measure(a.trace, a.truth, a.events, a.repeat, wd)
    also = [measure(t, tr, a.events, a.repeat, wd) for t, tr in a.also]
    out = {"cpus": os.cpu_count(), "machine_before": before, "machine_after": _ingest_bench().machine(), "result": res}
    if also:
        out["also"] = also
    print(json.dumps(out, indent=1))


def measure(trace, truth, events, repeat, wd):
    ib = _ingest_bench()
    txt = os.path.join(wd, "bench.txt")
    n = ib.make_text(trace, txt, events)
    print(f"text capture: {n} events, {os.path.getsize(txt) / 1e6:.0f} MB", file=sys.stderr)
    dest = os.path.join(wd, "bench.pftrace")
    ing, exp = [], []
    for _ in range(max(repeat, 1)):  # interleaved, so load changes hit both alike
        ing.append(child("ingest", txt, None, dest))
        exp.append(child("export", txt, truth, dest))
    med = lambda runs: sorted(runs, key=lambda m: m["seconds"])[len(runs) // 2]  # noqa: E731
    i, e = med(ing), med(exp)
    rel = lambda p: os.path.relpath(p, ROOT) if os.path.abspath(p).startswith(str(ROOT)) else p  # noqa: E731
    return {
        "capture": {"source": rel(trace), "truth": rel(truth), "events": i["events"], "bytes": os.path.getsize(txt)},
        "runs": len(ing),
        "ingest_s": round(i["seconds"], 3), "ingest_cpu_s": round(i["cpu_seconds"], 3),
        "export_s": round(e["seconds"], 3), "export_cpu_s": round(e["cpu_seconds"], 3),
        "export_load_s": round(e["load_s"], 3), "export_analyses_s": round(e["analyses_s"], 3),
        "export_write_s": round(e["write_s"], 3),
        "export_over_ingest": round(e["seconds"] / i["seconds"], 2),
        "export_cpu_over_ingest_cpu": round(e["cpu_seconds"] / i["cpu_seconds"], 2),
        # the same load inside the export's own process: what the analyses and writer add to it
        "export_over_its_load": round(e["seconds"] / e["load_s"], 2),
        "target_export_over_ingest": 1.5,
        "trace": {k: e[k] for k in ("tracks", "counters", "instants", "slices", "maps", "map_instants", "file_bytes")},
        "ingest_s_all": [round(m["seconds"], 3) for m in ing], "export_s_all": [round(m["seconds"], 3) for m in exp],
    }


if __name__ == "__main__":
    main()

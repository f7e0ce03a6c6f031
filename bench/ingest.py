"""Ingest speed and memory, on demand (never in tests).

    python bench/ingest.py [--trace TRACE.txt] [--events 1000000] [--workdir DIR] [--repeat N]

Builds a text capture of at least --events events by repeating a real lab capture with shifted
timestamps, and a perfetto trace of the same events encoded with the perfetto package's protos;
then, each in a fresh subprocess, times memtrace's loaders, a plain read of the same files, and
`trace-cmd report` when a trace.dat is given (--trace-dat). Peak memory is the child's VmHWM (its own
peak RSS) minus its RSS before the load, compared with the frame's memory_usage(deep=True); ru_maxrss
is not used for it because Linux carries the parent's peak RSS into it across fork+exec (the bench
parent holds a whole frame while it builds the perfetto trace). Time is wall clock and CPU time
(user + system, all threads). Other work on the machine (QEMU guests of the lab) slows the wall
clock: the output records the load average and the QEMU processes running before and after, and
with --repeat N each load runs N times (each in a fresh process) and the median run is reported,
with the fastest and slowest wall times beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, resource, sys, time, gc
mode, path = sys.argv[1], sys.argv[2]
def rss_kb(key='VmRSS:'):
    with open('/proc/self/status') as f:
        for l in f:
            if l.startswith(key): return int(l.split()[1])
import pandas, pyarrow, numpy
if mode.startswith('memtrace'):
    from memtrace.sources.trace import load_trace
    import memtrace.sources.trace.ftrace_text, memtrace.sources.trace.perfetto
gc.collect()
base = rss_kb()
_ru = resource.getrusage(resource.RUSAGE_SELF)
cpu0 = _ru.ru_utime + _ru.ru_stime
t = time.perf_counter()
res = {}
if mode == 'read':
    with open(path, 'rb') as f: data = f.read()
    res['bytes'] = len(data)
elif mode == 'lines':
    n = 0
    with open(path, 'rb') as f:
        for _ in f: n += 1
    res['lines'] = n
elif mode == 'memtrace':
    df, st = load_trace(path)
    res['events'] = len(df)
    res['frame_bytes'] = int(df.memory_usage(deep=True).sum())
    res['malformed'] = st.malformed
elif mode == 'trace-cmd':
    p = subprocess = __import__('subprocess').run(['trace-cmd', 'report', '-t', '-N', '-i', path], stdout=__import__('subprocess').DEVNULL)
res['seconds'] = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
res['cpu_seconds'] = ru.ru_utime + ru.ru_stime - cpu0
# VmHWM is this process's own peak; ru_maxrss also carries the parent's RSS across fork+exec
res['peak_kb_over_base'] = rss_kb('VmHWM:') - base
res['ru_maxrss_kb_over_base'] = ru.ru_maxrss - base
print(json.dumps(res))
"""


def machine() -> dict:
    """What else is running: 1-minute load average and QEMU guests (the lab's, or anyone's)."""
    qemu = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    qemu += f.read().startswith("qemu-system")
            except OSError:
                pass
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "qemu_processes": qemu}


def child(mode, path):
    p = subprocess.run([sys.executable, "-c", CHILD, mode, path], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{mode} {path} failed: {p.stderr}")
    return json.loads(p.stdout)


def make_text(src: str, dst: str, min_events: int) -> int:
    with open(src, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    head = [ln for ln in lines[:20] if ln.startswith(b"#")]
    body = [ln for ln in lines if ln and not ln.startswith(b"#")]
    ts = re.compile(rb"(\s)(\d+)\.(\d{6}): ")
    last = max(int(m.group(2)) for m in (ts.search(ln) for ln in body[-100:]) if m) + 1
    reps = -(-min_events // len(body))
    with open(dst, "wb") as f:
        f.write(b"\n".join(head) + b"\n")
        for k in range(reps):
            off = k * last
            if k == 0:
                f.write(b"\n".join(body) + b"\n")
            else:
                f.write(b"\n".join(ts.sub(lambda m: m.group(1) + str(int(m.group(2)) + off).encode() + b"." + m.group(3) + b": ", ln, count=1) for ln in body) + b"\n")
    return reps * len(body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default=None, help="a real ftrace text capture (default: a fresh lab run of restart on 6.1)")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--trace-dat", default=None, help="a real trace.dat to compare trace-cmd report with")
    ap.add_argument("--repeat", type=int, default=1, help="loads per format (fresh process each); the median is reported")
    a = ap.parse_args()
    wd = a.workdir or tempfile.mkdtemp(prefix="memtrace-bench-")
    os.makedirs(wd, exist_ok=True)
    if a.trace is None:
        a.trace = os.path.join(wd, "lab", "trace.txt")
        if not os.path.exists(a.trace):
            from pathlib import Path

            from memtrace.lab.run import run

            print("making a real capture: lab run restart on 6.1 (about 30 s)", file=sys.stderr)
            run("restart", "6.1", Path(wd) / "lab", vmcore=False, force=True)
    elif not os.path.exists(a.trace):
        sys.exit(f"bench/ingest.py: {a.trace}: no such file")
    txt = os.path.join(wd, "bench.txt")
    pft = os.path.join(wd, "bench.pftrace")
    t = time.perf_counter()
    n_txt = make_text(a.trace, txt, a.events)
    print(f"text capture: {n_txt} events, {os.path.getsize(txt) / 1e6:.0f} MB ({time.perf_counter() - t:.1f}s to build)", file=sys.stderr)
    if not os.path.exists(pft):
        from memtrace.sources.trace import load_trace
        from memtrace.testing.perfetto import events_to_trace

        t = time.perf_counter()
        df, _ = load_trace(txt)
        df = df.iloc[: max(a.events, 0)] if len(df) > a.events else df
        with open(pft, "wb") as f:
            f.write(events_to_trace(df))
        del df
        print(f"perfetto trace: {os.path.getsize(pft) / 1e6:.0f} MB ({time.perf_counter() - t:.1f}s to encode)", file=sys.stderr)
    rows = []
    before = machine()
    for label, path in (("text", txt), ("perfetto", pft)):
        runs = sorted((child("memtrace", path) for _ in range(max(a.repeat, 1))), key=lambda m: m["seconds"])
        m = runs[len(runs) // 2]
        rd = child("read", path)
        ln = child("lines", path) if label == "text" else None
        r = {
            "format": label,
            "events": m["events"],
            "memtrace_s": round(m["seconds"], 3),
            "events_per_s": round(m["events"] / m["seconds"]),
            "cpu_s": round(m["cpu_seconds"], 3),
            "events_per_cpu_s": round(m["events"] / m["cpu_seconds"]),
            "read_s": round(rd["seconds"], 3),
            "memtrace_over_read": round(m["seconds"] / rd["seconds"], 1),
            "peak_mb": round(m["peak_kb_over_base"] / 1024, 1),
            "frame_mb": round(m["frame_bytes"] / 2**20, 1),
            "peak_over_frame": round(m["peak_kb_over_base"] * 1024 / m["frame_bytes"], 2),
        }
        if ln:
            r["line_iter_s"] = round(ln["seconds"], 3)
            r["memtrace_over_line_iter"] = round(m["seconds"] / ln["seconds"], 1)
        if len(runs) > 1:
            r["runs"] = len(runs)
            r["memtrace_s_fastest"] = round(runs[0]["seconds"], 3)
            r["memtrace_s_slowest"] = round(runs[-1]["seconds"], 3)
        rows.append(r)
    if a.trace_dat and shutil.which("trace-cmd"):
        # memtrace reads a trace.dat through `trace-cmd report`: the baseline is that alone
        tc = child("trace-cmd", a.trace_dat)
        m = child("memtrace", a.trace_dat)
        rows.append({
            "format": "trace.dat", "events": m["events"], "memtrace_s": round(m["seconds"], 3),
            "events_per_s": round(m["events"] / m["seconds"]), "trace_cmd_report_s": round(tc["seconds"], 3),
            "memtrace_over_trace_cmd_report": round(m["seconds"] / tc["seconds"], 2),
            "peak_mb": round(m["peak_kb_over_base"] / 1024, 1), "frame_mb": round(m["frame_bytes"] / 2**20, 1),
            "peak_over_frame": round(m["peak_kb_over_base"] * 1024 / m["frame_bytes"], 2),
        })
    else:
        rows.append({"format": "trace-cmd report", "note": "no trace.dat given (--trace-dat FILE; fixtures/captures/*.trace.dat are real lab recordings)" if shutil.which("trace-cmd") else "trace-cmd not installed"})
    print(json.dumps({"cpus": os.cpu_count(), "machine_before": before, "machine_after": machine(), "results": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Wall time of one lab run (boot -> scenario -> vmcore), downloads excluded.

Usage: python bench/lab.py [--kernel 6.1 --kernel 6.12] [--scenario restart] [--repeat 1]

Kernels are fetched (once, into the cache) before any timing starts. The baseline, measured
in the same run on the same kernel, is an empty scenario (boot, one truth step, vmcore): the
ratio says what the scenario itself costs on top of booting and dumping.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from memtrace.lab import kernels
from memtrace.lab.run import run


def one(scenario: str, kernel: str, scratch: Path) -> dict:
    out = scratch / f"{Path(scenario).stem}-{kernel}"
    t0 = time.perf_counter()
    res = run(scenario, kernel, out, force=True)
    wall = time.perf_counter() - t0
    shutil.rmtree(out)
    return {"wall_s": round(wall, 2), **res.meta["timings"], "steps": len(res.meta["steps"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", action="append", choices=sorted(kernels.SERIES), help="default: all")
    ap.add_argument("--scenario", default="restart")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    series = args.kernel or list(kernels.SERIES)
    for k in series:
        kernels.fetch(k)  # downloads happen here, outside the timed part
    results = []
    with tempfile.TemporaryDirectory(prefix="mt-bench-") as tmp:
        scratch = Path(tmp)
        empty = scratch / "empty.sh"
        empty.write_text("# empty: boot, one step, vmcore\nstep only\n")
        for k in series:
            for i in range(args.repeat):
                base = one(str(empty), k, scratch)
                scen = one(args.scenario, k, scratch)
                results.append({"kernel": k, "repeat": i, "baseline": base, "scenario": scen,
                                "ratio": round(scen["wall_s"] / base["wall_s"], 2)})
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"{'kernel':7} {'run':9} {'wall s':>7} {'boot s':>7} {'scen s':>7} {'vmcore s':>8} {'steps':>5}")
    for r in results:
        for label in ("baseline", "scenario"):
            m = r[label]
            print(f"{r['kernel']:7} {label:9} {m['wall_s']:7.2f} {m['boot_s']:7.2f} {m['scenario_s']:7.2f} "
                  f"{m.get('vmcore_s', 0):8.2f} {m['steps']:5d}")
        print(f"{r['kernel']:7} ratio {args.scenario}/empty = {r['ratio']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

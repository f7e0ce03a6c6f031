"""Wall time of one lab run (boot -> scenario -> vmcore), downloads excluded.

Usage: python bench/lab.py [--kernel 6.1 --kernel 6.12] [--scenario restart] [--repeat 1]
                          [--accel tcg --accel mttcg]

Kernels are fetched (once, into the cache) before any timing starts. The baseline, measured
in the same run on the same kernel, is an empty scenario (boot, one truth step, vmcore): the
ratio says what the scenario itself costs on top of booting and dumping. With two or more
``--accel``, each accelerator's scenario wall time is also given as a ratio to the first's.
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
from memtrace.lab.qemu import ACCELS, DEFAULT_ACCEL
from memtrace.lab.run import run


def one(scenario: str, kernel: str, scratch: Path, accel: str) -> dict:
    out = scratch / f"{Path(scenario).stem}-{kernel}"
    t0 = time.perf_counter()
    res = run(scenario, kernel, out, force=True, accel=accel)
    wall = time.perf_counter() - t0
    shutil.rmtree(out)
    return {"wall_s": round(wall, 2), **res.meta["timings"], "steps": len(res.meta["steps"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", action="append", choices=sorted(kernels.SERIES), help="default: all")
    ap.add_argument("--scenario", default="restart")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--accel", action="append", choices=sorted(ACCELS), help=f"default: {DEFAULT_ACCEL}")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    series = args.kernel or list(kernels.SERIES)
    accels = args.accel or [DEFAULT_ACCEL]
    for k in series:
        kernels.fetch(k)  # downloads happen here, outside the timed part
    results = []
    with tempfile.TemporaryDirectory(prefix="mt-bench-") as tmp:
        scratch = Path(tmp)
        empty = scratch / "empty.sh"
        empty.write_text("# empty: boot, one step, vmcore\nstep only\n")
        for k in series:
            for i in range(args.repeat):
                first = None
                for a in accels:
                    base = one(str(empty), k, scratch, a)
                    scen = one(args.scenario, k, scratch, a)
                    first = first or scen["wall_s"]
                    results.append({"kernel": k, "accel": a, "repeat": i, "baseline": base, "scenario": scen,
                                    "ratio": round(scen["wall_s"] / base["wall_s"], 2),
                                    "ratio_to_first_accel": round(scen["wall_s"] / first, 2)})
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"{'kernel':7} {'accel':6} {'run':9} {'wall s':>7} {'boot s':>7} {'scen s':>7} {'vmcore s':>8} {'steps':>5}")
    for r in results:
        for label in ("baseline", "scenario"):
            m = r[label]
            print(f"{r['kernel']:7} {r['accel']:6} {label:9} {m['wall_s']:7.2f} {m['boot_s']:7.2f} {m['scenario_s']:7.2f} "
                  f"{m.get('vmcore_s', 0):8.2f} {m['steps']:5d}")
        print(f"{r['kernel']:7} {r['accel']:6} ratio {args.scenario}/empty = {r['ratio']}x"
              + (f", {args.scenario} {r['accel']}/{accels[0]} = {r['ratio_to_first_accel']}x" if len(accels) > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

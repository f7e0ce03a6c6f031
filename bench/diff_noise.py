"""The lab's run-to-run noise, as `memtrace diff` sees it: for pairs of runs of the same scenario
on the same kernel build, the largest change per metric (bytes and relative), the root and the
settle cgroup left out (the default rules exempt them). On demand, never in tests.

    python bench/diff_noise.py BASE=NEW [BASE=NEW ...] [--json-out FILE]

Each BASE and NEW is a lab output folder (or a truth.json). The default rules
(memtrace/diff-rules.toml) are calibrated from this: each limit must sit above the noise
measured here, and below the smallest regression the lab's leak variant makes
(tests/test_diff_lab.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def noise(base: str, new: str) -> dict:
    from memtrace.diffing import diff_inputs

    res = diff_inputs(Path(base), Path(new))
    rows = res.rows
    rows = rows[~rows["name"].astype(str).str.startswith("/memtrace-settle") & (rows["name"].astype(str) != "/")]
    rows = rows[rows["delta"].notna()]
    out = {}
    for metric, g in rows.groupby("metric"):
        d = g["delta"].astype(float).abs()
        i = d.idxmax()
        base_v = g.loc[i, "base"]
        rel = None if base_v in (None, 0) or base_v != base_v else round(100 * float(d[i]) / abs(float(base_v)), 2)
        out[str(metric)] = {"max_abs_delta": int(d.max()), "rows": int(len(g)), "changed": int((d > 0).sum()),
                            "at": {"entity": str(g.loc[i, "entity"]), "name": str(g.loc[i, "name"]),
                                   "step": str(g.loc[i, "step"]), "base": None if base_v != base_v else float(base_v)},
                            "relative_pct_at_max": rel}
    return {"base": base, "new": new, "passed_defaults": bool(res.passed), "verdict": res.verdict(), "metrics": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pairs", nargs="+", metavar="BASE=NEW")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    results = [noise(*p.split("=", 1)) for p in a.pairs]
    text = json.dumps({"pairs": results}, indent=1)
    print(text)
    if a.json_out:
        Path(a.json_out).write_text(text + "\n")
    for r in results:
        ms = ", ".join(f"{m} ±{v['max_abs_delta']:,}" for m, v in r["metrics"].items())
        print(f"{r['base']} vs {r['new']}: {ms}; defaults {'pass' if r['passed_defaults'] else 'FAIL'}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""The drift track: run the lab's scenarios on a series' pinned build and on a newer build
(by default SERIES@latest, the build Debian publishes now), and compare their facts.

Runs land in ``out/<scenario>-<release>/`` (no vmcore); a run already complete there is
reused, so a second look costs nothing. The comparison is ``memtrace.analyses.drift``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from memtrace.analyses.drift import drift, run_facts
from memtrace.lab import kernels

#: The scenarios whose facts README states and the tests assert.
DEFAULT_SCENARIOS = ("restart", "ghost", "force", "recharge")


@dataclass
class DriftResult:
    base: kernels.Kernel
    new: kernels.Kernel
    scenarios: tuple[str, ...]
    runs: dict[str, tuple[Path, Path]]  # scenario -> (base run, new run)
    changes: pd.DataFrame  # memtrace.analyses.drift.drift's table


def _run_once(scenario: str, name: str, kernel: kernels.Kernel, out: Path, progress) -> Path:
    from memtrace.lab.run import run

    d = out / f"{scenario}-{kernel.release}"
    if (d / "truth.json").is_file() and (d / "meta.json").is_file():
        progress(f"drift: reusing {d}")
        return d
    progress(f"drift: {scenario} on {kernel.release}")
    run(scenario, name, d, vmcore=False, force=True, progress=progress)
    return d


def drift_runs(kernel: str, against: str | None, scenarios: tuple[str, ...], out: Path, *, progress=None) -> DriftResult:
    """Run ``scenarios`` on ``kernel`` (a series means its pin) and on ``against`` (default
    SERIES@latest); return the facts that changed."""
    say = progress or (lambda msg: None)
    series = kernels.series_of(kernel)
    against = against or f"{series.name}{kernels.LATEST}"
    if kernels.series_of(against).name != series.name:
        say(f"drift: comparing across series ({series.name} and {kernels.series_of(against).name})")
    from memtrace.lab.run import load_scenario

    for s in scenarios:
        load_scenario(s)  # unknown names fail before any download or boot
    base_k = kernels.fetch(kernel, progress=say)
    new_k = kernels.fetch(against, progress=say)
    runs: dict[str, tuple[Path, Path]] = {}
    frames = []
    if (base_k.release, base_k.package_version) == (new_k.release, new_k.package_version):
        return DriftResult(base_k, new_k, scenarios, runs, drift(run_facts("-", {}), run_facts("-", {})))
    for s in scenarios:
        b = _run_once(s, kernel, base_k, out, say)
        n = _run_once(s, against, new_k, out, say)
        runs[s] = (b, n)
        frames.append(drift(run_facts(s, _truth(b)), run_facts(s, _truth(n))))
    return DriftResult(base_k, new_k, scenarios, runs, pd.concat(frames, ignore_index=True))


def _truth(run_dir: Path) -> dict:
    return json.loads((run_dir / "truth.json").read_text())

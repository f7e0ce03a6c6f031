"""Shared fixtures. `lab` runs real lab scenarios on real kernels, once per test session.

Set MEMTRACE_LAB_RUNS=DIR to reuse runs already made there as DIR/<scenario>-<kernel>/
(handy while developing; CI always makes fresh ones).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

KERNELS = ("6.1", "6.12")  # the series' pinned builds (memtrace/lab/kernels.toml)

#: Whether a charge that fails without reclaiming (GFP_NOWAIT over memory.max: ENOMEM, no
#: force) raises a memory.events `max` is a fact of the build, not of the series: 6.12.118
#: backports "mm: memcontrol: raise MEMCG_MAX for charges that fail without reclaiming"
#: (its package changelog; 6.12.117 and 6.1.0-56/-57 do not have it). The ghost scenario,
#: where exactly such charges fail, runs on each of these builds and asserts its own.
FAILED_CHARGE_RAISES_MAX = {"6.1": False, "6.12": False, "6.12.118": True}
GHOST_KERNELS = tuple(FAILED_CHARGE_RAISES_MAX)


class LabRuns:
    """Lab runs made on demand and shared by every test of the session."""

    def __init__(self, root: Path | None, reuse: Path | None = None) -> None:
        self.root = root  # None: never boot a guest, only reuse
        env = os.environ.get("MEMTRACE_LAB_RUNS")
        self.reuse = reuse or (Path(env) if env else None)
        self._done: dict[tuple[str, str], Path] = {}

    def get(self, scenario: str, kernel: str, *, vmcore: bool = True) -> Path:
        """Output folder of `scenario` run on `kernel` (with a vmcore unless vmcore=False).

        A run made here always has a vmcore, so one run serves every test."""
        key = (scenario, kernel)
        if key in self._done and (not vmcore or (self._done[key] / "vmcore").exists()):
            return self._done[key]
        if self.reuse:
            cand = self.reuse / f"{scenario}-{kernel}"
            if (cand / "meta.json").exists() and (not vmcore or (cand / "vmcore").exists()):
                self._done[key] = cand
                return cand
        if self.root is None:
            raise FileNotFoundError(f"no reusable run {scenario}-{kernel} in {self.reuse}")
        from memtrace.lab.run import run

        out = self.root / f"{scenario}-{kernel}"
        run(scenario, kernel, out, vmcore=vmcore, force=True)
        self._done[key] = out
        return out

    def truth(self, scenario: str, kernel: str) -> dict:
        return json.loads((self.get(scenario, kernel, vmcore=False) / "truth.json").read_text())


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> LabRuns:
    return LabRuns(tmp_path_factory.mktemp("lab"))


@pytest.fixture(params=KERNELS)
def kernel(request) -> str:
    return request.param


_session_runs: dict[tuple[str, str], Path] = {}


def p1_filled_reconciliation(ev, run_dir: Path):
    """For the capture_live and trace-cmd script scenarios: /pod/p1's memory.current change
    from step start to step filled (bytes), its counter's net page_counter movement in the
    capture ``ev`` up to the filled marker (pages), and the movements table. The capture
    starts after `start`; lib.sh's step writes `filled` into the capture's instance too, and
    a p1 page freed late (RCU) after the filled reading, before the recorder stopped, is not
    in that reading's change."""
    from memtrace.analyses.charges import page_counter_movements, step_markers

    steps = {s["name"]: s for s in json.loads((run_dir / "truth.json").read_text())["steps"]}
    p1 = steps["filled"]["cgroups"]["/pod/p1"]
    delta = p1["memory.current"] - steps["start"]["cgroups"]["/pod/p1"]["memory.current"]
    mv = page_counter_movements(ev)
    markers = step_markers(ev)
    assert markers["step_name"].tolist() == ["filled"], markers
    before = mv["row"] < int(markers["row"].iloc[0])
    return delta, int(mv.loc[before & (mv["cgroup_id"] == p1["id"]), "signed_pages"].sum()), mv


def session_run(name: str, kernel: str, root: Path, done: str, make) -> Path:
    """The folder of lab run NAME-KERNEL, made once per test session by ``make(out)``, or
    reused from MEMTRACE_LAB_RUNS/NAME-KERNEL when that folder has the file ``done``."""
    key = (name, kernel)
    if key not in _session_runs:
        reuse = os.environ.get("MEMTRACE_LAB_RUNS")
        cand = Path(reuse) / f"{name}-{kernel}" if reuse else None
        if cand is not None and (cand / done).exists():
            _session_runs[key] = cand
        else:
            out = root / f"{name}-{kernel}"
            make(out)
            _session_runs[key] = out
    return _session_runs[key]


def snapshot_vmcore(out: Path, vmlinux: Path, scan_path: str, extra=None) -> None:
    """`memtrace snapshot` of OUT/vmcore as a user runs it: --json into snapshot.json, -o
    snapshot.zip (the full allocations table), its exit status and stderr in snapshot.rc;
    then a charge scan of everything charged to the memcg at ``scan_path`` (its objcgs and
    its LRU folios) into owner-charges.json. ``extra(prog)``, if given, reads more from
    the same vmcore; its JSON-able answer goes to vmcore-extra.json."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "memtrace", "snapshot", "--vmcore", str(out / "vmcore"),
         "--vmlinux", str(vmlinux), "--json", "-o", str(out / "snapshot.zip")],
        capture_output=True, text=True, timeout=600,
    )
    (out / "snapshot.json").write_text(r.stdout)
    (out / "snapshot.rc").write_text(f"{r.returncode}\n{r.stderr}")
    from memtrace.sources.kernel import memcg as km
    from memtrace.sources.kernel.charges import charges_scan
    from memtrace.sources.snapshot import open_target

    prog, _ = open_target(vmcore=out / "vmcore", vmlinux=Path(vmlinux))
    (m,) = [m for m in km.memcg_for_each(prog) if km.memcg_path(m) == scan_path]
    scan = charges_scan(prog, {o.value_() for o in km.memcg_objcgs_for_each(m)}, {m.value_()})
    (out / "owner-charges.json").write_text(json.dumps(scan, default=int))
    if extra is not None:
        (out / "vmcore-extra.json").write_text(json.dumps(extra(prog), default=int))


def charges_beyond(scan: list[dict], allocations) -> dict[tuple[str, str], int]:
    """What a charge scan (owner-charges.json) found beyond ``allocations`` (snapshot
    allocation rows): {(kind, slab cache): bytes}. Asserts no cache holds less than the
    rows charge to it."""
    a = allocations[(allocations["charged_bytes"] > 0) & allocations["kind"].eq("slab_object")]
    mine = a.groupby("slab_cache")["charged_bytes"].sum()
    others = {}
    for q in scan:
        extra = q["bytes"] - (int(mine.get(q["cache"], 0)) if q["kind"] == "slab_object" else 0)
        assert extra >= 0, q
        if extra:
            others[(q["kind"], q["cache"])] = extra
    return others


#: The most pages one page_counter call moves in the lab's scenarios: a try_charge batch is
#: max(MEMCG_CHARGE_BATCH = 64, nr) with nr at most 8 here (kmalloc-large allocations are at
#: most 32 KiB; bigger map areas are vmalloc, charged a page at a time), and a stock drain
#: uncharges at most the batch plus the refill that overflowed it. A missed hit can leave a
#: residual of at most this many pages.
MAX_PAGES_PER_COUNTER_CALL = 2 * 64


def assert_residuals_from_misses(bad, missed: dict[str, int], page_size: int = 4096) -> None:
    """Residuals of a page-counter reconciliation that kprobe_profile's misses explain: whole
    pages, in no more steps than there were misses, and none larger than the misses can
    carry (``MAX_PAGES_PER_COUNTER_CALL`` pages each). ``bad``: the rows with a residual."""
    n = sum(missed.values())
    assert (bad["residual_bytes"] % page_size == 0).all(), bad.to_string()
    # one lost movement of N pages shows on the cgroup and each /pod* ancestor, in one step
    assert bad["step"].nunique() <= n, bad.to_string()
    assert (bad["residual_bytes"].abs() <= n * MAX_PAGES_PER_COUNTER_CALL * page_size).all(), bad.to_string()

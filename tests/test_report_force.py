"""`memtrace report force` on the committed real recordings of the force scenario
(fixtures/captures: trace-cmd recordings made in the lab guest with memtrace's probes, and
the truth.json of the same runs): every number is checked against the kernel's own counters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KERNELS

CAPTURES = Path(__file__).resolve().parent.parent / "fixtures" / "captures"
TRACES = Path(__file__).resolve().parent.parent / "fixtures" / "traces"
LAB = Path(__file__).resolve().parent.parent / "fixtures" / "lab"
PAGE = 4096


def _memtrace(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memtrace", *map(str, args)], capture_output=True, text=True, timeout=600)


def _genf(truth: dict, step: str) -> dict:
    return next(s for s in truth["steps"] if s["name"] == step)["cgroups"]["/pod/genf"]


@pytest.mark.parametrize("kernel", KERNELS)
def test_force_report_equals_the_kernels_counters(kernel):
    cap, truth_file = CAPTURES / f"force-{kernel}.trace.dat", CAPTURES / f"force-{kernel}.trace.dat.truth.json"
    r = _memtrace("report", "force", cap, "--truth", truth_file, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "memtrace.report.force/1"
    truth = json.loads(truth_file.read_text())
    lim, now = _genf(truth, "limit-set"), _genf(truth, "force-charged")
    over = now["memory.current"] - now["memory.max"]
    raised = now["memory.events"]["max"] - lim["memory.events"]["max"]
    (row,) = [s for s in doc["steps"] if s["path"] == "/pod/genf"]
    assert row["step_name"] == "force-charged"
    # the step starts at the limit; everything above it at the step's end was forced
    assert lim["memory.current"] == now["memory.max"]
    assert row["forced_bytes"] == row["over_max_bytes"] == over > 0
    assert row["peak_over_max_bytes"] >= over
    assert row["memory_current_bytes"] == now["memory.current"] and row["memory_max_bytes"] == now["memory.max"]
    # one memory.events max per forcing try_charge_memcg call (6.0+)
    assert row["force_charges"] == row["events_max_raised"] == raised > 0
    assert row["refused_charges"] == 0
    assert doc["totals"] == {"forcing_calls": raised, "forced_pages": over // PAGE, "refused_calls": 0, "finding": None}
    # the task that forced them: mapctl inserting sockets from the root cgroup
    (task,) = doc["tasks"]
    assert (task["path"], task["comm"], task["forced_pages"]) == ("/pod/genf", "mapctl", over // PAGE)
    assert doc["observed"] == [f"forced charges raised max events on this kernel ({raised} forcing calls, {raised} max events)"]
    # every forced charge happened inside a try_charge_memcg called by obj_cgroup_charge: the
    # sockets' slab objects, charged with __GFP_HIGH while over the limit
    (site,) = doc["call_sites"]
    assert (site["path"], site["call_site"].split("+")[0], site["forced_charges"], site["forced_pages"]) == (
        "/pod/genf", "obj_cgroup_charge", raised, over // PAGE)
    # --fail-over PAGES
    r = _memtrace("report", "force", cap, "--truth", truth_file, "--fail-over", over // PAGE - 1)
    assert r.returncode == 1 and f"memtrace: finding: {over // PAGE:,} pages forced above memory.max" in r.stderr
    assert _memtrace("report", "force", cap, "--fail-over", over // PAGE).returncode == 0


def test_force_report_without_refusal_probes_says_so():
    """The page_counter excerpt has no try_charge events: forced charges are counted, refused
    ones cannot be, and the report says so instead of printing 0."""
    r = _memtrace("report", "force", CAPTURES / "force-6.1.page_counter.txt", "--truth",
                  CAPTURES / "force-6.1.truth.json", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["totals"]["refused_calls"] is None and doc["totals"]["forced_pages"] > 0
    assert "refused charges are not counted" in r.stderr


def test_force_report_refuses_a_truth_of_another_run():
    r = _memtrace("report", "force", CAPTURES / "force-6.12.trace.dat", "--truth", LAB / "ghost-6.12" / "truth.json")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "are not from the same run" in r.stderr
    assert str(CAPTURES / "force-6.12.trace.dat") in r.stderr and str(LAB / "ghost-6.12" / "truth.json") in r.stderr


def test_force_report_names_missing_events():
    """A capture without memtrace's probes (the lab's plain tracefs excerpt): one line naming
    what is missing and the command that records it."""
    r = _memtrace("report", "force", TRACES / "restart-6.1.excerpt.txt")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
    assert "trace lacks pc_try_charge, pc_try_charge_ret" in r.stderr and "memtrace probes" in r.stderr


@pytest.mark.parametrize("kernel", KERNELS)
def test_force_report_against_a_snapshots_limits(kernel):
    """--snapshot: one run of force with the probes and its final vmcore's snapshot file
    (fixtures/make-lab-fixtures --force-snapshot). Each memcg's forced charges (hierarchical)
    are set against the limits and counters the snapshot read from the kernel, which equal
    the guest's own readings after the last step."""
    base = CAPTURES / f"force-snap-{kernel}"
    r = _memtrace("report", "force", f"{base}.page_counter.txt", "--snapshot", f"{base}.snapshot", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    truth = json.loads(Path(f"{base}.truth.json").read_text())
    lim, now, last = _genf(truth, "limit-set"), _genf(truth, "force-charged"), truth["steps"][-1]["cgroups"]
    rows = {x["path"]: x for x in doc["limits"]}
    assert set(rows) == {"/", "/pod", "/pod/genf"}
    genf = rows["/pod/genf"]
    raised = now["memory.events"]["max"] - lim["memory.events"]["max"]
    assert genf["forced_bytes"] == now["memory.current"] - now["memory.max"] > 0
    assert genf["forced_charges"] == raised > 0
    assert genf["memory_max_bytes"] == now["memory.max"] and genf["state"] == "ghost"
    for path in ("/pod", "/pod/genf"):  # the vmcore is dumped after the last step's reading
        assert rows[path]["memory_current_bytes"] == last[path]["memory.current"], path
        assert rows[path]["events_max"] == last[path]["memory.events"]["max"], path
        assert rows[path]["forced_charges"] == raised  # hierarchical
    assert genf["over_max_bytes"] == max(0, last["/pod/genf"]["memory.current"] - now["memory.max"])
    assert rows["/"]["memory_max_bytes"] is None
    assert [(t["path"], t["comm"]) for t in doc["tasks"]] == [("/pod/genf", "mapctl")]
    assert doc["snapshot"] == f"{base}.snapshot"


def test_a_snapshot_of_another_boot_is_refused():
    """The same-host check, on the real 6.12 snapshot with its cgroup ids moved past any the
    capture charged (as another boot's would be)."""
    from memtrace.analyses import force as fa
    from memtrace.errors import InputError
    from memtrace.sources.trace import load_trace
    from memtrace.tables.snapshot_file import load

    base = CAPTURES / "force-snap-6.12"
    ev, _ = load_trace(f"{base}.page_counter.txt")
    memcgs = load(Path(f"{base}.snapshot")).memcgs
    forced, refused = fa.forced_charges(ev), fa.refused_charges(ev)
    fa.check_same_host(forced, refused, memcgs, "cap", "snap")  # the run's own: accepted
    moved = memcgs.assign(cgroup_id=memcgs["cgroup_id"].where(memcgs["cgroup_id"] == 1, memcgs["cgroup_id"] + 10_000))
    with pytest.raises(InputError, match="not from the same host and boot"):
        fa.check_same_host(forced, refused, moved, "cap", "snap")


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_truth_of_another_run_of_the_same_scenario_is_refused(kernel):
    """Two runs of force have the same step markers; their times differ. The force-snap
    capture against the trace.dat run's truth (both real, both force on the same kernel):
    exit 2, one line naming both files and the step that gives it away."""
    cap, other = CAPTURES / f"force-snap-{kernel}.page_counter.txt", CAPTURES / f"force-{kernel}.trace.dat.truth.json"
    r = _memtrace("report", "force", cap, "--truth", other)
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"memtrace: error: {cap} and {other} are not from the same run: the capture's marker of step")
    assert "Traceback" not in r.stderr
    assert _memtrace("report", "force", cap, "--truth", CAPTURES / f"force-snap-{kernel}.truth.json").returncode == 0


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_same_run_clock_bound_sits_between_one_run_and_two(kernel):
    """SAME_RUN_CLOCK_S (2 s) against the committed runs: a capture's step markers lie within
    0.04 s of its own truth's uptimes, and more than 10 s off another force run's at some step."""
    from memtrace.analyses.charges import step_markers
    from memtrace.analyses.force import SAME_RUN_CLOCK_S
    from memtrace.sources.trace import load_trace

    def worst(cap, truth_file):
        m = step_markers(load_trace(str(cap))[0]).drop_duplicates("step")
        up = {s["index"]: s["uptime_s"] for s in json.loads(Path(truth_file).read_text())["steps"]}
        return max(abs(ts / 1e9 - up[s]) for s, ts in zip(m["step"], m["ts_ns"]))

    snap, dat = CAPTURES / f"force-snap-{kernel}", CAPTURES / f"force-{kernel}"
    own = [worst(f"{snap}.page_counter.txt", f"{snap}.truth.json"), worst(f"{dat}.trace.dat", f"{dat}.trace.dat.truth.json")]
    other = worst(f"{snap}.page_counter.txt", f"{dat}.trace.dat.truth.json")
    assert max(own) <= 0.04 < SAME_RUN_CLOCK_S < 10 < other, (own, other)

"""`memtrace diff` as CI uses it, on real runs: a fresh lab run of `restart` diffed against the
committed fixture of the same scenario and kernel passes the shipped default rules; a run of
the same scenario with one real regression (tests/scenarios/restart_leak.sh: gen2 pins one more
map) fails them, on exactly the rows the leak moved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import session_run

pytestmark = pytest.mark.lab

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lab"
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def _diff(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memtrace", "diff", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_a_fresh_run_passes_against_the_committed_fixture(lab, kernel):
    run = lab.get("restart", kernel, vmcore=False)
    r = _diff(FIXTURES / f"restart-{kernel}", run, "--json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"]["passed"] and doc["verdict"]["crossed"] == 0
    assert doc["verdict"]["unmatched"] == 0 and doc["verdict"]["added"] == 0 and doc["verdict"]["removed"] == 0
    # the run is compared, not waved through: /pod's memory.current at every step is a row
    pod = [x for x in doc["rows"] if x["name"] == "/pod" and x["metric"] == "memory_current_bytes"]
    assert len(pod) >= 10 and all(abs(x["new"] - x["base"]) <= 3 * 4096 for x in pod)


@pytest.fixture(scope="module", params=["6.12"])
def leak_run(request, tmp_path_factory) -> Path:
    from memtrace.lab.run import run

    return session_run("restart_leak", request.param, tmp_path_factory.mktemp("leak"), "truth.json",
                       lambda out: run(str(SCENARIOS / "restart_leak.sh"), request.param, out, vmcore=False, force=True))


def test_a_leak_fails_on_the_rows_it_moved(leak_run):
    kernel = json.loads((leak_run / "meta.json").read_text())["kernel"]["series"]
    base = FIXTURES / f"restart-{kernel}"
    r = _diff(base, leak_run, "--json")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr
    doc = json.loads(r.stdout)
    crossed = {(x["entity"], x["name"], x["step"], x["metric"]) for x in doc["rows"] if x["crossed"]}
    assert crossed == {
        ("memcg", "/pod", "gen2-updated", "memory_current_bytes"),
        ("memcg", "/pod/gen2", "gen2-updated", "memory_current_bytes"),
        ("map", "/sys/fs/bpf/leaked", "", "memlock_bytes"),
    }, crossed
    # the leaked map is a map only NEW has (an added row crosses: it grew from nothing)
    truth = json.loads((leak_run / "truth.json").read_text())
    leaked = next(m for m in truth["steps"][-1]["maps"] if m["name"] == "leaked")
    added = [x for x in doc["rows"] if x["status"] == "added" and x["entity"] == "map"]
    assert [(x["name"], x["new"]) for x in added] == [("/sys/fs/bpf/leaked", leaked["bytes_memlock"])]
    # how much it moved: gen2's rise is the new map's charge, far above the noise
    pod2 = next(x for x in doc["rows"] if x["name"] == "/pod/gen2" and x["step"] == "gen2-updated"
                and x["metric"] == "memory_current_bytes")
    assert pod2["delta"] > 700_000
    # the markdown a CI job posts says so in its first line
    md = _diff(base, leak_run, "--format", "markdown")
    assert md.returncode == 1 and md.stdout.splitlines()[0].startswith("### ❌ memtrace diff: FAIL")
    assert "/pod/gen2" in md.stdout and "0x" not in md.stdout

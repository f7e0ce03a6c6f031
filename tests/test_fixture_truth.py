"""The scenario facts of test_lab_scenarios, checked on the committed real captures in
fixtures/lab/ (made by fixtures/make-lab-fixtures): runs without booting a guest, and keeps
the fixtures honest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import KERNELS, LabRuns
from memtrace.lab import kernels
from memtrace.lab.truth import load_truth
from test_lab_scenarios import (  # noqa: F401  (collected here without the lab marker)
    test_force_charge_goes_above_max_and_counts_a_max_event,
    test_ghost_gen1_keeps_being_charged_until_its_limit,
    test_ghost_updates_fail_at_the_limit_with_the_builds_events,
    test_recharge_double_charges_then_moves,
    test_restart_gen2_updates_charge_the_parent_not_gen2,
    test_restart_maps_match_bpftool,
    test_restart_percpu_values_are_not_charged_to_the_creator,
    test_restart_prealloc_hash_charges_its_element_area,
    test_restart_rmdir_moves_the_charge_to_the_parent,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lab"


@pytest.fixture
def lab() -> LabRuns:
    return LabRuns(None, reuse=FIXTURES)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("scenario", ["restart", "ghost", "force", "recharge"])
def test_fixture_is_a_complete_run(scenario, kernel):
    d = FIXTURES / f"{scenario}-{kernel}"
    truth = load_truth(d / "truth.json")
    meta = json.loads((d / "meta.json").read_text())
    assert meta["scenario"] == scenario and meta["kernel"]["series"] == kernel
    pinned = kernels.BUILDS[kernels.SERIES[kernel].pinned]
    assert (meta["kernel"]["release"], meta["kernel"]["package_version"]) == (pinned.release, pinned.version)
    assert [s["name"] for s in meta["steps"]] == [s["name"] for s in truth["steps"]]
    assert truth["steps"] and all(s["cgroups"]["/"]["id"] == 1 for s in truth["steps"])


def _delta(truth: dict, step: str, path: str) -> int:
    names = [s["name"] for s in truth["steps"]]
    i = names.index(step)
    return truth["steps"][i]["cgroups"][path]["memory.current"] - truth["steps"][i - 1]["cgroups"][path]["memory.current"]


def test_readme_numbers_are_the_fixtures():
    """README's scenario numbers are read from the committed runs, so they cannot drift apart."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    runs = {(sc, k): json.loads((FIXTURES / f"{sc}-{k}" / "truth.json").read_text())
            for sc in ("restart", "ghost", "force") for k in KERNELS}

    def num(text: str) -> int:
        return int(text.replace(",", ""))

    m = re.search(r"both kernels ended at ([\d,]+) B against a\s+([\d,]+) B limit with (\d+) `max` events", readme)
    assert m, "README's force sentence changed: update this test with it"
    for k in KERNELS:
        st = {s["name"]: s["cgroups"]["/pod/genf"] for s in runs[("force", k)]["steps"]}
        got = (st["force-charged"]["memory.current"], st["force-charged"]["memory.max"],
               st["force-charged"]["memory.events"]["max"] - st["limit-set"]["memory.events"]["max"])
        assert got == (num(m.group(1)), num(m.group(2)), int(m.group(3))), (k, got)
    m = re.search(r"6\.1 run: ([\d,]+) of the ([\d,]+) inserts into those\s+two maps failed; ([\d,]+) on 6\.12", readme)
    assert m, "README's ghost sentence changed: update this test with it"
    for k, failed in (("6.1", m.group(1)), ("6.12", m.group(3))):
        fills = [tuple(map(int, f)) for f in re.findall(r"done=(\d+) failed=(\d+) errno=(\d+)", " ".join(runs[("ghost", k)]["notes"]))]
        assert sum(f for _, f, _ in fills) == num(failed)
        assert sum(d + f for d, f, _ in fills if f) + fills[0][0] == num(m.group(2))  # the hash's 1,200 fitted
    m = re.search(r"prealloc hash \(key 8, value 100\) charged gen1 ([\d,]+) B on both", readme)
    assert m, "README's restart sentence changed: update this test with it"
    m2 = re.search(r"per-CPU values charged ([\d,]+) B", readme)
    assert m2, "README's percpu array sentence changed: update this test with it"
    for k in KERNELS:
        assert _delta(runs[("restart", k)], "create-hash_prealloc", "/pod/gen1") == num(m.group(1))
        assert _delta(runs[("restart", k)], "create-percpu_array", "/pod/gen1") == num(m2.group(1))

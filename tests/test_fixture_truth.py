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

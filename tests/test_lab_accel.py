"""The lab's default accelerator survives kernel text patching on a busy 6.12 guest.

QEMU 7.2's multi-threaded TCG oopsed 6.12 guests ("Oops: int3" at a tracepoint's patched
site) in about 1 of 30 lab runs, twice in one CI run; tests/scenarios/text_poke_stress.sh
makes it happen within 20-30 rounds. The lab runs single-threaded TCG by default
(memtrace.lab.qemu.ACCELS); this runs the stress scenario there. A panic fails the test
(memtrace.lab.run raises GuestError); there is no retry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memtrace.lab.run import run

SCENARIO = Path(__file__).parent / "scenarios" / "text_poke_stress.sh"


@pytest.mark.lab
def test_text_patching_under_load_does_not_oops_6_12(tmp_path):
    out = tmp_path / "stress"
    res = run(str(SCENARIO), "6.12", out, vmcore=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["guest"]["accel"] == "tcg" and "tcg,thread=single" in meta["guest"]["qemu_args"]
    assert meta["guest"]["cpus"] == 2
    assert [s["name"] for s in res.meta["steps"]] == ["start", "done"]
    assert json.loads((out / "truth.json").read_text())["notes"] == ["rounds: 60"]

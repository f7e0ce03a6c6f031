"""`memtrace report recharge` on the lab's recharge scenario, against truth.json.

Effects: gen2 copies the old inner map (reparented to /pod) into a new one, swaps it in and
drops the old: the report's bytes moved, released, left behind and peak double charge are
truth's per-step memory.current changes, and the capture (memtrace's probes) shows the peak
inside the steps and how long it lasted. What-if: the host dumps the guest at gen2-start
(lib.sh vmcore_at), before the copy; the what-if on that vmcore predicts the bytes the copy
then charges gen2, checked against the new map in the final vmcore and gen2's counter.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from test_charges_lab import captures  # noqa: F401  (the session's lab captures with memtrace's probes)

pytestmark = pytest.mark.lab
PAGE = 4096


def _memtrace(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memtrace", *map(str, args)], capture_output=True, text=True, timeout=600)


def _cur(truth: dict) -> dict[str, dict[str, int]]:
    return {s["name"]: {p: c.get("memory.current") for p, c in s["cgroups"].items()} for s in truth["steps"]}


def test_recharge_effects_equal_truth_and_the_capture_shows_the_peak(captures, kernel):  # noqa: F811
    d = captures.get("recharge", kernel)
    truth = json.loads((d / "truth.json").read_text())
    r = _memtrace("report", "recharge", d / "trace.txt", "--truth", d / "truth.json", "--old", "/pod", "--new", "/pod/gen2",
                  "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    s = doc["summary"]
    c = _cur(truth)
    first, last = "gen2-start", "recharge-old-dropped"
    assert (s["from_step"], s["to_step"], s["nested"]) == (first, last, True)
    own = {n: c[n]["/pod"] - c[n]["/pod/gen2"] for n in ("gen2-start", "recharge-copied", "recharge-swapped", last)}
    assert s["moved_to_new"] == c[last]["/pod/gen2"] - c[first]["/pod/gen2"] > 100 * 1024
    assert s["released_by_old"] == own[first] - own[last]
    assert s["left_behind"] == own[last]
    assert s["stock_batching"] == s["moved_to_new"] - s["released_by_old"]
    # the double charge: between copy and swap both maps are charged
    assert (s["peak_step"], s["peak_double_charge"]) == ("recharge-copied", c["recharge-copied"]["/pod"] - c[first]["/pod"])
    assert s["peak_double_charge"] >= s["moved_to_new"]
    # inside the steps the capture sees at least the steps' peak, and it lasted a while
    assert s["capture_peak_double_charge"] >= s["peak_double_charge"]
    marks = {st["name"]: st["uptime_s"] for st in truth["steps"]}
    assert 0 < s["double_charge_s"] <= marks[last] - marks[first]
    assert [row["step_name"] for row in doc["steps"]] == [first, "recharge-copied", "recharge-swapped", last]


def test_recharge_what_if_predicts_the_copy(lab, kernel, tmp_path):
    d = lab.get("recharge", kernel)
    truth = json.loads((d / "truth.json").read_text())
    meta = json.loads((d / "meta.json").read_text())
    assert "vmcore-gen2-start" in meta["files"]
    notes = " ".join(truth["notes"])
    old_id = int(re.search(r"old inner map id (\d+)", notes).group(1))
    new_id = int(re.search(r"new inner map id (\d+)", notes).group(1))
    vmlinux = meta["kernel"]["vmlinux"]
    r = _memtrace("report", "recharge", "--to", "/pod/gen2", "--vmcore", d / "vmcore-gen2-start", "--vmlinux", vmlinux,
                  "--map", old_id, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (m,) = doc["maps"]
    assert (m["map_id"], m["type"], m["owner_state"], m["payer"], m["common_ancestor"]) == (
        old_id, "hash", "reparented", "/pod", "/pod")
    assert doc["verdict"] == "fits"
    assert m["rfc_movable_bytes"] == m["charged_bytes"] == m["slab_bytes"] + m["page_bytes"] + m["vmalloc_bytes"] + m["percpu_bytes"]
    assert m["flags"] == "elements-dominate"  # the prealloc element area is most of it
    levels = {lv["path"]: lv for lv in doc["levels"]}
    assert levels["/pod/gen2"]["change"] == m["charged_bytes"] and levels["/pod"]["change"] == 0
    # what then happened: the copy (same shape, every entry) charges gen2 exactly the
    # predicted bytes for its map ...
    end = tmp_path / "end.snapshot"
    assert _memtrace("snapshot", "--vmcore", d / "vmcore", "--vmlinux", vmlinux, "-o", end).returncode == 0
    after = json.loads(_memtrace("report", "leftover", "--from", end, "--json").stdout)
    new = {x["map_id"]: x for x in after["maps"]}[new_id]
    assert (new["owner_path"], new["charged_bytes"]) == ("/pod/gen2", m["charged_bytes"])
    # ... and gen2's memory.current rises by that plus what is not the map: the objcg's
    # page-rounded slab charge, whole pages for the pin's dentry and inode (measured on 6.12:
    # 140,296 predicted, +7,160 B = 3,064 B objcg bytes + one page)
    c = _cur(truth)
    measured = c["recharge-copied"]["/pod/gen2"] - c["gen2-start"]["/pod/gen2"]
    gen2 = {x["path"]: x for x in json.loads(_memtrace("snapshot", "--from", end, "--json").stdout)["memcgs"]}["/pod/gen2"]
    assert m["charged_bytes"] <= measured <= m["charged_bytes"] + gen2["objcg_charged_bytes"] + 2 * PAGE, (measured, m)

"""`memtrace report leftover` on real lab vmcores, checked against the run's truth.json.

restart: gen1 made and pinned the maps, exited and was removed: every map is reparented to
/pod, /pod pays, and the RFC rule makes each a recharge candidate. ghost: gen1 is kept,
unpopulated: every map's owner is a ghost, still online, so the RFC rule refuses it. dying
(tests/scenarios/dying.sh): gen1's memcg stays dying, and on 6.12 the report names it as the
maps' original cgroup. The per-memcg numbers come from the kernel's own counters in the
vmcore; truth.json read them in the guest after the last step.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab


def _memtrace(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memtrace", *map(str, args)], capture_output=True, text=True, timeout=600)


_snaps: dict[Path, Path] = {}


def _snapshot_file(run_dir: Path, tmp_root: Path) -> Path:
    """The run's vmcore as a snapshot file, made once per session (the reports then read
    it with --from; one test reads the vmcore directly)."""
    if run_dir not in _snaps:
        meta = json.loads((run_dir / "meta.json").read_text())
        f = tmp_root / f"{run_dir.name}.snapshot"
        r = _memtrace("snapshot", "--vmcore", run_dir / "vmcore", "--vmlinux", meta["kernel"]["vmlinux"], "-o", f)
        assert r.returncode == 0, r.stderr
        _snaps[run_dir] = f
    return _snaps[run_dir]


def _report(*args) -> tuple[int, dict]:
    r = _memtrace("report", "leftover", *args, "--json")
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def _last(truth: dict) -> dict:
    return truth["steps"][-1]["cgroups"]


def _gen1_maps(truth: dict) -> set[int]:
    """Ids of the maps gen1 created that still exist at the last step (bpftool's list; a
    template inner map is freed once the outer map holds its meta)."""
    alive = {m["id"] for m in truth["steps"][-1]["maps"]}
    return {m["id"] for m in truth["maps_created"] if m["cgroup"] == "/pod/gen1"} & alive


def test_restart_leftover_is_reparented_to_pod(lab, kernel, tmp_path_factory):
    run_dir = lab.get("restart", kernel)
    truth = json.loads((run_dir / "truth.json").read_text())
    meta = json.loads((run_dir / "meta.json").read_text())
    # straight from the vmcore, as a user runs it
    rc, doc = _report("--vmcore", run_dir / "vmcore", "--vmlinux", meta["kernel"]["vmlinux"])
    assert rc == 0 and doc["schema"] == "memtrace.report.leftover/1" and doc["finding"] is None
    maps = {m["map_id"]: m for m in doc["maps"]}
    gen1 = _gen1_maps(truth)
    assert gen1 and gen1 <= set(maps)
    for i in gen1:
        m = maps[i]
        assert (m["owner_state"], m["owner_path"], m["leftover"]) == ("reparented", "/pod", True), m
        assert m["recharge_candidate"] and m["recharge_reason"] == "owner memcg is reparented"
        # every charged byte is /pod's: the reparented objcg charges the parent
        assert m["charged_to"] == ("" if m["charged_bytes"] == 0 else f"/pod={m['charged_bytes']}")
    cg = {c["path"]: c for c in doc["memcgs"]}
    last = _last(truth)
    pod = cg["/pod"]
    # the kernel's counters in the vmcore are the ones the guest read after the last step
    assert pod["memory_current_bytes"] == last["/pod"]["memory.current"]
    assert pod["own_bytes"] == last["/pod"]["memory.current"] - last["/pod/gen2"]["memory.current"]
    assert pod["leftover_bytes"] == pod["bpf_reparented_bytes"] == sum(maps[i]["charged_bytes"] for i in gen1)
    # what /pod holds of its own is the removed generation's maps, less pins' dentries,
    # inodes and stocks (measured: 24,096 B of 2,781,184 on 6.12)
    assert 0 <= pod["own_bytes"] - pod["leftover_bytes"] <= max(32 * 1024, pod["own_bytes"] // 100)
    assert pod["leftover_subtree_bytes"] == cg["/"]["leftover_subtree_bytes"] == pod["leftover_bytes"]
    assert cg["/pod/gen2"]["leftover_bytes"] == 0
    # where /pod's own usage went: its memory.stat (read from the kernel in the vmcore) is the
    # guest's last reading, less gen2's, and BPF maps + anon + file + other kernel + sock +
    # stocks explain its own usage to the byte (nothing ran in /pod after that reading)
    stat = {k: last["/pod"]["memory.stat"][k] - last["/pod/gen2"]["memory.stat"][k] for k in ("anon", "file", "kernel", "sock")}
    assert {k: pod[f"own_{k}_bytes"] for k in stat} == stat
    assert pod["kernel_other_bytes"] == stat["kernel"] - pod["leftover_bytes"] >= 0
    assert pod["unexplained_bytes"] == cg["/pod/gen2"]["unexplained_bytes"] == 0
    assert cg["/"]["unexplained_bytes"] is None  # no split for the root

    snap = _snapshot_file(run_dir, tmp_path_factory.mktemp("leftover"))
    # --fail-over: bytes in all, or a share of one memcg's own usage
    rc, doc = _report("--from", snap, "--fail-over", "1M")
    assert rc == 1 and doc["finding"] == f"leftover BPF charge {pod['leftover_bytes']:,} B is over 1,048,576 B"
    rc, doc = _report("--from", snap, "--fail-over", str(pod["leftover_bytes"]))
    assert rc == 0 and doc["finding"] is None
    rc, doc = _report("--from", snap, "--fail-over", "90%")
    assert rc == 1 and doc["finding"].startswith("1 memcg(s) over 90% leftover BPF charge; worst /pod: ")
    # both directions of the query: which maps a memcg pays for, which memcg a map charges
    rc, doc = _report("--from", snap, "--cgroup", "/pod")
    assert {r["map_id"] for r in doc["charged_here"]} == {i for i in gen1 if maps[i]["charged_bytes"]}
    assert sum(r["charged_bytes"] for r in doc["charged_here"]) == pod["leftover_bytes"]
    pin = truth["maps_created"][0]["pin"]
    rc, doc = _report("--from", snap, "--map", pin)
    assert [m["map_id"] for m in doc["maps"]] == [truth["maps_created"][0]["id"]]


def test_restart_leftover_bad_selectors(lab, kernel, tmp_path_factory):
    snap = _snapshot_file(lab.get("restart", kernel), tmp_path_factory.mktemp("leftover"))
    for args, want in (
        (("--cgroup", "/nope"), "--cgroup '/nope': no such memcg in the snapshot; it has: /, "),
        (("--map", "no_such_map"), "--map 'no_such_map': no map with that id, name or pin; maps: 1 "),
        (("--fail-over", "lots"), "--fail-over 'lots': give bytes"),
        (("--fail-over", "120%"), "--fail-over '120%': a percentage must be between 0% and 100%"),
    ):
        r = _memtrace("report", "leftover", "--from", snap, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"memtrace: error: {want}") and r.stderr.count("\n") == 1, r.stderr
    out = tmp_path_factory.mktemp("parquet") / "maps.parquet"
    r = _memtrace("report", "leftover", "--from", snap, "-o", out)
    import pandas as pd

    assert r.returncode == 0 and len(pd.read_parquet(out)) == len(json.loads(_memtrace(
        "report", "leftover", "--from", snap, "--json").stdout)["maps"])


def test_ghost_leftover_is_a_ghost_the_rfc_leaves(lab, kernel, tmp_path_factory):
    run_dir = lab.get("ghost", kernel)
    truth = json.loads((run_dir / "truth.json").read_text())
    rc, doc = _report("--from", _snapshot_file(run_dir, tmp_path_factory.mktemp("leftover")))
    maps = {m["map_id"]: m for m in doc["maps"]}
    for i in _gen1_maps(truth):
        m = maps[i]
        assert (m["owner_state"], m["owner_path"], m["leftover"], m["recharge_candidate"]) == (
            "ghost", "/pod/gen1", True, False), m
        assert m["recharge_reason"].startswith("owner memcg is online (a ghost")
    cg = {c["path"]: c for c in doc["memcgs"]}
    g1 = cg["/pod/gen1"]
    assert g1["state"] == "ghost" and g1["memory_current_bytes"] == _last(truth)["/pod/gen1"]["memory.current"]
    # gen1 has no children: its own usage is its memory.current, nearly all of it the maps
    assert g1["own_bytes"] == g1["memory_current_bytes"]
    assert g1["leftover_bytes"] == g1["bpf_ghost_bytes"] and g1["bpf_reparented_bytes"] == 0
    assert 0 <= g1["own_bytes"] - g1["leftover_bytes"] <= max(32 * 1024, g1["own_bytes"] // 100)
    assert cg["/pod"]["leftover_subtree_bytes"] == g1["leftover_bytes"]


def test_dying_leftover_names_the_original_cgroup(kernel, tmp_path_factory):
    from test_snapshot_lab import _test_run

    run_dir = _test_run("dying", kernel, tmp_path_factory.mktemp("dying"))
    rc, doc = _report("--from", _snapshot_file(run_dir, tmp_path_factory.mktemp("leftover")))
    maps = {m["name"]: m for m in doc["maps"]}
    assert set(maps) == {"dy_hash", "dy_array"}
    for m in maps.values():
        assert (m["owner_state"], m["owner_path"], m["recharge_candidate"]) == ("reparented", "/pod", True)
        # orig_objcg of the still-dying memcg: 6.7+ only (kernel-notes §4.2)
        assert m["original_path"] == ("/pod/gen1" if kernel == "6.12" else None)
    cg = {c["path"]: c for c in doc["memcgs"]}
    assert cg["/pod/gen1"]["state"] == "dying"
    assert cg["/pod"]["leftover_bytes"] == sum(m["charged_bytes"] for m in maps.values())

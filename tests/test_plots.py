"""--plot (issue 10): the plotted series are the report's JSON, read back from the figure's data
(lines' y data, bar widths, artists' gids), never from pixels; a bad --plot is one line, exit 2,
before any work; the picture is written atomically; matplotlib is loaded only for --plot.

Data: the committed real recordings of the force scenario (fixtures/captures, with the truth.json
of the same runs), the lab runs' truth.json (fixtures/lab), and, for the snapshot plots, the
snapshot tables of tests/test_snapshot_unit.py (no snapshot file is committed), with its numbers.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from test_snapshot_unit import _snap

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "fixtures" / "captures"
LAB = ROOT / "fixtures" / "lab"
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20}
PNG = b"\x89PNG\r\n\x1a\n"


def _memtrace(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memtrace", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def _unit(label: str) -> int:
    m = re.search(r"\((B|KiB|MiB)\)$", label)
    assert m, f"axis label {label!r} names no unit"
    return UNITS[m.group(1)]


def _artist(ax, gid: str):
    got = [a for a in ax.get_children() if a.get_gid() == gid]
    assert len(got) == 1, f"{len(got)} artists with gid {gid!r}: " + ", ".join(str(a.get_gid()) for a in ax.get_children() if a.get_gid())
    return got[0]


def _gids(ax) -> set[str]:
    return {a.get_gid() for a in ax.get_children() if a.get_gid()}


def _bytes(values, unit) -> list:
    """Plotted values back in bytes (NaN -> None); units are powers of two, so exactly."""
    out = []
    for v in values:
        v = float(v)
        out.append(None if math.isnan(v) else v * unit)
    for v in out:
        assert v is None or v == int(v)
    return [None if v is None else int(v) for v in out]


# -- report force --------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_force_plot_is_the_reports_json(tmp_path, kernel):
    """The committed page_counter recording of force: memory.current per step per memcg, the
    forced charges at the steps of the JSON, the peak inside the step; no refused markers (the
    recording has no try_charge probes: refused_calls is null)."""
    from memtrace.analyses import force as fa
    from memtrace.render.plots import plot_force
    from memtrace.sources.trace import load_trace
    from memtrace.tables.lab_truth import load_truth

    cap, truth_file = CAPTURES / f"force-{kernel}.page_counter.txt", CAPTURES / f"force-{kernel}.truth.json"
    png = tmp_path / "force.png"
    r = _memtrace("report", "force", cap, "--truth", truth_file, "--json", "--plot", png)
    assert r.returncode == 0, r.stderr
    assert f"wrote {png}" in r.stderr
    assert png.read_bytes().startswith(PNG)
    doc = json.loads(r.stdout)

    # the figure the CLI drew: the same call on the same tables
    events, _ = load_trace(str(cap))
    tt = load_truth(truth_file)
    fig = plot_force(fa.per_step(events, tt), tt)
    (ax,) = fig.axes
    unit = _unit(ax.get_ylabel())
    truth = json.loads(truth_file.read_text())
    names = [f"{s['index']} {s['name']}" for s in truth["steps"]]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    rows = [s for s in doc["steps"] if s["memory_current_bytes"] is not None]
    assert {s["path"] for s in rows} == {"/pod", "/pod/genf"}  # the root (no memory.current) is not drawn
    assert {s["path"] for s in doc["steps"]} - {s["path"] for s in rows} == {"/"}
    for row in rows:
        p, x = row["path"], names.index(f"{row['step']} {row['step_name']}")
        # the line: memory.current at every step, as the guest read it
        cur = _artist(ax, f"current:{p}")
        assert _bytes(cur.get_ydata(), unit) == [s["cgroups"].get(p, {}).get("memory.current") for s in truth["steps"]]
        assert _bytes(cur.get_ydata(), unit)[x] == row["memory_current_bytes"]
        # the forced marker: at the JSON's memory.current of that step, annotated with its numbers
        forced = _artist(ax, f"forced:{p}")
        assert list(forced.get_xdata()) == [x]
        assert _bytes(forced.get_ydata(), unit) == [row["memory_current_bytes"]]
        kib = row["forced_bytes"] / 1024
        assert any(t.get_text() == f"{row['force_charges']:,} forced, {kib:,.1f} KiB" for t in ax.texts)
        assert f"refused:{p}" not in _gids(ax)
        if row["memory_max_bytes"] is not None:
            mx = _artist(ax, f"max:{p}")
            assert _bytes(mx.get_ydata(), unit) == [s["cgroups"].get(p, {}).get("memory.max") for s in truth["steps"]]
            peak = _artist(ax, f"peak:{p}")
            assert _bytes(peak.get_ydata(), unit) == [row["memory_max_bytes"] + row["peak_over_max_bytes"]]
        else:
            assert not {f"max:{p}", f"peak:{p}"} & _gids(ax)
    # nothing else is drawn
    assert _gids(ax) == {f"{k}:{p}" for p in ("/pod", "/pod/genf") for k in ("current", "forced")} | {
        "max:/pod/genf", "peak:/pod/genf"}
    labels = ax.get_legend_handles_labels()[1]
    assert "/pod/genf forced charges" in labels and "/pod/genf memory.max" in labels


def test_force_plot_marks_refused_charges():
    """Refused charges: the committed recordings refuse none, so this is the force JSON's step row
    of 6.12 with its refused count set (the only made-up number: a count, where a marker goes)."""
    from memtrace.analyses import force as fa
    from memtrace.render.plots import plot_force
    from memtrace.sources.trace import load_trace
    from memtrace.tables.lab_truth import load_truth

    events, _ = load_trace(str(CAPTURES / "force-6.12.page_counter.txt"))
    tt = load_truth(CAPTURES / "force-6.12.truth.json")
    steps = fa.per_step(events, tt)
    steps["refused_charges"] = pd.array([0, 0, 499], dtype="Int64")
    (ax,) = plot_force(steps, tt).axes
    unit = _unit(ax.get_ylabel())
    row = steps[steps["path"].eq("/pod/genf")].iloc[0]
    refused = _artist(ax, "refused:/pod/genf")
    assert _bytes(refused.get_ydata(), unit) == [int(row["memory_current_bytes"])]
    assert "refused:/pod" not in _gids(ax)
    assert any(t.get_text() == "499 refused" for t in ax.texts)


# -- report recharge -----------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_recharge_plot_is_the_reports_json(tmp_path, kernel):
    from memtrace.analyses import recharge as ra
    from memtrace.render.plots import plot_recharge_effects
    from memtrace.tables.lab_truth import load_truth

    truth = LAB / f"recharge-{kernel}" / "truth.json"
    svg = tmp_path / "recharge.svg"
    r = _memtrace("report", "recharge", "--truth", truth, "--old", "/pod", "--new", "/pod/gen2", "--json", "--plot", svg)
    assert r.returncode == 0, r.stderr
    assert svg.read_text().lstrip().startswith("<?xml") and "</svg>" in svg.read_text()
    doc = json.loads(r.stdout)
    summary, steps = ra.effects(load_truth(truth), "/pod", "/pod/gen2")
    (ax,) = plot_recharge_effects(summary, steps).axes
    unit = _unit(ax.get_ylabel())
    assert [t.get_text() for t in ax.get_xticklabels()] == [s["step_name"] for s in doc["steps"]]
    for col in ("old_own_bytes", "new_bytes", "combined_bytes", "double_charge_bytes"):
        assert _bytes(_artist(ax, col).get_ydata(), unit) == [s[col] for s in doc["steps"]], col
    s = doc["summary"]
    peak = _artist(ax, "peak")
    assert _bytes(peak.get_ydata(), unit) == [s["peak_double_charge"]] and s["peak_double_charge"] > 0
    assert list(peak.get_xdata()) == [[x["step_name"] for x in doc["steps"]].index(s["peak_step"])]
    assert "capture_peak" not in _gids(ax)  # no capture given


def test_recharge_whatif_plot_is_the_levels():
    from memtrace.analyses import recharge as ra
    from memtrace.render.plots import plot_recharge_whatif

    s = _snap()
    per_map, levels = ra.what_if(s.maps, s.allocations, s.memcgs, "/pod", [7])
    (ax,) = plot_recharge_whatif(levels, ra.verdict(levels)).axes
    unit = _unit(ax.get_xlabel())
    for r in levels.itertuples(index=False):
        assert _bytes([_artist(ax, f"current:{r.path}").get_width()], unit) == [r.memory_current_bytes]
        assert _bytes([_artist(ax, f"change:{r.path}").get_width()], unit) == [r.change]
        if r.memory_max_bytes is not None and not pd.isna(r.memory_max_bytes):
            assert _bytes(_artist(ax, f"max:{r.path}").get_xdata(), unit) == [r.memory_max_bytes]


# -- snapshot and report leftover: BPF bytes by owner state --------------------------------------


def _snapshot_file(tmp_path, states=("reparented",)) -> Path:
    """test_snapshot_unit's snapshot, its map 7 (and its allocations) repeated once per state,
    map ids 7, 8, ...: the same byte counts, owners in other states."""
    from memtrace.tables.snapshot import Snapshot, coerce
    from memtrace.tables.snapshot_file import save

    s = _snap()
    maps, allocs = [], []
    for i, st in enumerate(states):
        maps.append(s.maps.assign(map_id=7 + i, owner_state=st))
        allocs.append(s.allocations.assign(map_id=7 + i))
    memcgs = s.memcgs.assign(bpf_bytes=s.memcgs["bpf_bytes"] * len(states))
    snap = Snapshot(s.header, coerce("maps", pd.concat(maps, ignore_index=True)),
                    coerce("allocations", pd.concat(allocs, ignore_index=True)), memcgs)
    f = tmp_path / "s.snapshot"
    save(snap, f)
    return f


def _bars(ax) -> dict[str, dict[str, int]]:
    """{state: {memcg path: bytes}} of a plot_owner_states figure."""
    unit = _unit(ax.get_xlabel())
    paths = [t.get_text() for t in ax.get_yticklabels()]
    out = {}
    for c in ax.containers:
        widths = _bytes([b.get_width() for b in c], unit)
        gids = [b.get_gid() for b in c]
        assert gids == [f"{c.get_label()}:{p}" for p in paths]
        out[c.get_label()] = dict(zip(paths, widths))
    return out


@pytest.mark.parametrize("states", [("reparented",), ("online",), ("ghost",), ("dying",), ("none",),
                                    ("reparented", "ghost", "online")], ids="+".join)
def test_leftover_plot_is_the_reports_json(tmp_path, states):
    from memtrace.analyses.leftover import OWNER_STATES, leftover_memcgs
    from memtrace.render.plots import plot_owner_states
    from memtrace.tables.snapshot_file import load

    f = _snapshot_file(tmp_path, states)
    png = tmp_path / "leftover.png"
    r = _memtrace("report", "leftover", "--from", f, "--json", "--plot", png)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes().startswith(PNG)
    doc = json.loads(r.stdout)
    s = load(f)
    (ax,) = plot_owner_states(leftover_memcgs(s.maps, s.allocations, s.memcgs)).axes
    bars = _bars(ax)
    assert list(bars) == list(OWNER_STATES)  # stacked in this order, every state a container
    shown = [m for m in doc["memcgs"] if sum(m[f"bpf_{st}_bytes"] for st in OWNER_STATES)]
    assert [t.get_text() for t in ax.get_yticklabels()] == [m["path"] for m in shown] == ["/pod"]
    for m in shown:
        for st in OWNER_STATES:
            assert bars[st][m["path"]] == m[f"bpf_{st}_bytes"], (st, m["path"])
    # the map's 5,128 charged bytes (test_snapshot_unit's), once per map, in its owner's state
    for st in OWNER_STATES:
        assert bars[st]["/pod"] == 5128 * states.count(st)


def test_snapshot_plot_adds_up_to_the_snapshot_json(tmp_path):
    from memtrace.analyses.leftover import OWNER_STATES
    from memtrace.render.plots import plot_snapshot
    from memtrace.tables.snapshot_file import load

    f = _snapshot_file(tmp_path, ("reparented", "ghost"))
    svg = tmp_path / "snap.svg"
    r = _memtrace("snapshot", "--from", f, "--json", "--plot", svg)
    assert r.returncode == 0, r.stderr
    assert "</svg>" in svg.read_text()
    doc = json.loads(r.stdout)
    (ax,) = plot_snapshot(load(f)).axes
    bars = _bars(ax)
    # per memcg: the bars add up to the JSON's bpf_bytes (BPF bytes charged to it)
    for m in doc["memcgs"]:
        assert sum(bars[st].get(m["path"], 0) for st in OWNER_STATES) == m["bpf_bytes"]
    # per state: the maps' charged bytes of that owner state
    for st in OWNER_STATES:
        assert sum(bars[st].values()) == sum(m["charged_bytes"] for m in doc["maps"] if m["owner_state"] == st)
    assert ax.get_title().endswith("(6.1.0-test)")


# -- diff: base and new side by side ------------------------------------------------------------


def test_diff_plot_draws_two_real_runs_side_by_side(tmp_path):
    """restart on 6.1 and on 6.12 (the committed lab runs): each panel's lines are its run's
    memory.current per step, steps at the same places, one colour per memcg, one y axis."""
    from memtrace.render.plots import plot_diff, truth_series
    from memtrace.tables.lab_truth import load_truth

    paths = ("/pod", "/pod/gen1", "/pod/gen2")
    docs = {k: json.loads((LAB / f"restart-{k}" / "truth.json").read_text()) for k in ("6.1", "6.12")}
    base = truth_series(load_truth(LAB / "restart-6.1" / "truth.json"), paths)
    new = truth_series(load_truth(LAB / "restart-6.12" / "truth.json"), paths)
    png = tmp_path / "diff.png"
    fig = plot_diff(base, new, png, base_title="restart, 6.1", new_title="restart, 6.12")
    assert png.read_bytes().startswith(PNG) and png.stat().st_size < 200_000
    left, right = fig.axes
    assert left.get_shared_y_axes().joined(left, right)
    unit = _unit(left.get_ylabel())
    steps = [s["name"] for s in docs["6.1"]["steps"]]
    assert steps == [s["name"] for s in docs["6.12"]["steps"]]
    for ax, side, k in ((left, "base", "6.1"), (right, "new", "6.12")):
        assert [t.get_text() for t in ax.get_xticklabels()] == steps
        assert _gids(ax) == {f"{side}:{p}" for p in paths}
        for p in paths:
            want = [s["cgroups"].get(p, {}).get("memory.current") for s in docs[k]["steps"]]
            assert _bytes(_artist(ax, f"{side}:{p}").get_ydata(), unit) == want, (k, p)
    for p in paths:
        assert _artist(left, f"base:{p}").get_color() == _artist(right, f"new:{p}").get_color()
    # gen1 is removed at rmdir-gen1: a gap from there on, in both
    y = _artist(left, "base:/pod/gen1").get_ydata()
    assert math.isnan(y[steps.index("rmdir-gen1")]) and not math.isnan(y[steps.index("gen1-exited")])


def test_diff_plot_steps_and_labels_only_one_side_has(tmp_path):
    from memtrace.render.plots import plot_diff, truth_series
    from memtrace.tables.lab_truth import load_truth

    base = truth_series(load_truth(LAB / "recharge-6.1" / "truth.json"), ["/pod", "/pod/gen1"])
    new = truth_series(load_truth(LAB / "recharge-6.12" / "truth.json"), ["/pod", "/pod/gen2"])
    new = new[new["x"] != "start"]  # a step only base has
    left, right = plot_diff(base, new).axes
    xs = [t.get_text() for t in right.get_xticklabels()]
    assert xs == list(dict.fromkeys(base["x"]))
    assert math.isnan(_artist(right, "new:/pod").get_ydata()[xs.index("start")])
    assert "/pod/gen1 (only in base)" in left.get_legend_handles_labels()[1]
    assert "/pod/gen2 (only in new)" in right.get_legend_handles_labels()[1]
    with pytest.raises(ValueError, match="bytes"):
        plot_diff(base.drop(columns=["bytes"]), new)


# -- bad --plot, atomic writes, lazy import --------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["report", "force", "/nonexistent/capture.txt", "--truth", "/nonexistent/truth.json"],
    ["report", "leftover", "--vmcore", "/nonexistent/vmcore"],
    ["report", "recharge", "--truth", "/nonexistent/truth.json", "--old", "/a", "--new", "/b"],
    ["snapshot", "--live"],
], ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("plot", ["out.pdf", "out", "out.png.txt"])
def test_a_bad_plot_is_one_line_before_any_work(tmp_path, args, plot):
    r = _memtrace(*args, "--plot", tmp_path / plot)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines() == [f"memtrace: error: --plot {str(tmp_path / plot)!r}: give a file ending in .png or .svg"]
    assert list(tmp_path.iterdir()) == []


def test_plot_into_a_missing_folder_and_force_without_truth(tmp_path):
    r = _memtrace("report", "force", CAPTURES / "force-6.12.page_counter.txt", "--plot", tmp_path / "no" / "f.png")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"memtrace: error: --plot {str(tmp_path / 'no' / 'f.png')!r}: directory {tmp_path / 'no'} does not exist"]
    r = _memtrace("report", "force", CAPTURES / "force-6.12.page_counter.txt", "--plot", tmp_path / "f.png")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "memtrace: error: --plot needs --truth (memory.current per step)"]
    assert list(tmp_path.iterdir()) == []


def test_a_failed_render_or_write_leaves_no_file(tmp_path, monkeypatch):
    from memtrace.errors import InputError
    from memtrace.render import plots
    from memtrace.tables.lab_truth import load_truth

    tt = load_truth(LAB / "restart-6.1" / "truth.json")
    fig = plots.plot_diff(plots.truth_series(tt), plots.truth_series(tt))
    old = tmp_path / "p.png"
    old.write_bytes(b"the old picture")

    def broken(*a, **k):
        raise RuntimeError("renderer died")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError):
        plots.save(fig, old)
    assert old.read_bytes() == b"the old picture" and sorted(tmp_path.iterdir()) == [old]
    monkeypatch.undo()

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(InputError, match="cannot write: Permission denied"):
        plots.save(fig, old)
    assert old.read_bytes() == b"the old picture" and sorted(tmp_path.iterdir()) == [old]
    monkeypatch.undo()
    plots.save(fig, old)
    assert old.read_bytes().startswith(PNG) and sorted(tmp_path.iterdir()) == [old]
    assert (old.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


def test_svg_is_the_same_for_the_same_input(tmp_path):
    from memtrace.render import plots
    from memtrace.tables.lab_truth import load_truth

    tt = load_truth(LAB / "recharge-6.12" / "truth.json")
    for name in ("a.svg", "b.svg"):
        plots.plot_diff(plots.truth_series(tt), plots.truth_series(tt), tmp_path / name)
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


_LAZY = """
import sys
from typer.testing import CliRunner
from memtrace.cli.app import _register, app
_register()
args = sys.argv[1:]
r = CliRunner().invoke(app, args)
assert r.exit_code == 0, r.output
print("matplotlib" in sys.modules)
"""


def test_matplotlib_is_imported_only_for_plot(tmp_path):
    args = ["report", "recharge", "--truth", str(LAB / "recharge-6.1" / "truth.json"), "--old", "/pod", "--new", "/pod/gen2", "--json"]
    for extra, loaded in (([], "False"), (["--plot", str(tmp_path / "r.png")], "True")):
        r = subprocess.run([sys.executable, "-c", _LAZY, *args, *extra], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1] == loaded


def test_diff_plot_draws_the_diffs_json_rows(tmp_path):
    """`memtrace diff --plot`: the memcg rows of the diff's own JSON (memory.current per step of
    the committed restart fixtures of both kernels), rows no rule watches left out."""
    from memtrace.diffing import diff_inputs
    from memtrace.render.plots import diff_series, plot_diff

    png = tmp_path / "d.png"
    r = subprocess.run([sys.executable, "-m", "memtrace", "diff", str(LAB / "restart-6.1"), str(LAB / "restart-6.12"),
                        "--json", "--plot", str(png)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and png.read_bytes().startswith(PNG), r.stderr
    rows = [x for x in json.loads(r.stdout)["rows"] if x["entity"] == "memcg" and x["metric"] == "memory_current_bytes"]
    watched = [x for x in rows if x["watched"]]
    assert {x["name"] for x in rows} - {x["name"] for x in watched} == {"/memtrace-settle"}
    left, right = plot_diff(*diff_series(diff_inputs(LAB / "restart-6.1", LAB / "restart-6.12").rows)[:2]).axes
    unit = _unit(left.get_ylabel())
    steps = [t.get_text() for t in left.get_xticklabels()]
    assert steps[0] == "start" and steps[-1] == "gen2-updated"
    for ax, side in ((left, "base"), (right, "new")):
        assert _gids(ax) == {f"{side}:{p}" for p in ("/pod", "/pod/gen1", "/pod/gen2")}
        for p in ("/pod", "/pod/gen1", "/pod/gen2"):
            want = {x["step"]: x[side] for x in watched if x["name"] == p}
            got = _bytes(_artist(ax, f"{side}:{p}").get_ydata(), unit)
            assert got == [want.get(s) for s in steps], (side, p)

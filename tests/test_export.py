"""`memtrace export` (docs/export.md), checked through an independent channel: the written file
is decoded with the perfetto package's own `Trace` proto, every counter series is rebuilt from
its packets alone, and the values at the lab's step markers are compared with the kernel's own
counters (truth.json's memory.current) and with `charges_by_step`, on the committed real
captures of the force scenario (fixtures/captures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from memtrace.analyses.charges import charges_by_step, step_markers
from memtrace.sources.trace import load_trace
from memtrace.tables.lab_truth import load_truth

from conftest import KERNELS

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "fixtures" / "captures"
TRACES = ROOT / "fixtures" / "traces"
LAB = ROOT / "fixtures" / "lab"

#: (capture, truth) pairs per kernel: the page_counter text excerpt and the trace-cmd recording
CASES = [pytest.param(f"force-{k}.page_counter.txt", f"force-{k}.truth.json", id=f"{k}-text") for k in KERNELS] + [
    pytest.param(f"force-{k}.trace.dat", f"force-{k}.trace.dat.truth.json", id=f"{k}-trace.dat") for k in KERNELS]


def _memtrace(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memtrace", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def _decode(path: Path):
    """The file through perfetto's own Trace message: descriptors by uuid, counter series per
    track uuid [(ts, value)] in file order, instants, slice begin/ends per track."""
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import CounterDescriptor, Trace, TrackEvent

    trace = Trace()
    trace.ParseFromString(path.read_bytes())
    desc, counters, instants, slices = {}, {}, [], []
    for p in trace.packet:
        assert p.trusted_packet_sequence_id == 1
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            assert d.uuid not in desc, "a track described twice"
            desc[d.uuid] = d
        elif p.HasField("track_event"):
            e = p.track_event
            assert e.track_uuid in desc, "an event before its track's descriptor"
            if e.type == TrackEvent.TYPE_COUNTER:
                assert desc[e.track_uuid].HasField("counter")
                counters.setdefault(e.track_uuid, []).append((p.timestamp, e.counter_value))
            elif e.type == TrackEvent.TYPE_INSTANT:
                instants.append((p.timestamp, desc[e.track_uuid].name, e.name,
                                 {a.name: (a.string_value if a.HasField("string_value") else a.int_value)
                                  for a in e.debug_annotations}))
            elif e.type in (TrackEvent.TYPE_SLICE_BEGIN, TrackEvent.TYPE_SLICE_END):
                slices.append((p.timestamp, e.track_uuid, e.type == TrackEvent.TYPE_SLICE_BEGIN, e.name))
            else:
                raise AssertionError(f"unexpected track event type {e.type}")
    for d in desc.values():
        if d.HasField("counter"):
            assert d.counter.unit == CounterDescriptor.UNIT_SIZE_BYTES
            assert d.counter.y_axis_share_key == "memtrace.memcg.bytes"
    return desc, counters, instants, slices


def _value_at(series, ts):
    """The counter's value at ``ts``: its last sample at or before it (file order breaks ties)."""
    v = None
    for t, x in series:
        if t <= ts:
            v = x
    return v


def _memcg_series(desc, counters):
    """track name's memcg path -> series."""
    out = {}
    for uuid, s in counters.items():
        name = desc[uuid].name
        path = name.split(":", 1)[0]
        out[path] = (name, sorted(s, key=lambda x: x[0]))  # stable: file order within a timestamp
    return out


@pytest.mark.parametrize("capture,truth", CASES)
def test_counters_equal_memory_current_at_every_step(tmp_path, capture, truth):
    dest = tmp_path / "t.pftrace"
    r = _memtrace("export", CAPTURES / capture, "--truth", CAPTURES / truth, "-o", dest, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    desc, counters, instants, slices = _decode(dest)
    assert summary["schema"] == "memtrace.export/1" and summary["output"] == str(dest)
    assert summary["tracks"] == len(desc)
    assert summary["counters"] == sum(len(s) for s in counters.values())
    assert summary["slices"] * 2 == len(slices)
    assert summary["instants"] + summary["map_instants"] == len(instants)

    events, _ = load_trace(str(CAPTURES / capture))
    tt = load_truth(CAPTURES / truth)
    marks = step_markers(events)
    by_step = charges_by_step(events, tt)
    series = _memcg_series(desc, counters)
    # the test reads each value at a marker's timestamp: no counter sample may share it
    mts = set(marks["ts_ns"])
    assert not any(t in mts for s in counters.values() for t, _ in s)

    raw = json.loads((CAPTURES / truth).read_text())
    checked = exact = 0
    for cg_path in sorted({p for st in raw["steps"] for p in st["cgroups"]}):
        if cg_path == "/":
            # the root has no memory.current: its track is the change since capture start
            assert series["/"][0] == "/: change since capture start"
            continue
        name, s = series[cg_path]
        assert name == f"{cg_path}: charged bytes"
        cum_residual = 0
        for st in raw["steps"]:
            cur = st["cgroups"].get(cg_path, {}).get("memory.current")
            if cur is None:
                continue
            (ts,) = marks.loc[marks["step_name"].eq(st["name"]), "ts_ns"]
            (res,) = by_step.loc[(by_step["step_name"] == st["name"]) & (by_step["path"] == cg_path), "residual_bytes"]
            if not pd.isna(res):
                cum_residual += int(res)
            got = _value_at(s, ts)
            checked += 1
            if cum_residual == 0:
                # where charges.py reconciles exactly, the track at the marker is memory.current
                assert got == cur, (cg_path, st["name"], got, cur)
                exact += 1
            else:
                # elsewhere it is off by exactly the residuals charges_by_step reports
                assert got - cur == cum_residual, (cg_path, st["name"], got, cur, cum_residual)
    assert checked >= 15 and exact >= 14
    # /pod/genf at the force step: above its memory.max by the forced pages, in the file
    force = next(st for st in raw["steps"] if st["name"] == "force-charged")["cgroups"]["/pod/genf"]
    (ts,) = marks.loc[marks["step_name"].eq("force-charged"), "ts_ns"]
    assert _value_at(series["/pod/genf"][1], ts) == force["memory.current"] > force["memory.max"]


@pytest.mark.parametrize("capture,truth", CASES)
def test_without_truth_steps_move_by_net_bytes(tmp_path, capture, truth):
    """Without --truth the tracks start at 0; between two markers each moves by exactly the
    step's net_bytes of charges_by_step (the same movements, summed another way)."""
    dest = tmp_path / "t.pftrace"
    r = _memtrace("export", CAPTURES / capture, "-o", dest)
    assert r.returncode == 0, r.stderr
    assert "change since capture start" in r.stderr
    desc, counters, _, _ = _decode(dest)
    events, _ = load_trace(str(CAPTURES / capture))
    by_step = charges_by_step(events, load_truth(CAPTURES / truth))
    marks = step_markers(events)
    paths = set(by_step["path"].dropna())
    n = 0
    for uuid, d in desc.items():
        if not d.HasField("counter"):
            continue
        assert d.name.endswith(": change since capture start"), d.name
        who = d.name.split(":", 1)[0]
        if who.endswith(" (own counter only)"):
            # no path in the capture (the text excerpts carry no cgroup events): the track has
            # the movements on its own counter, which are the hierarchical ones for a leaf only
            cid = int(who.split()[1])
            path = str(by_step.loc[by_step["cgroup_id"].astype("int64").eq(cid), "path"].iloc[0])
            if any(p.startswith(path.rstrip("/") + "/") for p in paths):
                continue
        else:
            path = who
        s = sorted(counters[uuid], key=lambda x: x[0])
        assert s[0] == (int(events["ts_ns"].min()), 0)  # starts at 0 at the capture's start
        prev = 0
        for step, ts in zip(marks["step"], marks["ts_ns"]):
            v = _value_at(s, ts)
            (net,) = by_step.loc[by_step["step"].eq(step) & by_step["path"].eq(path), "net_bytes"]
            assert v - prev == int(net), (path, step)
            prev = v
            n += 1
    assert n >= 10


@pytest.mark.parametrize("capture,truth", CASES)
def test_instants_and_slices(tmp_path, capture, truth):
    dest = tmp_path / "t.pftrace"
    assert _memtrace("export", CAPTURES / capture, "--truth", CAPTURES / truth, "-o", dest).returncode == 0
    desc, _, instants, slices = _decode(dest)
    raw = json.loads((CAPTURES / truth).read_text())
    lim = next(st for st in raw["steps"] if st["name"] == "limit-set")["cgroups"]["/pod/genf"]
    now = next(st for st in raw["steps"] if st["name"] == "force-charged")["cgroups"]["/pod/genf"]
    forced = [i for i in instants if i[2] == "forced charge"]
    # one forcing call per memory.events max the kernel raised (6.0+), each with its annotations
    assert len(forced) == now["memory.events"]["max"] - lim["memory.events"]["max"] > 0
    assert sum(i[3]["pages"] for i in forced) * 4096 == now["memory.current"] - now["memory.max"]
    assert {(i[1].split(" (")[0], i[3]["memcg"], i[3]["comm"]) for i in forced} == {("forced charges", "/pod/genf", "mapctl")}
    assert all(i[3]["pid"] > 0 and "map_id" not in i[3] for i in forced)  # force_charge carries no map id
    # steps: slice k ends at marker k, the next begins there; names are the truth's
    events, _ = load_trace(str(CAPTURES / capture))
    marks = step_markers(events)
    begins = [(t, n) for t, _, b, n in slices if b]
    ends = [t for t, _, b, _ in slices if not b]
    assert [n for _, n in begins] == [f"{st['index']} {st['name']}" for st in raw["steps"]]
    assert ends == list(marks["ts_ns"]) and [t for t, _ in begins[1:]] == ends[:-1]
    assert begins[0][0] == int(events["ts_ns"].min())
    assert {desc[u].name.split(" (")[0] for _, u, _, _ in slices} == {"steps"}
    # no map ids in these captures: no map tracks, and the note says so
    assert not any(d.name.startswith("map ") for d in desc.values())


def test_map_tracks_from_events_that_carry_a_map_id(tmp_path):
    """The committed captures have no event with a map id; the writer's map tracks are checked
    on the 6.12 excerpt with the map id of the lab's force scenario written into its force
    rows, through the library (the CLI reads files)."""
    import pandas as pd

    from memtrace.analyses import timeline as tl
    from memtrace.render.perfetto_export import write_trace

    events, _ = load_trace(str(CAPTURES / "force-6.12.page_counter.txt"))
    forced = events["event"].astype(str).str.endswith("force_charge")
    events["map_id"] = pd.array([7 if f else None for f in forced], dtype="UInt32")
    series, tracks = tl.memcg_counters(events)
    counts = write_trace(tmp_path / "m.pftrace", series, tracks, tl.charge_instants(events), tl.step_slices(events),
                         tl.map_events(events), tl.capture_span(events)[0])
    desc, _, instants, _ = _decode(tmp_path / "m.pftrace")
    assert counts["maps"] == 1 and [d.name for d in desc.values() if d.name.startswith("map ")] == ["map 7"]
    on_map = [i for i in instants if i[1] == "map 7"]
    assert len(on_map) == counts["map_instants"] == int(forced.sum())
    assert all(i[3]["map_id"] == 7 for i in instants if i[2] == "forced charge")


# -- atomic writes and bad input -------------------------------------------------------------


def test_a_failed_export_leaves_the_old_file(tmp_path, monkeypatch):
    """The writer fails after part of the trace is on disk: the file already there is
    untouched and no temporary file is left."""
    from perfetto.trace_builder import proto_builder

    from memtrace.analyses import timeline as tl
    from memtrace.render import perfetto_export as pe

    dest = tmp_path / "t.pftrace"
    dest.write_bytes(b"the old trace")
    events, _ = load_trace(str(CAPTURES / "force-6.1.page_counter.txt"))
    series, tracks = tl.memcg_counters(events)
    monkeypatch.setattr(pe, "CHUNK", 50)
    calls = {"n": 0}
    real = proto_builder.TraceProtoBuilder.serialize

    def failing(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of the write
        return real(self)

    monkeypatch.setattr(proto_builder.TraceProtoBuilder, "serialize", failing)
    with pytest.raises(KeyboardInterrupt):
        pe.write_trace(dest, series, tracks, tl.charge_instants(events), tl.step_slices(events), tl.map_events(events),
                       0)
    assert calls["n"] == 3  # two chunks had been written to the temporary file
    assert dest.read_bytes() == b"the old trace"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.pftrace"]


def test_missing_events_is_one_line_and_keeps_the_old_file(tmp_path):
    dest = tmp_path / "t.pftrace"
    dest.write_bytes(b"old")
    r = _memtrace("export", TRACES / "restart-6.1.excerpt.txt", "-o", dest)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
    assert "trace lacks pc_try_charge, pc_try_charge_ret" in r.stderr and "memtrace probes" in r.stderr
    assert dest.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["t.pftrace"]


@pytest.mark.parametrize("case", ["no-output", "no-dir", "is-dir", "other-run", "no-capture"])
def test_bad_input_exits_2_in_one_line(tmp_path, case):
    cap = CAPTURES / "force-6.12.page_counter.txt"
    args = {
        "no-output": [cap],
        "no-dir": [cap, "-o", tmp_path / "nope" / "t.pftrace"],
        "is-dir": [cap, "-o", tmp_path],
        "other-run": [cap, "--truth", LAB / "ghost-6.12" / "truth.json", "-o", tmp_path / "t.pftrace"],
        "no-capture": [tmp_path / "missing.txt", "-o", tmp_path / "t.pftrace"],
    }[case]
    before = sorted(os.listdir(tmp_path))
    r = _memtrace("export", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("memtrace: error: "), r.stderr
    if case == "no-output":
        assert r.stderr.strip() == "memtrace: error: missing option --output/-o FILE.pftrace"
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("kernel", KERNELS)
def test_forced_rows_taken_from_the_movements_equal_force_reports(kernel):
    """memcg_counters hands charge_instants the forced rows it already has: they must be
    force.forced_charges' own."""
    from memtrace.analyses import timeline as tl
    from memtrace.analyses.force import forced_charges

    events, _ = load_trace(str(CAPTURES / f"force-{kernel}.trace.dat"))
    _, tracks = tl.memcg_counters(events)
    pd.testing.assert_frame_equal(tracks.attrs["forced"], forced_charges(events))
    pd.testing.assert_frame_equal(tl.charge_instants(events, {}, tracks.attrs["forced"]), tl.charge_instants(events))


# -- the wire encoder against the object-built packets -----------------------------------------


def _export_inputs(capture: str, truth: str | None, map_ids: bool = False):
    from memtrace.analyses import timeline as tl

    events, _ = load_trace(str(CAPTURES / capture))
    if map_ids:  # as in test_map_tracks_from_events_that_carry_a_map_id
        forced = events["event"].astype(str).str.endswith("force_charge")
        events["map_id"] = pd.array([7 if f else None for f in forced], dtype="UInt32")
    tt = load_truth(CAPTURES / truth) if truth else None
    series, tracks = tl.memcg_counters(events, tt)
    path_of = {int(c): str(p) for c, p in zip(tracks["cgroup_id"], tracks["path"]) if not pd.isna(p)}
    return (series, tracks, tl.charge_instants(events, path_of, tracks.attrs.get("forced")), tl.step_slices(events),
            tl.map_events(events), tl.capture_span(events)[0])


@pytest.mark.parametrize("chunk", [None, 7], ids=["one-chunk", "chunks-of-7"])
@pytest.mark.parametrize("truth,map_ids", [("force-6.12.truth.json", False), (None, True)], ids=["truth", "map-ids"])
def test_wire_encoder_writes_the_packets_the_objects_build(tmp_path, monkeypatch, truth, map_ids, chunk):
    """The counter values, instants and slices encoded as wire bytes with array operations
    (the default) decode, packet for packet, to the TracePackets the object-built path writes,
    on the real 6.12 force capture: with its truth (every counter, forced instant and step)
    and without it, with map ids on the force rows (the map instants and int annotations).
    With chunks of 7 packets every kind of packet crosses a chunk boundary (the object path
    once wrote the packet that filled a chunk before its fields were set: an empty packet)."""
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace

    from memtrace.render import perfetto_export as pe

    if chunk:
        monkeypatch.setattr(pe, "CHUNK", chunk)
    args = _export_inputs("force-6.12.page_counter.txt", truth, map_ids)
    got = {}
    for enc in ("wire", "objects"):
        counts = pe.write_trace(tmp_path / f"{enc}.pftrace", *args, encoder=enc)
        t = Trace()
        t.ParseFromString((tmp_path / f"{enc}.pftrace").read_bytes())
        got[enc] = (counts, list(t.packet))
    (cw, pw), (co, po) = got["wire"], got["objects"]
    assert cw == co
    assert len(pw) == len(po) == cw["tracks"] + cw["counters"] + cw["instants"] + 2 * cw["slices"] + cw["map_instants"]
    assert cw["counters"] > 200 and cw["instants"] == 53 and cw["slices"] == 5
    assert cw["map_instants"] == (53 if map_ids else 0)
    for i, (a, b) in enumerate(zip(pw, po)):
        assert a == b, (i, a, b)
    assert pw[0].sequence_flags and not any(p.sequence_flags for p in pw[1:])
    assert all(p.HasField("track_event") or p.HasField("track_descriptor") for p in pw)


def test_a_failed_wire_encoding_leaves_the_old_file(tmp_path, monkeypatch):
    """As test_a_failed_export_leaves_the_old_file, failing in the wire encoder after chunks of
    encoded packets were written."""
    from memtrace.render import perfetto_export as pe

    dest = tmp_path / "t.pftrace"
    dest.write_bytes(b"the old trace")
    args = _export_inputs("force-6.1.page_counter.txt", None)
    monkeypatch.setattr(pe, "CHUNK", 50)
    calls = {"n": 0, "written": 0}
    real_bytes, real_flush = pe._Rows.tobytes, pe._Writer.flush

    def failing(self):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_bytes(self)

    def flush(self):
        calls["written"] += 1
        return real_flush(self)

    monkeypatch.setattr(pe._Rows, "tobytes", failing)
    monkeypatch.setattr(pe._Writer, "flush", flush)
    with pytest.raises(KeyboardInterrupt):
        pe.write_trace(dest, *args)
    assert calls["written"] >= 2  # chunks had been written to the temporary file
    assert dest.read_bytes() == b"the old trace"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.pftrace"]

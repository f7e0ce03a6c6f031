"""Perfetto protobuf → event table: perfetto's own diff-test inputs, and real lab events through
the perfetto package's encoder.

Perfetto's inputs are read from the shared peer folder, never committed here: MEMTRACE_PEER_DIR, if
set, replaces `<repo>/../shared/peer`; files live under `perfetto/<path in the perfetto repo>`.
"""

from __future__ import annotations

import ast
import csv
import io
import os
import re
from pathlib import Path

import pytest

from memtrace.errors import InputError
from memtrace.sources.trace import load_trace
from memtrace.sources.trace.perfetto import parse_perfetto
from memtrace.tables.events import validate_events
from memtrace.testing.perfetto import events_to_trace

REPO = Path(__file__).resolve().parent.parent
DIFF = "test/trace_processor/diff_tests"
EX61 = REPO / "fixtures" / "traces" / "restart-6.1.excerpt.txt"


def peer_file(rel: str) -> Path:
    base = Path(os.environ.get("MEMTRACE_PEER_DIR") or (REPO / ".." / "shared" / "peer"))
    p = base / "perfetto" / rel
    if not p.is_file():
        pytest.skip(f"peer file missing: shared/peer/perfetto/{rel} (looked at {p})")
    return p


def blueprint(tests_py: Path, test_name: str) -> dict:
    """{'trace': (kind, text), 'out': (kind, text)} of one DiffTestBlueprint (TextProto / Path / Csv)."""
    tree = ast.parse(tests_py.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == test_name:
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "DiffTestBlueprint":
                    return {
                        kw.arg: (kw.value.func.id, kw.value.args[0].value)
                        for kw in call.keywords
                        if isinstance(kw.value, ast.Call) and kw.value.args and isinstance(kw.value.args[0], ast.Constant)
                    }
    raise AssertionError(f"{test_name} not in {tests_py}")


def blueprints_using(tests_py: Path, path_name: str):
    tree = ast.parse(tests_py.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(isinstance(c, ast.Constant) and c.value == path_name for c in ast.walk(node)):
            yield blueprint(tests_py, node.name)


def csv_rows(text: str) -> list[dict]:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def textproto_trace(text: str) -> bytes:
    from google.protobuf import text_format
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2

    t = perfetto_trace_pb2.Trace()
    text_format.Parse(text, t)
    return t.SerializeToString()


def _blueprint_trace(rel_tests: str, test_name: str):
    tests = peer_file(rel_tests)
    bp = blueprint(tests, test_name)
    assert bp["trace"][0] == "TextProto"
    return parse_perfetto(textproto_trace(bp["trace"][1])), bp, tests


# --- perfetto's diff-test inputs -----------------------------------------------------------


@pytest.mark.parametrize("name,out", [
    ("test_cgroup_attach_task_pre_s_print_systrace", "cgroup_attach_task_pre_s_print_systrace.out"),
    ("test_cgroup_attach_task_post_s_print_systrace", "cgroup_attach_task_post_s_print_systrace.out"),
])
def test_peer_cgroup_attach_task(name, out):
    (df, st), bp, tests = _blueprint_trace(f"{DIFF}/parser/parsing/tests.py", name)
    expected = peer_file(f"{DIFF}/parser/parsing/{out}").read_text()
    line = csv_rows(expected)[0]["to_ftrace(id)"]
    m = re.search(r"\[(\d+)\] \S+ ([\d.]+): (\w+): (.*)$", line)
    kv = dict(re.findall(r"(\w+)=(\S+)", m.group(4)))
    assert len(df) == 1 and validate_events(df) == []
    r = df.iloc[0]
    assert (r.cpu, r.event) == (int(m.group(1)), f"cgroup:{m.group(3)}")
    assert r.ts_ns // 1000 == int(m.group(2).replace(".", ""))  # .out prints microseconds
    assert r.cgroup_id == int(kv["dst_id"])
    assert r.cgroup_path == kv.get("dst_path", kv.get("cgroup"))
    assert f"pid={kv['pid']}" in r.args and f"comm={kv['comm']}" in r.args


def test_peer_kprobes():
    for name in ("test_kprobes_slice", "test_kprobes_instant"):
        (df, st), bp, _ = _blueprint_trace(f"{DIFF}/parser/ftrace/kprobes_tests.py", name)
        rows = csv_rows(bp["out"][1])
        assert df["event"].astype(str).str.endswith(":" + rows[0]["slice_name"]).all()
        assert df["ts_ns"].iloc[0] == int(rows[0]["ts"])
        assert df["ts_ns"].iloc[-1] - df["ts_ns"].iloc[0] == int(rows[0]["slice_dur"])
        assert df["args"].str.startswith("type=KPROBE_TYPE_").all()


def test_peer_task_newtask_names():
    (df, st), bp, _ = _blueprint_trace(f"{DIFF}/parser/parsing/tests.py", "test_task_newtask_waker_utid")
    text = bp["trace"][1]
    assert len(df) == text.count("task_newtask {")
    assert (df["event"] == "task:task_newtask").all()
    for pid, comm in re.findall(r'task_newtask \{\s*pid: (\d+)\s*comm: "([^"]+)"', text):
        assert f"pid={pid}" in " ".join(df["args"]) and f"comm={comm}" in " ".join(df["args"])
    # the child's name is known from task_newtask: the parent (pid 518 in the events) is not
    assert df["comm"].isna().all()


def test_peer_lost_events_flag():
    (df, st), bp, _ = _blueprint_trace(f"{DIFF}/tables/tests_trace_diagnostics.py", "test_tiny_buffer_with_data_loss")
    assert st.lost_event_flags == bp["trace"][1].count("lost_events: true") == 1
    assert len(df) == 0 and validate_events(df) == []


# --- real lab events through the perfetto package's encoder ---------------------------------


def _text_frame():
    df, _ = load_trace(str(EX61))
    return df.sort_values("ts_ns", kind="stable").reset_index(drop=True)


COMPARED = ["ts_ns", "cpu", "pid", "comm", "event", "bytes", "bytes_req", "ptr", "pfn", "order", "pages",
            "cgroup_id", "cgroup_path", "marker"]


@pytest.mark.parametrize("compress", [False, True])
def test_lab_events_round_trip(compress):
    text = _text_frame()
    df, st = parse_perfetto(events_to_trace(text, bundle_size=64, compress=compress))
    assert validate_events(df) == [] and st.malformed == 0 and not st.truncated
    for c in COMPARED:
        assert text[c].astype(object).where(text[c].notna(), None).tolist() == \
            df[c].astype(object).where(df[c].notna(), None).tolist(), c
    assert st.packets_read == (2 if compress else 1) + (len(text[text.cpu == 0]) + 63) // 64 + (len(text[text.cpu == 1]) + 63) // 64


def test_truncated_protobuf_keeps_what_decodes(tmp_path):
    raw = events_to_trace(_text_frame(), bundle_size=64)
    cut = raw[: len(raw) * 2 // 3]
    p = tmp_path / "cut.pftrace"
    p.write_bytes(cut)
    df, st = load_trace(str(p))
    assert st.truncated and st.malformed == 1 and 0 < len(df) < len(_text_frame())
    p.write_bytes(raw[:3])
    with pytest.raises(InputError, match="no packet decodes"):
        load_trace(str(p))


@pytest.mark.parametrize("tail", [bytes([2 << 3 | 1]) + b"\0" * 7, bytes([2 << 3 | 5]) + b"\0" * 3,
                                  bytes([2 << 3 | 0, 0x80]), bytes([0x8a]), bytes([1 << 3 | 2, 0x85])],
                         ids=["fixed64", "fixed32", "varint-value", "varint-key", "varint-length"])
def test_fixed_width_field_cut_at_the_end_is_damage(tmp_path, tail):
    """A Trace whose last field misses its last byte (a fixed64/fixed32 value, or a varint
    key, value or length still asking for more) is cut, like a length-delimited one: every
    packet before it is kept, and the cut is reported."""
    raw = events_to_trace(_text_frame(), bundle_size=64)
    p = tmp_path / "cut.pftrace"
    p.write_bytes(raw + tail)
    df, st = load_trace(str(p))
    assert st.truncated and st.malformed == 1 and len(df) == len(_text_frame())
    assert any(f"cut inside a packet at byte {len(raw)} of {len(raw) + len(tail)}" in w for w in st.warnings)
    if tail[0] & 7 in (1, 5):
        p.write_bytes(raw + tail + b"\0")  # whole: an unknown top-level field, skipped
        df, st = load_trace(str(p))
        assert not st.truncated and st.malformed == 0 and len(df) == len(_text_frame())

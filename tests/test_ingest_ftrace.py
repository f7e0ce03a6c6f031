"""ftrace text → event table: real lines in, expected rows out (perfetto diff-test style)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from test_ingest_perfetto import DIFF, blueprint, blueprints_using, csv_rows, peer_file
from memtrace.errors import InputError
from memtrace.sources.trace import load_trace
from memtrace.sources.trace.ftrace_text import parse_ftrace_text
from memtrace.tables.events import COLUMN_NAMES, check_events, events_markdown, validate_events

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "traces"
EX61 = FIX / "restart-6.1.excerpt.txt"
EX612 = FIX / "restart-6.12.excerpt.txt"


def _rows(text: str) -> pd.DataFrame:
    df, _ = parse_ftrace_text(text.encode())
    return df


def _pick(df, cols):
    return [tuple(None if pd.isna(v) else v for v in r) for r in df[cols].astype(object).itertuples(index=False)]


# --- diff tests: lines copied from fixtures/traces/restart-6.1.excerpt.txt ----------------------

KMEM = """\
            init-1       [001] .....     2.238802: kmem_cache_free: call_site=__fput+0x100/0x250 ptr=ffff8a0a012e0060 name=lsm_file_cache
"""


def test_kmem_cache_free_line():
    df = _rows(KMEM)
    assert _pick(df, ["ts_ns", "cpu", "pid", "comm", "event", "ptr", "call_site", "bytes", "args"]) == [
        (2238802000, 1, 1, "init", "kmem:kmem_cache_free", 0xFFFF8A0A012E0060, "__fput+0x100/0x250", None, "name=lsm_file_cache"),
    ]


def test_fixture_lines_against_their_text():
    """Every kmalloc / kmem_cache_alloc / mm_page_alloc / cgroup line of the excerpt, re-read with a
    plain regex here, matches its row."""
    df, st = load_trace(str(EX61))
    text = EX61.read_text().splitlines()
    ev_lines = [ln for ln in text if ln and not ln.startswith("#")]
    assert st.events_parsed == len(ev_lines) == len(df)
    df = df.reset_index(drop=True)
    for i, ln in enumerate(ev_lines):
        m = re.match(r"\s*(.*)-(\d+)\s+\[(\d+)\]\s+\S+\s+(\d+)\.(\d+): (\w+): (.*)$", ln)
        comm, pid, cpu, sec, usec, name, args = m.groups()
        kv = dict(re.findall(r"(\w+)=(\S+)", args))
        r = df.iloc[i]
        assert r.ts_ns == int(sec) * 10**9 + int(usec) * 1000
        assert (r.comm, r.pid, r.cpu) == (comm, int(pid), int(cpu))
        if name in ("kmalloc", "kmem_cache_alloc"):
            assert (r.bytes, r.bytes_req, r.ptr) == (int(kv["bytes_alloc"]), int(kv["bytes_req"]), int(kv["ptr"], 16))
            assert (r.gfp_flags, r.call_site, bool(r.accounted)) == (kv["gfp_flags"], kv["call_site"], kv["accounted"] == "true")
        elif name == "mm_page_alloc":
            assert (r.pfn, r.order, r.pages, r.bytes) == (int(kv["pfn"], 16), int(kv["order"]), 1 << int(kv["order"]), 4096 << int(kv["order"]))
        elif name == "percpu_alloc_percpu":
            assert (r.bytes, r.bytes_req) == (int(kv["bytes_alloc"]), int(kv["size"]))
        elif name in ("cgroup_mkdir", "cgroup_rmdir", "cgroup_release"):
            assert (r.cgroup_id, r.cgroup_path) == (int(kv["id"]), kv["path"])
        elif name == "tracing_mark_write":
            assert (r.event, r.marker) == ("ftrace:print", args)


def test_fixture_counts_match_grep():
    for path in (EX61, EX612):
        df, st = load_trace(str(path))
        text = path.read_text()
        for name in set(re.findall(r"\] \S+\s+\d+\.\d+: (\w+):", text)):
            n = len(re.findall(rf"\d: {name}: ", text))
            got = int((df["event"].astype(str).str.rsplit(":", n=1).str[-1] == name).sum())
            if name == "tracing_mark_write":
                got = int((df["event"] == "ftrace:print").sum())
            assert got == n, name
        assert st.unknown_events == 0 and st.malformed == 0
        assert validate_events(df) == []


def test_612_vmalloc_and_rstat_lines():
    lines = [ln for ln in EX612.read_text().splitlines() if " alloc_vmap_area: " in ln or " cgroup_rstat_locked: " in ln]
    df = _rows("\n".join(lines) + "\n")
    for ln, r in zip(lines, df.itertuples()):
        if " alloc_vmap_area: " in ln:
            va = int(re.search(r"va_start: (\d+)", ln).group(1))
            size = int(re.search(r" size=(\d+)", ln).group(1))
            assert (r.event, r.ptr, r.bytes) == ("vmalloc:alloc_vmap_area", va, size)
        else:
            cg = int(re.search(r" id=(\d+)", ln).group(1))
            assert (r.event, r.cgroup_id) == ("cgroup:cgroup_rstat_locked", cg)
            assert "lock contended:" in r.args


def test_schema_is_one_table():
    df, _ = load_trace(str(EX61))
    assert tuple(df.columns) == COLUMN_NAMES
    check_events(df)
    assert not any(str(df[c].dtype).startswith("float") for c in df.columns)
    md = events_markdown()
    assert all(f"`{c}`" in md for c in COLUMN_NAMES)


# --- bad input -----------------------------------------------------------------------------


def _real_lines(k=20):
    return [ln for ln in EX61.read_text().splitlines() if ln and not ln.startswith("#")][:k]


def test_garbage_lines_are_counted_not_fatal():
    lines = _real_lines()
    mixed = lines[:5] + ["this is not a trace line", "\x00\x01 garbage ]: x:"] + lines[5:]
    df, st = parse_ftrace_text(("\n".join(mixed) + "\n").encode())
    assert len(df) == len(lines) and st.malformed == 2


def test_partial_last_line_is_dropped_and_flagged():
    lines = _real_lines()
    text = "\n".join(lines) + "\n" + lines[0][: len(lines[0]) // 2]
    df, st = parse_ftrace_text(text.encode())
    assert len(df) == len(lines) and st.truncated and st.malformed == 1


def test_empty_and_non_trace(tmp_path):
    e = tmp_path / "empty.txt"
    e.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_trace(str(e))
    g = tmp_path / "garbage.txt"
    g.write_text("hello\nworld\n")
    with pytest.raises(InputError, match="not an ftrace"):
        load_trace(str(g))


# --- perfetto's .systrace diff-test inputs -------------------------------------------------


def test_peer_sched_blocked_systrace():
    trace = peer_file(f"{DIFF}/parser/parsing/sched_blocked_systrace.systrace")
    tests = peer_file(f"{DIFF}/parser/parsing/tests.py")
    df, st = load_trace(str(trace))
    lines = [ln for ln in trace.read_text().splitlines() if ln.strip()]
    assert len(df) == len(lines) and st.malformed == 0
    # expected D-state slices start at the switch-out timestamps perfetto reports
    bp = [b for b in blueprints_using(tests, "sched_blocked_systrace.systrace")]
    rows = csv_rows(bp[0]["out"][1])
    switch_ts = set(df.loc[df["event"] == "sched:sched_switch", "ts_ns"])
    for r in rows:
        assert int(r["ts"]) in switch_ts


def test_peer_unknown_thread_name_systrace():
    trace = peer_file(f"{DIFF}/parser/process_tracking/unknown_thread_name.systrace")
    tests = peer_file(f"{DIFF}/parser/process_tracking/tests.py")
    df, _ = load_trace(str(trace))
    rows = csv_rows(next(blueprints_using(tests, "unknown_thread_name.systrace"))["out"][1])
    tid = int(rows[0]["tid"])
    # the thread's own line says "<...>": the name perfetto reports comes from sched_switch next_comm
    sw = df[df["event"] == "sched:sched_switch"]
    assert f"next_comm={rows[0]['tname']} next_pid={tid}" in sw["args"].iloc[0]
    assert list(df.loc[df["pid"] == tid, "comm"]) == ["<...>"]


def test_peer_bad_print_systrace():
    trace = peer_file(f"{DIFF}/parser/atrace/bad_print.systrace")
    tests = peer_file(f"{DIFF}/parser/atrace/tests_error_handling.py")
    df, st = load_trace(str(trace))
    rows = csv_rows(blueprint(tests, "test_bad_print_systrace_list_slices")["out"][1])
    marks = df[df["event"] == "ftrace:print"].reset_index(drop=True)
    begin = marks[marks["marker"].str.startswith("B|")].iloc[0]
    end = marks[marks["marker"].str.startswith("E|")].iloc[0]
    assert begin.ts_ns == int(rows[0]["ts"])
    assert end.ts_ns - begin.ts_ns == int(rows[0]["dur"])
    assert begin.marker.split("|")[2] == rows[0]["name"]
    # the two continuation lines are not events: counted, dropped
    assert st.malformed == 2

"""Bad input never gives a traceback: an event that cannot be represented is counted as malformed
(exit 0, with a warning naming the file), a field value that does not fit its column is left null
and counted (the event kept), a file that cannot be decoded is one `memtrace: error: FILE: ...`
line (exit 2). Fast and reference paths agree on all of it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from memtrace.errors import InputError
from memtrace.sources.trace import ftrace_text as ft
from memtrace.sources.trace import load_trace
from memtrace.sources.trace.perfetto import parse_perfetto
from memtrace.testing.ftrace_reference import parse_ftrace_text_reference
from memtrace.testing.perfetto import events_to_trace, parse_perfetto_reference

pb2 = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")

REPO = Path(__file__).resolve().parent.parent
EXCERPT = REPO / "fixtures" / "traces" / "restart-6.1.excerpt.txt"


def ingest(path: Path):
    """`memtrace ingest PATH --json`: (exit code, summary or None, stderr); never a traceback."""
    env = {k: v for k, v in os.environ.items() if k != "MEMTRACE_DEBUG"}
    p = subprocess.run([sys.executable, "-m", "memtrace", "ingest", str(path), "--json"],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert "Traceback" not in p.stderr, p.stderr
    if p.returncode == 2:
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"memtrace: error: {path}: "), p.stderr
        return 2, None, p.stderr
    assert p.returncode == 0, p.stderr
    return 0, json.loads(p.stdout), p.stderr


def same(parse, ref, raw):
    """Both paths give the same frame and stats, or both raise InputError; the result or None."""
    out = []
    for f in (parse, ref):
        try:
            out.append(f(raw))
        except InputError:  # anything else is a bug, and fails the test
            out.append(None)
    a, b = out
    assert (a is None) == (b is None)
    if a is None:
        return None
    pd.testing.assert_frame_equal(a[0], b[0], check_exact=True)
    assert a[1].to_dict() == b[1].to_dict()
    return a


def same_perfetto(raw):
    return same(parse_perfetto, parse_perfetto_reference, raw)


def same_text(raw, chunk_bytes=1 << 30):
    return same(ft.parse_ftrace_text, lambda d: parse_ftrace_text_reference(d, chunk_bytes=chunk_bytes), raw)


# --- perfetto ------------------------------------------------------------------------------------


def _repro() -> bytes:
    t = pb2.Trace()
    e = t.packet.add().ftrace_events.event.add()
    e.timestamp, e.pid = 1000, 3000000000
    e.kmalloc.bytes_alloc, e.kmalloc.ptr = 64, 1
    e2 = t.packet.add().ftrace_events.event.add()
    e2.timestamp, e2.pid = 2000, 5
    e2.print.buf = "ok\n"
    return t.SerializeToString()


def test_perfetto_pid_over_int32(tmp_path):
    f = tmp_path / "bigpid.pftrace"
    f.write_bytes(_repro())
    rc, s, err = ingest(f)
    assert rc == 0
    assert s["ingest"]["malformed"] == 1
    assert [e["event"] for e in s["events"]] == ["ftrace:print"]
    assert f"memtrace: warning: {f}: 1 event(s) dropped as malformed" in err
    same_perfetto(f.read_bytes())


def test_perfetto_print_not_utf8(tmp_path):
    f = tmp_path / "badutf8.pftrace"
    f.write_bytes(_repro().replace(b"ok\n", b"\xff\xfe\n"))
    rc, s, err = ingest(f)
    assert rc == 0
    assert s["ingest"]["malformed"] == 1  # the pid event; the print is kept
    assert [e["event"] for e in s["events"]] == ["ftrace:print"]
    assert "not UTF-8" in err
    df, _ = same_perfetto(f.read_bytes())
    assert df["marker"].tolist() == ["\ufffd\ufffd"]


def _bundles(extra) -> bytes:
    """Three bundles of plain kmalloc events (the fast path's own), `extra(i, bundle)` adding to each."""
    t = pb2.Trace()
    th = t.packet.add().process_tree.threads.add()
    th.tid, th.name = 5, "w"
    for bi in range(3):
        bd = t.packet.add().ftrace_events
        bd.cpu = bi
        for i in range(6):
            e = bd.event.add()
            e.timestamp, e.pid = 10000 - 100 * i - bi, 5  # out of order: the frame is sorted
            e.kmalloc.bytes_alloc, e.kmalloc.ptr, e.kmalloc.gfp_flags = 64 + i, 1000 + i, 0x400000
        extra(bi, bd)
    return t.SerializeToString()


def _generic(bd, ts, name, **fields):
    e = bd.event.add()
    e.timestamp, e.pid = ts, 5
    e.generic.event_name = name
    for k, (kind, v) in fields.items():
        f = e.generic.field.add()
        f.name = k
        setattr(f, kind, v)


def _x_generic(bi, bd):
    if bi == 1:
        _generic(bd, 50, "percpu_alloc_percpu", size=("uint_value", 1 << 63))  # bytes_req: Int64
        _generic(bd, 51, "percpu_alloc_percpu", size=("uint_value", 12), map_id=("int_value", -1))  # UInt32
        _generic(bd, 52, "foo", order=("int_value", 1 << 40))  # Int32
        _generic(bd, 53, "percpu_alloc_percpu", size=("uint_value", (1 << 63) - 1), ptr=("int_value", -1))  # fit


def _x_bytes(bi, bd):
    if bi == 2:
        e = bd.event.add()
        e.timestamp, e.pid = 7, 5
        e.kmalloc.bytes_alloc = 1 << 63


def _x_order(bi, bd):
    if bi == 0:
        for ts, order in ((7, 1 << 31), (8, 100), (9, 3)):
            e = bd.event.add()
            e.timestamp, e.pid = ts, 5
            e.mm_page_alloc.order = order


def _x_ts(bi, bd):
    if bi == 1:
        e = bd.event.add()
        e.timestamp, e.pid = 1 << 63, 5
        e.kfree.ptr = 3


def _x_cpu(bi, bd):
    if bi == 1:
        bd.cpu = 1 << 31


@pytest.mark.parametrize("extra, dropped, nulled",
                         [(_x_generic, 0, 3), (_x_bytes, 0, 1), (_x_order, 0, 1), (_x_ts, 1, 0), (_x_cpu, 6, 0)])
def test_perfetto_numbers_that_do_not_fit(tmp_path, extra, dropped, nulled):
    """An event whose ts, pid or cpu does not fit is dropped as malformed (it has no place in
    time); a field value that does not fit its column is left null and the event kept, as the
    text formats do. Both are counted and reported."""
    raw = _bundles(extra)
    df, st = same_perfetto(raw)
    assert (st.malformed, st.values_out_of_range) == (dropped, nulled)
    assert any("dropped as malformed" in w for w in st.warnings or []) == bool(dropped)
    assert any("left null, events kept" in w for w in st.warnings or []) == bool(nulled)
    f = tmp_path / "t.pftrace"
    f.write_bytes(raw)
    rc, s, _ = ingest(f)
    assert rc == 0 and (s["ingest"]["malformed"], s["ingest"]["values_out_of_range"]) == (dropped, nulled)
    if extra is _x_order:  # order 100 is kept, but 2^100 pages fit no column; 2^31 fits no order
        r = df[df["order"] == 100]
        assert len(r) == 1 and r["pages"].isna().all() and r["bytes"].isna().all()
        r = df[df["ts_ns"] == 7]
        assert len(r) == 1 and r["order"].isna().all() and r["pfn"].notna().all()
        assert r["args"].tolist() == [f"page=0x0 order={1 << 31} migratetype=0"]  # kept, in field order
    if extra is _x_bytes:
        r = df[df["ts_ns"] == 7]
        assert r["event"].tolist() == ["kmem:kmalloc"] and r["bytes"].isna().all() and r["bytes_req"].notna().all()
        assert r["args"].tolist() == [f"bytes_alloc={1 << 63}"]  # kept, not lost
    if extra is _x_generic:
        r = df[df["ts_ns"] == 53]
        assert r["bytes_req"].tolist() == [(1 << 63) - 1] and r["ptr"].tolist() == [(1 << 64) - 1]
        r = df.set_index("ts_ns")
        assert pd.isna(r.at[50, "bytes_req"]) and f"size={1 << 63}" in r.at[50, "args"]
        assert pd.isna(r.at[51, "map_id"]) and r.at[51, "bytes_req"] == 12 and "map_id=-1" in r.at[51, "args"]
        assert f"order={1 << 40}" in r.at[52, "args"]


def test_perfetto_names_not_utf8():
    def extra(bi, bd):
        if bi == 0:
            e = bd.event.add()
            e.timestamp, e.pid = 1, 5
            e.task_newtask.pid, e.task_newtask.comm = 5, "QQ"
            _generic(bd, 2, "ZZZ")
            e = bd.event.add()
            e.timestamp, e.pid = 3, 5
            e.kprobe_event.name = "try_cRRge"
            e = bd.event.add()
            e.timestamp, e.pid = 4, 5
            e.cgroup_mkdir.path, e.cgroup_mkdir.id = "/PP", 3

    raw = _bundles(extra)
    for a, b in ((b"QQ", b"\xff\xfe"), (b"ZZZ", b"Z\xffZ"), (b"RR", b"\xfa\xfb"), (b"PP", b"\xfe\xfe")):
        assert raw.count(a) == 1
        raw = raw.replace(a, b)
    df, st = same_perfetto(raw)
    assert st.malformed == 0 and len(df) == 22
    assert any("not UTF-8" in w for w in st.warnings)
    assert set(df["comm"].astype(str)) == {"\ufffd\ufffd"}  # the task_newtask rename
    assert {"Z\ufffdZ", "kprobes:try_c\ufffd\ufffdge", "cgroup:cgroup_mkdir"} <= set(df["event"].astype(str))
    assert "/\ufffd\ufffd" in set(df["cgroup_path"].dropna().astype(str))


def test_perfetto_damaged_bytes_never_raise():
    """200 damaged copies of a real excerpt (bits flipped, bytes overwritten, huge varints written in):
    only InputError may come out, and both paths agree."""
    df, _ = load_trace(str(EXCERPT))
    bases = [events_to_trace(df, bundle_size=16), events_to_trace(df.iloc[:120], bundle_size=7, compress=True)]
    rng = random.Random(20240611)
    decoded = 0
    for i in range(200):
        raw = bytearray(bases[i % 2])
        for _ in range(rng.randint(1, 8)):
            p = rng.randrange(len(raw))
            r = rng.random()
            if r < 0.4:
                raw[p] ^= 1 << rng.randrange(8)
            elif r < 0.8:
                raw[p] = rng.randrange(256)
            else:
                k = rng.randint(1, 9)
                raw[p : p + k] = b"\xff" * (k - 1) + bytes([rng.choice([0x01, 0x7F, 0x0F])])
        decoded += same_perfetto(bytes(raw)) is not None
    assert decoded > 150


# --- ftrace text ---------------------------------------------------------------------------------

GOOD = b"            init-1       [001] .....     2.239909: mm_page_alloc: page=ffffedc540191240 pfn=0x6449 order=0 migratetype=0 gfp_flags=GFP_KERNEL\n"
KM = b"kmalloc: ptr=ffff8a0a012de620 bytes_req=16 bytes_alloc=16"


@pytest.mark.parametrize("line, malformed", [
    (b"            init-12345678901234567890 [001] .....     2.239909: " + KM, 1),
    (b"            init-3000000000 [001] .....     2.239909: " + KM, 1),
    (b"            init-1       [12345678901234567890] .....     2.239909: " + KM, 1),
    (b"            init-1       [3000000000] .....     2.239909: " + KM, 1),
    (b"            init-1       [001] .....     123456789012345678901234567890.239909: " + KM, 1),
    (b"            init-1       [001] .....     123456789012345678901234567890: " + KM, 1),
    (b"            init-1       [001] .....     9223372036.854775808: " + KM, 1),
    (b"            init-1       [001] .....     9223372036.854775807: " + KM, 0),
    (b"            init-1       [001] .....     2.239909: mm_page_alloc: page=0 pfn=0x1 order=-1 migratetype=0", 0),
    (b"            init-1       [001] .....     2.239909: mm_page_alloc: page=0 pfn=0x1 order=100 migratetype=0", 0),
    (b"            init-1       [001] .....     2.239909: kmalloc: ptr=1 bytes_req=99999999999999999999 bytes_alloc=-99999999999999999999", 0),
    (b"            in\xff\xfeit-1       [001] .....     2.239909: print: tracing_mark_write: h\xffi", 0),
])
def test_text_odd_lines(tmp_path, line, malformed):
    data = GOOD + line + b"\n" + GOOD
    f = tmp_path / "trace.txt"
    f.write_bytes(data)
    rc, s, err = ingest(f)
    assert rc == 0
    assert s["ingest"]["malformed"] == malformed
    assert s["ingest"]["events_parsed"] == 3 - malformed
    if malformed:
        assert f"memtrace: warning: {f}: {malformed} event line(s) dropped as malformed" in err
    df, _ = same_text(data)
    odd = df.iloc[[1]] if len(df) == 3 else df.iloc[[]]
    if b"order=" in line:  # kept; no pages/bytes for an order no page count fits
        assert odd["pages"].isna().all() and odd["bytes"].isna().all()
    if b"99999999999999999999" in line:  # past 2^64: fits no column, not wrapped; kept in args, counted
        assert odd["bytes"].isna().all() and odd["bytes_req"].isna().all()
        assert odd["args"].tolist() == ["bytes_req=99999999999999999999 bytes_alloc=-99999999999999999999"]
        assert s["ingest"]["values_out_of_range"] == 2 and "field value(s) do not fit their column" in err
    else:
        assert s["ingest"]["values_out_of_range"] == 0


def test_text_damaged_bytes_never_raise():
    base = EXCERPT.read_bytes()
    rng = random.Random(7)
    for i in range(60):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 12)):
            p = rng.randrange(len(raw))
            r = rng.random()
            if r < 0.3:
                raw[p] = rng.randrange(256)
            elif r < 0.6:
                raw[p:p] = b"9" * rng.randint(1, 30)
            elif r < 0.7:
                raw[p:p] = b"-"
            elif r < 0.8:
                raw[p] = rng.choice(b" =:[]()-.\n\t0x")
            else:
                del raw[p : p + rng.randint(1, 5)]
        same_text(bytes(raw), chunk_bytes=rng.choice([300, 1 << 30]))


# --- memtrace's own bugs are not bad input -------------------------------------------------------


def test_a_decoder_bug_is_an_internal_error_not_bad_input(tmp_path, monkeypatch):
    """A decoder exception that is not an InputError is memtrace's bug: load_trace lets it
    through, and the CLI prints its traceback and exits 70 (not 2, the user's-mistake code).
    The bug is injected by replacing the perfetto decoder for the test."""
    from memtrace.sources.trace import perfetto

    f = tmp_path / "t.pftrace"
    f.write_bytes(_repro())

    def boom(*a, **k):
        raise ZeroDivisionError("a\nb")

    monkeypatch.setattr(perfetto, "load_perfetto", boom)
    with pytest.raises(ZeroDivisionError):
        load_trace(str(f))

    def oom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(perfetto, "load_perfetto", oom)
    with pytest.raises(MemoryError):
        load_trace(str(f))


def test_unexpected_decoder_error_cli_exit_70_with_traceback(tmp_path):
    f = tmp_path / "t.pftrace"
    f.write_bytes(_repro())
    code = ("import sys; from memtrace.sources.trace import perfetto\n"
            "def boom(*a, **k): raise KeyError('x')\n"
            "perfetto.load_perfetto = boom\n"
            f"sys.argv = ['memtrace', 'ingest', {str(f)!r}]\n"
            "from memtrace.cli.app import main; main()\n")
    env = {k: v for k, v in os.environ.items() if k != "MEMTRACE_DEBUG"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert p.returncode == 70
    assert "Traceback" in p.stderr and "KeyError: 'x'" in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("memtrace: internal error (a bug in memtrace, not in your input")


# --- numbers that do not fit their column (text, and text beside perfetto) ---------------------------

TC = b"            w-5       [000] .....     0.%09d: try_charge: (try_charge_memcg+0x0/0x40) "
#: (field, its column, the value it gives; None: a number that does not fit, so null, counted, in args)
FIT = [
    (b"nr=9223372036854775807", "pages", (1 << 63) - 1),  # Int64: [-2^63, 2^63)
    (b"nr=9223372036854775808", "pages", None),
    (b"nr=-9223372036854775808", "pages", -(1 << 63)),
    (b"nr=-9223372036854775809", "pages", None),
    (b"nr=0x7fffffffffffffff", "pages", (1 << 63) - 1),
    (b"nr=0x8000000000000000", "pages", None),
    (b"nr=-0x8000000000000000", "pages", -(1 << 63)),
    (b"nr=99999999999999999999999", "pages", None),  # past 2^64
    (b"nr=000000000000000000000000000042", "pages", 42),  # leading zeros: the value decides
    (b"nr=-0", "pages", 0),
    (b"size=18446744073709551615", "bytes", None),
    (b"ret=-9223372036854775808", "ret", -(1 << 63)),
    (b"order=2147483647", "order", (1 << 31) - 1),  # Int32: [-2^31, 2^31)
    (b"order=2147483648", "order", None),
    (b"order=-2147483648", "order", -(1 << 31)),
    (b"order=-2147483649", "order", None),
    (b"order=4294967296", "order", None),
    (b"order=0x80000000", "order", None),
    (b"map_id=4294967295", "map_id", (1 << 32) - 1),  # UInt32: [0, 2^32)
    (b"map_id=-1", "map_id", None),
    (b"map_id=-0", "map_id", 0),
    (b"map_id=0x100000000", "map_id", None),
    (b"cgid=-1", "cgroup_id", (1 << 64) - 1),  # UInt64: any magnitude below 2^64, mod 2^64
    (b"cgid=-18446744073709551615", "cgroup_id", 1),
    (b"cgid=18446744073709551615", "cgroup_id", (1 << 64) - 1),
    (b"cgid=18446744073709551616", "cgroup_id", None),
    (b"cgid=-18446744073709551616", "cgroup_id", None),
    (b"cgid=0xffffffffffffffff", "cgroup_id", (1 << 64) - 1),
    (b"cgid=0x10000000000000000", "cgroup_id", None),
    (b"cgid=0x0000000000000000000000001", "cgroup_id", 1),
    (b"cgid=0x0000000000000000000010000000000000000", "cgroup_id", None),
    (b"pfn=0x1ffffffffffffffff", "pfn", None),
    (b"ptr=ffffffffffffffff", "ptr", (1 << 64) - 1),  # ptr: hex without 0x
    (b"ptr=1ffffffffffffffff", "ptr", None),
]
#: not numbers at all: null as before, not counted, not in args
NOT_NUMBERS = [(b"nr=abc", "pages"), (b"nr=99999999999999999999999abc", "pages"), (b"order=-", "order"),
               (b"cgid=0x", "cgroup_id"), (b"map_id=", "map_id"), (b"ptr=0xg", "ptr")]


def _fit_capture() -> bytes:
    lines = [TC % i + f for i, (f, _, _) in enumerate(FIT)]
    lines += [TC % (100 + i) + f for i, (f, _) in enumerate(NOT_NUMBERS)]
    lines.append(b"            w-5       [000] .....     0.000000200: kmalloc: call_site=x ptr=ffff1 bytes_req=16 "
                 b"bytes_alloc=18446744073709551615 gfp_flags=GFP_KERNEL")
    return b"".join(ln + b"\n" for ln in lines)


def test_text_numbers_that_do_not_fit(tmp_path):
    """A field value that is a number but does not fit its column: the column is null, the event
    kept, `key=value` goes to args, and it is counted (one warning per file); the scanner and the
    reference agree. Text that is no number stays null and uncounted. Header numbers that do not
    fit drop the line (test_text_odd_lines)."""
    raw = _fit_capture()
    nulled = sum(v is None for _, _, v in FIT) + 1
    for chunk in (1 << 30, 200):
        df, st = same_text(raw, chunk_bytes=chunk)
        assert len(df) == len(FIT) + len(NOT_NUMBERS) + 1 and st.malformed == 0
        assert st.values_out_of_range == nulled
        assert [w for w in st.warnings if "do not fit" in w] == [
            f"<buffer>: {nulled} field value(s) do not fit their column (size >= 2^63, order >= 2^31, ...): "
            "left null, events kept"]
    r = df.set_index("ts_ns")
    prefix = "(try_charge_memcg+0x0/0x40)"
    for i, (f, col, want) in enumerate(FIT):
        got, args = r.at[i, col], r.at[i, "args"]
        if want is None:
            assert pd.isna(got) and args == f"{prefix} {f.decode()}", f
        else:
            assert got == want and args == prefix, f
    for i, (f, col) in enumerate(NOT_NUMBERS):
        assert pd.isna(r.at[100 + i, col]) and r.at[100 + i, "args"] == prefix, f
    assert pd.isna(r.at[200, "bytes"]) and r.at[200, "bytes_req"] == 16 and r.at[200, "ptr"] == 0xFFFF1
    assert r.at[200, "args"] == "bytes_alloc=18446744073709551615"
    assert r.at[13, "pages"] is pd.NA  # order 2^31: no order, so no pages from it

    f = tmp_path / "trace.txt"
    f.write_bytes(raw)
    rc, s, err = ingest(f)
    assert rc == 0
    assert s["ingest"]["values_out_of_range"] == nulled and s["ingest"]["malformed"] == 0
    assert s["ingest"]["events_parsed"] == len(df)
    assert f"memtrace: warning: {f}: {nulled} field value(s) do not fit their column" in err


#: (field, perfetto GenericFtraceEvent value kind, value): what both formats can carry
BOTH = [
    ("size", "uint_value", 1 << 63), ("size", "uint_value", (1 << 63) - 1),
    ("bytes_alloc", "uint_value", (1 << 64) - 1), ("bytes_alloc", "int_value", -(1 << 63)),
    ("nr", "uint_value", 1 << 63), ("nr", "int_value", -(1 << 63)),
    ("order", "int_value", 1 << 31), ("order", "int_value", -(1 << 31)), ("order", "uint_value", (1 << 31) - 1),
    ("map_id", "int_value", -1), ("map_id", "uint_value", (1 << 32) - 1), ("map_id", "uint_value", 1 << 32),
    ("cgid", "int_value", -1), ("cgid", "uint_value", (1 << 64) - 1), ("ptr", "int_value", -(1 << 63)),
    ("pfn", "uint_value", (1 << 64) - 1), ("ret", "uint_value", 1 << 63), ("ret", "int_value", -5),
]


def test_text_and_perfetto_null_the_same_fields():
    """The same field values as a text capture and as perfetto generic events: both readers fill
    and null the same columns, put the same `key=value` in args, and count the same."""
    def extra(bi, bd):
        if bi == 1:
            for i, (k, kind, v) in enumerate(BOTH):
                _generic(bd, 50 + i, "percpu_alloc_percpu", **{k: (kind, v)})

    pdf, pst = same_perfetto(_bundles(extra))
    text = b"".join(b"            w-5       [000] .....     0.%09d: percpu_alloc_percpu: %s=%s\n"
                    % (50 + i, k.encode(), b"%x" % (v & ((1 << 64) - 1)) if k == "ptr" else b"%d" % v)  # ptr: hex
                    for i, (k, _, v) in enumerate(BOTH))
    tdf, tst = same_text(text)
    nulled = 7
    assert pst.values_out_of_range == tst.values_out_of_range == nulled
    assert any("left null, events kept" in w for w in pst.warnings) and any("left null, events kept" in w for w in tst.warnings)
    cols = ["bytes", "bytes_req", "pages", "order", "map_id", "cgroup_id", "ptr", "pfn", "ret", "args"]
    a = pdf[pdf["ts_ns"] < 1000].set_index("ts_ns")[cols]
    b = tdf.set_index("ts_ns")[cols]
    assert len(a) == len(b) == len(BOTH)
    pd.testing.assert_frame_equal(a, b, check_exact=True, check_categorical=False)
    assert b["args"].notna().sum() == nulled


#: (key, text) as a string field in perfetto and verbatim in text: both read numbers the same way
BOTH_STR = [
    ("cgid", "18446744073709551616"), ("cgid", "-18446744073709551615"), ("cgid", "-9223372036854775809"),
    ("cgid", "-0x10"), ("cgid", "0XfF"), ("nr", "-0x10"), ("nr", "9223372036854775808"), ("nr", "+5"),
    ("nr", "1_0"), ("nr", "0x"), ("map_id", "-1"), ("map_id", "4294967295"), ("order", "2147483648"),
    ("ptr", "ffff"), ("ptr", "-1"), ("size", "000000000000000000000000042"),
]


def test_text_and_perfetto_read_number_strings_alike():
    """Numbers that arrive as text (perfetto string fields, any field of a text capture):
    sign, 0x, the column's base, 2^64 magnitudes and not-a-number strings give the same
    columns and the same count in both readers."""
    def extra(bi, bd):
        if bi == 1:
            for i, (k, v) in enumerate(BOTH_STR):
                _generic(bd, 50 + i, "percpu_alloc_percpu", **{k: ("str_value", v)})

    pdf, pst = same_perfetto(_bundles(extra))
    text = b"".join(b"            w-5       [000] .....     0.%09d: percpu_alloc_percpu: %s=%s\n"
                    % (50 + i, k.encode(), v.encode()) for i, (k, v) in enumerate(BOTH_STR))
    tdf, tst = same_text(text)
    assert pst.values_out_of_range == tst.values_out_of_range == 4
    cols = ["bytes_req", "pages", "order", "map_id", "cgroup_id", "ptr"]
    a = pdf[pdf["ts_ns"] < 1000].set_index("ts_ns")[cols]
    b = tdf.set_index("ts_ns")[cols]
    assert len(a) == len(b) == len(BOTH_STR)
    pd.testing.assert_frame_equal(a, b, check_exact=True, check_categorical=False)
    got = b.to_dict("index")
    assert pd.isna(got[50]["cgroup_id"]) and got[51]["cgroup_id"] == 1 and got[53]["cgroup_id"] == (1 << 64) - 16
    assert got[55]["pages"] == -16 and pd.isna(got[57]["pages"]) and got[63]["ptr"] == 0xFFFF
    assert got[65]["bytes_req"] == 42

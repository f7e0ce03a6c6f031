"""The ftrace text scanner (the C extension, fed in chunks) against the reference path (the regex
per line for every header and field list): identical frames and stats, on the committed excerpts,
on a capture generated from them with odd lines of every kind the scanner must hand over, across
chunk boundaries, and on the committed lab captures with kprobe events (fixtures/captures). Random and damaged input,
and the extension's own API: tests/test_ingest_scan.py."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memtrace.sources.trace import ftrace_text as ft
from memtrace.tables.events import validate_events
from memtrace.testing.ftrace_reference import parse_ftrace_text_reference

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "traces"
EXCERPTS = [FIX / "restart-6.1.excerpt.txt", FIX / "restart-6.12.excerpt.txt"]
#: real lab captures with memtrace's page_counter kprobes (fixtures/captures/README.md)
CAPTURES = sorted((FIX.parent / "captures").glob("*.page_counter.txt"))
assert len(CAPTURES) == 4 and all(p.is_file() for p in EXCERPTS), "fixtures/traces or fixtures/captures is missing files"
KPROBES = {"pc_try_charge": "memtrace", "pc_try_charge_ret": "memtrace"}


def _same(data: bytes, *, chunk_bytes=None, kprobe_groups=None):
    if chunk_bytes:
        fast, sf = ft._run(ft._chunks_of(data, chunk_bytes), path="<buffer>", fmt="ftrace-text",
                           kprobe_groups=kprobe_groups, stats=None)
    else:
        fast, sf = ft.parse_ftrace_text(data, kprobe_groups=kprobe_groups)
    ref, sr = parse_ftrace_text_reference(data, kprobe_groups=kprobe_groups, chunk_bytes=1 << 30)
    pd.testing.assert_frame_equal(fast, ref, check_exact=True)
    assert sf.to_dict() == sr.to_dict()
    assert validate_events(fast) == []
    return fast, sf


@pytest.mark.parametrize("path", EXCERPTS, ids=lambda p: p.name)
def test_excerpt_fast_equals_reference(path):
    _same(path.read_bytes())


def _body(path):
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


_TS = re.compile(r"(\s)(\d+)\.(\d{6}): ")
KPROBE_LINES = [
    "              sh-10      [000] .....     1.000001: pc_try_charge: (page_counter_try_charge+0x0/0xb0) counter=0xa0 nr=64 cgid=5",
    "              sh-11      [001] .....     1.000005: pc_try_charge_ret: (try_charge_memcg+0xc7/0x780 <- page_counter_try_charge) ok=1",
    "              sh-11      [001] .....     1.000006: pc_try_charge_ret: (try_charge_memcg+0xc7/0x780 <- page_counter_try_charge) ok=0",
    "              sh-11      [001] .....     1.000007: pc_try_charge: counter=0xa0 nr=64 cgid=5",
    "              sh-11      [001] .....     1.000008: pc_try_charge: (not a probe) counter=0xa0 nr=64 cgid=5",
]


def _mutate(ln: str, rnd: random.Random) -> list[str]:
    """One real line made odd in one of the ways a capture can be odd."""
    k = rnd.randrange(24)
    m = _TS.search(ln)
    head, tail = ln[: m.end()], ln[m.end():]
    if k == 0:  # seconds past 99999: the columns shift right by one
        return [_TS.sub(lambda q: f"{q.group(1)}{int(q.group(2)) + 123456}.{q.group(3)}: ", ln, count=1)]
    if k == 1:
        return [ln.replace(" ", "  ", 1) if not ln.startswith(" ") else ln[1:]]
    if k == 2:  # a value with '=' in it, and one with spaces
        return [ln + " note=a=b", ln + " path=/sys/fs/cgroup/a b"]
    if k == 3:
        return [ln + "   ", ln + "\t", ln + "\r"]
    if k == 4:  # comm with ')' / '[' / a dash and digits, long comm, seven-digit pid
        return [re.sub(r"^\s*\S+?-(\d+)", lambda q: f"    (sd-pam)-{q.group(1)}", ln, count=1),
                re.sub(r"^\s*\S+?-(\d+)", lambda q: f"      ab[c]-{q.group(1)}", ln, count=1),
                re.sub(r"^\s*\S+?-(\d+)", lambda q: f"  jbd2/vda1-8-{q.group(1)}", ln, count=1),
                re.sub(r"^\s*\S+?-(\d+)", lambda q: f"averyveryverylongcommname-{q.group(1)}", ln, count=1),
                re.sub(r"-(\d+)(\s+)\[", lambda q: "-4194303 [", ln, count=1)]
    if k == 5:  # double space before a key, key with odd chars, empty value
        return [tail and head + tail.replace(" ", "  ", 2), head + tail + " x.y->z=1", head + tail + " empty="]
    if k == 6:  # unknown event, event with no fields, marker with '=' and spaces
        return [head + "my_event: a=1 b=0x2", head + "my_bare_event:", head + "tracing_mark_write: hello a=b  c "]
    if k == 7:  # no flags column (irq-info off), tgid column
        return [re.sub(r"\] \S+ ", "] ", ln, count=1), re.sub(r"(-\d+)(\s+)\[", r"\1 (    123) [", ln, count=1)]
    if k == 8:  # nanosecond and integer timestamps (trace-cmd -t, raw clocks)
        return [_TS.sub(lambda q: f"{q.group(1)}{q.group(2)}.{q.group(3)}123: ", ln, count=1),
                _TS.sub(lambda q: f"{q.group(1)}{q.group(2)}{q.group(3)}: ", ln, count=1)]
    if k == 9:
        return ["this is not a trace line", "CPU:1 [LOST 17 EVENTS]", "", "   ", "# a comment", "cpus=2"]
    if k == 10:  # numbers: negative, hex without 0x, too long, big decimal
        return [head + tail + " ret=-5", head + "kmalloc: call_site=x ptr=12 bytes_req=-3 bytes_alloc=99999999999999999999 gfp_flags=0x400cc0",
                head + "kmalloc: call_site=x ptr=0xzz bytes_req=123456789012 bytes_alloc=12345678901234567 gfp_flags=GFP_KERNEL accounted=yes"]
    if k == 11:  # trace-cmd report style: padded event name, different widths
        return [re.sub(r": (\w+): ", lambda q: f": {q.group(1)}:{' ' * 7}", ln, count=1),
                re.sub(r"^\s+", "  ", ln).replace("] .....", "]", 1)]
    if k == 12:
        return [ln.replace(": ", ":\t", 1), ln.replace("[0", "[ 0", 1), ln.replace("[00", "[100", 1)]
    if k == 13:
        return [head + tail.replace("=", "= ", 1), ln + " node=1 node=2"]
    if k == 14:
        return list(KPROBE_LINES)
    if k == 15:
        return [ln.encode().decode() + " name=caf\u00e9", re.sub(r"^\s*\S+?-", "     caf\u00e9-", ln, count=1)]
    if k == 16:  # seconds field wider than five, fraction of 1..3 digits
        return [_TS.sub(lambda q: f"{q.group(1)}{q.group(2)}.{q.group(3)[:2]}: ", ln, count=1)]
    return [ln]


def _generated(rnd: random.Random, reps: int = 40) -> str:
    lines = []
    for path in EXCERPTS:
        head = [ln for ln in path.read_text().splitlines() if ln.startswith("#")]
        lines += head
        body = _body(path)
        for r in range(reps):
            for ln in body:
                ln = _TS.sub(lambda q: f"{q.group(1)}{int(q.group(2)) + r}.{q.group(3)}: ", ln, count=1)
                lines += _mutate(ln, rnd) if rnd.random() < 0.08 else [ln]
    return "\n".join(lines) + "\n"


def test_generated_capture_fast_equals_reference():
    text = _generated(random.Random(1))
    data = text.encode()
    df, st = _same(data, kprobe_groups=KPROBES)
    assert st.malformed > 0 and st.lost_events > 0 and st.unknown_events > 0
    assert (df["event"] == "memtrace:pc_try_charge_ret").any()
    # chunk boundaries anywhere: many small chunks give the same frame
    for cb in (4096, 100_003):
        _same(data, chunk_bytes=cb, kprobe_groups=KPROBES)
    # a cut last line
    cut = data[: len(data) - 40]
    _, st2 = _same(cut, kprobe_groups=KPROBES)
    assert st2.truncated


def test_generated_capture_from_file_equals_buffer(tmp_path):
    data = _generated(random.Random(2), reps=10).encode()
    p = tmp_path / "trace.txt"
    p.write_bytes(data)
    a, sa = ft.load_ftrace_text(str(p), chunk_bytes=5000)
    b, sb = ft.parse_ftrace_text(data, path=str(p))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert sa.to_dict() == sb.to_dict()


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_lab_capture_fast_equals_reference(path):
    """A committed lab capture with kprobe events (6.1: numeric args, 6.12: BTF-named), whole,
    in small chunks, with and without the kprobe groups, and cut mid-line."""
    data = path.read_bytes()
    df, st = _same(data, kprobe_groups=KPROBES)
    assert len(df) > 300 and st.malformed == 0
    assert (df["event"] == "memtrace:pc_try_charge").any() and (df["event"] == "memtrace:pc_try_charge_ret").any()
    _same(data, chunk_bytes=1000, kprobe_groups=KPROBES)
    _same(data)
    _, st2 = _same(data[: len(data) - 25], kprobe_groups=KPROBES)
    assert st2.truncated


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_derive_fast_equals_pandas(seed):
    rnd = np.random.default_rng(seed)
    n = 4000
    events = ["kmem:mm_page_alloc", "kmem:mm_page_free", "kmem:mm_page_free_batched", "kmem:kmalloc",
              "kmem:kmalloc_node", "memcg:kmem_page", "kmem:kfree"]
    ev = pd.Categorical(rnd.choice(events, n), categories=events[::-1])

    def nullable(vals, dtype, p=0.3):
        return pd.array([None if rnd.random() < p else v for v in vals], dtype=dtype)

    df = pd.DataFrame({
        "event": ev,
        "order": nullable(rnd.choice(list(range(12)) + [-1, 50, 51, 62, 63, 100, 2**31 - 1], n), "Int32"),
        "pages": nullable(rnd.integers(0, 9, n), "Int64", 0.7),
        "bytes": nullable(rnd.integers(0, 99999, n), "Int64"),
        "accounted": nullable(rnd.integers(0, 2, n).astype(bool), "boolean", 0.6),
        "gfp": nullable(rnd.choice([0xCC0, 0x400CC0, 0x400000], n).astype(np.uint64), "UInt64", 0.5),
        "gfp_flags": pd.Categorical([None if rnd.random() < 0.5 else v for v in rnd.choice(
            ["GFP_KERNEL", "GFP_KERNEL_ACCOUNT", "GFP_KERNEL|__GFP_ACCOUNT"], n)]),
    })
    pd.testing.assert_frame_equal(ft.derive(df.copy()), ft._derive_pandas(df.copy()), check_exact=True)

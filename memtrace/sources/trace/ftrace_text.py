"""ftrace text (tracefs `trace` / `trace_pipe`, and `trace-cmd report` output) → event table.

The parser works on the whole buffer with numpy instead of a regex per line:

1. newline, `:` and `]` positions give, per line, the timestamp colon, the event-name colon and the
   CPU bracket; the header fields (comm, pid, optional `(tgid)`, CPU, flags, timestamp) are read
   around them with short vectorised scans;
2. lines are grouped by event name; each group's field layout (`k1=v1 k2=v2 ...`, maybe after a
   prefix such as a kprobe's `(func+0x0/0x40)`) is learnt from one line and checked on every line
   of the group against the positions of `=`; a value runs to the next key, so values with spaces
   (cgroup paths) are fine;
3. lines that do not fit (odd header, a value containing `=`, a new layout) go through a plain
   regex parser, so odd lines cost speed, never correctness;
4. values become columns straight from byte spans: numbers with vectorised digit loops, strings
   with one gather per column.

A line that is neither an event, a comment, nor a known non-event line (`CPU:N [LOST n EVENTS]`,
trace-cmd's `cpus=N`) is counted as malformed and dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from memtrace.errors import InputError
from memtrace.tables.events import (
    COLUMNS,
    GFP_ACCOUNT,
    PAGE_SIZE,
    IngestStats,
    coerce_events,
    empty_events,
)

# ---------------------------------------------------------------------------------------------
# Event naming, shared with the perfetto reader

#: tracepoints by group; text captures print only the name
TRACEPOINT_GROUPS: dict[str, str] = {
    **{
        n: "kmem"
        for n in (
            "kmalloc kfree kmem_cache_alloc kmem_cache_free kmalloc_node kmem_cache_alloc_node "
            "mm_page_alloc mm_page_free mm_page_free_batched mm_page_alloc_zone_locked "
            "mm_page_pcpu_drain mm_page_alloc_extfrag rss_stat"
        ).split()
    },
    **{
        n: "percpu"
        for n in "percpu_alloc_percpu percpu_free_percpu percpu_alloc_percpu_fail percpu_create_chunk percpu_destroy_chunk".split()
    },
    **{n: "vmalloc" for n in "alloc_vmap_area purge_vmap_area_lazy free_vmap_area_noflush".split()},
    **{n: "task" for n in "task_newtask task_rename".split()},
    **{
        n: "memcg"
        for n in "mod_memcg_state mod_memcg_lruvec_state count_memcg_events memcg_flush_stats".split()
    },
    "print": "ftrace",
    "tracing_mark_write": "ftrace",
}
#: name prefixes that fix the group
PREFIX_GROUPS = (("cgroup_", "cgroup"), ("sched_", "sched"), ("mm_vmscan_", "vmscan"), ("bpf_", "bpf"))
#: memtrace's own kprobe events (probes/, kernel-notes §7.1) live in group `memcg`
MEMTRACE_KPROBES = {
    n: "memcg"
    for n in "try_charge objcg_charge objcg_uncharge pc_force pc_try kmem_page kmem_page_ret pcpu_post slab_post".split()
}
MARKER_EVENTS = {"print", "tracing_mark_write"}


def group_of(name: str) -> str | None:
    g = TRACEPOINT_GROUPS.get(name)
    if g:
        return g
    for p, g in PREFIX_GROUPS:
        if name.startswith(p):
            return g
    return None


def canonical_event(name: str, *, kprobe: bool = False, kprobe_groups: dict[str, str] | None = None) -> tuple[str, bool]:
    """`group:name` for a bare event name, and whether the group is known."""
    if name in MARKER_EVENTS:
        return "ftrace:print", True
    if kprobe:
        g = (kprobe_groups or {}).get(name) or MEMTRACE_KPROBES.get(name) or "kprobes"
        return f"{g}:{name}", True
    g = group_of(name)
    return (f"{g}:{name}", True) if g else (name, False)


def kprobe_groups_from_defs(defs) -> dict[str, str]:
    """{event name: group} from kprobe_events lines such as `p:memcg/try_charge try_charge_memcg ...`."""
    groups = {}
    for d in defs or ():
        m = re.match(r"\s*[prf]\d*(?::(?:(\w+)/)?(\w+))?\s", d)
        if m and m.group(2):
            groups[m.group(2)] = m.group(1) or "kprobes"
    return groups


# field name → column, for every event; then per-event overrides
KEY_COLUMNS: dict[str, str] = {
    "call_site": "call_site",
    "ptr": "ptr",
    "bytes_req": "bytes_req",
    "bytes_alloc": "bytes",
    "gfp_flags": "gfp_flags",
    "gfp": "gfp",
    "gfp_mask": "gfp",
    "accounted": "accounted",
    "pfn": "pfn",
    "order": "order",
    "nr": "pages",
    "nr_pages": "pages",
    "cgid": "cgroup_id",
    "cgroup_id": "cgroup_id",
    "size": "bytes",
    "map_id": "map_id",
    "ret": "ret",
    "retval": "ret",
}
EVENT_KEY_COLUMNS: dict[str, dict[str, str]] = {
    "percpu:percpu_alloc_percpu": {"size": "bytes_req", "bytes_alloc": "bytes"},
    "percpu:percpu_alloc_percpu_fail": {"size": "bytes_req"},
}
GROUP_KEY_COLUMNS: dict[str, dict[str, str]] = {
    "cgroup": {"id": "cgroup_id", "dst_id": "cgroup_id", "path": "cgroup_path", "dst_path": "cgroup_path"},
    "memcg": {"id": "cgroup_id", "ok": "ret"},
}
#: columns read as numbers, and how: 16 = hex even without 0x; 0 = 0x → hex, else decimal
NUMERIC_BASE = {
    "ptr": 16,
    "pfn": 0,
    "gfp": 0,
    "bytes": 0,
    "bytes_req": 0,
    "pages": 0,
    "order": 0,
    "cgroup_id": 0,
    "map_id": 0,
    "ret": 0,
}
STRING_COLUMNS = ("comm", "event", "cgroup_path", "gfp_flags", "call_site", "marker", "args")


def columns_for(event: str) -> dict[str, str]:
    m = dict(KEY_COLUMNS)
    g = event.split(":", 1)[0] if ":" in event else ""
    m.update(GROUP_KEY_COLUMNS.get(g, {}))
    m.update(EVENT_KEY_COLUMNS.get(event, {}))
    if event.startswith("kmem:") and event not in ("kmem:kmalloc", "kmem:kmem_cache_alloc", "kmem:kmalloc_node", "kmem:kmem_cache_alloc_node"):
        m.pop("size", None)
    return m


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """Per-event derived columns (pages/bytes of page events, accounted from gfp). In place."""
    ev = df["event"].astype(str) if len(df) else pd.Series([], dtype=str)
    page_ev = ev.isin(["kmem:mm_page_alloc", "kmem:mm_page_free", "kmem:mm_page_free_batched", "kmem:mm_page_alloc_zone_locked"])
    if page_ev.any():
        order = df["order"].astype("Int64")
        batched = ev.eq("kmem:mm_page_free_batched") & order.isna()
        order = order.mask(batched, 0)
        pages = (pd.Series(1, index=df.index, dtype="Int64") * (2 ** order.where(page_ev)).astype("Int64"))
        df["pages"] = df["pages"].astype("Int64").where(~page_ev, pages)
        df["bytes"] = df["bytes"].astype("Int64").where(~page_ev, pages * PAGE_SIZE)
        df["order"] = df["order"].astype("Int32").where(~batched, 0)
    # kprobes: order= without nr= → pages
    kp = df["pages"].isna() & df["order"].notna() & ~page_ev
    if kp.any():
        df.loc[kp, "pages"] = (2 ** df.loc[kp, "order"].astype("Int64")).astype("Int64")
    by_gfp = ev.isin(["kmem:kmalloc", "kmem:kmalloc_node", "kmem:mm_page_alloc"]) & df["accounted"].isna()
    if by_gfp.any():
        acc = pd.Series(pd.NA, index=df.index, dtype="boolean")
        if df["gfp"].notna().any():
            g = df["gfp"].astype("UInt64")
            acc = acc.mask(g.notna(), (g & GFP_ACCOUNT) != 0)
        if df["gfp_flags"].notna().any():
            f = df["gfp_flags"].astype("string")
            acc = acc.mask(acc.isna() & f.notna(), f.str.contains("ACCOUNT", regex=False))
        df["accounted"] = df["accounted"].where(~by_gfp, acc)
    return df


# ---------------------------------------------------------------------------------------------
# Byte-span helpers

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_DEC = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789"):
    _DEC[_c] = _i


def parse_ints(buf: np.ndarray, s: np.ndarray, e: np.ndarray, base: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Integers from byte spans [s, e): optional '-', optional '0x'. base 16 reads hex without 0x;
    base 0 reads hex after 0x, else decimal. Returns (uint64 values, valid mask); negative numbers
    come back two's-complement (view as int64)."""
    s = s.astype(np.int64)
    e = e.astype(np.int64)
    n = len(s)
    val = np.zeros(n, dtype=np.uint64)
    if n == 0:
        return val, np.zeros(0, dtype=bool)
    neg = (s < e) & (buf[np.minimum(s, len(buf) - 1)] == 45)
    s = s + neg
    hx = (e - s >= 2) & (buf[np.minimum(s, len(buf) - 1)] == 48) & ((buf[np.minimum(s + 1, len(buf) - 1)] | 0x20) == 120)
    s = s + 2 * hx
    is_hex = hx | (base == 16)
    ln = e - s
    ok = (ln > 0) & (ln <= np.where(is_hex, 16, 20))
    maxlen = int(ln[ok].max()) if ok.any() else 0
    mult = np.where(is_hex, 16, 10).astype(np.uint64)
    for k in range(maxlen):
        act = ok & (k < ln)
        if not act.any():
            break
        idx = np.where(act, s + k, 0)
        b = buf[idx]
        d = np.where(is_hex, _HEX[b], _DEC[b])
        bad = act & (d == 255)
        ok &= ~bad
        act &= ~bad
        val = np.where(act, val * mult + d.astype(np.uint64), val)
    val = np.where(neg, (~val) + np.uint64(1), val)
    return val, ok


def _digits_back(buf: np.ndarray, end: np.ndarray, maxlen: int) -> tuple[np.ndarray, np.ndarray]:
    """Decimal digits ending just before `end`: (value, count)."""
    n = len(end)
    val = np.zeros(n, dtype=np.int64)
    cnt = np.zeros(n, dtype=np.int64)
    act = np.ones(n, dtype=bool)
    place = np.ones(n, dtype=np.int64)
    for k in range(1, maxlen + 1):
        idx = end - k
        act &= idx >= 0
        d = _DEC[buf[np.maximum(idx, 0)]]
        act &= d != 255
        if not act.any():
            break
        val += np.where(act, d.astype(np.int64) * place, 0)
        place = np.where(act, place * 10, place)
        cnt += act
    return val, cnt


def _skip_back(buf, pos, byte, maxlen):
    """Move pos left while buf[pos] == byte (at most maxlen)."""
    for _ in range(maxlen):
        m = (pos > 0) & (buf[np.maximum(pos, 0)] == byte)
        if not m.any():
            break
        pos = pos - m
    return pos


def _skip_fwd(buf, pos, end, byte, maxlen):
    for _ in range(maxlen):
        m = (pos < end) & (buf[np.minimum(pos, len(buf) - 1)] == byte)
        if not m.any():
            break
        pos = pos + m
    return pos


def spans_to_arrow(buf: np.ndarray, nrows: int, row: np.ndarray, s: np.ndarray, e: np.ndarray) -> pa.Array:
    """A string array of `nrows`; row r is the spans with row == r joined by ' ' (null if none)."""
    row = np.asarray(row, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    e = np.maximum(np.asarray(e, dtype=np.int64), s)
    if len(row) and np.any(row[1:] < row[:-1]):
        o = np.lexsort((s, row))
        row, s, e = row[o], s[o], e[o]
    first = np.ones(len(row), dtype=bool)
    if len(row):
        first[1:] = row[1:] != row[:-1]
    sep = (~first).astype(np.int64)
    L = e - s
    seglen = L + sep
    outstart = np.cumsum(seglen) - seglen
    total = int(seglen.sum())
    out = np.empty(total, dtype=np.uint8)
    if len(row):
        out[outstart[~first]] = 32
        bm = _bytes_mask(total, outstart, sep)
        src = np.repeat(s - (outstart + sep), L) + np.flatnonzero(bm)
        out[bm] = buf[src]
    per_row = np.bincount(row, weights=seglen, minlength=nrows).astype(np.int64) if len(row) else np.zeros(nrows, np.int64)
    offsets = np.zeros(nrows + 1, dtype=np.int64)
    np.cumsum(per_row, out=offsets[1:])
    has = np.bincount(row, minlength=nrows) > 0 if len(row) else np.zeros(nrows, bool)
    validity = pa.array(has).buffers()[1] if not has.all() else None
    arr = pa.LargeStringArray.from_buffers(nrows, pa.py_buffer(offsets), pa.py_buffer(out), validity, null_count=int(nrows - has.sum()))
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:  # not UTF-8 (a comm with odd bytes): decode with replacement
        arr = pa.array(
            [None if v is None else v.decode("utf-8", "replace") for v in arr.cast(pa.large_binary()).to_pylist()],
            pa.large_string(),
        )
    return arr


def _bytes_mask(total, outstart, sep):
    m = np.ones(total, dtype=bool)
    m[outstart[sep.astype(bool)]] = False
    return m


# ---------------------------------------------------------------------------------------------
# The slow path: a regex per line

_HDR_RE = re.compile(
    rb"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]*\)\s+)?\[(?P<cpu>\d+)\]\s+(?:[^\s\d][^\s]*\s+)?"
    rb"(?P<ts>\d+(?:\.\d+)?):\s+(?P<event>[^:\s]+):\s*(?P<args>.*?)\s*$"
)
_LOST_RE = re.compile(rb"^\s*CPU:?\s*(\d+)\s*\[(?:LOST\s+(\d+)\s+EVENTS|(\d+)\s+EVENTS\s+DROPPED)\]")
_SKIP_RE = re.compile(rb"^\s*(#|cpus=\d+|version\s*=|CPU\s*\d+ is empty|CPU\d+ data recorded|\[?\s*$)")
_KEY_RE = re.compile(rb"(?:^|(?<=\s))([A-Za-z_][\w.\->]*)=")


def _kv_spans(args: bytes, base: int):
    """[(key, key_start, value_start, value_end)] in absolute positions, and the prefix end."""
    ms = list(_KEY_RE.finditer(args))
    out = []
    for i, m in enumerate(ms):
        ve = ms[i + 1].start(1) - 1 if i + 1 < len(ms) else len(args)
        while ve > m.end() and args[ve - 1 : ve] == b" ":
            ve -= 1
        out.append((m.group(1).decode("ascii", "replace"), base + m.start(1), base + m.end(), base + ve))
    pre_end = ms[0].start(1) if ms else len(args)
    while pre_end > 0 and args[pre_end - 1 : pre_end] == b" ":
        pre_end -= 1
    return out, base + pre_end


# ---------------------------------------------------------------------------------------------


@dataclass
class _Cols:
    """Column pieces collected while parsing: numeric values and string spans, by row."""

    n: int
    num: dict = field(default_factory=dict)  # col -> (rows list, values list, base)
    spans: dict = field(default_factory=dict)  # col -> (rows list, s list, e list)
    boolv: dict = field(default_factory=dict)

    def add_span(self, col, rows, s, e):
        r, ss, ee = self.spans.setdefault(col, ([], [], []))
        r.append(np.asarray(rows, np.int64))
        ss.append(np.asarray(s, np.int64))
        ee.append(np.asarray(e, np.int64))


def parse_ftrace_text(
    data: bytes | memoryview,
    *,
    path: str = "<buffer>",
    fmt: str = "ftrace-text",
    kprobe_groups: dict[str, str] | None = None,
    stats: IngestStats | None = None,
) -> tuple[pd.DataFrame, IngestStats]:
    """Parse ftrace text into the event table."""
    st = stats or IngestStats(path=path, format=fmt)
    st.path, st.format = path, fmt
    buf = np.frombuffer(data, dtype=np.uint8)
    if len(buf) == 0:
        raise InputError(f"{path}: empty file")
    nl = np.flatnonzero(buf == 10)
    if len(nl) == 0 or nl[-1] != len(buf) - 1:
        # the last line has no newline: a capture cut mid-write. Drop it, say so.
        last_start = int(nl[-1]) + 1 if len(nl) else 0
        if last_start < len(buf) and buf[last_start:].tobytes().strip():
            st.truncated = True
            st.malformed += 1
            st.warn(f"{path}: last line has no newline (capture cut mid-line); dropped it")
    starts = np.empty(len(nl), dtype=np.int64)
    starts[0:1] = 0
    starts[1:] = nl[:-1] + 1
    ends = nl.astype(np.int64)
    # strip \r
    cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    ends = ends - cr
    st.lines_read = len(starts) + (1 if st.truncated else 0)
    nonempty = ends > starts
    first = buf[np.minimum(starts, len(buf) - 1)]
    cand = nonempty & (first != 35)  # '#'
    starts, ends = starts[cand], ends[cand]
    n = len(starts)

    # --- header, vectorised -----------------------------------------------------------------
    co = np.flatnonzero(buf == 58)
    co_sp = co[(co + 1 < len(buf)) & (buf[np.minimum(co + 1, len(buf) - 1)] == 32)]
    i = np.searchsorted(co_sp, starts)
    ok = i < len(co_sp)
    tsc = np.where(ok, co_sp[np.minimum(i, len(co_sp) - 1)] if len(co_sp) else 0, 0)
    ok &= tsc < ends
    j = np.searchsorted(co, tsc + 2)
    ok &= j < len(co)
    evc = np.where(ok, co[np.minimum(j, len(co) - 1)] if len(co) else 0, 0)
    ok &= evc < ends
    # timestamp: digits[.digits] right before tsc
    frac, nfrac = _digits_back(buf, tsc, 9)
    dot = tsc - nfrac - 1
    has_dot = buf[np.maximum(dot, 0)] == 46
    sec, nsec = _digits_back(buf, np.where(has_dot, dot, tsc), 12)
    ok &= np.where(has_dot, (nfrac > 0) & (nsec > 0), nfrac > 0)
    scale = 10 ** (9 - np.clip(nfrac, 0, 9))
    ts_ns = np.where(has_dot, sec * 1_000_000_000 + frac * scale, frac)
    ts_start = np.where(has_dot, dot - nsec, tsc - nfrac)
    # cpu: the last ']' before the timestamp
    rb = np.flatnonzero(buf == 93)
    k = np.searchsorted(rb, ts_start) - 1
    ok &= k >= 0
    rbp = np.where(k >= 0, rb[np.maximum(k, 0)] if len(rb) else 0, 0)
    ok &= rbp > starts
    cpu, ncpu = _digits_back(buf, rbp, 5)
    lb = rbp - ncpu - 1
    ok &= (ncpu > 0) & (buf[np.maximum(lb, 0)] == 91)
    # pid: skip spaces, optional "( tgid)", digits, '-'
    p = _skip_back(buf, lb - 1, 32, 16)
    paren = buf[np.maximum(p, 0)] == 41  # ')'
    if paren.any():
        q = p.copy()
        for _ in range(12):
            m = paren & (q > 0) & (buf[np.maximum(q, 0)] != 40)
            if not m.any():
                break
            q = q - m
        p = np.where(paren, _skip_back(buf, q - 1, 32, 16), p)
    pid, npid = _digits_back(buf, p + 1, 8)
    dash = p - npid
    ok &= (npid > 0) & (buf[np.maximum(dash, 0)] == 45) & (dash >= starts)
    comm_s = _skip_fwd(buf, starts, dash, 32, 24)
    ev_s = _skip_fwd(buf, tsc + 1, evc, 32, 8)
    a_s = _skip_fwd(buf, evc + 1, ends, 32, 64)
    a_e = ends.copy()
    a_e = _trim_back(buf, a_s, a_e)

    rows_cpu = cpu
    rows_pid = pid
    comm_e = dash
    ev_e = evc

    # --- header, slow path for the rest ----------------------------------------------------
    bad = np.flatnonzero(~ok)
    keep = ok.copy()
    for r in bad:
        line = bytes(buf[starts[r] : ends[r]])
        m = _HDR_RE.match(line)
        if m is None:
            lm = _LOST_RE.match(line)
            if lm:
                st.lost_events += int(lm.group(2) or lm.group(3))
            elif not _SKIP_RE.match(line):
                st.malformed += 1
            continue
        base = int(starts[r])
        keep[r] = True
        ts = m.group("ts")
        if b"." in ts:
            a, b = ts.split(b".")
            ts_ns[r] = int(a) * 1_000_000_000 + int(b[:9].ljust(9, b"0"))
        else:
            ts_ns[r] = int(ts)
        rows_cpu[r] = int(m.group("cpu"))
        rows_pid[r] = int(m.group("pid"))
        comm_s[r], comm_e[r] = base + m.start("comm"), base + m.end("comm")
        ev_s[r], ev_e[r] = base + m.start("event"), base + m.end("event")
        a_s[r], a_e[r] = base + m.start("args"), base + m.end("args")
    sel = np.flatnonzero(keep)
    n = len(sel)
    if n == 0:
        if st.malformed == 0 and st.lost_events == 0:
            raise InputError(f"{path}: no trace events (not an ftrace text capture?)")
        raise InputError(f"{path}: not an ftrace text capture: {st.malformed} line(s), none an event line")
    ts_ns, rows_cpu, rows_pid = ts_ns[sel], rows_cpu[sel], rows_pid[sel]
    comm_s, comm_e, ev_s, ev_e, a_s, a_e = comm_s[sel], comm_e[sel], ev_s[sel], ev_e[sel], a_s[sel], a_e[sel]

    cols = _Cols(n)
    allrows = np.arange(n, dtype=np.int64)
    # event names → groups
    ev_arr = spans_to_arrow(buf, n, allrows, ev_s, ev_e)
    ev_dict = ev_arr.dictionary_encode()
    ev_codes = ev_dict.indices.to_numpy(zero_copy_only=False)
    names = ev_dict.dictionary.to_pylist()
    order = np.argsort(ev_codes, kind="stable")
    bounds = np.searchsorted(ev_codes[order], np.arange(len(names) + 1))
    eq = np.flatnonzero(buf == 61)
    event_out = np.empty(n, dtype=object)
    canon_names: list[str] = []
    canon_code = np.zeros(n, dtype=np.int32)
    canon_index: dict[str, int] = {}
    unknown: dict[str, int] = {}

    def _code(name):
        if name not in canon_index:
            canon_index[name] = len(canon_names)
            canon_names.append(name)
        return canon_index[name]

    for ci, name in enumerate(names):
        rows = order[bounds[ci] : bounds[ci + 1]]
        if len(rows) == 0:
            continue
        if name in MARKER_EVENTS:
            canon_code[rows] = _code("ftrace:print")
            cols.add_span("marker", rows, a_s[rows], a_e[rows])
            continue
        _parse_group(buf, eq, name, rows, a_s, a_e, cols, kprobe_groups, canon_code, _code, unknown)
    del event_out
    st.unknown_event_names = unknown
    st.unknown_events = int(sum(unknown.values()))

    frame = _assemble(buf, n, cols, ts_ns, rows_cpu, rows_pid, comm_s, comm_e, canon_names, canon_code)
    st.events_parsed = len(frame)
    if st.malformed:
        st.warn(f"{path}: {st.malformed} malformed line(s) dropped")
    return frame, st


def _trim_back(buf, s, e):
    for _ in range(8):
        m = (e > s) & ((buf[np.maximum(e - 1, 0)] == 32) | (buf[np.maximum(e - 1, 0)] == 13))
        if not m.any():
            break
        e = e - m
    return e


def _parse_group(buf, eq, name, rows, a_s, a_e, cols, kprobe_groups, canon_code, _code, unknown):
    """Fields of all lines of one event name: learn a layout, check it on every line, repeat."""
    pending = rows
    for _attempt in range(6):
        if len(pending) == 0:
            return
        r0 = int(pending[0])
        line = bytes(buf[a_s[r0] : a_e[r0]])
        kv, pre_end = _kv_spans(line, 0)
        keys = [k for k, _, _, _ in kv]
        prefix = line[:pre_end]
        kprobe = prefix.startswith(b"(") and (b" <- " in prefix or b"+0x" in prefix)
        event, known = canonical_event(name, kprobe=kprobe, kprobe_groups=kprobe_groups)
        ps = a_s[pending]
        pe = a_e[pending]
        base = np.searchsorted(eq, ps)
        ok = np.ones(len(pending), dtype=bool)
        key_starts, val_s, val_e = [], [], []
        for jj, key in enumerate(keys):
            kb = key.encode()
            idx = base + jj
            okj = idx < len(eq)
            eqj = np.where(okj, eq[np.minimum(idx, len(eq) - 1)] if len(eq) else 0, 0)
            okj &= eqj < pe
            ks = eqj - len(kb)
            okj &= ks >= ps
            for t, c in enumerate(kb):
                okj &= buf[np.maximum(ks + t, 0)] == c
            if jj == 0 and not prefix:
                okj &= ks == ps
            else:
                okj &= (ks > ps) & (buf[np.maximum(ks - 1, 0)] == 32)
            ok &= okj
            key_starts.append(ks)
            val_s.append(eqj + 1)
        if keys:
            idx = base + len(keys)
            ok &= (idx >= len(eq)) | (eq[np.minimum(idx, len(eq) - 1)] >= pe)
            for jj in range(len(keys)):
                val_e.append(key_starts[jj + 1] - 1 if jj + 1 < len(keys) else pe)
        else:
            # no key=value at all: the whole line is raw args; lines with '=' try another layout
            idx = base
            ok &= (idx >= len(eq)) | (eq[np.minimum(idx, len(eq) - 1)] >= pe)
        good = pending[ok]
        if len(good):
            canon_code[good] = _code(event)
            if not known:
                unknown[name] = unknown.get(name, 0) + len(good)
            _emit(cols, event, known, good, keys, ps[ok], [k[ok] for k in key_starts], [v[ok] for v in val_s],
                  [v[ok] for v in val_e], bool(prefix), pe[ok])
        pending = pending[~ok]
        if ok.sum() == 0:
            break
    # what is left: one line at a time
    for r in pending:
        r = int(r)
        line = bytes(buf[a_s[r] : a_e[r]])
        kv, pre_end = _kv_spans(line, int(a_s[r]))
        prefix = line[: pre_end - int(a_s[r])]
        kprobe = prefix.startswith(b"(") and (b" <- " in prefix or b"+0x" in prefix)
        event, known = canonical_event(name, kprobe=kprobe, kprobe_groups=kprobe_groups)
        canon_code[r] = _code(event)
        if not known:
            unknown[name] = unknown.get(name, 0) + 1
        one = np.array([r])
        _emit(cols, event, known, one, [k for k, _, _, _ in kv], np.array([a_s[r]]),
              [np.array([ks]) for _, ks, _, _ in kv], [np.array([vs]) for _, _, vs, _ in kv],
              [np.array([ve]) for _, _, _, ve in kv], pre_end > int(a_s[r]), np.array([pre_end]), prefix_end_abs=True)


def _emit(cols, event, known, rows, keys, ps, key_starts, val_s, val_e, has_prefix, pe, prefix_end_abs=False):
    """Route each field of a block of lines to its column or to `args`."""
    mapping = columns_for(event) if known else {}
    args_rows, args_s, args_e = [], [], []
    if has_prefix:
        pre_e = pe if prefix_end_abs else (key_starts[0] - 1 if keys else pe)
        if event == "vmalloc:alloc_vmap_area":
            # 6.12 prints "va_start: <decimal>" before the key=value fields
            cols.num.setdefault("ptr@va", []).append((rows, ps + 10, pre_e))
        args_rows.append(rows)
        args_s.append(ps)
        args_e.append(pre_e)
    used = set()
    for key, ks, vs, ve in zip(keys, key_starts, val_s, val_e):
        col = mapping.get(key)
        if col and col not in used:
            used.add(col)
            if col in NUMERIC_BASE:
                cols.num.setdefault(col, []).append((rows, vs, ve))
            elif col == "accounted":
                cols.boolv.setdefault(col, []).append((rows, vs, ve))
            else:
                cols.add_span(col, rows, vs, ve)
                if col == "gfp_flags":  # numeric gfp printed as a number (trace-cmd raw, old kernels)
                    cols.num.setdefault("gfp@maybe", []).append((rows, vs, ve))
            continue
        args_rows.append(rows)
        args_s.append(ks)
        args_e.append(ve)
    for r, s, e in zip(args_rows, args_s, args_e):
        cols.add_span("args", r, s, e)


def _assemble(buf, n, cols, ts_ns, cpu, pid, comm_s, comm_e, canon_names, canon_code) -> pd.DataFrame:
    data: dict[str, object] = {}
    data["ts_ns"] = pd.Series(ts_ns.astype(np.int64))
    data["cpu"] = pd.Series(pd.array(cpu.astype(np.int32), dtype="Int32"))
    data["pid"] = pd.Series(pd.array(pid.astype(np.int32), dtype="Int32"))
    comm = spans_to_arrow(buf, n, np.arange(n), comm_s, comm_e)
    data["comm"] = _categorical(comm)
    data["event"] = pd.Series(pd.Categorical.from_codes(canon_code, categories=pd.Index(canon_names, dtype=object)))
    for col, pieces in cols.num.items():
        if "@" in col:
            continue
        data[col] = _numeric_column(buf, n, col, pieces)
    if "ptr@va" in cols.num:
        rows, vals, okv = _gather_num(buf, cols.num["ptr@va"], 0)
        cur = data.get("ptr")
        arr = np.zeros(n, np.uint64)
        mask = np.zeros(n, bool)
        if cur is not None:
            arr = np.array(cur.to_numpy(dtype=np.uint64, na_value=0))
            mask = np.array(cur.notna().to_numpy())
        arr[rows[okv]] = vals[okv]
        mask[rows[okv]] = True
        data["ptr"] = pd.Series(pd.arrays.IntegerArray(arr, ~mask)).astype("UInt64")
    if "gfp@maybe" in cols.num:
        rows, vals, okv = _gather_num(buf, cols.num["gfp@maybe"], 0)
        if okv.any():
            cur = data.get("gfp")
            arr = np.zeros(n, np.uint64)
            mask = np.zeros(n, bool)
            if cur is not None:
                arr = np.array(cur.to_numpy(dtype=np.uint64, na_value=0))
                mask = np.array(cur.notna().to_numpy())
            arr[rows[okv]] = vals[okv]
            mask[rows[okv]] = True
            data["gfp"] = pd.Series(pd.arrays.IntegerArray(arr, ~mask)).astype("UInt64")
    for col, pieces in cols.boolv.items():
        rows = np.concatenate([p[0] for p in pieces])
        s = np.concatenate([p[1] for p in pieces])
        e = np.concatenate([p[2] for p in pieces])
        c0 = buf[np.minimum(s, len(buf) - 1)] | 0x20
        val = np.zeros(n, bool)
        mask = np.zeros(n, bool)
        t = (e > s) & ((c0 == ord("t")) | (c0 == ord("1")) | (c0 == ord("y")))
        f = (e > s) & ((c0 == ord("f")) | (c0 == ord("0")) | (c0 == ord("n")))
        val[rows] = t
        mask[rows] = t | f
        data[col] = pd.Series(pd.arrays.BooleanArray(val, ~mask))
    for col, (r, s, e) in cols.spans.items():
        arr = spans_to_arrow(buf, n, np.concatenate(r), np.concatenate(s), np.concatenate(e))
        if COLUMNS[col].dtype == "category":
            data[col] = _categorical(arr)
        else:
            data[col] = pd.Series(pd.arrays.ArrowStringArray(arr.cast(pa.large_string())))
    df = pd.DataFrame(data)
    df = coerce_events(df)
    return derive(df)


def _gather_num(buf, pieces, base):
    rows = np.concatenate([p[0] for p in pieces])
    s = np.concatenate([p[1] for p in pieces])
    e = np.concatenate([p[2] for p in pieces])
    vals, okv = parse_ints(buf, s, e, base)
    return rows, vals, okv


def _numeric_column(buf, n, col, pieces) -> pd.Series:
    rows, vals, okv = _gather_num(buf, pieces, NUMERIC_BASE[col])
    dtype = COLUMNS[col].pandas_dtype
    arr = np.zeros(n, np.uint64)
    mask = np.zeros(n, bool)
    arr[rows[okv]] = vals[okv]
    mask[rows[okv]] = True
    np_dtype = {"UInt64": np.uint64, "Int64": np.int64, "Int32": np.int32, "UInt32": np.uint32}[str(dtype)]
    if np_dtype in (np.int64, np.int32):
        a = arr.view(np.int64)
        if np_dtype is np.int32:
            mask &= (a >= -(2**31)) & (a < 2**31)
            a = np.where(mask, a, 0)
        values = a.astype(np_dtype)
    else:
        if np_dtype is np.uint32:
            mask &= arr < 2**32
            arr = np.where(mask, arr, 0)
        values = arr.astype(np_dtype)
    return pd.Series(pd.arrays.IntegerArray(values, ~mask))


def _categorical(arr: pa.Array) -> pd.Series:
    d = arr.dictionary_encode()
    codes = d.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    cats = d.dictionary.to_pylist()
    return pd.Series(pd.Categorical.from_codes(codes, categories=pd.Index(cats, dtype=object)))


def load_ftrace_text(path: str, *, kprobe_groups=None, fmt: str = "ftrace-text") -> tuple[pd.DataFrame, IngestStats]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_ftrace_text(data, path=path, fmt=fmt, kprobe_groups=kprobe_groups)


__all__ = ["parse_ftrace_text", "load_ftrace_text", "canonical_event", "kprobe_groups_from_defs", "empty_events"]

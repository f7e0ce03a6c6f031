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
import pyarrow.compute as pc

from memtrace.errors import InputError
from memtrace.tables.events import (
    COLUMNS,
    EVENT_COLUMNS,
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


#: largest order whose 2^order pages / 2^order * PAGE_SIZE bytes fit the Int64 columns; a page
#: event with an order outside [0, these] (a damaged capture) gets null pages / bytes
MAX_ORDER_PAGES = 62
MAX_ORDER_BYTES = 50
_PAGE_EVENTS = ("kmem:mm_page_alloc", "kmem:mm_page_free", "kmem:mm_page_free_batched", "kmem:mm_page_alloc_zone_locked")
_GFP_EVENTS = ("kmem:kmalloc", "kmem:kmalloc_node", "kmem:mm_page_alloc")


def _masked(s: pd.Series):
    """(values, valid) of a nullable column without copying."""
    a = s.array
    return a._data, ~a._mask


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """Per-event derived columns (pages/bytes of page events, accounted from gfp). In place.

    Works on the columns' numpy buffers; `_derive_pandas` is the same in pandas operations and
    takes over for input that is not in the schema's dtypes."""
    dt = {c: str(df[c].dtype) for c in ("event", "order", "pages", "bytes", "accounted", "gfp", "gfp_flags")}
    if dt != {"event": "category", "order": "Int32", "pages": "Int64", "bytes": "Int64", "accounted": "boolean",
              "gfp": "UInt64", "gfp_flags": "category"}:
        return _derive_pandas(df)
    n = len(df)
    ev = df["event"].array
    cats = list(ev.categories)
    codes = ev.codes

    def is_ev(names):
        want = [i for i, c in enumerate(cats) if c in names]
        if not want:
            return np.zeros(n, bool)
        return np.isin(codes, want)

    page_ev = is_ev(_PAGE_EVENTS)
    o_val, o_ok = _masked(df["order"])
    if page_ev.any():
        # only the page events' rows change: work on those (the frame may be large)
        pr = np.flatnonzero(page_ev)
        batched_r = is_ev(("kmem:mm_page_free_batched",))[pr] & ~o_ok[pr]
        ook_r = o_ok[pr] | batched_r
        o64 = np.where(ook_r, o_val[pr].astype(np.int64), 0)
        o64[batched_r] = 0
        in_p = ook_r & (o64 >= 0) & (o64 <= MAX_ORDER_PAGES)
        in_b = in_p & (o64 <= MAX_ORDER_BYTES)
        pw = np.power(np.int64(2), np.where(in_p, o64, 0))
        del o64
        for col, mult, okc in (("pages", 1, in_p), ("bytes", PAGE_SIZE, in_b)):
            v_old, ok_old = _masked(df[col])
            vals = v_old.copy()
            ok = ok_old.copy()
            del v_old, ok_old
            vals[pr] = np.where(okc, pw * mult, 0)
            ok[pr] = okc
            vals[~ok] = 0
            df[col] = pd.arrays.IntegerArray(vals, ~ok)
            del vals, ok
        del pw
        if batched_r.any():
            batched = np.zeros(n, bool)
            batched[pr[batched_r]] = True
            df["order"] = pd.arrays.IntegerArray(np.where(batched, 0, o_val).astype(np.int32), ~(o_ok | batched))
            o_val, o_ok = _masked(df["order"])
    p_val, p_ok = _masked(df["pages"])
    kp = ~p_ok & o_ok & ~page_ev & (o_val >= 0) & (o_val <= MAX_ORDER_PAGES)
    if kp.any():
        pages = np.where(kp, np.power(np.int64(2), np.where(kp, o_val.astype(np.int64), 0)), p_val)
        df["pages"] = pd.arrays.IntegerArray(pages, ~(p_ok | kp))
    a_val, a_ok = _masked(df["accounted"])
    by_gfp = is_ev(_GFP_EVENTS) & ~a_ok
    if by_gfp.any():
        acc = np.zeros(n, bool)
        acc_ok = np.zeros(n, bool)
        g_val, g_ok = _masked(df["gfp"])
        if g_ok.any():
            acc = (g_val & np.uint64(GFP_ACCOUNT)) != 0
            acc_ok = g_ok.copy()
        f = df["gfp_flags"].array
        if (f.codes >= 0).any():
            has = np.array(["ACCOUNT" in str(c) for c in f.categories] + [False], bool)
            fc = f.codes.astype(np.int64)
            fill = ~acc_ok & (fc >= 0)
            acc = np.where(fill, has[fc], acc)
            acc_ok |= fill
        new_val = np.where(by_gfp, acc, a_val)
        new_ok = np.where(by_gfp, acc_ok, a_ok)
        df["accounted"] = pd.arrays.BooleanArray(new_val & new_ok, ~new_ok)
    return df


def _derive_pandas(df: pd.DataFrame) -> pd.DataFrame:
    """`derive` in plain pandas: the definition, and the path for odd input (dtypes not the schema's)."""
    ev = df["event"].astype(str) if len(df) else pd.Series([], dtype=str)
    page_ev = ev.isin(["kmem:mm_page_alloc", "kmem:mm_page_free", "kmem:mm_page_free_batched", "kmem:mm_page_alloc_zone_locked"])

    def order_upto(order, top):
        return ((order >= 0) & (order <= top)).fillna(False).astype(bool)

    if page_ev.any():
        order = df["order"].astype("Int64")
        batched = ev.eq("kmem:mm_page_free_batched") & order.isna()
        order = order.mask(batched, 0)
        in_p = page_ev & order_upto(order, MAX_ORDER_PAGES)
        in_b = page_ev & order_upto(order, MAX_ORDER_BYTES)
        pw = 2 ** order.where(in_p, 0).fillna(0)  # masked values are computed on too: keep them in range
        pages = pw.where(in_p, pd.NA).astype("Int64")
        nbytes = (pw.where(in_b, 0) * PAGE_SIZE).where(in_b, pd.NA).astype("Int64")
        df["pages"] = df["pages"].astype("Int64").where(~page_ev, pages)
        df["bytes"] = df["bytes"].astype("Int64").where(~page_ev, nbytes)
        df["order"] = df["order"].astype("Int32").where(~batched, 0)
    # kprobes: order= without nr= → pages
    kp = df["pages"].isna() & df["order"].notna() & ~page_ev & order_upto(df["order"].astype("Int64"), MAX_ORDER_PAGES)
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


_MAX64 = (1 << 64) - 1


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
        if k == 19:  # the 20th decimal digit: past 2^64 - 1? (16 hex digits always fit)
            bad |= act & (val > (np.uint64(_MAX64) - d.astype(np.uint64)) // np.uint64(10))
        ok &= ~bad
        act &= ~bad
        val = np.where(act, val * mult + d.astype(np.uint64), val)
    ok &= ~(neg & (val > np.uint64(1 << 63)))  # below -2^63
    val = np.where(neg, (~val) + np.uint64(1), val)
    return val, ok


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
# SWAR: eight bytes at any offset of a chunk as one uint64 (`_u64_view`), tested byte-wise with
# exact carry-free tricks; every flag is bit 7 of its byte.

_u = np.uint64


def _rep(b: int) -> np.uint64:
    return _u(int.from_bytes(bytes([b]) * 8, "little"))


_H80 = _rep(0x80)
_L7F = _rep(0x7F)
_ZERO = _rep(0x30)
_SPACE = _rep(0x20)
_ONE = _u(1)
_BYTEIDX = _u(0x0001020304050607)
#: the low k bytes set, k = 0..8
_LOW = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
#: '0' in the low k bytes
_LOWZERO = _LOW & _ZERO
_PAD = 16  # zero bytes before a chunk, so 8-byte reads ending at a line start stay inside
_TAIL = 256  # zero bytes after it, for the header reads of a short last line


def _u64_view(pbuf) -> np.ndarray:
    return np.ndarray(buffer=pbuf, dtype="<u8", shape=(len(pbuf) - 7,), strides=(1,))


def _eqf(x, b):
    y = x ^ _rep(b)
    return ~(((y & _L7F) + _L7F) | y) & _H80


def _ltf(x, b):
    """bytes < b (b <= 0x80)"""
    return ~(((x & _L7F) + _rep(0x80 - b)) | x) & _H80


def _digf(x):
    t = x ^ _ZERO
    return ~(((t & _L7F) + _rep(0x76)) | t) & _H80


def _hexf(x):
    lo = (x | _SPACE) ^ _rep(0x60)
    return _digf(x) | (_ltf(lo, 7) & ~_eqf(lo, 0))


def _first(f):
    """index of the lowest flagged byte; 8 when none"""
    lb = f & (~f + _ONE)
    return np.where(f == 0, 8, ((lb >> _u(7)) * _BYTEIDX) >> _u(56)).astype(np.int64)


def _bmask(f):
    """flag bits → 0xFF bytes"""
    return (f >> _u(7)) * _u(0xFF)


def _dec8(x):
    """8 ASCII digits, the first in the lowest byte → value"""
    x = x - _ZERO
    x = (x * _u(10) + (x >> _u(8))) & _u(0x00FF00FF00FF00FF)
    x = (x * _u(100) + (x >> _u(16))) & _u(0x0000FFFF0000FFFF)
    return (x * _u(10000) + (x >> _u(32))) & _u(0xFFFFFFFF)


def _hex8(x):
    v = (x & _rep(0x0F)) + ((x >> _u(6)) & _rep(1)) * _u(9)
    v = ((v << _u(4)) | (v >> _u(8))) & _u(0x00FF00FF00FF00FF)
    v = ((v << _u(8)) | (v >> _u(16))) & _u(0x0000FFFF0000FFFF)
    return ((v << _u(16)) | (v >> _u(32))) & _u(0xFFFFFFFF)


def _top(k):
    """mask of the top k bytes (k = 0..8)"""
    return ~_LOW[8 - k]


def _word_value(lo, hi, mlo, mhi, hex_: bool):
    flags, conv = (_hexf, _hex8) if hex_ else (_digf, _dec8)
    ok = (flags(lo) & mlo & _H80) == (mlo & _H80)
    val = conv((lo & mlo) | (_ZERO & ~mlo))
    if hi is not None:
        ok &= (flags(hi) & mhi & _H80) == (mhi & _H80)
        h = conv((hi & mhi) | (_ZERO & ~mhi))
        val = val | (h << _u(32)) if hex_ else val + h * _u(100000000)
    return val, ok


def _parse_nums(buf, U, s, e, base) -> tuple[np.ndarray, np.ndarray]:
    """`parse_ints` with 8-byte reads: same values, same validity."""
    s0 = s = np.asarray(s, np.int64)
    e = np.asarray(e, np.int64)
    n = len(s)
    if n == 0:
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    neg = (s < e) & (buf[s] == 45)
    s = s + neg
    hx = (e - s >= 2) & (buf[s] == 48) & ((buf[s + 1] | 0x20) == 120)
    s = s + 2 * hx
    is_hex = hx | (base == 16)
    ln = e - s
    ok = (ln > 0) & (ln <= np.where(is_hex, 16, 20))
    lnc = np.clip(ln, 0, 16)
    klo = np.minimum(lnc, 8)
    khi = lnc - klo
    lo = U[e - 8]
    mlo = _top(klo)
    hi = mhi = None
    if (khi > 0).any():
        hi = U[e - 16]
        mhi = _top(khi)
    nh = int(is_hex.sum())
    if nh == n:
        val, okv = _word_value(lo, hi, mlo, mhi, True)
    elif nh == 0:
        val, okv = _word_value(lo, hi, mlo, mhi, False)
    else:
        vh, okh = _word_value(lo, hi, mlo, mhi, True)
        vd, okd = _word_value(lo, hi, mlo, mhi, False)
        val = np.where(is_hex, vh, vd)
        okv = np.where(is_hex, okh, okd)
    ok &= okv
    ok &= ~(neg & (val > _u(1 << 63)))  # below -2^63, as `parse_ints`
    val = np.where(neg, (~val) + _ONE, val)
    long_dec = (ln > 16) & (ln <= 20) & ~is_hex
    if long_dec.any():
        r = np.flatnonzero(long_dec)
        v2, ok2 = parse_ints(buf, s0[r], e[r], base)
        val[r] = v2
        ok[r] = ok2
    return val, ok


def _binary_view(buf, U, pbuf, nrows, rows, s, e) -> pa.Array:
    """A binary_view array of `nrows` whose row rows[i] is the bytes [s[i], e[i]) of the chunk."""
    rows = np.asarray(rows, np.int64)
    s = np.asarray(s, np.int64)
    ln = np.maximum(np.asarray(e, np.int64) - s, 0)
    views = np.zeros((nrows, 2), np.uint64)
    A = U[s]
    B = U[s + 8]
    inline = ln <= 12
    m0 = _LOW[np.clip(ln, 0, 4) + 4]  # len (4 bytes) + up to 4 data bytes, as a mask of the low half
    w0 = (ln.astype(np.uint64) & _u(0xFFFFFFFF)) | (A << _u(32))
    w0 = np.where(inline, w0 & m0, ln.astype(np.uint64) | (A << _u(32)))
    w1i = ((A >> _u(32)) | (B << _u(32))) & _LOW[np.clip(ln - 4, 0, 8)]
    w1 = np.where(inline, w1i, s.astype(np.uint64) << _u(32))
    views[rows, 0] = w0
    views[rows, 1] = w1
    if len(rows) == nrows:
        validity = None
        nulls = 0
    else:
        has = np.zeros(nrows, bool)
        has[rows] = True
        validity = pa.py_buffer(np.packbits(has, bitorder="little"))
        nulls = int(nrows - len(rows))
    return pa.Array.from_buffers(pa.binary_view(), nrows, [validity, pa.py_buffer(views), pa.py_buffer(pbuf)], null_count=nulls)


def _to_large_string(arr: pa.Array) -> pa.Array:
    """binary → large_string; bytes that are not UTF-8 are decoded with replacement."""
    try:
        return arr.cast(pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        vals = arr.cast(pa.large_binary()).to_pylist()
        return pa.array([None if v is None else v.decode("utf-8", "replace") for v in vals], pa.large_string())


# ---------------------------------------------------------------------------------------------
# Fast header: a layout (column offsets of one real line) checked on every line with 8-byte reads


@dataclass(frozen=True)
class _Layout:
    D: int  # '-' between comm and pid
    Wp: int  # pid field width (digits, then spaces up to '[')
    rb: int  # ']'
    ncpu: int
    fe: int  # end of the flags field (or rb + 1 when none)
    dot: int
    tc: int  # timestamp colon
    nf: int  # fraction digits
    words: tuple  # (offset, literal mask, literal value, digit flags, non-blank flags, non-digit flags)


def _learn_layout(line: bytes) -> _Layout | None:
    m = _HDR_RE.match(line)
    if m is None:
        return None
    D = m.start("pid") - 1
    lb, rb = m.start("cpu") - 1, m.end("cpu")
    if line[m.end("pid") : lb].strip(b" ") or D > 24:
        return None  # tgid column, tabs: the per-line path
    Wp = lb - D - 1
    ncpu = rb - lb - 1
    ts_s, tc = m.start("ts"), m.end("ts")
    ts = line[ts_s:tc]
    if b"." not in ts or Wp > 8 or ncpu > 8 or line[tc + 1 : tc + 2] != b" ":
        return None
    dot = ts_s + ts.index(b".")
    nf = tc - dot - 1
    between = line[rb + 1 : ts_s]
    toks = between.split()
    if len(toks) > 1 or any(c in b"\t\n\r\x0b\x0c" for c in between):
        return None
    if toks:
        fs = rb + 1 + between.index(toks[0])
        fe = fs + len(toks[0])
        if fs == rb + 1:
            return None
    else:
        fs = fe = rb + 1
    if not (2 <= dot - fe <= 8) or not (1 <= nf <= 9) or tc > 160:
        return None
    cls = {}  # offset -> ('lit', byte) | 'dig' | 'flag0' | 'flag'
    cls[D] = ("lit", 45)
    cls[lb] = ("lit", 91)
    for p in range(lb + 1, rb):
        cls[p] = "dig"
    cls[rb] = ("lit", 93)
    for p in range(rb + 1, fs):
        cls[p] = ("lit", 32)
    for p in range(fs, fe):
        cls[p] = "flag0" if p == fs else "flag"
    cls[dot] = ("lit", 46)
    for p in range(dot + 1, tc):
        cls[p] = "dig"
    cls[tc] = ("lit", 58)
    cls[tc + 1] = ("lit", 32)
    words = []
    for off in range(D, tc + 2, 8):
        lm = lv = dm = nm = ndm = 0
        for i in range(8):
            c = cls.get(off + i)
            if c is None:
                continue
            if isinstance(c, tuple):
                lm |= 0xFF << (8 * i)
                lv |= c[1] << (8 * i)
            elif c == "dig":
                dm |= 0x80 << (8 * i)
            else:
                nm |= 0x80 << (8 * i)
                if c == "flag0":
                    ndm |= 0x80 << (8 * i)
        words.append((off, _u(lm), _u(lv), _u(dm), _u(nm), _u(ndm)))
    return _Layout(D, Wp, rb, ncpu, fe, dot, tc, nf, tuple(words))


_NAME_K = (_u(0x9E3779B97F4A7C15), _u(0xC2B2AE3D27D4EB4F), _u(0x165667B19E3779F9), _u(0xD6E8FEB86659FD93))


def _fast_header(buf, U, s, e, L: _Layout):
    """Header fields of lines [s, e) that follow layout L exactly; `ok` marks them."""
    n = len(s)
    ok = np.ones(n, bool)
    for off, lm, lv, dm, nm, ndm in L.words:
        W = U[s + off]
        ok &= (W & lm) == lv
        if dm or ndm:
            df = _digf(W)
            if dm:
                ok &= (df & dm) == dm
            if ndm:
                ok &= (df & ndm) == 0
        if nm:
            ok &= (_ltf(W, 0x21) & nm) == 0
    # pid: digits then spaces
    P = U[s + (L.D + 1)]
    fm = _LOW[L.Wp] & _H80
    d = _digf(P) & fm
    sp = _eqf(P, 32) & fm
    ok &= ((d | sp) == fm) & (d != 0) & (sp != 0) & (d < (sp & (~sp + _ONE)))
    k = np.bitwise_count(d).astype(np.int64)
    pid = _dec8((P << ((8 - k) * 8).astype(np.uint64)) | _LOWZERO[8 - k])
    # cpu
    C = U[s + (L.rb - 8)]
    tm = _top(L.ncpu)
    cpu = _dec8((C & tm) | (_ZERO & ~tm))
    # seconds: spaces then digits, right-aligned before the dot
    S = U[s + (L.dot - 8)]
    rm = _top(L.dot - L.fe) & _H80
    d = _digf(S) & rm
    sp = _eqf(S, 32) & rm
    ok &= ((d | sp) == rm) & (d != 0) & (sp != 0) & (sp < (d & (~d + _ONE)))
    bm = _bmask(d)
    secs = _dec8((S & bm) | (_ZERO & ~bm))
    F = U[s + (L.tc - 8)]
    tm = _top(min(L.nf, 8))
    frac = _dec8((F & tm) | (_ZERO & ~tm))
    if L.nf == 9:
        frac = frac + (buf[s + (L.dot + 1)].astype(np.uint64) - _u(48)) * _u(100000000)
    ts = (secs * _u(1_000_000_000) + frac * _u(10 ** (9 - L.nf))).view(np.int64)
    # comm: [first non-space, D); no '[' or ')' in it (so the regex's lazy comm ends at the same '-')
    cs = np.full(n, L.D, np.int64)
    found = np.zeros(n, bool)
    for off in range(0, L.D, 8):
        W = U[s + off]
        m = _LOW[min(8, L.D - off)] & _H80
        ok &= ((_eqf(W, 91) | _eqf(W, 41)) & m) == 0
        f = _first(~_eqf(W, 32) & m)
        hit = ~found & (f < 8)
        cs = np.where(hit, off + f, cs)
        found |= hit
    c0 = buf[s + cs]
    ok &= ~(found & (c0 >= 9) & (c0 <= 13))
    # event name: up to 31 bytes before ':', no blank in it
    E = s + (L.tc + 2)
    words = []
    pos = np.full(n, 64, np.int64)
    wpos = np.full(n, 64, np.int64)
    for i in range(4):
        W = U[E + 8 * i]
        words.append(W)
        fc = _first(_eqf(W, 58))
        fw = _first(_ltf(W, 0x21))
        pos = np.where((pos == 64) & (fc < 8), 8 * i + fc, pos)
        wpos = np.where((wpos == 64) & (fw < 8), 8 * i + fw, wpos)
        if i >= 1 and not ((pos == 64) & (wpos == 64) & ok).any():
            break
    ok &= (pos >= 1) & (pos < 8 * len(words)) & (wpos > pos)
    h = np.zeros(n, np.uint64)
    masked = []
    for i, W in enumerate(words):
        Wm = W & _LOW[np.clip(pos - 8 * i, 0, 8)]
        masked.append(Wm)
        h ^= Wm * _NAME_K[i]
    h ^= pos.astype(np.uint64)
    okr = np.flatnonzero(ok)
    codes = np.full(n, -1, np.int64)
    names: list[bytes] = []
    if len(okr):
        c, _ = pd.factorize(h[okr])
        c = c.astype(np.int64)
        first = np.flatnonzero(~pd.Series(c).duplicated().to_numpy())
        same = np.ones(len(okr), bool)
        for Wm in masked:  # a hash collision would show here
            w = Wm[okr]
            same &= w == w[first][c]
        ok[okr[~same]] = False
        codes[okr] = c
        fr = okr[first]
        names = [bytes(buf[E[f] : E[f] + pos[f]]) for f in fr]
    # args: after ': ' and any spaces; no blank at the end of the line
    A0 = E + pos + 1
    A = U[A0]
    nsp = _first(~_eqf(A, 32) & _H80)
    a_s = A0 + nsp
    ok &= (nsp < 8) & (a_s < e)
    c0 = buf[a_s]
    ok &= (c0 < 9) | (c0 > 13)
    c1 = buf[e - 1]
    ok &= (c1 != 32) & ((c1 < 9) | (c1 > 13))
    return ok, ts, cpu.astype(np.int64), pid.astype(np.int64), s + cs, s + L.D, codes, names, a_s


def _match_before(U, pos, pat: bytes):
    """rows whose bytes ending at `pos` (inclusive) are `pat`"""
    ok = None
    end = len(pat)
    k = 0
    while end > 0:
        take = min(8, end)
        piece = pat[end - take : end]
        W = U[pos - (7 + 8 * k)]
        tm = _top(take)
        r = (W & tm) == _u(int.from_bytes(piece.rjust(8, b"\0"), "little"))
        ok = r if ok is None else ok & r
        end -= take
        k += 1
    return ok


# ---------------------------------------------------------------------------------------------
# One chunk of whole lines


class _Pieces:
    """Spans and values found in one chunk, by column: (rows, starts, ends) arrays."""

    def __init__(self):
        self.num: dict[str, list] = {}
        self.cat: dict[str, list] = {}
        self.boolv: dict[str, list] = {}
        self.marker: list = []
        self.args: dict[int, list] = {}

    @staticmethod
    def _add(d, key, rows, s, e):
        d.setdefault(key, []).append((rows, s, e))


class _Registry:
    """Global categories (first-appearance order) across chunks."""

    def __init__(self):
        self.by_bytes: dict[bytes, int] = {}
        self.by_str: dict[str, int] = {}
        self.values: list[str] = []

    def code_str(self, sv: str) -> int:
        c = self.by_str.get(sv)
        if c is None:
            c = self.by_str[sv] = len(self.values)
            self.values.append(sv)
        return c

    def codes(self, arr: pa.Array) -> np.ndarray:
        d = arr.dictionary_encode()
        idx = d.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        vals = d.dictionary.cast(pa.large_binary()).to_pylist()
        remap = np.empty(len(vals) + 1, np.int32)
        remap[-1] = -1
        get = self.by_bytes.get
        for i, v in enumerate(vals):
            c = get(v)
            if c is None:
                c = self.by_bytes[v] = self.code_str(v.decode("utf-8", "replace"))
            remap[i] = c
        return remap[idx]


_NUM_DTYPES = {"UInt64": np.uint64, "Int64": np.int64, "Int32": np.int32, "UInt32": np.uint32}


class _TextParser:
    def __init__(self, st: IngestStats, kprobe_groups, fast: bool = True):
        self.st = st
        self.kprobe_groups = kprobe_groups
        self.fast = fast
        self.layouts: list[_Layout] = []
        self.cats: dict[str, _Registry] = {c: _Registry() for c in ("comm", "call_site", "gfp_flags", "cgroup_path")}
        self.events = _Registry()
        self.unknown: dict[str, int] = {}
        self.chunks: list[dict] = []
        self.canon: dict[tuple[bytes, bool], tuple[int, bool, str]] = {}
        #: event lines dropped as malformed: timestamp, cpu or pid too large for its column
        self.out_of_range = 0

    # --- event names ---
    def _canon(self, name: bytes, kprobe: bool):
        key = (name, kprobe)
        r = self.canon.get(key)
        if r is None:
            sname = name.decode("utf-8", "replace")
            event, known = canonical_event(sname, kprobe=kprobe, kprobe_groups=self.kprobe_groups)
            r = self.canon[key] = (self.events.code_str(event), known, event)
        return r

    def _count_unknown(self, name: bytes, k: int):
        sname = name.decode("utf-8", "replace")
        self.unknown[sname] = self.unknown.get(sname, 0) + k

    # --- a chunk: pbuf holds _PAD zero bytes, the chunk's whole lines, _PAD zero bytes ---
    def chunk(self, pbuf: bytearray, nbytes: int):
        st = self.st
        buf = np.frombuffer(pbuf, dtype=np.uint8)
        U = _u64_view(pbuf)
        body = buf[_PAD : _PAD + nbytes]
        nl = np.flatnonzero(body == 10) + _PAD
        st.lines_read += len(nl)
        if len(nl) == 0:
            return
        starts = np.empty(len(nl), np.int64)
        starts[0] = _PAD
        starts[1:] = nl[:-1] + 1
        ends = nl.astype(np.int64)
        ends -= (ends > starts) & (buf[ends - 1] == 13)
        cand = (ends > starts) & (buf[starts] != 35)
        s, e = starts[cand], ends[cand]
        nc = len(s)
        ok = np.zeros(nc, bool)
        ts = np.zeros(nc, np.int64)
        cpu = np.zeros(nc, np.int64)
        pid = np.zeros(nc, np.int64)
        cm_s = np.zeros(nc, np.int64)
        cm_e = np.zeros(nc, np.int64)
        a_s = np.zeros(nc, np.int64)
        name_id = np.full(nc, -1, np.int64)
        names: list[bytes] = []
        name_index: dict[bytes, int] = {}

        def nid(nm: bytes) -> int:
            i = name_index.get(nm)
            if i is None:
                i = name_index[nm] = len(names)
                names.append(nm)
            return i

        if self.fast and nc:
            todo = np.arange(nc)
            learnt = 0
            li = 0
            while len(todo):
                if li < len(self.layouts):
                    L = self.layouts[li]
                    li += 1
                    sample = False
                else:
                    if learnt >= 6:
                        break
                    learnt += 1
                    L = _learn_layout(bytes(buf[s[todo[0]] : e[todo[0]]]))
                    if L is None or L in self.layouts:
                        todo = todo[1:]  # an odd line: the regex will read it
                        continue
                    self.layouts.append(L)
                    li = len(self.layouts)
                    sample = True
                okL, tsL, cpuL, pidL, csL, ceL, codesL, namesL, asL = _fast_header(buf, U, s[todo], e[todo], L)
                if okL.any():
                    g = todo[okL]
                    ok[g] = True
                    ts[g], cpu[g], pid[g], cm_s[g], cm_e[g], a_s[g] = tsL[okL], cpuL[okL], pidL[okL], csL[okL], ceL[okL], asL[okL]
                    remap = np.array([nid(nm) for nm in namesL], np.int64)
                    name_id[g] = remap[codesL[okL]]
                if sample:
                    okL[0] = True  # the line it was learnt from is done either way
                todo = todo[~okL]
        # the rest: a regex per line
        keep = ok.copy()
        out_of_range = 0
        for r in np.flatnonzero(~ok):
            base = int(s[r])
            line = bytes(buf[base : e[r]])
            m = _HDR_RE.match(line)
            if m is None:
                lm = _LOST_RE.match(line)
                if lm:
                    st.lost_events += int(lm.group(2) or lm.group(3))
                elif not _SKIP_RE.match(line):
                    st.malformed += 1
                continue
            t = m.group("ts")
            if b"." in t:
                a, b = t.split(b".")
                t_ns = int(a) * 1_000_000_000 + int(b[:9].ljust(9, b"0"))
            else:
                t_ns = int(t)
            c_, p_ = int(m.group("cpu")), int(m.group("pid"))
            if t_ns >= 1 << 63 or c_ >= 1 << 31 or p_ >= 1 << 31:  # does not fit ts_ns / cpu / pid
                st.malformed += 1
                out_of_range += 1
                continue
            keep[r] = True
            ts[r], cpu[r], pid[r] = t_ns, c_, p_
            cm_s[r], cm_e[r] = base + m.start("comm"), base + m.end("comm")
            name_id[r] = nid(m.group("event"))
            a_s[r] = base + m.start("args")
            e[r] = base + m.end("args")
        self.out_of_range += out_of_range
        sel = np.flatnonzero(keep)
        n = len(sel)
        if n == 0:
            return
        ts, cpu, pid, cm_s, cm_e, a_s, a_e, name_id = ts[sel], cpu[sel], pid[sel], cm_s[sel], cm_e[sel], a_s[sel], e[sel], name_id[sel]
        pc_ = _Pieces()
        ev_code = np.zeros(n, np.int32)
        ctx = _Ctx(buf, U, pbuf, a_s, a_e, pc_, ev_code)
        if self.fast:
            eq = np.flatnonzero(body == 61) + _PAD
            ctx.eq = eq
            ctx.eqb = np.searchsorted(eq, a_s)
            ctx.eqn = np.searchsorted(eq, a_e) - ctx.eqb
        order = np.argsort(name_id, kind="stable")
        bounds = np.searchsorted(name_id[order], np.arange(len(names) + 1))
        for i, nm in enumerate(names):
            rows = order[bounds[i] : bounds[i + 1]]
            if len(rows) == 0:
                continue
            if nm in (b"print", b"tracing_mark_write"):
                ev_code[rows] = self._canon(nm, False)[0]
                pc_.marker.append((rows, a_s[rows], a_e[rows]))
                continue
            if self.fast:
                slow = self._group_fast(ctx, nm, rows)
            else:
                slow = list(rows)
            if slow:
                self._group_slow(ctx, nm, sorted(slow))
        self.chunks.append(self._finish_chunk(ctx, n, ts, cpu, pid, cm_s, cm_e, ev_code))

    # --- fields, fast: learn a layout from one line, check it on all lines of the group ---
    def _group_fast(self, ctx, nm: bytes, pending) -> list:
        buf, U, eq = ctx.buf, ctx.U, ctx.eq
        slow = []
        attempts = 0
        while len(pending) and attempts < 8:
            attempts += 1
            r0 = int(pending[0])
            line = bytes(buf[ctx.a_s[r0] : ctx.a_e[r0]])
            kv, pre_end = _kv_spans(line, 0)
            keys = [k.encode() for k, _, _, _ in kv]
            prefix = line[:pre_end]
            kprobe = prefix.startswith(b"(") and (b" <- " in prefix or b"+0x" in prefix)
            m = len(keys)
            ps = ctx.a_s[pending]
            pe = ctx.a_e[pending]
            ok = ctx.eqn[pending] == m
            if m and len(eq) == 0:
                ok[:] = False
            b = ctx.eqb[pending]
            eqs, kss = [], []
            for j, key in enumerate(keys):
                eqj = eq[np.minimum(b + j, len(eq) - 1)] if len(eq) else np.zeros(len(pending), np.int64)
                pat = (b" " if (j or prefix) else b"") + key + b"="
                ok &= _match_before(U, eqj, pat)
                ks = eqj - len(key)
                if j == 0 and not prefix:
                    ok &= ks == ps
                eqs.append(eqj)
                kss.append(ks)
            vss = [q + 1 for q in eqs]
            ves = [kss[j + 1] - 1 for j in range(m - 1)] + ([pe] if m else [])
            for j in range(m - 1):
                ok &= (ves[j] == vss[j]) | (buf[ves[j] - 1] != 32)
            pre_e = kss[0] - 1 if (prefix and m) else pe
            if prefix:
                ok &= (pre_e > ps) & (buf[pre_e - 1] != 32)
                # the kprobe test of each line's own prefix
                paren = buf[ps] == 40
                kp = np.zeros(len(pending), bool)
                if paren.any():
                    pr = np.flatnonzero(paren)
                    v = _binary_view(buf, U, ctx.pbuf, len(pr), np.arange(len(pr)), ps[pr], pre_e[pr]).cast(pa.large_binary())
                    hit = pc.or_(pc.match_substring(v, " <- "), pc.match_substring(v, "+0x"))
                    kp[pr] = hit.to_numpy(zero_copy_only=False)
                ok &= kp == kprobe
            if not ok[0]:
                slow.append(r0)
                ok[0] = False
            if ok.any():
                g = pending[ok]
                code, known, event = self._canon(nm, kprobe)
                ctx.ev_code[g] = code
                if not known:
                    self._count_unknown(nm, len(g))
                self._emit_fast(ctx, event, known, g, keys, ps[ok], pre_e[ok] if prefix else None,
                                [k[ok] for k in kss], [v[ok] for v in vss], [v[ok] for v in ves])
            keep = ~ok
            keep[0] = False
            pending = pending[keep]
        return slow + list(pending)

    def _emit_fast(self, ctx, event, known, rows, keys, ps, pre_e, kss, vss, ves):
        p = ctx.pieces
        mapping = columns_for(event) if known else {}
        run_s = run_e = None
        part = 0
        if pre_e is not None:
            run_s, run_e = ps, pre_e
            if event == "vmalloc:alloc_vmap_area":
                p._add(p.num, "ptr@va", rows, ps + 10, pre_e)
        used = set()
        for key, ks, vs, ve in zip(keys, kss, vss, ves):
            col = mapping.get(key.decode())
            if col and col not in used:
                used.add(col)
                self._route(p, col, rows, vs, ve)
                if run_s is not None:
                    p._add(p.args, part, rows, run_s, run_e)
                    part += 1
                    run_s = None
                continue
            if run_s is None:
                run_s = ks
            run_e = ve
        if run_s is not None:
            p._add(p.args, part, rows, run_s, run_e)

    @staticmethod
    def _route(p, col, rows, vs, ve):
        if col in NUMERIC_BASE:
            p._add(p.num, col, rows, vs, ve)
        elif col == "accounted":
            p._add(p.boolv, col, rows, vs, ve)
        else:
            p._add(p.cat, col, rows, vs, ve)
            if col == "gfp_flags":  # numeric gfp printed as a number (trace-cmd raw, old kernels)
                p._add(p.num, "gfp@maybe", rows, vs, ve)

    # --- fields, one line at a time (the reference) ---
    def _group_slow(self, ctx, nm: bytes, rows):
        buf = ctx.buf
        acc: dict = {}

        def add(kind, key, r, s_, e_):
            lst = acc.get((kind, key))
            if lst is None:
                lst = acc[(kind, key)] = ([], [], [])
            lst[0].append(r)
            lst[1].append(s_)
            lst[2].append(e_)

        for r in rows:
            r = int(r)
            base = int(ctx.a_s[r])
            line = bytes(buf[base : ctx.a_e[r]])
            kv, pre_end = _kv_spans(line, base)
            prefix = line[: pre_end - base]
            kprobe = prefix.startswith(b"(") and (b" <- " in prefix or b"+0x" in prefix)
            code, known, event = self._canon(nm, kprobe)
            ctx.ev_code[r] = code
            if not known:
                self._count_unknown(nm, 1)
            mapping = columns_for(event) if known else {}
            part = 0
            if pre_end > base:
                if event == "vmalloc:alloc_vmap_area":
                    add("num", "ptr@va", r, base + 10, pre_end)
                add("args", part, r, base, pre_end)
                part += 1
            used = set()
            for key, ks, vs, ve in kv:
                col = mapping.get(key)
                if col and col not in used:
                    used.add(col)
                    if col in NUMERIC_BASE:
                        add("num", col, r, vs, ve)
                    elif col == "accounted":
                        add("boolv", col, r, vs, ve)
                    else:
                        add("cat", col, r, vs, ve)
                        if col == "gfp_flags":
                            add("num", "gfp@maybe", r, vs, ve)
                    continue
                add("args", part, r, ks, ve)
                part += 1
        p = ctx.pieces
        for (kind, key), (rr, ss, ee) in acc.items():
            d = p.num if kind == "num" else p.boolv if kind == "boolv" else p.cat if kind == "cat" else p.args
            p._add(d, key, np.array(rr, np.int64), np.array(ss, np.int64), np.array(ee, np.int64))

    # --- chunk → compact columns ---
    def _finish_chunk(self, ctx, n, ts, cpu, pid, cm_s, cm_e, ev_code) -> dict:
        buf, U, pbuf, p = ctx.buf, ctx.U, ctx.pbuf, ctx.pieces
        if self.fast:
            view, nums_of = _binary_view, _parse_nums
        else:  # the reference: Python slices and the digit-by-digit `parse_ints`
            view = _spans_py
            nums_of = lambda buf, U, s, e, base: parse_ints(buf, s, e, base)  # noqa: E731
        out: dict = {"n": n, "ts_ns": ts, "cpu": cpu.astype(np.int32), "pid": pid.astype(np.int32), "event": ev_code}
        out["comm"] = self.cats["comm"].codes(view(buf, U, pbuf, n, np.arange(n), cm_s, cm_e))
        for col, pieces in p.cat.items():
            rows, s, e = _cat3(pieces)
            out[col] = self.cats[col].codes(view(buf, U, pbuf, n, rows, s, e))
        nums = {}
        for col, pieces in p.num.items():
            rows, s, e = _cat3(pieces)
            base = 0 if "@" in col else NUMERIC_BASE[col]
            vals, okv = nums_of(buf, U, s, e, base)
            nums[col] = (rows, vals, okv)
        for col, (rows, vals, okv) in nums.items():
            if "@" in col:
                continue
            arr = np.zeros(n, np.uint64)
            valid = np.zeros(n, bool)
            arr[rows] = np.where(okv, vals, _u(0))
            valid[rows] = okv
            out[col] = _typed(col, arr, valid)
        for extra, col in (("ptr@va", "ptr"), ("gfp@maybe", "gfp")):
            if extra in nums:
                rows, vals, okv = nums[extra]
                if extra == "gfp@maybe" and not okv.any():
                    continue
                cur = out.get(col)
                arr = np.zeros(n, np.uint64) if cur is None else cur[0].astype(np.uint64)
                valid = np.zeros(n, bool) if cur is None else cur[1].copy()
                arr[rows[okv]] = vals[okv]
                valid[rows[okv]] = True
                out[col] = (arr, valid)
        for col, pieces in p.boolv.items():
            rows, s, e = _cat3(pieces)
            c0 = buf[s] | 0x20
            val = np.zeros(n, bool)
            valid = np.zeros(n, bool)
            t = (e > s) & ((c0 == ord("t")) | (c0 == ord("1")) | (c0 == ord("y")))
            f = (e > s) & ((c0 == ord("f")) | (c0 == ord("0")) | (c0 == ord("n")))
            val[rows] = t
            valid[rows] = t | f
            out[col] = (val, valid)
        if p.marker:
            rows, s, e = _cat3(p.marker)
            out["marker"] = _to_large_string(view(buf, U, pbuf, n, rows, s, e))
        if p.args:
            joined = None
            for part in sorted(p.args):
                rows, s, e = _cat3(p.args[part])
                a = view(buf, U, pbuf, n, rows, s, e).cast(pa.large_binary())
                if joined is None:
                    joined = a
                else:
                    j2 = pc.binary_join_element_wise(joined, a, pa.scalar(b" ", pa.large_binary()))
                    joined = pc.if_else(pc.is_null(a), joined, j2)
            out["args"] = _to_large_string(joined)
        return out


def _spans_py(buf, U, pbuf, nrows, rows, s, e) -> pa.Array:
    vals = [None] * nrows
    for r, a, b in zip(rows.tolist(), s.tolist(), e.tolist()):
        vals[r] = bytes(pbuf[a : max(a, b)])
    return pa.array(vals, pa.large_binary())


class _Ctx:
    def __init__(self, buf, U, pbuf, a_s, a_e, pieces, ev_code):
        self.buf, self.U, self.pbuf = buf, U, pbuf
        self.a_s, self.a_e = a_s, a_e
        self.pieces = pieces
        self.ev_code = ev_code
        self.eq = self.eqb = self.eqn = None


def _cat3(pieces):
    if len(pieces) == 1:
        return tuple(np.asarray(x, np.int64) for x in pieces[0])
    return tuple(np.concatenate([np.asarray(p[i], np.int64) for p in pieces]) for i in range(3))


def _typed(col, arr: np.ndarray, valid: np.ndarray):
    """uint64 values → the column's integer dtype, as `_numeric_column` did."""
    np_dtype = _NUM_DTYPES[COLUMNS[col].dtype]
    if np_dtype in (np.int64, np.int32):
        a = arr.view(np.int64)
        if np_dtype is np.int32:
            valid = valid & (a >= -(2**31)) & (a < 2**31)
            a = np.where(valid, a, 0)
        return a.astype(np_dtype), valid
    if np_dtype is np.uint32:
        valid = valid & (arr < 2**32)
        arr = np.where(valid, arr, 0)
    return arr.astype(np_dtype), valid


# ---------------------------------------------------------------------------------------------
# Whole captures: chunks of whole lines, then one frame

#: bytes of text per chunk: big enough to amortise the per-chunk work, small enough that the
#: chunk and its per-line arrays stay in cache and the peak stays near the frame's size
CHUNK_BYTES = 8 << 20


def _chunks_of(data, chunk_bytes: int):
    """(padded buffer, byte count) of whole lines, then ('tail', bytes after the last newline)."""
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)
    n = len(data)
    pos = 0
    while pos < n:
        end = min(pos + chunk_bytes, n)
        cut = data.rfind(b"\n", pos, end)
        if cut < 0 and end < n:
            cut = data.find(b"\n", end)
        if cut < 0:
            yield "tail", bytes(data[pos:])
            return
        yield _padded(memoryview(data)[pos : cut + 1]), cut + 1 - pos
        pos = cut + 1


def _padded(mv) -> bytearray:
    pb = bytearray(_PAD + len(mv) + _TAIL)
    pb[_PAD : _PAD + len(mv)] = mv
    return pb


def _file_chunks(f, chunk_bytes: int):
    """Like `_chunks_of`, reading a file: never more than one chunk in memory."""
    carry = b""
    while True:
        pb = bytearray(_PAD + len(carry) + chunk_bytes + _TAIL)
        pb[_PAD : _PAD + len(carry)] = carry
        got = f.readinto(memoryview(pb)[_PAD + len(carry) : _PAD + len(carry) + chunk_bytes]) or 0
        total = len(carry) + got
        if not got:
            if carry:
                yield "tail", bytes(carry)
            return
        last = pb.rfind(b"\n", _PAD, _PAD + total)
        if last < 0:
            carry = bytes(pb[_PAD : _PAD + total])
            continue
        carry = bytes(pb[last + 1 : _PAD + total])
        pb[last + 1 :] = bytes(len(pb) - (last + 1))
        yield pb, last + 1 - _PAD


def _run(chunks, *, path, fmt, kprobe_groups, stats, fast=True) -> tuple[pd.DataFrame, IngestStats]:
    st = stats or IngestStats(path=path, format=fmt)
    st.path, st.format = path, fmt
    p = _TextParser(st, kprobe_groups, fast=fast)
    empty = True
    for pb, nbytes in chunks:
        if pb == "tail":
            if nbytes:
                empty = False
            if nbytes.strip():
                st.truncated = True
                st.malformed += 1
                st.lines_read += 1
                st.warn(f"{path}: last line has no newline (capture cut mid-line); dropped it")
            continue
        empty = False
        p.chunk(pb, nbytes)
    if empty:
        raise InputError(f"{path}: empty file")
    n = sum(c["n"] for c in p.chunks)
    if n == 0:
        if st.malformed == 0 and st.lost_events == 0:
            raise InputError(f"{path}: no trace events (not an ftrace text capture?)")
        raise InputError(f"{path}: not an ftrace text capture: {st.malformed} line(s), none an event line")
    st.unknown_event_names = p.unknown
    st.unknown_events = int(sum(p.unknown.values()))
    frame = _assemble_chunks(p, n)
    st.events_parsed = len(frame)
    if p.out_of_range:
        st.warn(f"{path}: {p.out_of_range} event line(s) dropped as malformed: timestamp >= 2^63 ns, "
                "or cpu or pid >= 2^31")
    if st.malformed:
        st.warn(f"{path}: {st.malformed} malformed line(s) dropped")
    return frame, st


def _take_col(chunks, key, fill, n, dtype):
    out = np.empty(n, dtype)
    o = 0
    for c in chunks:
        v = c.get(key)
        k = c["n"]
        out[o : o + k] = fill if v is None else v
        o += k
    return out



def _gather(chunks, col, n, dtype):
    """One column's (values, null mask) over all chunks; each chunk's part is released."""
    vals = np.zeros(n, dtype)
    mask = np.ones(n, bool)
    o = 0
    for ch in chunks:
        k = ch["n"]
        v = ch.get(col)
        if v is not None:
            vals[o : o + k] = v[0]
            mask[o : o + k] = ~v[1]
            ch[col] = None
        o += k
    return vals, mask

def _assemble_chunks(p: _TextParser, n: int) -> pd.DataFrame:
    chunks = p.chunks
    data: dict[str, object] = {}
    data["ts_ns"] = pd.Series(_take_col(chunks, "ts_ns", 0, n, np.int64), copy=False)
    for col in ("cpu", "pid"):
        data[col] = pd.Series(pd.arrays.IntegerArray(_take_col(chunks, col, 0, n, np.int32), np.zeros(n, bool)), copy=False)
    # event: categories in order of first appearance
    codes = _take_col(chunks, "event", 0, n, np.int32)
    seen = pd.unique(codes)
    rank = np.empty(len(p.events.values), np.int32)
    rank[seen] = np.arange(len(seen), dtype=np.int32)
    data["event"] = pd.Series(pd.Categorical.from_codes(rank[codes], categories=pd.Index([p.events.values[i] for i in seen], dtype=object)), copy=False)
    for col in EVENT_COLUMN_ORDER:
        if col in data:
            continue
        c = COLUMNS[col]
        present = any(col in ch for ch in chunks)
        if c.dtype == "category":
            if not present:
                continue
            codes = _take_col(chunks, col, -1, n, np.int32)
            data[col] = pd.Series(pd.Categorical.from_codes(codes, categories=pd.Index(p.cats[col].values, dtype=object)), copy=False)
        elif c.dtype in _NUM_DTYPES:
            if not present:
                data[col] = pd.Series(pd.arrays.IntegerArray(np.zeros(n, _NUM_DTYPES[c.dtype]), np.ones(n, bool)), copy=False)
                continue
            vals, mask = _gather(chunks, col, n, _NUM_DTYPES[c.dtype])
            data[col] = pd.Series(pd.arrays.IntegerArray(vals, mask), copy=False)
        elif c.dtype == "boolean":
            vals, mask = _gather(chunks, col, n, bool)
            data[col] = pd.Series(pd.arrays.BooleanArray(vals, mask), copy=False)
        elif c.dtype == "string":
            if not present:
                continue
            parts = [ch.get(col) if ch.get(col) is not None else pa.nulls(ch["n"], pa.large_string()) for ch in chunks]
            data[col] = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array(parts, pa.large_string())), copy=False)
    p.chunks = []
    df = _frame(data, n)
    return derive(df)


EVENT_COLUMN_ORDER = tuple(c.name for c in EVENT_COLUMNS)


def _frame(data: dict, n: int) -> pd.DataFrame:
    """The schema's columns in order, without copying; absent nullable columns all-null, as
    `coerce_events` makes them."""
    cols = {}
    for c in EVENT_COLUMNS:
        s = data.get(c.name)
        if s is None:
            if c.dtype == "category":
                s = pd.Series(pd.Categorical.from_codes(np.full(n, -1, np.int8), categories=pd.Index([], dtype="float64")), copy=False)
            elif c.dtype == "string":
                s = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([pa.nulls(n, pa.large_string())])), copy=False)
            else:
                s = pd.Series(pd.array([None] * n, dtype=c.pandas_dtype))
        cols[c.name] = s
    return pd.DataFrame(cols, copy=False)


def parse_ftrace_text(
    data: bytes | memoryview,
    *,
    path: str = "<buffer>",
    fmt: str = "ftrace-text",
    kprobe_groups: dict[str, str] | None = None,
    stats: IngestStats | None = None,
) -> tuple[pd.DataFrame, IngestStats]:
    """Parse ftrace text into the event table."""
    return _run(_chunks_of(data, CHUNK_BYTES), path=path, fmt=fmt, kprobe_groups=kprobe_groups, stats=stats)


def parse_ftrace_text_reference(data, *, path: str = "<buffer>", fmt: str = "ftrace-text", kprobe_groups=None,
                                chunk_bytes: int = CHUNK_BYTES) -> tuple[pd.DataFrame, IngestStats]:
    """The same parse with a regex per line for every header and every field list (no layouts,
    no 8-byte reads): the reference the fast path is tested against."""
    return _run(_chunks_of(data, chunk_bytes), path=path, fmt=fmt, kprobe_groups=kprobe_groups, stats=None, fast=False)


def load_ftrace_text(path: str, *, kprobe_groups=None, fmt: str = "ftrace-text", chunk_bytes: int = CHUNK_BYTES) -> tuple[pd.DataFrame, IngestStats]:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    with f:
        try:
            return _run(_file_chunks(f, chunk_bytes), path=path, fmt=fmt, kprobe_groups=kprobe_groups, stats=None)
        except OSError as e:
            raise InputError(f"{path}: cannot read: {e.strerror or e}") from None


__all__ = ["parse_ftrace_text", "load_ftrace_text", "canonical_event", "kprobe_groups_from_defs", "empty_events"]

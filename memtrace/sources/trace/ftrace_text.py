"""ftrace text (tracefs `trace` / `trace_pipe`, and `trace-cmd report` output) → event table.

Two parsers with one definition of the output:

* the scanner (`_ScanParser`): a small C extension, `_ftrace_scan.c`, reads each line once (header,
  `key=value` fields, numbers, interned strings, the joined `args`) straight into whole-capture
  column arrays that become the frame's columns without a copy. A line whose header does not read
  one way only (a tgid column, a dash and digits inside comm, numbers that do not fit, junk) goes
  back to Python, to the reference's own header regex, so odd lines cost speed, never
  correctness. The extension is built by `pip install -e .`; without it text ingest stops with an
  environment error (exit 3) that says how to rebuild, rather than running many times slower.
* the reference (`memtrace.testing.ftrace_reference.parse_ftrace_text_reference`, for the tests
  only; not in the wheel): a regex per header and per field list, numbers digit by digit in
  numpy. It defines the output; tests compare the scanner with it on real and generated
  captures, chunk boundaries, damaged bytes and random lines. The header regex itself
  (`_read_header`) lives here: the scanner's fallback for odd lines is that, not the reference.

This module is the production path and what both parsers share (event naming, key → column maps,
`derive`, the header regex, the frame's assembly); it imports the reference only inside
`_run(..., fast=False)`, which only the tests call.

A line that is neither an event, a comment, nor a known non-event line (`CPU:N [LOST n EVENTS]`,
trace-cmd's `cpus=N`) is counted as malformed and dropped, and so is an event line whose
timestamp, cpu or pid does not fit its column. A field value that is a number but does not fit
its column (the reference's `_typed`: a size >= 2^63, an order >= 2^31, a negative map_id, any
magnitude >= 2^64; the UInt64 columns take any value mod 2^64) leaves the column null and the
event kept: its `key=value` goes to `args` like an unmapped field, it is counted in
`IngestStats.values_out_of_range`, with one warning per file, as the perfetto reader does. A
value that is no number (`nr=abc`) is left null, uncounted.
"""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from memtrace.errors import EnvironmentProblem, InputError
from memtrace.tables.events import (
    COLUMNS,
    EVENT_COLUMNS,
    GFP_ACCOUNT,
    PAGE_SIZE,
    IngestStats,
    empty_events,
    values_out_of_range_warning,
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
        # memtrace's own kprobe events take the group of their definitions (memtrace/probes/*.toml)
        from memtrace.sources.trace.probedefs import default_kprobe_groups

        g = (kprobe_groups or {}).get(name) or default_kprobe_groups().get(name) or "kprobes"
        return f"{g}:{name}", True
    g = group_of(name)
    return (f"{g}:{name}", True) if g else (name, False)


def kprobe_groups_from_defs(defs) -> dict[str, str]:
    """{event name: group} from kprobe_events lines such as `p:memcg/try_charge try_charge_memcg ...`."""
    from memtrace.sources.trace.probedefs import kprobe_event_defs

    return {name: group for group, name in kprobe_event_defs(list(defs or ()))}


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


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """Per-event derived columns (pages/bytes of page events, accounted from gfp). In place.

    Works on the columns' numpy buffers, on the rows of the events concerned only; `_derive_pandas`
    is the same in pandas operations and takes over for input that is not in the schema's dtypes."""
    dt = {c: str(df[c].dtype) for c in ("event", "order", "pages", "bytes", "accounted", "gfp", "gfp_flags")}
    if dt != {"event": "category", "order": "Int32", "pages": "Int64", "bytes": "Int64", "accounted": "boolean",
              "gfp": "UInt64", "gfp_flags": "category"}:
        return _derive_pandas(df)
    n = len(df)
    ev = df["event"].array
    cats = list(ev.categories)
    codes = ev.codes

    def table(names) -> np.ndarray:
        """by event code: one of `names`? (code -1, a null event, reads the last entry: False)"""
        t = np.zeros(len(cats) + 1, bool)
        for i, c in enumerate(cats):
            t[i] = c in names
        return t

    page_t = table(_PAGE_EVENTS)
    pr = np.flatnonzero(page_t[codes]) if page_t.any() else np.zeros(0, np.int64)
    if len(pr):
        # only the page events' rows change
        o = df["order"].array
        o_ok_r = ~o._mask[pr]
        batched_r = table(("kmem:mm_page_free_batched",))[codes[pr]] & ~o_ok_r
        ook_r = o_ok_r | batched_r
        o64 = np.where(ook_r, o._data[pr].astype(np.int64), 0)
        o64[batched_r] = 0
        in_p = ook_r & (o64 >= 0) & (o64 <= MAX_ORDER_PAGES)
        in_b = in_p & (o64 <= MAX_ORDER_BYTES)
        pw = np.power(np.int64(2), np.where(in_p, o64, 0))
        del o64
        for col, mult, okc in (("pages", 1, in_p), ("bytes", PAGE_SIZE, in_b)):
            a = df[col].array
            vals = a._data.copy()
            mask = a._mask.copy()
            vals[pr] = np.where(okc, pw * mult, 0)
            mask[pr] = ~okc
            vals[mask] = 0
            df[col] = pd.arrays.IntegerArray(vals, mask)
            del vals, mask
        del pw
        if batched_r.any():
            batched = np.zeros(n, bool)
            batched[pr[batched_r]] = True
            df["order"] = pd.arrays.IntegerArray(np.where(batched, 0, o._data).astype(np.int32), o._mask & ~batched)
    # kprobes: order= without nr= → pages
    o = df["order"].array
    cand = np.flatnonzero(~o._mask)
    if len(cand):
        ov = o._data[cand]
        p = df["pages"].array
        sel = p._mask[cand] & ~page_t[codes[cand]] & (ov >= 0) & (ov <= MAX_ORDER_PAGES)
        if sel.any():
            kr = cand[sel]
            pages = p._data.copy()
            mask = p._mask.copy()
            pages[kr] = np.power(np.int64(2), ov[sel].astype(np.int64))
            mask[kr] = False
            df["pages"] = pd.arrays.IntegerArray(pages, mask)
    # accounted from gfp, for the events whose gfp says it and that do not print accounted=
    gfp_t = table(_GFP_EVENTS)
    if gfp_t.any():
        a = df["accounted"].array
        r = np.flatnonzero(gfp_t[codes])
        r = r[a._mask[r]]
        if len(r):
            acc = np.zeros(len(r), bool)
            acc_ok = np.zeros(len(r), bool)
            g = df["gfp"].array
            g_ok = ~g._mask[r]
            if g_ok.any():
                acc = (g._data[r] & np.uint64(GFP_ACCOUNT)) != 0
                acc_ok = g_ok
            f = df["gfp_flags"].array
            fc = f.codes[r].astype(np.int64)
            if (fc >= 0).any():
                has = np.array(["ACCOUNT" in str(c) for c in f.categories] + [False], bool)
                fill = ~acc_ok & (fc >= 0)
                acc = np.where(fill, has[fc], acc)
                acc_ok = acc_ok | fill
            vals = a._data & ~a._mask
            mask = a._mask.copy()
            vals[r] = acc & acc_ok
            mask[r] = ~acc_ok
            df["accounted"] = pd.arrays.BooleanArray(vals, mask)
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
# Event-line headers: the reference's regex, which the scanner also asks about the lines it hands back

_HDR_RE = re.compile(
    # no blank after [cpu] when trace-cmd's "%12llu" / "%5llu." timestamp fills its width
    rb"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]*\)\s+)?\[(?P<cpu>\d+)\](?:\s+(?:[^\s\d][^\s]*\s+)?|(?=\d))"
    rb"(?P<ts>\d+(?:\.\d+)?):\s+(?P<event>[^:\s]+):\s*(?P<args>.*?)\s*$"
)
_LOST_RE = re.compile(rb"^\s*CPU:?\s*(\d+)\s*\[(?:LOST\s+(\d+)\s+EVENTS|(\d+)\s+EVENTS\s+DROPPED)\]")
_SKIP_RE = re.compile(rb"^\s*(#|cpus=\d+|version\s*=|CPU\s*\d+ is empty|CPU\d+ data recorded|\[?\s*$)")


def _read_header(line: bytes, st: IngestStats, parser) -> tuple | None:
    """The header of one line by the reference regex: (ts_ns, cpu, pid, comm start, comm end,
    event start, event end, args start, args end), offsets in `line`; None for a line that is not
    an event (counted in `st`: lost events, malformed, or nothing for a known non-event line)."""
    m = _HDR_RE.match(line)
    if m is None:
        lm = _LOST_RE.match(line)
        if lm:
            st.lost_events += int(lm.group(2) or lm.group(3))
        elif not _SKIP_RE.match(line):
            st.malformed += 1
        return None
    t = m.group("ts")
    if b"." in t:
        a, b = t.split(b".")
        t_ns = int(a) * 1_000_000_000 + int(b[:9].ljust(9, b"0"))
    else:
        t_ns = int(t)
    c_, p_ = int(m.group("cpu")), int(m.group("pid"))
    if t_ns >= 1 << 63 or c_ >= 1 << 31 or p_ >= 1 << 31:  # does not fit ts_ns / cpu / pid
        st.malformed += 1
        parser.out_of_range += 1
        return None
    return (t_ns, c_, p_, m.start("comm"), m.end("comm"), m.start("event"), m.end("event"), m.start("args"), m.end("args"))


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



class _Names:
    """Event names → (event category code, known, `group:name`), and unknown-event counts."""

    def __init__(self, kprobe_groups):
        self.kprobe_groups = kprobe_groups
        self.events = _Registry()
        self.unknown: dict[str, int] = {}
        self.canon: dict[tuple[bytes, bool], tuple[int, bool, str]] = {}
        #: event lines dropped as malformed: timestamp, cpu or pid too large for its column
        self.out_of_range = 0

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

    def _event_codes(self, codes: np.ndarray) -> pd.Series:
        """the event column: categories in order of first appearance"""
        seen = pd.unique(codes)
        rank = np.empty(len(self.events.values), np.int32)
        rank[seen] = np.arange(len(seen), dtype=np.int32)
        cats = pd.Index([self.events.values[i] for i in seen], dtype=object)
        return pd.Series(pd.Categorical.from_codes(rank[codes], categories=cats), copy=False)


# ---------------------------------------------------------------------------------------------
# The scanner: one pass in C (`_ftrace_scan.c`) straight into whole-capture columns

#: numeric columns in the scanner's order, with how they are read and typed
_SCAN_NUM = tuple(NUMERIC_BASE)
_SCAN_KIND = {"Int64": 0, "Int32": 1, "UInt64": 2, "UInt32": 3}
#: category columns; comm (from the header) first
_SCAN_CAT = ("comm", "call_site", "gfp_flags", "cgroup_path")
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


_SCAN_OK: list = []


def _scan_module():
    """The built scanner; EnvironmentProblem (exit 3) when it is missing or built from another
    version of `_ftrace_scan.c` than the one beside it (a checkout changed since `pip install -e`)."""
    if _SCAN_OK:
        return _SCAN_OK[0]
    rebuild = f"rebuild it with: python3 -m pip install -e {_CHECKOUT}"
    try:
        from memtrace.sources.trace import _ftrace_scan
    except ImportError as e:
        raise EnvironmentProblem(
            f"the ftrace text scanner (memtrace/sources/trace/_ftrace_scan.c) is not built ({e}); {rebuild}") from None
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ftrace_scan.c")
    try:
        with open(src, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except OSError:  # an installed package without its C source: nothing to compare
        digest = None
    if digest is not None and getattr(_ftrace_scan, "SOURCE_SHA256", "") != digest:
        raise EnvironmentProblem(
            f"the ftrace text scanner was built from another version of {src}; {rebuild}")
    _SCAN_OK.append(_ftrace_scan)
    return _ftrace_scan


class _ScanParser(_Names):
    """The scanner: `_ftrace_scan.Scanner` reads the lines; Python answers its questions (an event
    name's canonical name and key columns, once each; the header of a line it hands back) and
    turns its column buffers into the frame."""

    def __init__(self, st: IngestStats, kprobe_groups):
        super().__init__(kprobe_groups)
        mod = _scan_module()
        self.st = st
        self.colid = {c: i for i, c in enumerate(_SCAN_NUM)}
        self.colid.update({c: mod.COL_CAT0 + i for i, c in enumerate(_SCAN_CAT) if i})
        self.colid["accounted"] = mod.COL_BOOL
        twins = tuple(_SCAN_NUM.index("gfp") if c == "gfp_flags" else -1 for c in _SCAN_CAT)
        self.sc = mod.Scanner(
            self._event, self._header,
            num_kinds=tuple(_SCAN_KIND[COLUMNS[c].dtype] for c in _SCAN_NUM),
            num_bases=tuple(NUMERIC_BASE[c] for c in _SCAN_NUM),
            cat_twins=twins, va_col=_SCAN_NUM.index("ptr"),
            markers=tuple(sorted(m.encode() for m in MARKER_EVENTS)),
        )
        self.res = None

    def _event(self, name: bytes, kprobe: bool):
        """asked once per (event name, kprobe): (category code, known, reads a vmalloc prefix, {key: column id})"""
        code, known, event = self._canon(name, kprobe)
        keymap = {k.encode(): self.colid[c] for k, c in columns_for(event).items()} if known else {}
        return code, known, event == "vmalloc:alloc_vmap_area", keymap

    def _header(self, line: bytes):
        return _read_header(line, self.st, self)

    def chunk(self, buf, start: int, nbytes: int):
        self.sc.feed(buf, start, start + nbytes)

    def close(self) -> int:
        r = self.res = self.sc.finish()
        self.sc = None
        self.st.lines_read += r["lines_read"]
        self.st.values_out_of_range += r["values_out_of_range"]
        for name, kprobe, known, count in r["events"]:
            if not known and count:
                self._count_unknown(name, count)
        return r["n"]

    def frame(self, n: int) -> pd.DataFrame:
        r, self.res = self.res, None
        data: dict[str, object] = {}
        data["ts_ns"] = pd.Series(np.frombuffer(r["ts"], np.int64), copy=False)
        for col in ("cpu", "pid"):
            data[col] = pd.Series(pd.arrays.IntegerArray(np.frombuffer(r[col], np.int32), np.zeros(n, bool)), copy=False)
        data["event"] = self._event_codes(np.frombuffer(r["event"], np.int32))
        for col, (ids, values) in zip(_SCAN_CAT, r["cat"]):
            if not values:
                continue
            reg = _Registry()
            remap = np.array([reg.code_str(v.decode("utf-8", "replace")) for v in values] + [-1], np.int32)
            codes = np.frombuffer(ids, np.int32)
            if len(reg.values) != len(values):  # byte strings that decode to the same text
                codes = remap[codes]
            data[col] = pd.Series(pd.Categorical.from_codes(codes, categories=pd.Index(reg.values, dtype=object)), copy=False)
        for col, (vals, mask) in zip(_SCAN_NUM, r["num"]):
            dt = _NUM_DTYPES[COLUMNS[col].dtype]
            data[col] = pd.Series(pd.arrays.IntegerArray(np.frombuffer(vals, dt), np.frombuffer(mask, bool)), copy=False)
        vals, mask = r["bool"]
        data["accounted"] = pd.Series(pd.arrays.BooleanArray(np.frombuffer(vals, bool), np.frombuffer(mask, bool)), copy=False)
        for col, (bits, offs, sdata, nulls, nonascii) in zip(("marker", "args"), r["str"]):
            if nulls == n:
                continue
            arr = _scanned_strings(n, bits, offs, sdata, nulls, np.frombuffer(nonascii, np.int64))
            data[col] = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([arr])), copy=False)
        del r
        return derive(_frame(data, n))


def _scanned_strings(n, bits, offs, sdata, nulls, nonascii) -> pa.Array:
    """A large_string array from the scanner's buffers; values that are not UTF-8 are decoded with
    replacement, as the reference's `_to_large_string` does."""
    bufs = [pa.py_buffer(bits), pa.py_buffer(offs), pa.py_buffer(sdata)]
    if len(nonascii) == 0:  # ASCII is UTF-8 as it is
        return pa.Array.from_buffers(pa.large_string(), n, bufs, null_count=nulls)
    arr = pa.Array.from_buffers(pa.large_binary(), n, bufs, null_count=nulls)
    try:
        return arr.cast(pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        fixed = [v.decode("utf-8", "replace").encode() for v in arr.take(pa.array(nonascii)).to_pylist()]
        mask = np.zeros(n, bool)
        mask[nonascii] = True
        return pc.replace_with_mask(arr, pa.array(mask), pa.array(fixed, pa.large_binary())).cast(pa.large_string())


# ---------------------------------------------------------------------------------------------
# Whole captures: regions of whole lines, then one frame

#: bytes of text read from a file (or handed to the scanner) at a time: the scanner reads a
#: region right after the kernel copied it, while it is in cache (1-8 MiB measured the same)
CHUNK_BYTES = 1 << 20


def _chunks_of(data, chunk_bytes: int):
    """("lines", buffer, start, byte count) of whole lines, then ("tail", bytes after the last newline)."""
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
        yield "lines", data, pos, cut + 1 - pos
        pos = cut + 1


def _file_chunks(f, chunk_bytes: int):
    """Like `_chunks_of`, reading a file into one buffer that is reused (the consumer is done with
    a region before the next is read); a line longer than the buffer grows it."""
    buf = bytearray(chunk_bytes)
    have = 0  # bytes of a partial line carried at the start of buf
    while True:
        if len(buf) - have < chunk_bytes:
            nb = bytearray(max(have + chunk_bytes, 2 * len(buf)))
            nb[:have] = memoryview(buf)[:have]
            buf = nb
        got = f.readinto(memoryview(buf)[have:]) or 0
        total = have + got
        if not got:
            if have:
                yield "tail", bytes(buf[:have])
            return
        last = buf.rfind(b"\n", have, total)
        if last < 0:
            have = total
            continue
        yield "lines", buf, 0, last + 1
        have = total - (last + 1)
        buf[:have] = bytes(buf[last + 1 : total])


def _run(chunks, *, path, fmt, kprobe_groups, stats, fast=True) -> tuple[pd.DataFrame, IngestStats]:
    st = stats or IngestStats(path=path, format=fmt)
    st.path, st.format = path, fmt
    oor0 = st.values_out_of_range
    if fast:
        p = _ScanParser(st, kprobe_groups)
    else:  # the pure-Python reference, for the tests; not loaded by `memtrace ingest`
        from memtrace.testing.ftrace_reference import _TextParser

        p = _TextParser(st, kprobe_groups)
    empty = True
    for item in chunks:
        if item[0] == "tail":
            tail = item[1]
            if tail:
                empty = False
            if tail.strip():
                st.truncated = True
                st.malformed += 1
                st.lines_read += 1
                st.warn(f"{path}: last line has no newline (capture cut mid-line); dropped it")
            continue
        _, buf, start, nbytes = item
        empty = False
        p.chunk(buf, start, nbytes)
    if empty:
        raise InputError(f"{path}: empty file")
    n = p.close()
    if n == 0:
        if st.malformed == 0 and st.lost_events == 0:
            raise InputError(f"{path}: no trace events (not an ftrace text capture?)")
        raise InputError(f"{path}: not an ftrace text capture: {st.malformed} line(s), none an event line")
    st.unknown_event_names = p.unknown
    st.unknown_events = int(sum(p.unknown.values()))
    frame = p.frame(n)
    st.events_parsed = len(frame)
    if p.out_of_range:
        st.warn(f"{path}: {p.out_of_range} event line(s) dropped as malformed: timestamp >= 2^63 ns, "
                "or cpu or pid >= 2^31")
    if st.values_out_of_range > oor0:
        st.warn(values_out_of_range_warning(path, st.values_out_of_range - oor0))
    if st.malformed:
        st.warn(f"{path}: {st.malformed} malformed line(s) dropped")
    return frame, st


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


def _open_text(path: str, kprobe_groups):
    """(open file, its `memtrace capture` header or None, kprobe groups with the header's):
    a `memtrace capture` file names its probes' groups and its losses in its header."""
    from memtrace.sources.trace.capture import capture_kprobe_groups, read_capture_header

    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    cap = read_capture_header(f.read(1 << 16))
    f.seek(0)
    if cap:
        kprobe_groups = {**capture_kprobe_groups(cap), **(kprobe_groups or {})}
    return f, cap, kprobe_groups


def load_ftrace_text(path: str, *, kprobe_groups=None, fmt: str = "ftrace-text", chunk_bytes: int = CHUNK_BYTES) -> tuple[pd.DataFrame, IngestStats]:
    from memtrace.sources.trace.capture import apply_capture_summary

    f, cap, kprobe_groups = _open_text(path, kprobe_groups)
    with f:
        try:
            df, st = _run(_file_chunks(f, chunk_bytes), path=path, fmt=fmt, kprobe_groups=kprobe_groups, stats=None)
        except OSError as e:
            raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    if cap:
        apply_capture_summary(st, cap)
    return df, st


#: text read into one frame when a capture is read in chunks: about 0.5M events, 70 MB of frame
FRAME_BYTES = 64 << 20


def iter_ftrace_text(path: str, *, kprobe_groups=None, fmt: str = "ftrace-text", frame_bytes: int = FRAME_BYTES,
                     stats: IngestStats | None = None):
    """The event table of an ftrace text capture in frames of about ``frame_bytes`` of text
    each, in file order; each frame's index numbers its rows within the whole capture. The
    statistics accumulate in ``stats`` (an IngestStats; its warnings complete after the last
    frame). Same errors as ``load_ftrace_text``."""
    from memtrace.sources.trace.capture import apply_capture_summary

    st = stats if stats is not None else IngestStats(path=path, format=fmt)
    st.path, st.format = path, fmt
    f, cap, kprobe_groups = _open_text(path, kprobe_groups)
    with f:
        chunks = _file_chunks(f, min(CHUNK_BYTES, frame_bytes))
        first, row0 = True, 0
        done = False
        while not done:
            taken = 0

            def part():
                nonlocal taken, done
                for item in chunks:
                    yield item
                    if item[0] == "lines":
                        taken += item[3]
                        if taken >= frame_bytes:
                            return
                done = True

            one = IngestStats(path=path, format=fmt)
            try:
                frame, _ = _run(part(), path=path, fmt=fmt, kprobe_groups=kprobe_groups, stats=one)
            except InputError:
                if first:
                    raise
                _merge_stats(st, one)
                break  # the rest of the file had no event line (its lines were counted)
            except OSError as e:
                raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
            _merge_stats(st, one)
            first = False
            frame.index = pd.RangeIndex(row0, row0 + len(frame))
            row0 += len(frame)
            yield frame
    if cap:
        apply_capture_summary(st, cap)


def _merge_stats(total: IngestStats, one: IngestStats) -> None:
    """Add one frame's statistics to the capture's."""
    for k in ("lines_read", "packets_read", "events_parsed", "unknown_events", "malformed", "values_out_of_range",
              "lost_events", "lost_event_flags", "probe_misses"):
        setattr(total, k, getattr(total, k) + getattr(one, k))
    total.truncated = total.truncated or one.truncated
    if one.unknown_event_names:
        names = total.unknown_event_names = dict(total.unknown_event_names or {})
        for n, c in one.unknown_event_names.items():
            names[n] = names.get(n, 0) + c
    for w in one.warnings or []:
        if w not in (total.warnings or []):
            total.warn(w)


__all__ = ["parse_ftrace_text", "load_ftrace_text", "iter_ftrace_text", "canonical_event", "kprobe_groups_from_defs", "empty_events"]

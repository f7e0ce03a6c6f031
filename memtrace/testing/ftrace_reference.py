"""The pure-Python reference parser for ftrace text: the oracle the tests hold the C scanner to.

`parse_ftrace_text_reference` reads the same input into the same event table and `IngestStats` as
`ftrace_text.parse_ftrace_text`, by other means: a regex per header (`_read_header`, which the
scanner also calls for the lines it hands back) and per field list (`_kv_spans`), numbers digit by
digit in numpy (`parse_ints`), typed into their columns by `_typed`. It defines the output; the
scanner (`_ftrace_scan.c`) implements the same rules in one pass, and the tests compare the two on
real and generated captures, chunk boundaries, damaged bytes and random lines. It needs no C
extension.

`memtrace ingest` does not use it: it is many times slower than the scanner. The lines the
scanner hands back to Python are read by `ftrace_text._read_header` (the header regex both parsers
share), not by this module. What both parsers share (event naming, key → column maps, `derive`,
the header regex, the frame's assembly) lives in `ftrace_text`, which imports this module only
inside `_run(..., fast=False)`, for the tests; it is a test helper (`memtrace.testing`), left out
of the wheel.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from memtrace.sources.trace.ftrace_text import (
    CHUNK_BYTES,
    NUMERIC_BASE,
    _NUM_DTYPES,
    _chunks_of,
    _frame,
    _Names,
    _read_header,
    _Registry,
    _run,
    columns_for,
    derive,
)
from memtrace.tables.events import COLUMNS, EVENT_COLUMNS, IngestStats


# ---------------------------------------------------------------------------------------------
# Numbers from byte spans, digit by digit (the scanner's `parse_num` reads them the same way)

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_DEC = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789"):
    _DEC[_c] = _i


_MAX64 = (1 << 64) - 1


def parse_ints(buf: np.ndarray, s: np.ndarray, e: np.ndarray, base: int = 0):
    """Integers from byte spans [s, e): an optional '-', an optional '0x', then digits; base 16
    reads hex without 0x too, base 0 reads hex after 0x, else decimal. Returns, by span,
    (values, ok, neg, big):

    * ok: a number whose magnitude is below 2^64. `values` holds it mod 2^64 (a negative one
      two's-complement: view as int64), `neg` says it had a '-' (`-0` is 0);
    * big: a number whose magnitude is 2^64 or more. It fits no column (`_typed`).
    * neither: not a number: empty, a sign or `0x` alone, or any byte that is not a digit of the
      base (so `99999999999999999999999abc` is not a number, however long).

    The value decides, not the spelling: leading zeros do not count, so
    `00000000000000000000000001` (26 digits) and `0x00000000000000000001` are 1, while more than 20
    significant decimal digits (or 20 of 18446744073709551616 and above) and more than 16
    significant hex digits are big. `_ftrace_scan.c`'s `parse_num` reads them the same way."""
    s = s.astype(np.int64)
    e = e.astype(np.int64)
    n = len(s)
    val = np.zeros(n, dtype=np.uint64)
    if n == 0:
        return val, np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, bool)
    top = len(buf) - 1
    neg = (s < e) & (buf[np.minimum(s, top)] == 45)
    s = s + neg
    hx = (e - s >= 2) & (buf[np.minimum(s, top)] == 48) & ((buf[np.minimum(s + 1, top)] | 0x20) == 120)
    s = s + 2 * hx
    is_hex = hx | (base == 16)
    ln = e - s
    limit = np.where(is_hex, 16, 20)
    ok = ln > 0
    big = np.zeros(n, bool)
    # spans longer than any 64-bit number's digits (rare): one at a time, leading zeros dropped
    for i in np.flatnonzero(ok & (ln > limit)):
        t = bytes(buf[s[i] : e[i]])
        ok[i] = False
        if t.translate(None, _HEX_DIGITS if is_hex[i] else _DEC_DIGITS):
            continue  # not a number
        t = t.lstrip(b"0") or b"0"
        if len(t) > limit[i] or int(t, 16 if is_hex[i] else 10) > _MAX64:
            big[i] = True
        else:
            ok[i] = True
            val[i] = int(t, 16 if is_hex[i] else 10)
    short = ok & (ln <= limit)
    maxlen = int(ln[short].max()) if short.any() else 0
    mult = np.where(is_hex, 16, 10).astype(np.uint64)
    for k in range(maxlen):
        act = short & (k < ln)
        if not act.any():
            break
        idx = np.where(act, s + k, 0)
        b = buf[idx]
        d = np.where(is_hex, _HEX[b], _DEC[b])
        bad = act & (d == 255)
        ok &= ~bad
        short &= ~bad
        act &= ~bad
        if k == 19:  # the 20th decimal digit: past 2^64 - 1? (16 hex digits always fit)
            over = act & (val > (np.uint64(_MAX64) - d.astype(np.uint64)) // np.uint64(10))
            big |= over
            ok &= ~over
            act &= ~over
        val = np.where(act, val * mult + d.astype(np.uint64), val)
    val = np.where(ok, val, np.uint64(0))
    val = np.where(neg, np.uint64(0) - val, val)
    return val, ok, neg & ok, big


_HEX_DIGITS = b"0123456789abcdefABCDEF"
_DEC_DIGITS = b"0123456789"


_TOP = {"Int64": np.uint64(1 << 63), "Int32": np.uint64(1 << 31)}


def _typed(col, vals: np.ndarray, ok: np.ndarray, neg: np.ndarray, big: np.ndarray):
    """`parse_ints`' numbers → column `col`'s dtype: (values, valid, out of range). Int64 holds
    [-2^63, 2^63), Int32 [-2^31, 2^31), UInt32 [0, 2^32); UInt64 any number below 2^64 in
    magnitude, mod 2^64 (a negative one two's-complement). A number that does not fit (`big` ones
    never do) is out of range: null here, counted, its `key=value` kept in args."""
    dt = COLUMNS[col].dtype
    if dt == "UInt64":
        fit = ok
    else:
        mag = np.where(neg, np.uint64(0) - vals, vals)
        if dt == "UInt32":
            fit = ok & (~neg | (mag == 0)) & (mag <= np.uint64(0xFFFFFFFF))
        else:
            top = _TOP[dt]
            fit = ok & np.where(neg, mag <= top, mag < top)
    v = np.where(fit, vals, np.uint64(0))
    np_dtype = _NUM_DTYPES[dt]
    out = v.view(np.int64).astype(np_dtype) if np_dtype in (np.int64, np.int32) else v.astype(np_dtype)
    return out, fit, big | (ok & ~fit)


# ---------------------------------------------------------------------------------------------
# Field lists: a regex per list

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
# One chunk of whole lines


class _Pieces:
    """Spans and values found in one chunk, by column: (rows, starts, ends) arrays."""

    def __init__(self):
        self.num: dict[str, list] = {}
        self.cat: dict[str, list] = {}
        self.boolv: dict[str, list] = {}
        self.marker: list = []
        self.args: dict[int, list] = {}
        #: {column: {part: pieces}}: numeric fields, args parts only if they do not fit
        self.args_if: dict[str, dict[int, list]] = {}

    @staticmethod
    def _add(d, key, rows, s, e):
        d.setdefault(key, []).append((rows, s, e))


_PAD = 16  # zero bytes around a reference chunk


def _padded(mv) -> bytearray:
    pb = bytearray(_PAD + len(mv) + _PAD)
    pb[_PAD : _PAD + len(mv)] = mv
    return pb


class _TextParser(_Names):
    """The reference: a regex per header and per field list, chunk by chunk."""

    def __init__(self, st: IngestStats, kprobe_groups):
        super().__init__(kprobe_groups)
        self.st = st
        self.cats: dict[str, _Registry] = {c: _Registry() for c in ("comm", "call_site", "gfp_flags", "cgroup_path")}
        self.chunks: list[dict] = []

    # --- a chunk: the whole lines buf_in[start : start + nbytes], copied between _PAD zero bytes ---
    def chunk(self, buf_in, start: int, nbytes: int):
        st = self.st
        pbuf = _padded(memoryview(buf_in)[start : start + nbytes])
        buf = np.frombuffer(pbuf, dtype=np.uint8)
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

        # a regex per line
        keep = ok.copy()
        for r in np.flatnonzero(~ok):
            base = int(s[r])
            h = _read_header(bytes(buf[base : e[r]]), st, self)
            if h is None:
                continue
            keep[r] = True
            ts[r], cpu[r], pid[r] = h[0], h[1], h[2]
            cm_s[r], cm_e[r] = base + h[3], base + h[4]
            name_id[r] = nid(bytes(buf[base + h[5] : base + h[6]]))
            a_s[r] = base + h[7]
            e[r] = base + h[8]
        sel = np.flatnonzero(keep)
        n = len(sel)
        if n == 0:
            return
        ts, cpu, pid, cm_s, cm_e, a_s, a_e, name_id = ts[sel], cpu[sel], pid[sel], cm_s[sel], cm_e[sel], a_s[sel], e[sel], name_id[sel]
        pc_ = _Pieces()
        ev_code = np.zeros(n, np.int32)
        ctx = _Ctx(buf, pbuf, a_s, a_e, pc_, ev_code)
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
            self._group_slow(ctx, nm, rows)
        self.chunks.append(self._finish_chunk(ctx, n, ts, cpu, pid, cm_s, cm_e, ev_code))

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
                        add("args_if", (col, part), r, ks, ve)  # in args only if it does not fit
                        part += 1
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
            if kind == "args_if":
                col, part = key
                p._add(p.args_if.setdefault(col, {}), part, np.array(rr, np.int64), np.array(ss, np.int64), np.array(ee, np.int64))
                continue
            d = p.num if kind == "num" else p.boolv if kind == "boolv" else p.cat if kind == "cat" else p.args
            p._add(d, key, np.array(rr, np.int64), np.array(ss, np.int64), np.array(ee, np.int64))

    # --- chunk → compact columns ---
    def _finish_chunk(self, ctx, n, ts, cpu, pid, cm_s, cm_e, ev_code) -> dict:
        buf, pbuf, p = ctx.buf, ctx.pbuf, ctx.pieces
        view = _spans_py  # Python slices; numbers digit by digit (`parse_ints`)
        out: dict = {"n": n, "ts_ns": ts, "cpu": cpu.astype(np.int32), "pid": pid.astype(np.int32), "event": ev_code}
        out["comm"] = self.cats["comm"].codes(view(pbuf, n, np.arange(n), cm_s, cm_e))
        for col, pieces in p.cat.items():
            rows, s, e = _cat3(pieces)
            out[col] = self.cats[col].codes(view(pbuf, n, rows, s, e))
        nums = {}
        for col, pieces in p.num.items():
            rows, s, e = _cat3(pieces)
            base = 0 if "@" in col else NUMERIC_BASE[col]
            vals, okv, neg, big = parse_ints(buf, s, e, base)
            if "@" in col:  # read into a UInt64 column as well; its text is kept where it was
                nums[col] = (rows, vals, okv)
                continue
            vals, okv, oor = _typed(col, vals, okv, neg, big)
            arr = np.zeros(n, vals.dtype)
            valid = np.zeros(n, bool)
            arr[rows] = vals
            valid[rows] = okv
            out[col] = (arr, valid)
            if oor.any():  # a number that does not fit: null, counted, `key=value` to args
                self.st.values_out_of_range += int(oor.sum())
                lost = np.zeros(n, bool)
                lost[rows[oor]] = True
                for part, pieces_if in p.args_if.get(col, {}).items():
                    rr, ss, ee = _cat3(pieces_if)
                    keep = lost[rr]
                    if keep.any():
                        p._add(p.args, part, rr[keep], ss[keep], ee[keep])
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
            out["marker"] = _to_large_string(view(pbuf, n, rows, s, e))
        if p.args:
            joined = None
            for part in sorted(p.args):
                rows, s, e = _cat3(p.args[part])
                a = view(pbuf, n, rows, s, e).cast(pa.large_binary())
                if joined is None:
                    joined = a
                else:  # a row may lack earlier parts (a number that fit): the first present one leads
                    j2 = pc.binary_join_element_wise(joined, a, pa.scalar(b" ", pa.large_binary()))
                    joined = pc.coalesce(j2, joined, a)
            out["args"] = _to_large_string(joined)
        return out


    def close(self) -> int:
        return sum(c["n"] for c in self.chunks)

    def frame(self, n: int) -> pd.DataFrame:
        return _assemble_chunks(self, n)


def _to_large_string(arr: pa.Array) -> pa.Array:
    """binary → large_string; bytes that are not UTF-8 are decoded with replacement."""
    try:
        return arr.cast(pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        vals = arr.cast(pa.large_binary()).to_pylist()
        return pa.array([None if v is None else v.decode("utf-8", "replace") for v in vals], pa.large_string())


def _spans_py(pbuf, nrows, rows, s, e) -> pa.Array:
    vals = [None] * nrows
    for r, a, b in zip(rows.tolist(), s.tolist(), e.tolist()):
        vals[r] = bytes(pbuf[a : max(a, b)])
    return pa.array(vals, pa.large_binary())


class _Ctx:
    def __init__(self, buf, pbuf, a_s, a_e, pieces, ev_code):
        self.buf, self.pbuf = buf, pbuf
        self.a_s, self.a_e = a_s, a_e
        self.pieces = pieces
        self.ev_code = ev_code


def _cat3(pieces):
    if len(pieces) == 1:
        return tuple(np.asarray(x, np.int64) for x in pieces[0])
    return tuple(np.concatenate([np.asarray(p[i], np.int64) for p in pieces]) for i in range(3))


# ---------------------------------------------------------------------------------------------
# Whole captures: the chunks' columns → one frame

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
    data["event"] = p._event_codes(_take_col(chunks, "event", 0, n, np.int32))
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


def parse_ftrace_text_reference(data, *, path: str = "<buffer>", fmt: str = "ftrace-text", kprobe_groups=None,
                                chunk_bytes: int = CHUNK_BYTES) -> tuple[pd.DataFrame, IngestStats]:
    """The same parse with a regex per line for every header and every field list, and numbers
    read digit by digit: the reference the scanner is tested against."""
    return _run(_chunks_of(data, chunk_bytes), path=path, fmt=fmt, kprobe_groups=kprobe_groups, stats=None, fast=False)


__all__ = ["parse_ftrace_text_reference", "parse_ints"]

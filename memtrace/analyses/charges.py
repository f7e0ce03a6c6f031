"""page_counter movement per memcg and step, reconciled with memory.current (docs/charges.md).

``memory.current`` of a cgroup is ``page_counter_read(&memcg->memory)``. On cgroup v2 (Debian
6.1 and 6.12) that counter changes only in four exported functions of ``mm/page_counter.c``:

* ``page_counter_try_charge(counter, nr, &fail)``: + nr on the counter and every ancestor when
  it returns true; when it returns false the partial adds are cancelled inside (net 0);
* ``page_counter_charge(counter, nr)``: + nr, no limit check (the force: path of
  ``try_charge_memcg``, and folio replacement / migration);
* ``page_counter_uncharge(counter, nr)``: - nr on the counter and every ancestor
  (``page_counter_cancel`` per level; cancel has no other caller on these kernels).

memtrace's probes (probes/memcg.toml) record them as ``pc_try_charge`` (entry: counter, nr,
cgid) + ``pc_try_charge_ret`` (``ok``; on kernels whose return probes read entry arguments,
6.12, also counter/nr/cgid), ``force_charge`` and ``uncharge``. ``cgid`` is read through
``container_of(counter, struct mem_cgroup, memory)``, so it names the memcg that owns the
counter. Entry and return of ``page_counter_try_charge`` are paired per thread, last in first
out (an interrupt that charges on the same thread nests inside the outer call).

Because the counter is hierarchical, a movement is attributed to the counter's cgroup and to
each of its ancestors (ancestry from the truth table's paths). Between two lab step markers,
``net_bytes`` of a cgroup then equals the change of its ``memory.current`` exactly, as long
as every movement was captured and none happened between the marker and the read of the
counters (the lab's settle step drains the per-CPU page stocks before the marker; see
docs/charges.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pac

from memtrace.errors import InputError
from memtrace.tables.events import PAGE_SIZE

#: kprobe event names (any group) each analysis needs, and the marker event
PC_TRY = "pc_try_charge"
PC_TRY_RET = "pc_try_charge_ret"
PC_FORCE = "force_charge"
PC_UNCHARGE = "uncharge"
TRY = "try_charge"  # try_charge_memcg entry: cgid, gfp, nr
TRY_RET = "try_charge_ret"  # its return: ret 0, or -ENOMEM for a refused charge
MARKER_EVENT = "ftrace:print"
STEP_MARKER = re.compile(r"memtrace_step (\d+) (\S+)")

#: events each analysis needs. Only those that fire whenever any memcg charges are required:
#: a capture without a force charge or an uncharge is normal, so `force_charge` and `uncharge`
#: cannot be told "not installed" from "did not fire" by the events alone; the movement table
#: lists the page_counter events it did not see in ``attrs["events_not_seen"]``.
REQUIRES = {
    "page_counter_movements": [PC_TRY, PC_TRY_RET],
    "step_markers": [MARKER_EVENT],
    "charges_by_step": [PC_TRY, PC_TRY_RET, MARKER_EVENT],
    "charge_attempts": [TRY, TRY_RET],
}

#: kinds of movement rows
TRY_OK, TRY_FAILED, FORCE, UNCHARGE = "try_charge", "try_charge_failed", "force", "uncharge"

#: the page_counter probes' arguments read from ``args`` (one named group each)
_ARG_COUNTER = r"\bcounter=0x(?P<v>[0-9a-fA-F]+)"
_ARG_OK = r"\bok=(?P<v>\d+)"


class MissingEvents(InputError):
    """The event table lacks events an analysis needs."""


def _short(event: pd.Series) -> pd.Series:
    return event.astype(str).str.rsplit(":", n=1).str[-1]


def _require(events: pd.DataFrame, analysis: str) -> pd.DataFrame:
    _require_names(_event_names(events), analysis)
    return events


def _require_names(have: set[str] | frozenset, analysis: str) -> None:
    short = {e.rsplit(":", 1)[-1] for e in have}
    missing = [n for n in REQUIRES[analysis] if n not in have and n not in short]
    if missing:
        raise MissingEvents(
            f"trace lacks {', '.join(missing)} needed by {analysis!r}; it has "
            + (", ".join(sorted(have)) or "no events")
            + " (generate the probes with `memtrace probes`)"
        )


_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def _extract(args: pd.Series, rx: str) -> pa.Array:
    """The one named group of ``rx`` in each ``args`` string (arrow; null where it does not match)."""
    if not len(args):
        return pa.array([], pa.large_string())
    arr = pa.array(args.astype("string[pyarrow]"), type=pa.large_string())
    return pac.struct_field(pac.extract_regex(arr, rx), [0])


def _arg(args: pd.Series, rx: str, base: int) -> pd.Series:
    """The one group of ``rx`` in each ``args`` string, as an integer of ``base`` (10 or 16,
    at most 16 hex digits), with array operations; null where absent or not a number."""
    got = _extract(args, rx)
    valid = np.asarray(pac.and_(pac.is_valid(got), pac.greater(pac.utf8_length(got), 0)).fill_null(False)) if len(got) else np.zeros(0, bool)
    if base == 10:
        num = pac.cast(pac.if_else(pa.array(valid), got, "0"), pa.uint64(), safe=False).to_numpy(zero_copy_only=False)
    else:
        width = 16
        ok = valid & (np.asarray(pac.utf8_length(got).fill_null(0)) <= width)
        padded = pac.utf8_lpad(pac.if_else(pa.array(ok), got, "0"), width, "0").combine_chunks() \
            if isinstance(got, pa.ChunkedArray) else pac.utf8_lpad(pac.if_else(pa.array(ok), got, "0"), width, "0")
        off = np.frombuffer(padded.buffers()[1], np.int64, len(padded) + 1, padded.offset * 8)
        data = np.frombuffer(padded.buffers()[2], np.uint8)[off[0]:off[-1]].reshape(-1, width)
        digits = _HEX[data]
        ok &= (digits != 255).all(axis=1)
        num = np.zeros(len(padded), np.uint64)
        for i in range(width):
            num = (num << np.uint64(4)) | digits[:, i].astype(np.uint64)
        valid = ok
    num = np.where(valid, num, 0).astype(np.uint64)
    return pd.Series(pd.arrays.IntegerArray(num, ~valid), index=args.index, dtype="UInt64")


def _thread_keys(pid: pd.Series, cpu: pd.Series) -> np.ndarray:
    """Entry/return pairing key per row: idle (pid 0) runs one task per CPU, so it is keyed by
    CPU (a negative key); every other thread is its own key (its pid)."""
    p = pid.to_numpy(dtype="int64", na_value=0)
    c = cpu.to_numpy(dtype="int64", na_value=-1)
    return np.where(p != 0, p, -(c + 2))


def _pair_lifo(key: np.ndarray, is_entry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair entry and return events per thread, last in first out (an interrupt that charges on
    the same thread nests inside the outer call), with array operations.

    ``key``: thread key per row, rows in capture order; ``is_entry``: entry (True) or return.
    Returns ``partner`` (for a paired return: the position of its entry; -1 otherwise) and
    ``open_entry`` (entries no return closed). A return with no open entry on its thread is
    unpaired and leaves the thread's stack as it is.

    How: per thread, the depth of the call stack is a ±1 walk held at 0 by unpaired returns,
    which is the walk less its running minimum (where below 0). An entry opens level d (its
    depth after it), a paired return closes level d+1 (its depth before it); within one thread
    and level, entries and returns then alternate, and each return closes the entry just
    before it."""
    n = len(key)
    partner = np.full(n, -1, np.int64)
    if n == 0:
        return partner, np.zeros(0, bool)
    order = np.lexsort((np.arange(n), key))
    k, e = key[order], is_entry[order]
    step = np.where(e, 1, -1).astype(np.int64)
    first = np.r_[True, k[1:] != k[:-1]]
    grp = np.cumsum(first) - 1
    c = np.cumsum(step)
    c = c - (c - step)[first][grp]  # the walk, per thread from 0
    big = 2 * n + 2  # each later thread's values lie below every earlier one's: one running min
    low = np.minimum.accumulate(np.minimum(c, 0) - grp * big) + grp * big
    depth = c - low  # held at 0
    before = np.r_[0, depth[:-1]]
    before[first] = 0
    unpaired_ret = ~e & (before == 0)
    level = np.where(e, depth, before)
    take = ~unpaired_ret
    idx = np.nonzero(take)[0]
    o2 = idx[np.lexsort((idx, level[idx], k[idx]))]
    k2, l2, e2 = k[o2], level[o2], e[o2]
    same = np.r_[False, (k2[1:] == k2[:-1]) & (l2[1:] == l2[:-1])]
    closes = ~e2 & same & np.r_[False, e2[:-1]]
    ret_pos = order[o2[closes]]
    ent_pos = order[o2[np.nonzero(closes)[0] - 1]]
    partner[ret_pos] = ent_pos
    open_entry = is_entry.copy()
    open_entry[ent_pos] = False
    return partner, open_entry


def _select(events: pd.DataFrame, names: tuple[str, ...]) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of ``events`` whose event's short name is one of ``names`` (the marker excluded),
    and their short names. The frame's index is kept: it numbers the rows of the capture."""
    ev = events["event"]
    if isinstance(ev.dtype, pd.CategoricalDtype):
        cats = pd.Index(ev.cat.categories.astype(str))
        short_c = cats.str.rsplit(":", n=1).str[-1]
        want = np.asarray(short_c.isin(names) & (cats != MARKER_EVENT))
        codes = ev.cat.codes.to_numpy()
        sel = np.zeros(len(ev), bool)
        ok = codes >= 0
        sel[ok] = want[codes[ok]]
        short = np.asarray(short_c, dtype=object)[codes[sel]]
    else:
        name = _short(ev)
        m = name.isin(names) & ~ev.astype(str).eq(MARKER_EVENT)
        sel = m.to_numpy()
        short = name[m].to_numpy(dtype=object)
    return events.loc[:, [c for c in _SELECT_COLS if c in events.columns]][sel], short


#: the event table's columns the charge analyses read (selecting rows of only these is cheaper)
_SELECT_COLS = ("ts_ns", "cpu", "pid", "comm", "event", "cgroup_id", "gfp", "pages", "ret", "marker", "args")


_TRY_COLS = ["row", "ts_ns", "cpu", "pid", "comm", "cgroup_id", "gfp", "pages", "ret", "entry_row", "call_site"]
#: a kretprobe event's location, "(CALLER+0xOFF/0xSIZE <- FUNCTION)": where the probed function returns to
_RET_SITE = r"^\((?P<v>[^ /]+)(?:/0x[0-9a-fA-F]+)? <- "
_MV_COLS = ["row", "ts_ns", "cpu", "pid", "kind", "counter", "cgroup_id", "pages", "signed_pages"]


def _rows(events: pd.DataFrame) -> pd.DataFrame:
    """``events`` numbered by position unless its index already numbers the capture's rows (a
    chunk of a streamed capture keeps a RangeIndex that starts at its first row)."""
    return events if isinstance(events.index, pd.RangeIndex) and events.index.step == 1 else events.reset_index(drop=True)


def _site(args: pd.Series) -> pd.api.extensions.ExtensionArray:
    """The call site (``caller+0xOFF``) a kretprobe event names, or null."""
    if not len(args):
        return pd.array([], dtype="string")
    return pd.array(_extract(args, _RET_SITE).to_pandas(types_mapper=pd.ArrowDtype).astype("string"), dtype="string")


def _attempts(t: pd.DataFrame, kinds: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(attempts, open entry rows, unpaired returns) of try_charge/try_charge_ret rows ``t``."""
    is_entry = kinds == TRY
    partner, open_entry = _pair_lifo(_thread_keys(t["pid"], t["cpu"]), is_entry)
    ret_i = np.nonzero(~is_entry & (partner >= 0))[0]
    ent_i = partner[ret_i]
    df = pd.DataFrame({
        "row": t.index.to_numpy()[ret_i].astype("int64"),
        "ts_ns": t["ts_ns"].to_numpy()[ret_i].astype("int64"),
        "cpu": t["cpu"].iloc[ret_i].astype("Int32").to_numpy(),
        "pid": t["pid"].iloc[ret_i].astype("Int32").to_numpy(),
        "comm": t["comm"].iloc[ret_i].astype("string").to_numpy(),
        "cgroup_id": t["cgroup_id"].iloc[ent_i].astype("UInt64").to_numpy(),
        "gfp": t["gfp"].iloc[ent_i].astype("UInt64").to_numpy(),
        "pages": t["pages"].iloc[ent_i].astype("Int64").to_numpy(),
        "ret": t["ret"].iloc[ret_i].astype("Int64").to_numpy(),
        "entry_row": t.index.to_numpy()[ent_i].astype("int64"),
        "call_site": _site(t["args"].iloc[ret_i]),
    }, columns=_TRY_COLS)
    unpaired_returns = int((~is_entry & (partner < 0)).sum())
    return df, t[open_entry], unpaired_returns


def _movements(pc: pd.DataFrame, kinds: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """(movements with ``comm``, open entry rows, unpaired returns, entry/return mismatches) of
    page_counter rows ``pc``."""
    counter_arg = _arg(pc["args"], _ARG_COUNTER, 16)
    counters = counter_arg.to_numpy(dtype="uint64", na_value=0)
    has_counter = counter_arg.notna().to_numpy()
    is_try, is_ret = kinds == PC_TRY, kinds == PC_TRY_RET
    ok, has_ok = np.zeros(len(pc), np.uint64), np.zeros(len(pc), bool)
    if is_ret.any():  # only return events carry ok=
        ok_arg = _arg(pc["args"][is_ret], _ARG_OK, 10)
        ok[is_ret] = ok_arg.to_numpy(dtype="uint64", na_value=0)
        has_ok[is_ret] = ok_arg.notna().to_numpy()
    pages = pc["pages"].to_numpy(dtype="int64", na_value=0)
    has_pages = pc["pages"].notna().to_numpy()
    cg = pc["cgroup_id"].to_numpy(dtype="uint64", na_value=0)
    has_cg = pc["cgroup_id"].notna().to_numpy()
    pair_i = np.nonzero(is_try | is_ret)[0]
    partner_sub, open_sub = _pair_lifo(_thread_keys(pc["pid"].iloc[pair_i], pc["cpu"].iloc[pair_i]), is_try[pair_i])
    partner = np.full(len(pc), -1, np.int64)
    partner[pair_i] = np.where(partner_sub >= 0, pair_i[np.maximum(partner_sub, 0)], -1)
    open_rows = pc.iloc[pair_i[open_sub]]
    ret_paired = is_ret & (partner >= 0)
    ret_unpaired = is_ret & (partner < 0)
    # a return that carries its own counter/nr (6.12) stands alone when unpaired
    ret_alone = ret_unpaired & has_counter & has_pages
    src = np.where(ret_paired, partner, np.arange(len(pc)))
    mismatches = int((ret_paired & has_counter & ((counters != counters[src]) | (pages != pages[src]) |
                                                    (has_pages != has_pages[src]))).sum())
    ret_col = pc["ret"].to_numpy(dtype="int64", na_value=0)
    has_ret = pc["ret"].notna().to_numpy()
    okb = np.where(has_ok, ok != 0, has_ret & (ret_col != 0))
    is_force, is_unch = kinds == PC_FORCE, kinds == PC_UNCHARGE
    keep = ret_paired | ret_alone | is_force | is_unch
    i = np.nonzero(keep)[0]
    s = src[i]
    kind = np.where(is_force[i], FORCE, np.where(is_unch[i], UNCHARGE, np.where(okb[i], TRY_OK, TRY_FAILED)))
    pg = pages[s]
    signed = np.where(is_unch[i], -pg, np.where(is_force[i] | okb[i], pg, 0)).astype(np.int64)
    df = pd.DataFrame({
        "row": pc.index.to_numpy()[i].astype("int64"),
        "ts_ns": pc["ts_ns"].to_numpy()[i].astype("int64"),
        "cpu": pc["cpu"].iloc[i].astype("Int32").to_numpy(),
        "pid": pc["pid"].iloc[i].astype("Int32").to_numpy(),
        "kind": pd.Categorical(kind, categories=[TRY_OK, TRY_FAILED, FORCE, UNCHARGE]),
        "counter": pd.arrays.IntegerArray(counters[s], ~has_counter[s]).astype("UInt64"),
        "cgroup_id": pd.arrays.IntegerArray(cg[s], ~has_cg[s]).astype("UInt64"),
        "pages": pd.arrays.IntegerArray(pg, ~has_pages[s]).astype("Int64"),
        "signed_pages": signed,
        "comm": pc["comm"].iloc[i].to_numpy(),
    })
    return df, open_rows, int(ret_unpaired.sum()), mismatches


def charge_attempts(events) -> pd.DataFrame:
    """One row per completed ``try_charge_memcg`` call of the capture, at its return event.

    Columns: ``row`` (position of the return in `events`), ``ts_ns``, ``cpu``, ``pid``,
    ``comm``, ``cgroup_id`` (the memcg charged), ``gfp`` (gfp_mask), ``pages`` (nr_pages),
    ``ret`` (0, or -12: the charge was refused with -ENOMEM; a refused charge is never
    forced), ``entry_row`` (position of its entry event), ``call_site`` (where
    try_charge_memcg returned to, ``caller+0xOFF``, from the return probe's location; null
    where the capture's format does not carry it). Entry and return are paired per thread,
    last in first out, as in ``page_counter_movements``. ``attrs``: ``unpaired_entries``,
    ``unpaired_returns``.
    ``events`` may also be the ``ChargeTables`` of a streamed capture."""
    if isinstance(events, ChargeTables):
        return events.require("charge_attempts").attempts
    _require(events, "charge_attempts")
    t, kinds = _select(_rows(events), (TRY, TRY_RET))
    df, open_rows, unpaired_returns = _attempts(t, kinds)
    df.attrs.update(unpaired_entries=len(open_rows), unpaired_returns=unpaired_returns)
    return df


def page_counter_movements(events) -> pd.DataFrame:
    """One row per page_counter call of the capture, in capture order.

    Columns: ``row`` (position in `events`), ``ts_ns``, ``cpu``, ``pid``, ``kind``
    (try_charge / try_charge_failed / force / uncharge), ``counter`` (address), ``cgroup_id``
    (owner memcg of the counter), ``pages`` (as passed), ``signed_pages`` (what the counter
    moved: + for try_charge and force, - for uncharge, 0 for a failed try_charge), ``comm``.

    A try_charge row sits at its return event (the outcome is only known there) and takes the
    counter/nr/cgid of its entry event. ``attrs``: ``unpaired_entries`` (entries without a
    return: the capture ended inside the call), ``unpaired_returns`` (returns without an
    entry: the capture began inside it), ``entry_return_mismatches`` (the return event
    carries its own counter, on 6.12, and it differs from the paired entry's: must be 0).
    ``events`` may also be the ``ChargeTables`` of a streamed capture.
    """
    if isinstance(events, ChargeTables):
        return events.require("page_counter_movements").movements
    _require(events, "page_counter_movements")
    pc, kinds = _select(_rows(events), PC_NAMES)
    df, open_rows, unpaired_returns, mismatches = _movements(pc, kinds)
    seen = set(kinds)
    df.attrs.update(
        events_not_seen=[n for n in PC_NAMES if n not in seen],
        unpaired_entries=len(open_rows),
        unpaired_returns=unpaired_returns,
        entry_return_mismatches=mismatches,
    )
    return df


PC_NAMES = (PC_TRY, PC_TRY_RET, PC_FORCE, PC_UNCHARGE)


def step_markers(events: pd.DataFrame) -> pd.DataFrame:
    """The lab's step markers (`memtrace_step NNN name`): ``row``, ``ts_ns``, ``step``, ``step_name``."""
    if isinstance(events, ChargeTables):
        return events.require("step_markers").markers
    _require(events, "step_markers")
    ev = _rows(events)
    m = ev[(ev["event"] == MARKER_EVENT).to_numpy()]
    got = m["marker"].astype("string").str.extract(STEP_MARKER)
    keep = got[0].notna()
    return pd.DataFrame(
        {
            "row": m.index[keep].astype("int64"),
            "ts_ns": m["ts_ns"][keep].astype("int64").to_numpy(),
            "step": got[0][keep].astype("int64").to_numpy(),
            "step_name": got[1][keep].astype("string").to_numpy(),
        }
    ).reset_index(drop=True)


@dataclass
class ChargeTables:
    """What the charge analyses read of a capture, without the capture: its page_counter
    movements (``page_counter_movements``, with ``comm``), its completed try_charge_memcg
    calls (``charge_attempts``; empty when the capture has no try_charge probes), its step
    markers (``step_markers``), and the names of the events it held. Made from a whole event
    table (``charge_tables``) or from a capture read in chunks (``stream_charge_tables``);
    every analysis that takes ``events`` also takes this. A few bytes per movement, where the
    event table holds about 130 per event."""

    movements: pd.DataFrame
    attempts: pd.DataFrame
    markers: pd.DataFrame
    event_names: frozenset
    events: int

    def require(self, analysis: str) -> "ChargeTables":
        _require_names(self.event_names, analysis)
        return self

    def has_events(self, *names: str) -> bool:
        return names_have(self.event_names, *names)


def names_have(event_names, *names: str) -> bool:
    """Whether events of every one of ``names`` (short names, any group) are among ``event_names``."""
    short = {e.rsplit(":", 1)[-1] for e in event_names}
    return all(n in short for n in names)


def _event_names(events: pd.DataFrame) -> set[str]:
    ev = events["event"]
    if isinstance(ev.dtype, pd.CategoricalDtype):
        used = np.unique(ev.cat.codes.to_numpy())
        return {str(ev.cat.categories[c]) for c in used if c >= 0}
    return set(ev.astype(str).unique())


def charge_tables(events: pd.DataFrame) -> ChargeTables:
    """The ``ChargeTables`` of a whole event table."""
    return stream_charge_tables([_rows(events)])


def stream_charge_tables(chunks) -> ChargeTables:
    """The ``ChargeTables`` of a capture given as event tables in capture order, each indexed
    by its rows' positions in the whole capture (``memtrace.sources.trace.iter_trace``).

    Calls open at the end of a chunk (an entry whose return is in a later chunk) are carried
    into the next, so the pairing is the same as on the whole capture; only the reduced
    tables are kept, so memory is one chunk plus a few bytes per movement."""
    mv_parts, at_parts, mk_parts = [], [], []
    open_pc = open_try = None
    names: set[str] = set()
    n = 0
    unpaired_pc = unpaired_try = mismatches = 0
    for ch in chunks:
        n += len(ch)
        names |= _event_names(ch)
        pc_rows, pc_kinds = _select(ch, PC_NAMES)
        if open_pc is not None and len(open_pc):
            pc_rows = pd.concat([open_pc[0], pc_rows])
            pc_kinds = np.concatenate([open_pc[1], pc_kinds])
        mv, o, u, mm = _movements(pc_rows, pc_kinds)
        open_pc = (o, np.full(len(o), PC_TRY, dtype=object))
        unpaired_pc += u
        mismatches += mm
        mv_parts.append(mv)
        t_rows, t_kinds = _select(ch, (TRY, TRY_RET))
        if open_try is not None and len(open_try):
            t_rows = pd.concat([open_try, t_rows])
            t_kinds = np.concatenate([np.full(len(open_try), TRY, dtype=object), t_kinds])
        at, open_try, u = _attempts(t_rows, t_kinds)
        unpaired_try += u
        at_parts.append(at)
        if MARKER_EVENT in names:
            mk_parts.append(step_markers(ch) if (ch["event"] == MARKER_EVENT).any() else None)
    mv = _concat(mv_parts, _MV_COLS + ["comm"])
    mv.attrs.update(
        events_not_seen=[k for k in PC_NAMES if k not in {e.rsplit(":", 1)[-1] for e in names}],
        unpaired_entries=0 if open_pc is None else len(open_pc[0]),
        unpaired_returns=unpaired_pc, entry_return_mismatches=mismatches,
    )
    at = _concat(at_parts, _TRY_COLS)
    at.attrs.update(unpaired_entries=0 if open_try is None else len(open_try), unpaired_returns=unpaired_try)
    marks = [m for m in mk_parts if m is not None]
    mk = pd.concat(marks, ignore_index=True) if marks else pd.DataFrame(
        {"row": pd.Series([], dtype="int64"), "ts_ns": pd.Series([], dtype="int64"),
         "step": pd.Series([], dtype="int64"), "step_name": pd.Series([], dtype="string")})
    return ChargeTables(movements=mv, attempts=at, markers=mk, event_names=frozenset(names), events=n)


def _concat(parts: list[pd.DataFrame], cols: list[str]) -> pd.DataFrame:
    full = [p for p in parts if len(p)]
    if not full:
        return parts[0].reset_index(drop=True) if parts else pd.DataFrame({c: pd.Series([], dtype="object") for c in cols})
    parts = full
    if len(parts) == 1:
        return parts[0].reset_index(drop=True)
    df = pd.concat(parts, ignore_index=True)
    if "kind" in df:
        df["kind"] = pd.Categorical(df["kind"].astype(str), categories=[TRY_OK, TRY_FAILED, FORCE, UNCHARGE])
    return df


def _ancestors(truth: pd.DataFrame) -> tuple[dict[int, list[int]], dict[int, str]]:
    """cgroup id -> [itself, parent, ..., root] ids, and id -> path, from every step's paths."""
    path_of: dict[int, str] = {}
    id_of: dict[str, int] = {}
    for cid, path in truth[["cgroup_id", "path"]].drop_duplicates().itertuples(index=False):
        path_of[int(cid)] = str(path)
        id_of[str(path)] = int(cid)  # a path re-created later gets the newer id; parents never change
    chain: dict[int, list[int]] = {}
    for cid, path in path_of.items():
        ids = [cid]
        p = path
        while p != "/":
            p = p.rsplit("/", 1)[0] or "/"
            if p in id_of:
                ids.append(id_of[p])
        chain[cid] = ids
    return chain, path_of


COLUMNS = (
    "step", "step_name", "cgroup_id", "path",
    "charged_pages", "forced_pages", "uncharged_pages", "try_charges", "failed_try_charges", "force_charges",
    "net_bytes", "memory_current_bytes", "delta_memory_current_bytes", "residual_bytes", "refused_charges",
)


def charges_by_step(events: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per lab step and cgroup: page_counter movement from the capture against Δ memory.current.

    `events` is the event table of a lab capture made with memtrace's page_counter probes;
    `truth` the lab truth table (`memtrace.tables.lab_truth`). Step k covers the events after
    marker k-1 up to marker k (step 1: from the start of the capture). Counts are
    hierarchical, like memory.current: a movement on a cgroup's counter counts for it and for
    every ancestor.

    Columns: ``step``, ``step_name``, ``cgroup_id``, ``path``; ``charged_pages`` (successful
    page_counter_try_charge), ``forced_pages`` (page_counter_charge), ``uncharged_pages``
    (page_counter_uncharge); ``try_charges`` / ``failed_try_charges`` / ``force_charges``
    (calls); ``net_bytes`` = (charged + forced - uncharged) * PAGE_SIZE;
    ``memory_current_bytes`` at the step; ``delta_memory_current_bytes`` since the previous
    step (a cgroup first seen at step k > 1 was created in it and started at 0; null at step
    1, for a cgroup removed during the step, and for the root); ``residual_bytes`` = net -
    delta (null where delta is). ``attrs`` carries the pairing counts of
    `page_counter_movements`, ``movements_after_last_marker``, ``movements_without_cgroup``
    (the cgid fetch faulted) and ``unknown_cgroup_ids``
    ``refused_charges``: try_charge_memcg calls on the cgroup or a descendant that returned
    -ENOMEM (from the try_charge/try_charge_ret probes; null when the capture lacks them);
    (counter owners that are no cgroup of the truth table: counters that are not
    ``memcg->memory``, or cgroups made and removed between two steps).
    """
    tables = (events if isinstance(events, ChargeTables) else charge_tables(events)).require("charges_by_step")
    mv = tables.movements
    marks = tables.markers
    steps_in_truth = set(truth["step"].unique()) if len(truth) else set()
    marks = marks[marks["step"].isin(steps_in_truth)].reset_index(drop=True)
    pos = np.searchsorted(marks["row"].to_numpy(), mv["row"].to_numpy(), side="left")
    after = pos >= len(marks)
    mv = mv[~after].copy()
    mv["step"] = marks["step"].to_numpy()[pos[~after]]

    chain, path_of = _ancestors(truth)
    unknown = sorted({int(c) for c in mv["cgroup_id"].dropna().unique()} - set(chain))
    # a fetch fault leaves cgid empty: such movements cannot be placed (counted in attrs)
    no_cgroup = int(mv["cgroup_id"].isna().sum())
    mv = mv[mv["cgroup_id"].notna()]
    # one row per (movement, cgroup it counts for)
    own = mv["cgroup_id"].to_numpy(dtype="int64")
    ids = np.unique(own)
    pairs = [(c, a) for c in ids.tolist() for a in chain.get(c, [c])]
    up = pd.DataFrame(pairs, columns=["own", "cgroup_id"]) if pairs else pd.DataFrame({"own": [], "cgroup_id": []}, dtype="int64")
    x = pd.DataFrame({"own": own, "step": mv["step"].to_numpy(), "kind": mv["kind"].astype(str).to_numpy(),
                      "pages": mv["pages"].to_numpy(dtype="int64", na_value=0), "signed_pages": mv["signed_pages"].to_numpy()})
    x = x.merge(up, on="own", how="inner", sort=False)[["step", "cgroup_id", "kind", "pages", "signed_pages"]]
    if len(x):
        def tot(kind):
            return x["pages"].where(x["kind"].eq(kind), 0)

        def cnt(kind):
            return x["kind"].eq(kind).astype("int64")

        x = x.assign(
            charged_pages=tot(TRY_OK), forced_pages=tot(FORCE), uncharged_pages=tot(UNCHARGE),
            try_charges=cnt(TRY_OK) + cnt(TRY_FAILED), failed_try_charges=cnt(TRY_FAILED), force_charges=cnt(FORCE),
        )
        agg = x.groupby(["step", "cgroup_id"], dropna=False)[
            ["charged_pages", "forced_pages", "uncharged_pages", "try_charges", "failed_try_charges", "force_charges"]
        ].sum().reset_index()
    else:
        agg = pd.DataFrame(columns=["step", "cgroup_id", "charged_pages", "forced_pages", "uncharged_pages",
                                    "try_charges", "failed_try_charges", "force_charges"])

    # truth side: memory.current per step and its change since the previous step
    t = truth[["step", "step_name", "cgroup_id", "path", "memory_current_bytes"]].copy()
    t["cgroup_id"] = t["cgroup_id"].astype("int64")
    order = sorted(steps_in_truth)
    prev_step = {s: order[i - 1] if i else None for i, s in enumerate(order)}
    cur = {(int(s), int(c)): v for s, c, v in t[["step", "cgroup_id", "memory_current_bytes"]].itertuples(index=False)}
    first_seen: dict[int, int] = {}
    for s in order:
        for c in t.loc[t["step"].eq(s), "cgroup_id"]:
            first_seen.setdefault(int(c), s)

    def delta(s: int, c: int):
        now = cur.get((s, c), pd.NA)
        if pd.isna(now):
            return pd.NA
        p = prev_step[s]
        if p is None:
            return pd.NA
        if (p, c) in cur:
            before = cur[(p, c)]
            return pd.NA if pd.isna(before) else int(now) - int(before)
        return int(now) if first_seen.get(c) == s else pd.NA

    keys = set(zip(t["step"].astype(int), t["cgroup_id"].astype(int)))
    # plus (step, cgroup) pairs with movements but no counters: a cgroup removed during the step
    keys |= {(int(s), int(c)) for s, c in zip(agg["step"], agg["cgroup_id"]) if not pd.isna(c)}
    names = dict(zip(marks["step"], marks["step_name"]))
    names.update(dict(zip(t["step"], t["step_name"])))
    res = pd.DataFrame(sorted(keys), columns=["step", "cgroup_id"])
    res = res.merge(agg.astype({"step": "int64", "cgroup_id": "int64"}), how="left", on=["step", "cgroup_id"])
    for c in ("charged_pages", "forced_pages", "uncharged_pages", "try_charges", "failed_try_charges", "force_charges"):
        res[c] = res[c].fillna(0).astype("int64")
    res["step_name"] = res["step"].map(names).astype("string")
    res["path"] = res["cgroup_id"].map(path_of).astype("string")
    res["net_bytes"] = (res["charged_pages"] + res["forced_pages"] - res["uncharged_pages"]) * PAGE_SIZE
    res["memory_current_bytes"] = pd.array([cur.get((s, c), pd.NA) for s, c in zip(res["step"], res["cgroup_id"])],
                                           dtype="Int64")
    res["delta_memory_current_bytes"] = pd.array([delta(s, c) for s, c in zip(res["step"], res["cgroup_id"])],
                                                 dtype="Int64")
    res["residual_bytes"] = (res["net_bytes"].astype("Int64") - res["delta_memory_current_bytes"]).astype("Int64")
    res["refused_charges"] = _refused_by_step(tables, marks, chain, res)
    res["cgroup_id"] = res["cgroup_id"].astype("UInt64")
    res = res[list(COLUMNS)].sort_values(["step", "path", "cgroup_id"], kind="stable").reset_index(drop=True)
    res.attrs.update(mv.attrs)
    res.attrs.update(movements_after_last_marker=int(after.sum()), movements_without_cgroup=no_cgroup,
                     unknown_cgroup_ids=unknown)
    return res


def _refused_by_step(tables: ChargeTables, marks: pd.DataFrame, chain: dict, res: pd.DataFrame) -> pd.Series:
    """Refused try_charge_memcg calls (ret != 0) per row of ``res``, hierarchical like the
    other counts; null everywhere when the capture has no try_charge/try_charge_ret events."""
    if not tables.has_events(TRY, TRY_RET):
        return pd.Series(pd.NA, index=res.index, dtype="Int64")
    a = tables.attempts
    a = a[a["ret"].fillna(0).ne(0) & a["cgroup_id"].notna()]
    pos = np.searchsorted(marks["row"].to_numpy(), a["row"].to_numpy(), side="left")
    keep = pos < len(marks)
    counts: dict[tuple[int, int], int] = {}
    for step, cid in zip(marks["step"].to_numpy()[pos[keep]], a["cgroup_id"].to_numpy()[keep]):
        for c in chain.get(int(cid), [int(cid)]):
            counts[(int(step), c)] = counts.get((int(step), c), 0) + 1
    return pd.Series([counts.get((int(s), int(c)), 0) for s, c in zip(res["step"], res["cgroup_id"])],
                     index=res.index, dtype="Int64")


__all__ = ["REQUIRES", "MissingEvents", "charge_attempts", "page_counter_movements", "step_markers", "charges_by_step"]

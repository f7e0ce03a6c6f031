"""A capture as series over time, for `memtrace export` (docs/export.md): each memcg's charged
bytes, the forced and refused charges, the lab's steps and the events that name a BPF map.

Every function takes the event table (``memtrace.tables.events``) and returns a tidy
DataFrame; units are in the column names (``_ns``: trace clock nanoseconds, ``_bytes``).

**What a memcg's counter series is.** ``memory.current`` of a cgroup is its page counter, which
is hierarchical: a charge to ``/pod/genf`` moves genf's counter *and* ``/pod``'s. So the series
of a memcg is its own counter *including its descendants*, the number ``memory.current``
shows and users compare with: every page_counter movement
(``charges.page_counter_movements``) counts for the memcg whose counter it names and for each
of its ancestors. Ancestry comes from the truth table's paths (``--truth``) or, without one,
from the capture's own ``cgroup:*`` events that carry a path; when neither names a cgroup's
path its series has only the movements on its own counter (``hierarchy`` says which).

**Anchoring.** With a truth table of the same run, a memcg's series is anchored at its
``memory.current`` at the first step marker of the capture (a cgroup created later starts at
0, which is what it was before it existed); the value at each later marker then equals that
step's ``memory.current`` wherever ``charges.charges_by_step`` reconciles exactly (its
``residual_bytes`` is 0) and differs from it by the sum of the residuals otherwise. Without
truth (or for a memcg the truth has no ``memory.current`` for, such as the root) a series
starts at 0 at the start of the capture: it is the change since the capture began.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memtrace.analyses.charges import (
    FORCE,
    MARKER_EVENT,
    TRY,
    TRY_RET,
    _ancestors,
    _event_names,
    charge_attempts,
    page_counter_movements,
    step_markers,
)
from memtrace.analyses.force import forced_charges, forced_from_movements, refused_charges
from memtrace.tables.events import PAGE_SIZE

#: how a memcg's series was anchored (``memcg_tracks``' ``anchor`` column)
ANCHOR_TRUTH = "memory.current"  # truth's memory.current at the first step
ANCHOR_CREATED = "created"  # not in the truth at the first step: created later, from 0
ANCHOR_NONE = "capture start"  # change since the capture began

SERIES_COLUMNS = ("ts_ns", "row", "cgroup_id", "delta_bytes", "value_bytes")
TRACK_COLUMNS = ("cgroup_id", "path", "hierarchy", "anchor", "anchor_step", "anchor_bytes", "start_bytes",
                 "end_bytes", "movements")
INSTANT_COLUMNS = ("ts_ns", "row", "kind", "cgroup_id", "path", "pages", "pid", "comm", "gfp", "map_id")
SLICE_COLUMNS = ("step", "step_name", "start_ns", "end_ns", "marker_row")
MAP_EVENT_COLUMNS = ("ts_ns", "row", "map_id", "event", "bytes", "pid", "comm", "cgroup_id")


def capture_span(events: pd.DataFrame) -> tuple[int, int]:
    """First and last timestamp of the capture (ns)."""
    ts = events["ts_ns"].to_numpy()
    return (int(ts.min()), int(ts.max())) if len(ts) else (0, 0)


def _names(events: pd.DataFrame) -> set[str]:
    """The event names the capture holds (``charges._event_names``), counted on the category
    codes with one bincount rather than a hash of every row."""
    ev = events["event"]
    if isinstance(ev.dtype, pd.CategoricalDtype):
        codes = ev.cat.codes.to_numpy()
        used = np.flatnonzero(np.bincount(codes.astype(np.intp) + 1, minlength=len(ev.cat.categories) + 1)[1:])
        return {str(ev.cat.categories[c]) for c in used}
    return _event_names(events)


def has_markers(events: pd.DataFrame) -> bool:
    return MARKER_EVENT in _names(events)  # on the categories, not on every row


def _paths(events: pd.DataFrame, truth: pd.DataFrame | None) -> pd.DataFrame:
    """cgroup_id and path pairs for the ancestry: the truth's, or the capture's cgroup events'."""
    if truth is not None and len(truth):
        return truth[["cgroup_id", "path"]]
    ev = events[events["cgroup_path"].notna() & events["cgroup_id"].notna()
                & events["event"].astype(str).str.startswith("cgroup:")]
    return pd.DataFrame({"cgroup_id": ev["cgroup_id"].astype("int64").to_numpy(),
                         "path": ev["cgroup_path"].astype(str).to_numpy()})


def memcg_counters(events: pd.DataFrame, truth: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each memcg's charged bytes over time, from the capture's page_counter movements.

    Returns ``(series, tracks)``.

    ``series``: one row per (movement, memcg whose counter it moved), in capture order per
    memcg; movements of one memcg at the same ``ts_ns`` are merged into one row (the last):
    ``ts_ns``; ``row`` (position in `events` of the last movement merged); ``cgroup_id`` (the
    memcg of the series); ``delta_bytes`` (what the movements moved that counter, signed);
    ``value_bytes`` (the counter after them: the anchor plus every movement since it).

    ``tracks``: one row per memcg: ``cgroup_id``; ``path`` (null when unknown);
    ``hierarchy`` (``with descendants``, or ``own counter only`` when no path is known);
    ``anchor`` (``memory.current``, ``created`` or ``capture start``, see the module doc);
    ``anchor_step`` (the step whose memory.current anchors it, else null); ``anchor_bytes``
    (the value at that marker, or 0 at the capture start); ``start_bytes`` (the value at the
    start of the capture); ``end_bytes`` (after the last movement); ``movements`` (rows of
    ``series`` before merging).

    ``attrs``: the pairing counts of ``page_counter_movements`` and ``movements_without_cgroup``.
    """
    mv = page_counter_movements(events)
    attrs = dict(mv.attrs)
    attrs["forced"] = _forced(events, mv)
    no_cg = mv["cgroup_id"].isna().to_numpy()
    attrs["movements_without_cgroup"] = int(no_cg.sum())
    has_cg = ~no_cg  # the columns needed, not a copy of the whole table
    src = mv["cgroup_id"].to_numpy(dtype=np.uint64, na_value=0)[has_cg].astype(np.int64)
    rows = mv["row"].to_numpy()[has_cg]
    ts = mv["ts_ns"].to_numpy()[has_cg]
    delta = mv["signed_pages"].to_numpy().astype(np.int64)[has_cg] * PAGE_SIZE

    paths = _paths(events, truth)
    chain, path_of = _ancestors(paths) if len(paths) else ({}, {})
    # expand each movement to its cgroup and every ancestor (vectorised over distinct cgroups)
    uniq, inv = np.unique(src, return_inverse=True)
    chains = [chain.get(int(c), [int(c)]) for c in uniq]
    lens = np.array([len(c) for c in chains], dtype=np.int64)
    flat = np.concatenate([np.asarray(c, dtype=np.int64) for c in chains]) if chains else np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(lens) else np.zeros(0, np.int64)
    n_each = lens[inv] if len(inv) else np.zeros(0, np.int64)
    idx = np.repeat(np.arange(len(src)), n_each)
    off = np.arange(len(idx)) - np.repeat(np.cumsum(n_each) - n_each, n_each)
    target = flat[starts[inv][idx] + off] if len(idx) else np.zeros(0, np.int64)
    # one row per (movement, memcg): sorted by memcg then capture row, in groups of one memcg
    order = np.lexsort((rows[idx], target))  # stable
    cg, xrow, xts, xd = target[order], rows[idx][order], ts[idx][order], delta[idx][order]
    n = len(cg)
    new_group = np.ones(n, dtype=bool)
    if n > 1:
        new_group[1:] = cg[1:] != cg[:-1]
    gstart = np.flatnonzero(new_group)
    gid = np.cumsum(new_group) - 1
    gcg = cg[gstart]  # each group's memcg, ascending
    gsize = np.diff(np.append(gstart, n))
    csum = np.cumsum(xd)
    cum = csum - (csum[gstart] - xd[gstart])[gid] if n else csum  # running sum within each memcg

    # anchors: memory.current at the first marker that is a step of the truth
    anchor_of: dict[int, tuple[str, int | None, int, int]] = {}  # cgid -> (kind, step, bytes, offset)
    first_row = None
    first_step = None
    if truth is not None and len(truth) and has_markers(events):
        marks = step_markers(events)
        marks = marks[marks["step"].isin(set(truth["step"]))]
        if len(marks):
            first_row, first_step = int(marks["row"].iloc[0]), int(marks["step"].iloc[0])
    if first_step is not None:
        at = truth[truth["step"].eq(first_step)]
        cur0 = {int(c): v for c, v in zip(at["cgroup_id"], at["memory_current_bytes"])}
        ever = {int(c): v for c, v in truth[["cgroup_id", "memory_current_bytes"]].dropna().itertuples(index=False)}
        # each memcg's movements before the first marker (exact int64 sums per group)
        before = np.add.reduceat(np.where(xrow < first_row, xd, 0), gstart) if n else np.zeros(0, np.int64)
        offset = dict(zip(gcg.tolist(), before.tolist()))
        for cid in set(gcg.tolist()) | set(int(c) for c in truth["cgroup_id"].unique()):
            cid = int(cid)
            off_b = int(offset.get(cid, 0))
            if cid in cur0 and not pd.isna(cur0[cid]):
                anchor_of[cid] = (ANCHOR_TRUTH, first_step, int(cur0[cid]), off_b)
            elif cid not in cur0 and cid in ever:
                anchor_of[cid] = (ANCHOR_CREATED, first_step, 0, off_b)
    base = np.array([anchor_of[c][2] - anchor_of[c][3] if c in anchor_of else 0 for c in gcg.tolist()],
                    dtype=np.int64)
    value = cum + base[gid] if n else cum
    counts = dict(zip(gcg.tolist(), gsize.tolist()))
    # merge consecutive movements of one memcg at one timestamp: only the value after the last shows
    same_next = np.zeros(n, dtype=bool)
    if n > 1:
        same_next[:-1] = (cg[1:] == cg[:-1]) & (xts[1:] == xts[:-1])
    last = np.flatnonzero(~same_next)  # each run's last row
    run_start = np.concatenate([[0], last[:-1] + 1]) if n else last
    merged = np.add.reduceat(xd, run_start) if n else xd
    series = pd.DataFrame({"ts_ns": xts[last].astype(np.int64), "row": xrow[last].astype(np.int64),
                           "cgroup_id": pd.array(cg[last].astype(np.uint64), dtype="UInt64"),
                           "delta_bytes": merged.astype(np.int64), "value_bytes": value[last].astype(np.int64)},
                          columns=list(SERIES_COLUMNS))

    ids = sorted(set(gcg.tolist()) | set(anchor_of))
    # a group's last row is never merged away: its value is the series' last of that memcg
    end_of = dict(zip(gcg.tolist(), value[np.append(gstart[1:], n) - 1].tolist())) if n else {}
    recs = []
    for cid in ids:
        kind, step, ab, off_b = anchor_of.get(cid, (ANCHOR_NONE, None, 0, 0))
        start = ab - off_b if kind != ANCHOR_NONE else 0
        recs.append((cid, path_of.get(cid), "with descendants" if cid in path_of else "own counter only", kind, step,
                     ab, start, int(end_of.get(cid, start)), int(counts.get(cid, 0))))
    tracks = pd.DataFrame(recs, columns=list(TRACK_COLUMNS)).astype(
        {"cgroup_id": "UInt64", "path": "string", "hierarchy": "string", "anchor": "string", "anchor_step": "Int64",
         "anchor_bytes": "int64", "start_bytes": "int64", "end_bytes": "int64", "movements": "int64"})
    forced = attrs.pop("forced")
    series.attrs.update(attrs)
    tracks.attrs.update(attrs)
    tracks.attrs["forced"] = forced  # for charge_instants: the movements are not parsed twice
    return series, tracks


def _forced(events: pd.DataFrame, mv: pd.DataFrame) -> pd.DataFrame:
    """``force.forced_charges`` from movements already computed (the same rows and columns,
    with the call sites from the capture's try_charge_memcg calls when it has those probes);
    the force rows picked on the kind's categories first, so only they are copied."""
    short = {e.rsplit(":", 1)[-1] for e in _names(events)}
    attempts = charge_attempts(events) if {TRY, TRY_RET} <= short else None
    kind = mv["kind"]
    if isinstance(kind.dtype, pd.CategoricalDtype):
        mv = mv[kind.eq(FORCE).to_numpy()]
    return forced_from_movements(mv, attempts)


def charge_instants(events: pd.DataFrame, path_of: dict[int, str] | None = None,
                    forced: pd.DataFrame | None = None) -> pd.DataFrame:
    """Forced charges (``force.forced_charges``) and, when the capture has the try_charge
    probes, refused ones (``force.refused_charges``), one row each, in time order: ``ts_ns``,
    ``row``, ``kind`` (forced / refused), ``cgroup_id``, ``path``, ``pages``, ``pid``,
    ``comm``, ``gfp`` (refused only: the page_counter_charge event carries none), ``map_id``
    (of the event row, when the event carries one). ``attrs["refusals_recorded"]``.
    ``forced``: ``force.forced_charges(events)`` when already at hand (``memcg_counters``'
    tracks carry it in ``attrs["forced"]``)."""
    path_of = path_of or {}
    ev = events if isinstance(events.index, pd.RangeIndex) and events.index.start == 0 and events.index.step == 1 \
        else events.reset_index(drop=True)
    f = (forced if forced is not None else forced_charges(ev)).assign(kind="forced", gfp=pd.NA)
    short = {e.rsplit(":", 1)[-1] for e in _names(ev)}  # the distinct names, not every row's
    recorded = {TRY, TRY_RET} <= short
    parts = [f]
    if recorded:
        parts.append(refused_charges(ev).assign(kind="refused"))
    cols = ["ts_ns", "row", "kind", "cgroup_id", "pages", "pid", "comm", "gfp"]
    both = pd.concat([p[cols].astype({"gfp": "UInt64", "comm": "string", "pid": "Int32", "cgroup_id": "UInt64",
                                      "pages": "Int64"}) for p in parts], ignore_index=True)
    both = both.sort_values(["ts_ns", "row"], kind="stable").reset_index(drop=True)
    both["map_id"] = ev["map_id"].iloc[both["row"].to_numpy()].to_numpy() if len(both) else pd.array([], dtype="UInt32")
    both["map_id"] = both["map_id"].astype("UInt32")
    # path per distinct cgroup, then per row
    codes, uniq = pd.factorize(both["cgroup_id"], use_na_sentinel=True)
    paths = np.array([path_of.get(int(c)) for c in uniq] + [None], dtype=object)
    both["path"] = pd.array(paths[codes], dtype="string")
    both = both.astype({"ts_ns": "int64", "row": "int64", "kind": "string"})[list(INSTANT_COLUMNS)]
    both.attrs["refusals_recorded"] = recorded
    return both


def step_slices(events: pd.DataFrame) -> pd.DataFrame:
    """The lab's steps as intervals. A step's marker is written when its work is done
    (``charges_by_step``: step k covers the events after marker k-1 up to marker k), so step
    k's slice runs from marker k-1 to marker k, and the first step's from the capture's first
    event. Columns: ``step``, ``step_name``, ``start_ns``, ``end_ns``, ``marker_row``.
    ``attrs["events_after_last_marker"]``. Empty when the capture has no step markers."""
    if not has_markers(events):
        return pd.DataFrame({c: pd.Series([], dtype="int64") for c in SLICE_COLUMNS}).astype({"step_name": "string"})
    m = step_markers(events)
    t0, _ = capture_span(events)
    ends = m["ts_ns"].to_numpy()
    starts = np.concatenate([[t0], ends[:-1]]) if len(ends) else ends
    out = pd.DataFrame({"step": m["step"].to_numpy(), "step_name": m["step_name"].astype("string").to_numpy(),
                        "start_ns": starts.astype(np.int64), "end_ns": ends.astype(np.int64),
                        "marker_row": m["row"].to_numpy()})
    out.attrs["events_after_last_marker"] = int(len(events) - 1 - m["row"].iloc[-1]) if len(m) else 0
    return out


def map_events(events: pd.DataFrame) -> pd.DataFrame:
    """Events that carry a BPF map id (probes with ``map_id=``): ``ts_ns``, ``row``, ``map_id``,
    ``event``, ``bytes``, ``pid``, ``comm``, ``cgroup_id``; in capture order."""
    ev = events.reset_index(drop=True)
    has = ev["map_id"].notna().to_numpy()
    m = ev[has]
    return pd.DataFrame({
        "ts_ns": m["ts_ns"].to_numpy(dtype=np.int64), "row": np.flatnonzero(has).astype(np.int64),
        "map_id": m["map_id"].astype("UInt32").array, "event": m["event"].astype("string").array,
        "bytes": m["bytes"].astype("Int64").array, "pid": m["pid"].astype("Int32").array,
        "comm": m["comm"].astype("string").array, "cgroup_id": m["cgroup_id"].astype("UInt64").array,
    })[list(MAP_EVENT_COLUMNS)]


__all__ = ["memcg_counters", "charge_instants", "step_slices", "map_events", "capture_span", "has_markers",
           "ANCHOR_TRUTH", "ANCHOR_CREATED", "ANCHOR_NONE"]

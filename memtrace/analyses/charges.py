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

import numpy as np
import pandas as pd

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

_ARG_OK = re.compile(r"\bok=(\d+)")
_ARG_COUNTER = re.compile(r"\bcounter=(0x[0-9a-fA-F]+)")


class MissingEvents(InputError):
    """The event table lacks events an analysis needs."""


def _short(event: pd.Series) -> pd.Series:
    return event.astype(str).str.rsplit(":", n=1).str[-1]


def _require(events: pd.DataFrame, analysis: str) -> None:
    have = set(events["event"].astype(str).unique())
    short = {e.rsplit(":", 1)[-1] for e in have}
    missing = [n for n in REQUIRES[analysis] if n not in have and n not in short]
    if missing:
        raise MissingEvents(
            f"trace lacks {', '.join(missing)} needed by {analysis!r}; it has "
            + (", ".join(sorted(have)) or "no events")
            + " (generate the probes with `memtrace probes`)"
        )


def _arg(args: pd.Series, rx: re.Pattern, base: int) -> pd.Series:
    got = args.astype("string").str.extract(rx, expand=False)
    return pd.Series([int(v, base) if isinstance(v, str) else pd.NA for v in got], index=args.index, dtype="UInt64")


def _thread_key(pid, cpu) -> tuple:
    """Entry/return pairing key: idle (pid 0) runs one task per CPU; every other thread is its own."""
    return (pid, cpu if pid in (0, None) else None)


def charge_attempts(events: pd.DataFrame) -> pd.DataFrame:
    """One row per completed ``try_charge_memcg`` call of the capture, at its return event.

    Columns: ``row`` (position of the return in `events`), ``ts_ns``, ``cpu``, ``pid``,
    ``comm``, ``cgroup_id`` (the memcg charged), ``gfp`` (gfp_mask), ``pages`` (nr_pages),
    ``ret`` (0, or -12: the charge was refused with -ENOMEM; a refused charge is never
    forced). Entry and return are paired per thread, last in first out, as in
    ``page_counter_movements``. ``attrs``: ``unpaired_entries``, ``unpaired_returns``."""
    _require(events, "charge_attempts")
    ev = events.reset_index(drop=True)
    name = _short(ev["event"])
    sel = name.isin([TRY, TRY_RET]) & ~ev["event"].astype(str).eq(MARKER_EVENT)
    t = ev[sel]
    kinds = name[sel].to_numpy()
    cols = {c: t[c].to_numpy(dtype=object, na_value=None) for c in ("pid", "cpu", "cgroup_id", "gfp", "pages", "ret")}
    comm = t["comm"].astype("string").to_numpy(dtype=object, na_value=None)
    ts, rows = t["ts_ns"].to_numpy(), t.index.to_numpy()
    stacks: dict[tuple, list[tuple]] = {}
    out: list[tuple] = []
    unpaired_returns = 0
    for i in range(len(t)):
        key = _thread_key(cols["pid"][i], cols["cpu"][i])
        if kinds[i] == TRY:
            stacks.setdefault(key, []).append((cols["cgroup_id"][i], cols["gfp"][i], cols["pages"][i]))
            continue
        st = stacks.get(key)
        if not st:
            unpaired_returns += 1
            continue
        cgid, gfp, nr = st.pop()
        out.append((rows[i], ts[i], cols["cpu"][i], cols["pid"][i], comm[i], cgid, gfp, nr, cols["ret"][i]))
    df = pd.DataFrame(out, columns=["row", "ts_ns", "cpu", "pid", "comm", "cgroup_id", "gfp", "pages", "ret"])
    df = df.astype({"row": "int64", "ts_ns": "int64", "cpu": "Int32", "pid": "Int32", "comm": "string",
                    "cgroup_id": "UInt64", "gfp": "UInt64", "pages": "Int64", "ret": "Int64"})
    df.attrs.update(unpaired_entries=sum(len(s) for s in stacks.values()), unpaired_returns=unpaired_returns)
    return df


def page_counter_movements(events: pd.DataFrame) -> pd.DataFrame:
    """One row per page_counter call of the capture, in capture order.

    Columns: ``row`` (position in `events`), ``ts_ns``, ``cpu``, ``pid``, ``kind``
    (try_charge / try_charge_failed / force / uncharge), ``counter`` (address), ``cgroup_id``
    (owner memcg of the counter), ``pages`` (as passed), ``signed_pages`` (what the counter
    moved: + for try_charge and force, - for uncharge, 0 for a failed try_charge).

    A try_charge row sits at its return event (the outcome is only known there) and takes the
    counter/nr/cgid of its entry event. ``attrs``: ``unpaired_entries`` (entries without a
    return: the capture ended inside the call), ``unpaired_returns`` (returns without an
    entry: the capture began inside it), ``entry_return_mismatches`` (the return event
    carries its own counter, on 6.12, and it differs from the paired entry's: must be 0).
    """
    _require(events, "page_counter_movements")
    ev = events.reset_index(drop=True)
    name = _short(ev["event"])
    sel = name.isin([PC_TRY, PC_TRY_RET, PC_FORCE, PC_UNCHARGE]) & ~ev["event"].astype(str).eq(MARKER_EVENT)
    pc = ev[sel]
    kinds = name[sel].to_numpy()
    counters = _arg(pc["args"], _ARG_COUNTER, 16).to_numpy(dtype=object, na_value=None)
    oks = _arg(pc["args"], _ARG_OK, 10).to_numpy(dtype=object, na_value=None)
    rets = pc["ret"].to_numpy(dtype=object, na_value=None)
    cgids = pc["cgroup_id"].to_numpy(dtype=object, na_value=None)
    pages = pc["pages"].to_numpy(dtype=object, na_value=None)
    pids = pc["pid"].to_numpy(dtype=object, na_value=None)
    cpus = pc["cpu"].to_numpy(dtype=object, na_value=None)
    ts = pc["ts_ns"].to_numpy()
    rows = pc.index.to_numpy()

    out: list[tuple] = []
    stacks: dict[tuple, list[tuple]] = {}
    unpaired_returns = mismatches = 0
    for i in range(len(pc)):
        k = kinds[i]
        key = _thread_key(pids[i], cpus[i])
        if k == PC_TRY:
            stacks.setdefault(key, []).append((counters[i], cgids[i], pages[i]))
            continue
        if k == PC_TRY_RET:
            st = stacks.get(key)
            if not st:
                unpaired_returns += 1
                if counters[i] is None or pages[i] is None:
                    continue
                counter, cgid, nr = counters[i], cgids[i], pages[i]
            else:
                counter, cgid, nr = st.pop()
                if counters[i] is not None and (counters[i] != counter or pages[i] != nr):
                    mismatches += 1
            ok = oks[i] if oks[i] is not None else rets[i]
            okb = bool(ok) if ok is not None else False
            out.append((rows[i], ts[i], cpus[i], pids[i], TRY_OK if okb else TRY_FAILED, counter, cgid, nr,
                        int(nr) if okb else 0))
            continue
        sign = 1 if k == PC_FORCE else -1
        out.append((rows[i], ts[i], cpus[i], pids[i], FORCE if k == PC_FORCE else UNCHARGE, counters[i], cgids[i],
                    pages[i], sign * int(pages[i])))
    df = pd.DataFrame(out, columns=["row", "ts_ns", "cpu", "pid", "kind", "counter", "cgroup_id", "pages", "signed_pages"])
    df = df.astype({"row": "int64", "ts_ns": "int64", "cpu": "Int32", "pid": "Int32", "kind": "category",
                    "counter": "UInt64", "cgroup_id": "UInt64", "pages": "Int64", "signed_pages": "int64"})
    seen = set(kinds)
    df.attrs.update(
        events_not_seen=[n for n in (PC_TRY, PC_TRY_RET, PC_FORCE, PC_UNCHARGE) if n not in seen],
        unpaired_entries=sum(len(s) for s in stacks.values()),
        unpaired_returns=unpaired_returns,
        entry_return_mismatches=mismatches,
    )
    return df


def step_markers(events: pd.DataFrame) -> pd.DataFrame:
    """The lab's step markers (`memtrace_step NNN name`): ``row``, ``ts_ns``, ``step``, ``step_name``."""
    _require(events, "step_markers")
    ev = events.reset_index(drop=True)
    m = ev[ev["event"].astype(str).eq(MARKER_EVENT)]
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
    _require(events, "charges_by_step")
    ev = events.reset_index(drop=True)
    mv = page_counter_movements(ev)
    marks = step_markers(ev)
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
    expanded = []
    for r in mv.itertuples(index=False):
        cid = int(r.cgroup_id)
        for c in chain.get(cid, [cid]):
            expanded.append((r.step, c, r.kind, int(r.pages) if not pd.isna(r.pages) else 0, r.signed_pages))
    x = pd.DataFrame(expanded, columns=["step", "cgroup_id", "kind", "pages", "signed_pages"])
    x["kind"] = x["kind"].astype(str)
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
    res["refused_charges"] = _refused_by_step(ev, marks, chain, res)
    res["cgroup_id"] = res["cgroup_id"].astype("UInt64")
    res = res[list(COLUMNS)].sort_values(["step", "path", "cgroup_id"], kind="stable").reset_index(drop=True)
    res.attrs.update(mv.attrs)
    res.attrs.update(movements_after_last_marker=int(after.sum()), movements_without_cgroup=no_cgroup,
                     unknown_cgroup_ids=unknown)
    return res


def _refused_by_step(ev: pd.DataFrame, marks: pd.DataFrame, chain: dict, res: pd.DataFrame) -> pd.Series:
    """Refused try_charge_memcg calls (ret != 0) per row of ``res``, hierarchical like the
    other counts; null everywhere when the capture has no try_charge/try_charge_ret events."""
    names = set(_short(ev["event"]).unique())
    if not {TRY, TRY_RET} <= names:
        return pd.Series(pd.NA, index=res.index, dtype="Int64")
    a = charge_attempts(ev)
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

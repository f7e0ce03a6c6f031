"""Forced and refused memcg charges in a capture: the force report.

A *forced* charge is ``try_charge_memcg``'s ``force:`` path: ``page_counter_charge`` adds the
pages with no limit check, so the memcg goes above ``memory.max`` (GFP_ATOMIC/__GFP_HIGH
charges, PF_MEMALLOC; kernel-notes §5). A *refused* charge is a ``try_charge_memcg`` that
returned ``-ENOMEM`` (a charge that may not block or reclaim, e.g. GFP_NOWAIT, over the
limit): the allocation fails and the caller sees ENOMEM. Whether either raises a
``memory.events`` ``max`` is a fact of the build (forced: yes since 6.0; refused: no on
6.1.0-56 and 6.12.117, yes on 6.12.118, docs/kernel-builds.md): with a truth table the report
states what *this* capture's kernel did, from the events it counted, instead of a rule.

Inputs: the event table (``memtrace.tables.events``) of a capture made with memtrace's
probes (``force_charge``, ``pc_try_charge[_ret]`` and, for refused charges,
``try_charge[_ret]``), and optionally the lab truth table (``memtrace.tables.lab_truth``) of
the same run, for paths, limits, memory.events and per-step numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memtrace.analyses.charges import (
    FORCE,
    TRY,
    TRY_RET,
    ChargeTables,
    _event_names,
    _thread_keys,
    charge_tables,
    names_have,
    charge_attempts,
    charges_by_step,
    page_counter_movements,
    step_markers,
)
from memtrace.errors import InputError
from memtrace.tables.events import PAGE_SIZE

#: gfp bits named in the refused rows: 6.1's include/linux/gfp.h and 6.12's
#: gfp_types.h (bit numbers) give these bits the same values; 0x200 (___GFP_ATOMIC on 6.1)
#: is left unnamed, since 6.12 dropped it
_GFP_BITS = {0x20: "__GFP_HIGH", 0x40: "__GFP_IO", 0x80: "__GFP_FS", 0x100: "__GFP_ZERO",
             0x400: "__GFP_DIRECT_RECLAIM", 0x800: "__GFP_KSWAPD_RECLAIM", 0x2000: "__GFP_NOWARN",
             0x8000: "__GFP_NOFAIL", 0x10000: "__GFP_NORETRY", 0x400000: "__GFP_ACCOUNT"}
#: __GFP_DIRECT_RECLAIM: a charge without it cannot reclaim, so over the limit it is refused
#: (or forced, with __GFP_HIGH/__GFP_NOFAIL)
GFP_DIRECT_RECLAIM = 0x400


def gfp_names(gfp) -> str:
    """Readable flags of the bits memcg's charge path looks at ('-' when unknown)."""
    if gfp is None or pd.isna(gfp):
        return "-"
    g = int(gfp)
    return "|".join(n for b, n in _GFP_BITS.items() if g & b) or hex(g)


def has_refusal_probes(events) -> bool:
    """Whether the capture (an event table or its ``ChargeTables``) holds the try_charge probes."""
    if isinstance(events, ChargeTables):
        return events.has_events(TRY, TRY_RET)
    return names_have(_event_names(events), TRY, TRY_RET)


def forced_charges(events) -> pd.DataFrame:
    """One row per page_counter_charge (force) of the capture (an event table or its
    ``ChargeTables``): ``row``, ``ts_ns``, ``pid``, ``comm``, ``cgroup_id``, ``pages``,
    ``call_site`` (where the try_charge_memcg call that forced it returns to; null without
    the try_charge probes)."""
    tables = events if isinstance(events, ChargeTables) else charge_tables(events)
    attempts = tables.attempts if tables.has_events(TRY, TRY_RET) else None
    return forced_from_movements(page_counter_movements(tables), attempts)


def forced_from_movements(mv: pd.DataFrame, attempts: pd.DataFrame | None = None) -> pd.DataFrame:
    """``forced_charges`` from a movement table already made (it carries ``comm``) and, for
    the call sites, the capture's try_charge_memcg calls (``charge_attempts``)."""
    f = mv[mv["kind"].astype(str).eq(FORCE).to_numpy()]
    out = f[["row", "ts_ns", "pid", "comm", "cgroup_id", "pages"]].reset_index(drop=True)
    out["comm"] = out["comm"].astype("string")
    out["call_site"] = _enclosing_call_site(f, attempts)
    return out


def _enclosing_call_site(f: pd.DataFrame, attempts: pd.DataFrame | None) -> pd.Series:
    """Per forced movement: the call site of the try_charge_memcg call it happened in (the
    innermost call on the same thread whose entry precedes it and whose return follows it)."""
    site = pd.Series(pd.NA, index=range(len(f)), dtype="string")
    if attempts is None or not len(f) or not len(attempts):
        return site
    a = pd.DataFrame({"key": _thread_keys(attempts["pid"], attempts["cpu"]), "entry_row": attempts["entry_row"].to_numpy(),
                      "ret_row": attempts["row"].to_numpy(), "call_site": attempts["call_site"].astype("string").to_numpy()})
    q = pd.DataFrame({"key": _thread_keys(f["pid"], f["cpu"]), "row": f["row"].to_numpy(), "i": range(len(f))})
    m = pd.merge_asof(q.sort_values("row"), a.sort_values("entry_row"), left_on="row", right_on="entry_row",
                      by="key", direction="backward")
    inside = (m["ret_row"] > m["row"]).fillna(False).to_numpy(dtype=bool)
    site.iloc[m["i"].to_numpy()[inside]] = m["call_site"].to_numpy()[inside]
    return site


def refused_charges(events: pd.DataFrame) -> pd.DataFrame:
    """One row per refused try_charge_memcg call (``charge_attempts`` with ret != 0)."""
    a = charge_attempts(events)
    return a[a["ret"].fillna(0).ne(0)].reset_index(drop=True)


def by_task(forced: pd.DataFrame, refused: pd.DataFrame, path_of: dict[int, str]) -> pd.DataFrame:
    """Forced pages and refused charges per (memcg, pid, comm)."""
    return _tally(forced, refused, path_of, ["pid", "comm"])


def by_call_site(forced: pd.DataFrame, refused: pd.DataFrame, path_of: dict[int, str]) -> pd.DataFrame:
    """Forced pages and refused charges per (memcg charged, call site): the function that
    called try_charge_memcg (``caller+0xOFF``: obj_cgroup_charge for slab objects,
    __memcg_kmem_charge_page for kmem pages, charge_memcg for user pages...); ``(unknown)``
    where the capture does not name it."""
    def known(x: pd.DataFrame) -> pd.DataFrame:
        return x.assign(call_site=x["call_site"].astype("string").fillna("(unknown)"))

    return _tally(known(forced), known(refused), path_of, ["call_site"])


def _tally(forced: pd.DataFrame, refused: pd.DataFrame, path_of: dict[int, str], keys: list[str]) -> pd.DataFrame:
    """Forcing calls, forced pages (and bytes) and refused calls per (cgroup id, *keys), with
    the memcg's path, most forced pages first."""
    f = forced.assign(forced_charges=1, refused_charges=0, forced_pages=forced["pages"].astype("int64"))
    r = refused.assign(forced_charges=0, refused_charges=1, forced_pages=0)
    counts = ["forced_charges", "forced_pages", "refused_charges"]
    out = ["cgroup_id", "path", *keys, "forced_charges", "forced_pages", "forced_bytes", "refused_charges"]
    both = pd.concat([f[["cgroup_id", *keys, *counts]], r[["cgroup_id", *keys, *counts]]], ignore_index=True)
    if both.empty:
        return pd.DataFrame(columns=out)
    g = both.groupby(["cgroup_id", *keys], dropna=False)[counts].sum().reset_index()
    g["forced_bytes"] = g["forced_pages"] * PAGE_SIZE
    g["path"] = g["cgroup_id"].map(lambda c: path_of.get(int(c)) if not pd.isna(c) else None).astype("string")
    return g[out].sort_values(["forced_pages", "refused_charges"], ascending=False).reset_index(drop=True)


def refused_by_gfp(refused: pd.DataFrame, path_of: dict[int, str]) -> pd.DataFrame:
    """Refused charges per (memcg, gfp, pages asked): how many, and whether the gfp could
    reclaim (a charge that cannot is refused at the limit without any reclaim)."""
    if refused.empty:
        return pd.DataFrame(columns=["cgroup_id", "path", "gfp", "gfp_flags", "can_reclaim", "pages", "refused_charges"])
    g = refused.groupby(["cgroup_id", "gfp", "pages"], dropna=False).size().rename("refused_charges").reset_index()
    g["gfp_flags"] = g["gfp"].map(gfp_names).astype("string")
    g["can_reclaim"] = g["gfp"].map(lambda v: None if pd.isna(v) else bool(int(v) & GFP_DIRECT_RECLAIM)).astype("boolean")
    g["path"] = g["cgroup_id"].map(lambda c: path_of.get(int(c)) if not pd.isna(c) else None).astype("string")
    return g[["cgroup_id", "path", "gfp", "gfp_flags", "can_reclaim", "pages", "refused_charges"]]


def _peaks(events: pd.DataFrame, truth: pd.DataFrame, steps: pd.DataFrame) -> dict[tuple[int, int], int]:
    """Per (step, cgroup id) with a memory.max: the highest memory.current reached inside the
    step (bytes), from the previous step's reading plus the capture's counter movements in
    order (hierarchical: a movement counts for its cgroup and every ancestor)."""
    from memtrace.analyses.charges import _ancestors

    limited = steps[steps["memory_max_bytes"].notna()]
    if limited.empty:
        return {}
    mv = page_counter_movements(events)
    marks = step_markers(events)
    marks = marks[marks["step"].isin(set(truth["step"]))].reset_index(drop=True)
    pos = np.searchsorted(marks["row"].to_numpy(), mv["row"].to_numpy(), side="left")
    keep = pos < len(marks)
    mv = mv[keep].assign(step=marks["step"].to_numpy()[pos[keep]])
    chain, _ = _ancestors(truth)
    cur = {(int(s), int(c)): v for s, c, v in truth[["step", "cgroup_id", "memory_current_bytes"]].itertuples(index=False)}
    order = sorted(set(truth["step"]))
    prev = {s: order[i - 1] if i else None for i, s in enumerate(order)}
    peaks: dict[tuple[int, int], int] = {}
    for s, cid in zip(limited["step"], limited["cgroup_id"]):
        s, cid = int(s), int(cid)
        start = cur.get((prev[s], cid)) if prev[s] is not None else None
        if start is None or pd.isna(start):
            continue
        subtree = [c for c, ch in chain.items() if cid in ch] or [cid]
        mine = mv[((mv["step"] == s) & mv["cgroup_id"].isin(subtree)).to_numpy()]
        level = int(start) + np.cumsum(mine["signed_pages"].to_numpy()) * PAGE_SIZE
        peaks[(s, cid)] = int(max(int(start), int(level.max()) if len(level) else int(start)))
    return peaks


def per_step(events: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """With the run's truth table: per step and memcg with a forced or refused charge, the
    forced pages and calls, refused calls, memory.current and memory.max at the step, bytes
    above the limit at the step and at the highest point inside it (``peak_over_max_bytes``,
    from the capture), and the memory.events max raised in the step."""
    r = charges_by_step(events, truth)
    t = truth.set_index(["step", "cgroup_id"])
    r = r[(r["forced_pages"] > 0) | (r["refused_charges"].fillna(0) > 0)].copy()
    key = list(zip(r["step"].astype(int), r["cgroup_id"].astype("int64")))
    r["memory_max_bytes"] = pd.array([t["memory_max_bytes"].get(k, pd.NA) for k in key], dtype="Int64")
    ev = truth.sort_values("step").groupby("cgroup_id")["events_max"].diff()
    evd = dict(zip(zip(truth.sort_values("step")["step"].astype(int), truth.sort_values("step")["cgroup_id"].astype("int64")), ev))
    r["events_max_raised"] = pd.array([evd.get(k, pd.NA) for k in key], dtype="Int64")
    r["over_max_bytes"] = (r["memory_current_bytes"] - r["memory_max_bytes"]).clip(lower=0).astype("Int64")
    peaks = _peaks(events, truth, r.assign(cgroup_id=r["cgroup_id"].astype("int64")))
    r["peak_over_max_bytes"] = pd.array(
        [max(0, peaks[k] - int(m)) if k in peaks and not pd.isna(m) else pd.NA for k, m in zip(key, r["memory_max_bytes"])],
        dtype="Int64")
    r["forced_bytes"] = r["forced_pages"] * PAGE_SIZE
    return r[["step", "step_name", "cgroup_id", "path", "force_charges", "forced_pages", "forced_bytes",
              "refused_charges", "memory_current_bytes", "memory_max_bytes", "over_max_bytes",
              "peak_over_max_bytes", "events_max_raised"]].reset_index(drop=True)


#: the root cgroup's id (cgroup2's root inode) on every boot
ROOT_CGROUP_ID = 1

LIMIT_COLUMNS = ["cgroup_id", "path", "state", "forced_charges", "forced_pages", "forced_bytes", "refused_charges",
                 "memory_current_bytes", "memory_max_bytes", "memory_high_bytes", "over_max_bytes", "events_max"]


def per_memcg_limits(forced: pd.DataFrame, refused: pd.DataFrame, memcgs: pd.DataFrame) -> pd.DataFrame:
    """With a snapshot's memcg table (``memtrace.tables.snapshot`` ``memcgs``) as the source of
    limits: per memcg with a forced or refused charge on it or a descendant (counts are
    hierarchical, like the limits: a forced page counts against every ancestor's
    memory.max), its memory.max, memory.high, memory.current and memory.events max at the
    snapshot, and how far it was above memory.max then (``over_max_bytes``). The snapshot
    is a moment, the capture a span: the limits are the snapshot's, not necessarily the ones
    in force at each charge."""
    from memtrace.analyses.charges import _ancestors

    m = memcgs.copy()
    m["cgroup_id"] = m["cgroup_id"].astype("int64")
    chain, _ = _ancestors(m[["cgroup_id", "path"]])
    counts: dict[int, list[int]] = {}
    for frame, col in ((forced, 0), (refused, 2)):
        for cid, pages in zip(frame["cgroup_id"], frame["pages"] if "pages" in frame else [0] * len(frame)):
            if pd.isna(cid):
                continue
            for c in chain.get(int(cid), [int(cid)]):
                v = counts.setdefault(c, [0, 0, 0])
                v[col] += 1
                if col == 0:
                    v[1] += 0 if pd.isna(pages) else int(pages)
    rows = []
    snap = m.drop_duplicates("cgroup_id").set_index("cgroup_id")
    for cid, (nf, npg, nr) in counts.items():
        r = snap.loc[cid] if cid in snap.index else None
        get = (lambda k: r[k] if r is not None else pd.NA)
        mx, cur = get("memory_max_bytes"), get("memory_current_bytes")
        rows.append({"cgroup_id": cid, "path": get("path"), "state": get("state"), "forced_charges": nf,
                     "forced_pages": npg, "forced_bytes": npg * PAGE_SIZE, "refused_charges": nr,
                     "memory_current_bytes": cur, "memory_max_bytes": mx, "memory_high_bytes": get("memory_high_bytes"),
                     "over_max_bytes": max(0, int(cur) - int(mx)) if not pd.isna(mx) and not pd.isna(cur) else pd.NA,
                     "events_max": get("events_max")})
    out = pd.DataFrame(rows, columns=LIMIT_COLUMNS).astype(
        {"cgroup_id": "int64", "path": "string", "state": "string", "forced_charges": "int64", "forced_pages": "int64",
         "forced_bytes": "int64", "refused_charges": "int64", "memory_current_bytes": "Int64",
         "memory_max_bytes": "Int64", "memory_high_bytes": "Int64", "over_max_bytes": "Int64", "events_max": "Int64"})
    return out.sort_values(["path", "cgroup_id"], kind="stable", na_position="last").reset_index(drop=True)


def check_same_host(forced: pd.DataFrame, refused: pd.DataFrame, memcgs: pd.DataFrame, capture: str,
                    snapshot: str) -> None:
    """Refuse a snapshot of another host or boot: some memcg other than the root that the
    capture charged must be one of the snapshot's. A weak check: cgroup ids are inode
    numbers, which another boot making the same cgroups in the same order reuses."""
    ids = {int(c) for f in (forced, refused) for c in f["cgroup_id"].dropna()} - {ROOT_CGROUP_ID}
    known = set(memcgs["cgroup_id"].astype("int64"))
    if ids and not ids & known:
        raise InputError(
            f"{capture} and {snapshot} are not from the same host and boot: none of the capture's charged "
            f"cgroup ids ({', '.join(map(str, sorted(ids)[:6]))}) is a memcg of the snapshot")


def observed_behaviour(steps: pd.DataFrame) -> list[str]:
    """What this kernel did with forced and refused charges, read from the capture and the
    memory.events of the same run: one sentence each, only where the evidence is clean
    (steps where a memcg saw only forced, or only refused, charges)."""
    out = []
    own = steps[steps["memory_max_bytes"].notna()]
    only_refused = own[(own["force_charges"] == 0) & (own["refused_charges"].fillna(0) > 0)]
    only_forced = own[(own["force_charges"] > 0) & (own["refused_charges"].fillna(0) == 0)]
    if len(only_refused):
        n, raised = int(only_refused["refused_charges"].sum()), int(only_refused["events_max_raised"].fillna(0).sum())
        if raised == 0:
            out.append(f"refused charges raised no max events on this kernel ({n} refused, memory.events max unchanged)")
        elif raised >= n:
            out.append(f"refused charges raised max events on this kernel ({n} refused, {raised} max events)")
        else:
            out.append(f"refused charges raised some max events on this kernel ({n} refused, {raised} max events)")
    if len(only_forced):
        n, raised = int(only_forced["force_charges"].sum()), int(only_forced["events_max_raised"].fillna(0).sum())
        out.append(f"forced charges raised {'max events' if raised else 'no max events'} on this kernel "
                   f"({n} forcing calls, {raised} max events)")
    return out


#: how far (seconds) a step marker's timestamp may lie from the uptime the guest read for the
#: same step in its truth.json: 0.04 s at most in the committed runs (same boot clock), more
#: than 10 s at the worst step between two runs of the same scenario (tests/test_report_force.py)
SAME_RUN_CLOCK_S = 2.0


def check_same_run(events: pd.DataFrame, truth: pd.DataFrame, capture: str, truth_name: str) -> None:
    """Refuse a truth table from another run: the capture's step markers (number and name)
    must be steps of that truth, and each marker's timestamp must lie within
    ``SAME_RUN_CLOCK_S`` of that step's uptime in the truth (two runs of one scenario have
    the same markers, not the same times)."""
    marks = step_markers(events)
    tsteps = dict(zip(truth["step"].astype(int), truth["step_name"].astype(str)))
    bad = [(int(s), str(n)) for s, n in zip(marks["step"], marks["step_name"]) if tsteps.get(int(s)) not in (None, str(n))]
    if marks.empty or bad or not set(marks["step"].astype(int)) & set(tsteps):
        raise InputError(
            f"{capture} and {truth_name} are not from the same run: the capture's step markers "
            f"({', '.join(f'{s} {n}' for s, n in list(zip(marks['step'], marks['step_name']))[:4]) or 'none'}) "
            f"are not the truth's steps ({', '.join(f'{s} {n}' for s, n in list(tsteps.items())[:4])})"
        )
    up = truth.drop_duplicates("step").set_index("step")["uptime_ns"] if "uptime_ns" in truth else None
    if up is not None:
        first = marks.drop_duplicates("step")  # a step's first marker (a capture repeated for a bench has more)
        off = [(int(st), ts / 1e9 - int(up[st]) / 1e9) for st, ts in zip(first["step"], first["ts_ns"])
               if st in up.index and not pd.isna(up[st])]
        worst = max(off, key=lambda o: abs(o[1]), default=None)
        if worst is not None and abs(worst[1]) > SAME_RUN_CLOCK_S:
            raise InputError(
                f"{capture} and {truth_name} are not from the same run: the capture's marker of step {worst[0]} "
                f"is {worst[1]:+.3f} s from the uptime the truth records for it (same run: within "
                f"{SAME_RUN_CLOCK_S:g} s)")
"""Recharge: what moving a map's charge to a new generation did (effects), and would do (what-if).

*Effects* compare a lab run's steps: the old payer (``old``: the owner memcg, or the
ancestor its charge was reparented to) and the new generation (``new``). Bytes are
``memory.current`` readings from truth and, with a capture, the page-counter movements
between them (memtrace.analyses.charges), which also give the peak inside a step and how
long the double charge lasted. ``old``'s *own* charge is its memory.current less its
children's; when ``new`` is below ``old`` the combined charge is ``old``'s memory.current.

*What-if* reads a snapshot (memtrace.tables.snapshot): for each map that would move to the
memcg ``to``, the bytes by allocation kind, which of them the seed RFC's kernel patches could
move (hash maps: their kmalloc, vmalloc and per-CPU areas) and which no mechanism moves (charged
to no memcg), the pre-charge check of ``to`` and every ancestor below the common ancestor of
old and new against memory.max and memory.high, and the reviewers' objections as flags.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memtrace.analyses.charges import _ancestors, page_counter_movements, step_markers
from memtrace.analyses.leftover import recharge_rule
from memtrace.errors import InputError
from memtrace.tables.events import PAGE_SIZE

#: map types whose memory the seed RFC's hash map patch recharges
RFC_HASH_TYPES = ("hash", "percpu_hash", "lru_hash", "lru_percpu_hash")
#: BPF_F_NO_PREALLOC: elements are allocated on update, by user space and programs alike
BPF_F_NO_PREALLOC = 1
#: the reviewers' objections, as the flag codes of the what-if table
FLAGS = {
    "larger-than-max": "larger than the target's memory.max: no reclaim or OOM kill can make it fit",
    "no-prealloc-race": "no-prealloc hash: programs allocate elements concurrently, a recharge races with them",
    "elements-dominate": "elements outweigh metadata: recharging the hash table alone (the RFC's first patch) misses most",
}
#: said once per what-if: the snapshot cannot tell which processes hold a map
HOLDERS_NOTE = ("holders unknown: the snapshot does not list which processes hold each map, so a map held "
                "from several cgroups (no single next owner) is not detected")
#: allocation roles that are elements (per-entry memory) rather than the map's metadata
ELEMENT_ROLES = ("elems", "element", "value", "value_handle", "bpf_ma_cached", "bpf_ma_cached_value", "trie_node")


def _parent(path: str) -> str | None:
    return None if path == "/" else (path.rsplit("/", 1)[0] or "/")


def _chain(path: str) -> list[str]:
    out = []
    p: str | None = path
    while p is not None:
        out.append(p)
        p = _parent(p)
    return out


def common_ancestor(a: str, b: str) -> str:
    ca = _chain(a)
    return next(p for p in _chain(b) if p in ca)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


# -- effects ----------------------------------------------------------------------------------


def effects(truth: pd.DataFrame, old: str, new: str, events: pd.DataFrame | None = None,
            start: str | None = None, end: str | None = None) -> tuple[dict, pd.DataFrame]:
    """(summary, per-step table) of a recharge from ``old`` to ``new`` between the steps
    ``start`` (default: the first step ``new`` exists in) and ``end`` (default: the last).

    Summary (bytes): ``moved_to_new`` (new's memory.current change), ``released_by_old``
    (old's own charge change, negated), ``left_behind`` (old's own charge at the end),
    ``peak_double_charge`` (highest combined charge above its start, at the steps and, with a
    capture, inside them), ``double_charge_s`` (with a capture: how long the combined charge
    stayed more than half of ``moved_to_new`` above its start level), ``stock_batching``
    (moved - released: what the per-CPU stocks and late frees leave between the two)."""
    paths = set(truth["path"].astype(str))
    for p, what in ((old, "--old"), (new, "--new")):
        if p not in paths:
            raise InputError(f"{what} {p!r}: no such cgroup in the truth; it has: {', '.join(sorted(paths))}")
    steps = truth.drop_duplicates("step").sort_values("step")[["step", "step_name"]]
    names = list(steps["step_name"].astype(str))
    have_new = set(truth.loc[truth["path"].eq(new), "step_name"].astype(str))
    start = start or next(n for n in names if n in have_new)
    end = end or names[-1]
    for s, what in ((start, "--from-step"), (end, "--to-step")):
        if s not in names:
            raise InputError(f"{what} {s!r}: no such step; steps: {', '.join(names)}")
    window = names[names.index(start): names.index(end) + 1]
    cur = {(str(n), str(p)): v for n, p, v in truth[["step_name", "path", "memory_current_bytes"]].itertuples(index=False)}
    nested = _under(new, old)

    def own(step: str) -> int:
        total = cur.get((step, old))
        kids = sum(int(v) for (s, p), v in cur.items() if s == step and _parent(p) == old and not pd.isna(v))
        return int(total) - kids

    rows = []
    for n in window:
        o, w = own(n), int(cur.get((n, new), 0) or 0)
        combined = int(cur[(n, old)]) if nested else o + w
        rows.append((n, o, w, combined))
    table = pd.DataFrame(rows, columns=["step_name", "old_own_bytes", "new_bytes", "combined_bytes"])
    base = int(table["combined_bytes"].iloc[0])
    table["double_charge_bytes"] = (table["combined_bytes"] - base).clip(lower=0)
    summary = {
        "old": old, "new": new, "from_step": start, "to_step": end, "nested": nested,
        "moved_to_new": int(table["new_bytes"].iloc[-1] - table["new_bytes"].iloc[0]),
        "released_by_old": int(table["old_own_bytes"].iloc[0] - table["old_own_bytes"].iloc[-1]),
        "left_behind": int(table["old_own_bytes"].iloc[-1]),
        "peak_double_charge": int(table["double_charge_bytes"].max()),
        "peak_step": str(table.loc[table["double_charge_bytes"].idxmax(), "step_name"]),
        "double_charge_s": None,
        "capture_peak_double_charge": None,
    }
    summary["stock_batching"] = summary["moved_to_new"] - summary["released_by_old"]
    if events is not None:
        summary.update(_capture_series(events, truth, old, new, nested, start, end, base, summary["moved_to_new"]))
    return summary, table


def _capture_series(events, truth, old, new, nested, start, end, base, moved) -> dict:
    """The combined charge move by move from the ``start`` marker to the ``end`` marker."""
    marks = step_markers(events)
    by_name = dict(zip(marks["step_name"].astype(str), marks["row"].astype(int)))
    ts_of = dict(zip(marks["step_name"].astype(str), marks["ts_ns"].astype(int)))
    if start not in by_name or end not in by_name:
        raise InputError(f"the capture has no step markers {start!r} and {end!r}: is it from the same run as the truth?")
    mv = page_counter_movements(events)
    mv = mv[(mv["row"] > by_name[start]) & (mv["row"] < by_name[end]) & mv["cgroup_id"].notna()]
    chain, path_of = _ancestors(truth)
    ids = {c for c, p in path_of.items() if _under(p, old) or (not nested and _under(p, new))}
    mine = mv[mv["cgroup_id"].astype("int64").isin(ids)]
    if mine.empty:
        return {"capture_peak_double_charge": 0, "double_charge_s": 0.0}
    level = base + np.cumsum(mine["signed_pages"].to_numpy()) * PAGE_SIZE
    ts = mine["ts_ns"].to_numpy()
    peak = int(max(0, level.max() - base))
    above = np.nonzero(level - base > moved / 2)[0] if moved > 0 else np.array([], dtype=int)
    dur = 0.0
    if len(above):
        last = above[-1] + 1
        stop = ts[last] if last < len(ts) else ts_of[end]
        dur = (int(stop) - int(ts[above[0]])) / 1e9
    return {"capture_peak_double_charge": peak, "double_charge_s": round(dur, 3)}


# -- what-if ---------------------------------------------------------------------------------


def what_if(maps: pd.DataFrame, allocations: pd.DataFrame, memcgs: pd.DataFrame, to: str,
            map_ids: list[int] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-map table, per-level pre-charge table) for moving maps to the memcg ``to``.

    Maps: ``map_ids``, else every map the RFC rule makes a candidate. Per map: charged bytes
    per kind, ``rfc_movable_bytes`` (hash maps' charged memory), ``unmovable_bytes`` (charged
    to no memcg: no mechanism moves it), element vs metadata bytes, the payer now, the
    common ancestor, the copy's transient peak, and the reviewers' objections as ``flags``
    (comma-separated codes of ``FLAGS``)."""
    live = memcgs[~memcgs["dying"].astype(bool)] if "dying" in memcgs else memcgs
    known = set(live["path"].astype(str))
    if to not in known:
        raise InputError(f"--to {to!r}: no such memcg in the snapshot; it has: {', '.join(sorted(known))}")
    if map_ids is None:
        sel = maps[[recharge_rule(s, None if pd.isna(p) else p)[0] for s, p in zip(maps["owner_state"], maps["owner_path"])]]
    else:
        sel = maps[maps["map_id"].isin(map_ids)]
    a = allocations[allocations["map_id"].isin(sel["map_id"])]
    limit = dict(zip(live["path"].astype(str), live["memory_max_bytes"]))
    rows = []
    for m in sel.itertuples(index=False):
        mine = a[a["map_id"] == m.map_id]
        charged = mine[mine["charged_cgroup_id"].notna()]
        kinds = charged.groupby("kind")["charged_bytes"].sum().to_dict()
        total = int(charged["charged_bytes"].sum())
        payer = str(m.owner_path) if not pd.isna(m.owner_path) else "/"
        top = common_ancestor(payer, to)
        elem = int(charged.loc[charged["role"].isin(ELEMENT_ROLES), "charged_bytes"].sum())
        flags = []
        lim = limit.get(to)
        if lim is not None and not pd.isna(lim) and total > int(lim):
            flags.append("larger-than-max")
        if m.type in RFC_HASH_TYPES and int(m.flags) & BPF_F_NO_PREALLOC:
            flags.append("no-prealloc-race")
        if m.type in RFC_HASH_TYPES and elem > total - elem:
            flags.append("elements-dominate")
        rows.append({
            "map_id": int(m.map_id), "name": m.name, "type": m.type, "owner_state": m.owner_state, "payer": payer,
            "to": to, "common_ancestor": top, "charged_bytes": total,
            "slab_bytes": int(kinds.get("slab_object", 0)), "page_bytes": int(kinds.get("page", 0) + kinds.get("large_kmalloc", 0)),
            "vmalloc_bytes": int(kinds.get("vmalloc_page", 0)), "percpu_bytes": int(kinds.get("percpu", 0)),
            "element_bytes": elem, "metadata_bytes": total - elem,
            "rfc_movable_bytes": total if m.type in RFC_HASH_TYPES else 0,
            "unmovable_bytes": int(m.uncharged_bytes),
            "copy_peak_bytes": total, "flags": ",".join(flags),
        })
    per_map = pd.DataFrame(rows, columns=[
        "map_id", "name", "type", "owner_state", "payer", "to", "common_ancestor", "charged_bytes", "slab_bytes",
        "page_bytes", "vmalloc_bytes", "percpu_bytes", "element_bytes", "metadata_bytes", "rfc_movable_bytes",
        "unmovable_bytes", "copy_peak_bytes", "flags"])
    return per_map, precharge_levels(per_map, live, to)


def precharge_levels(per_map: pd.DataFrame, memcgs: pd.DataFrame, to: str) -> pd.DataFrame:
    """The pre-charge check: ``to`` and each ancestor below the common ancestor of every
    payer and ``to`` take the whole move first (pre-charge new, uncharge old, commit). Per
    level: memory.current, memory.max, memory.high, the bytes that would arrive, the room
    left under max and high (negative: short by that much), and whether it fits. Levels at
    and above the common ancestor see no change (listed with ``change`` = 0)."""
    total = int(per_map["charged_bytes"].sum())
    tops = [common_ancestor(p, to) for p in per_map["payer"]] or [to]
    top = tops[0]
    for t in tops[1:]:
        top = common_ancestor(top, t)
    by_path = memcgs.set_index(memcgs["path"].astype(str))
    rows = []
    for p in _chain(to):
        below = p != top and _under(p, top)
        change = total if below else 0
        if p not in by_path.index:
            continue
        r = by_path.loc[p]
        if isinstance(r, pd.DataFrame):
            r = r.iloc[0]
        cur = int(r["memory_current_bytes"])
        mx = None if pd.isna(r["memory_max_bytes"]) else int(r["memory_max_bytes"])
        hi = None if "memory_high_bytes" not in r or pd.isna(r["memory_high_bytes"]) else int(r["memory_high_bytes"])
        room_max = None if mx is None else mx - cur - change
        room_high = None if hi is None else hi - cur - change
        rows.append({"path": p, "change": change, "memory_current_bytes": cur, "memory_max_bytes": mx,
                     "memory_high_bytes": hi, "room_under_max": room_max, "room_under_high": room_high,
                     "fits": room_max is None or room_max >= 0, "common_ancestor_or_above": not below})
    return pd.DataFrame(rows)


def verdict(levels: pd.DataFrame) -> str:
    """'fits' or 'fails at /pod by 12,288 B' (the lowest level that does not fit);
    'over memory.high at ...' is added when a level would pass its high mark."""
    bad = levels[~levels["fits"]]
    if len(bad):
        r = bad.iloc[0]
        return f"fails at {r['path']} by {-int(r['room_under_max']):,} B (memory.max)"
    high = levels[levels["room_under_high"].notna() & (levels["room_under_high"] < 0)]
    if len(high):
        r = high.iloc[0]
        return f"fits under memory.max, but {r['path']} goes {-int(r['room_under_high']):,} B over memory.high (throttled, reclaimed)"
    return "fits"

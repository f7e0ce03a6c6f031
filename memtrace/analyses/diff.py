"""`memtrace diff`: match two inputs' memcgs, maps and steps, compare their numbers, judge rules.

Pure functions over loaded inputs (``memtrace.tables.diff.DiffInput``); the diff table's
columns are declared in ``memtrace.tables.diff``. Cgroup ids, map ids and addresses differ from
run to run, so they are never keys:

* memcgs are matched by **path** (a dying memcg that shares its path with a live one in a
  snapshot is ``PATH (dying)``);
* maps by **pin**, then **name**, then **type** (each stage pairs what the previous left, in
  map id order within a name or type; the type stage pairs only unpinned maps, since maps
  pinned at different paths are different maps): the key is the pin, the name (``name#k``
  when a name is used by several maps) or ``type#k``;
* steps by their **marker names** (``name#k`` for the k-th repeat of a name).

What one side has and the other has not is listed (``DiffResult.unmatched``) and its rows are
``added`` / ``removed``, never dropped.

Metrics, per facet (units are the ends of the names):

| facet | entity | metric | from |
|---|---|---|---|
| truth | memcg × step | `memory_current_bytes`, `events_max` | truth.json (memory.current, memory.events max) |
| truth | map | `memlock_bytes` | truth.json (bpftool's bytes_memlock at the last step listing the map) |
| capture | event × step | `event_count` | the event table, per event kind |
| capture | map × step | `event_count` | events carrying a map id (needs the run's truth for the map's pin/name) |
| capture | memcg × step | `net_bytes`, `forced_charges`, `forced_bytes`, `refused_charges`, `failed_try_charges` | `charges_by_step` (needs the run's truth; hierarchical) |
| capture | run × step | `forced_charges`, `forced_bytes`, `refused_charges` | without a truth: the capture's own totals |
| snapshot | memcg | `memory_current_bytes`, `bpf_bytes`, `leftover_bytes`, `events_max` | the snapshot, `leftover_memcgs` |
| snapshot | map | `charged_bytes`, `uncharged_bytes`, `memlock_bytes`, `<kind>_charged_bytes` | the snapshot's maps and allocations by kind |
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from memtrace.analyses.diff_rules import Rule, rule_for
from memtrace.errors import InputError
from memtrace.tables.diff import DIFF_COLUMN_NAMES, DIFF_COLUMNS, UNMATCHED_COLUMNS, DiffInput
from memtrace.tables.events import PAGE_SIZE

#: what each facet compares, for the message when two inputs have nothing in common
FACET_WHAT = {
    "truth": "memory.current and memory.events max per step and memcg, map memlock (truth.json)",
    "capture": "event counts, net charged bytes, forced and refused charges per step (a capture)",
    "snapshot": "bytes per map by allocation kind, per memcg, leftover (a snapshot)",
}

_LONG = ["facet", "entity", "name", "step", "metric", "value", "map_id", "order"]


@dataclass
class Side:
    """One input's numbers before matching: long rows (map rows keyed by local map id), the maps
    it knows (id, name, type, pins), and, per facet, the memcgs and steps it has."""

    rows: pd.DataFrame
    maps: pd.DataFrame
    memcgs: dict[str, set[str]]
    steps: dict[str, list[tuple[str, int]]]
    notes: list[str]


@dataclass
class DiffResult:
    """The diff: ``rows`` (the diff table, changed rows first), ``unmatched``, ``maps`` (how each
    map was matched), what was compared and the verdict."""

    rows: pd.DataFrame
    unmatched: pd.DataFrame
    maps: pd.DataFrame
    base: dict
    new: dict
    compared: list[str]
    left_out: list[str]
    rules: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def crossed(self) -> pd.DataFrame:
        return self.rows[self.rows["crossed"]]

    @property
    def passed(self) -> bool:
        return not bool(self.rows["crossed"].any())

    def counts(self) -> dict:
        st = self.rows["status"].value_counts()
        return {"rows": int(len(self.rows)), "crossed": int(self.rows["crossed"].sum()),
                "changed": int(st.get("changed", 0)), "added": int(st.get("added", 0)),
                "removed": int(st.get("removed", 0)), "same": int(st.get("same", 0)),
                "unmatched": int(len(self.unmatched))}

    def verdict(self) -> str:
        c = self.counts()
        tail = (f"{c['changed']} changed, {c['added']} added, {c['removed']} removed, {c['same']} same; "
                f"{c['unmatched']} unmatched")
        if self.passed:
            return f"PASS: no rule crossed ({tail})"
        w = self.crossed.iloc[0]
        where = f"{w['metric']} of {w['entity']} {w['name'] or '(run)'}" + (f" at step {w['step']}" if w["step"] else "")
        return f"FAIL: {c['crossed']} row(s) cross their rules, first {where}: {w['reason']} ({tail})"


# ---------------------------------------------------------------------------------------------
# keys


def step_keys(names: list[str]) -> list[str]:
    """Step names in order -> keys: a repeated name gets ``#k`` from its second occurrence."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0) + 1
        seen[n] = k
        out.append(n if k == 1 else f"{n}#{k}")
    return out


def _truth_steps(truth: pd.DataFrame) -> dict[int, tuple[str, int]]:
    """truth step index -> (key, order)."""
    s = truth[["step", "step_name"]].drop_duplicates("step").sort_values("step")
    keys = step_keys([str(n) for n in s["step_name"]])
    return {int(i): (k, o) for o, (i, k) in enumerate(zip(s["step"], keys))}


def _long(facet, entity, names, steps, metric, values, orders, map_ids=None) -> pd.DataFrame:
    n = len(values)
    return pd.DataFrame({
        "facet": [facet] * n, "entity": [entity] * n, "name": list(names), "step": list(steps),
        "metric": [metric] * n if isinstance(metric, str) else list(metric),
        "value": pd.array(list(values), dtype="Int64"),
        "map_id": pd.array(list(map_ids) if map_ids is not None else [None] * n, dtype="Int64"),
        "order": np.asarray(list(orders), dtype="int64") if n else np.array([], dtype="int64"),
    })


# ---------------------------------------------------------------------------------------------
# one side's numbers


def _truth_rows(inp: DiffInput, side: Side) -> list[pd.DataFrame]:
    t = inp.truth
    steps = _truth_steps(t)
    side.steps["truth"] = sorted(steps.values(), key=lambda x: x[1])
    side.memcgs["truth"] = set(t["path"].astype(str))
    key = t["step"].map(lambda s: steps[int(s)][0])
    order = t["step"].map(lambda s: steps[int(s)][1])
    out = []
    for col, metric in (("memory_current_bytes", "memory_current_bytes"), ("events_max", "events_max")):
        ok = t[col].notna()
        out.append(_long("truth", "memcg", t["path"][ok].astype(str), key[ok], metric, t[col][ok], order[ok]))
    # maps: bpftool's list at each step
    maps: dict[int, tuple] = {}
    last: dict[int, int] = {}
    by_index = {}
    for s in (inp.truth_doc or {}).get("steps", []):
        try:
            by_index[int(s["index"])] = s
        except (KeyError, TypeError, ValueError):
            continue
    for idx, s in sorted(by_index.items()):
        if idx not in steps:
            continue
        for m in s.get("maps") or []:
            if not isinstance(m, dict) or "id" not in m:
                continue
            mid = int(m["id"])
            pins = tuple(sorted(p for p in (m.get("pinned") or []) if isinstance(p, str)))
            maps[mid] = (str(m.get("name") or ""), str(m.get("type") or ""), pins)
            if m.get("bytes_memlock") is not None:
                last[mid] = int(m["bytes_memlock"])
    _add_maps(side, maps)
    if last:
        # memlock is fixed at creation: one row per map, its value at the last step listing it
        out.append(_long("truth", "map", [""] * len(last), [""] * len(last), "memlock_bytes", list(last.values()),
                         [0] * len(last), list(last)))
    return out


def _add_maps(side: Side, maps: dict[int, tuple]) -> None:
    if not maps:
        return
    new = pd.DataFrame([(i, n, t, p) for i, (n, t, p) in maps.items()], columns=["map_id", "name", "type", "pins"])
    known = set(side.maps["map_id"]) if len(side.maps) else set()
    new = new[~new["map_id"].isin(known)]
    side.maps = pd.concat([side.maps, new], ignore_index=True) if len(side.maps) else new


def _capture_rows(inp: DiffInput, side: Side) -> list[pd.DataFrame]:
    from memtrace.analyses.charges import MARKER_EVENT, STEP_MARKER

    ev = inp.events
    out = []
    n = len(ev)
    # work on the category codes: string operations over a million rows cost seconds
    codes = ev["event"].cat.codes.to_numpy() if n else np.array([], dtype=np.int64)
    cats = [str(c) for c in ev["event"].cat.categories] if n else []
    present = [cats[c] for c in np.unique(codes) if c >= 0]
    is_mark = codes == (cats.index(MARKER_EVENT) if MARKER_EVENT in cats else -2)
    mk_rows = np.flatnonzero(is_mark)
    got = ev["marker"].iloc[mk_rows].astype("string").str.extract(STEP_MARKER) if len(mk_rows) else None
    if got is not None and got[0].notna().any():
        keep = got[0].notna().to_numpy()
        mk_rows = mk_rows[keep]
        mk_idx = got[0][keep].astype(int).to_numpy()
        mk_names = [str(x) for x in got[1][keep]]
    else:
        mk_rows, mk_idx, mk_names = np.array([], dtype=np.int64), np.array([], dtype=np.int64), []
    if inp.truth is not None:
        tsteps = _truth_steps(inp.truth)
        keys = [tsteps[int(i)][0] if int(i) in tsteps else nm for i, nm in zip(mk_idx, mk_names)]
        orders = [tsteps[int(i)][1] if int(i) in tsteps else 10_000 + j for j, i in enumerate(mk_idx)]
    else:
        keys = step_keys(mk_names)
        orders = list(range(len(keys)))
    if len(mk_rows):
        keys = keys + ["(after the last step)"]
        orders = orders + [max(orders) + 1]
        side.steps["capture"] = list(zip(keys, orders))
    else:
        keys, orders = [""], [0]
        side.steps["capture"] = []
    # step of every event: step k holds the events after marker k-1 up to marker k
    pos = np.searchsorted(mk_rows, np.arange(n), side="left") if len(mk_rows) else np.zeros(n, dtype=np.int64)
    sel = ~is_mark & (codes >= 0)
    if n and sel.any():
        ncat = len(cats)
        comb = pos[sel].astype(np.int64) * ncat + codes[sel]
        cnt = np.bincount(comb, minlength=len(keys) * ncat)
        nz = np.flatnonzero(cnt)
        si, ci = nz // ncat, nz % ncat
        out.append(_long("capture", "event", [cats[c] for c in ci], [keys[s] for s in si], "event_count", cnt[nz],
                         [orders[s] for s in si]))
    # events that carry a map id, per map (needs the run's maps to be matched)
    if n and ev["map_id"].notna().any():
        if len(side.maps):
            m = ev["map_id"].notna().to_numpy() & sel
            g = pd.DataFrame({"p": pos[m], "id": ev["map_id"].to_numpy()[m].astype(np.int64)}).value_counts().reset_index()
            out.append(_long("capture", "map", [""] * len(g), [keys[p] for p in g["p"]], "event_count", g["count"],
                             [orders[p] for p in g["p"]], g["id"]))
        else:
            side.notes.append(f"{inp.path}: events with map ids not compared per map (no truth.json names the maps)")
    short = {e.rsplit(":", 1)[-1] for e in present}
    if inp.truth is not None and {"pc_try_charge", "pc_try_charge_ret"} <= short:
        out += _charge_rows(inp, side)
    elif {"pc_try_charge", "pc_try_charge_ret", "try_charge", "try_charge_ret"} & short:
        if inp.truth is None:
            side.notes.append(f"{inp.path}: no truth.json of its run: charges compared per step for the whole "
                              "capture, not per memcg (memcg paths come from the truth)")
        out += _run_charge_rows(inp, keys, orders, mk_rows, short)
    else:
        side.notes.append(f"{inp.path}: no memtrace charge probes in the capture: only event counts compared")
    return out


def _charge_rows(inp: DiffInput, side: Side) -> list[pd.DataFrame]:
    from memtrace.analyses.charges import charges_by_step

    r = charges_by_step(inp.events, inp.truth)
    steps = _truth_steps(inp.truth)
    r = r[r["path"].notna() & r["step"].isin(list(steps))]
    side.memcgs["capture"] = set(r["path"].astype(str))
    r = r.assign(forced_bytes=r["forced_pages"] * PAGE_SIZE, forced_charges=r["force_charges"])
    cols = ["net_bytes", "forced_charges", "forced_bytes", "failed_try_charges"]
    if r["refused_charges"].notna().any():
        cols.append("refused_charges")
    g = r.groupby(["step", "path"], sort=False)[cols].sum(min_count=1).reset_index()
    key = g["step"].map(lambda s: steps[int(s)][0])
    order = g["step"].map(lambda s: steps[int(s)][1])
    return [_long("capture", "memcg", g["path"].astype(str), key, c, g[c], order) for c in cols]


def _run_charge_rows(inp: DiffInput, keys, orders, mk_rows, short) -> list[pd.DataFrame]:
    from memtrace.analyses.charges import charge_attempts, page_counter_movements

    out = []
    ev = inp.events

    def per_step(rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        p = np.searchsorted(mk_rows, rows, side="left") if len(mk_rows) else np.zeros(len(rows), dtype=np.int64)
        return np.bincount(p, weights=weights, minlength=len(keys))

    if {"pc_try_charge", "pc_try_charge_ret"} <= short:
        mv = page_counter_movements(ev)
        f = mv[mv["kind"].astype(str).eq("force")]
        calls = per_step(f["row"].to_numpy())
        pages = per_step(f["row"].to_numpy(), f["pages"].fillna(0).to_numpy(dtype=float))
        out.append(_long("capture", "run", [""] * len(keys), keys, "forced_charges", calls.astype(int), orders))
        out.append(_long("capture", "run", [""] * len(keys), keys, "forced_bytes", (pages * PAGE_SIZE).astype(int), orders))
    if {"try_charge", "try_charge_ret"} <= short:
        a = charge_attempts(ev)
        a = a[a["ret"].fillna(0).ne(0)]
        out.append(_long("capture", "run", [""] * len(keys), keys, "refused_charges",
                         per_step(a["row"].to_numpy()).astype(int), orders))
    return out


def _memcg_keys(memcgs: pd.DataFrame) -> list[str]:
    """Snapshot memcg paths as keys: a non-online memcg sharing a path is `PATH (dying)`, further repeats `#k`."""
    paths = memcgs["path"].astype(str).tolist()
    online = memcgs["online"].tolist() if "online" in memcgs else [True] * len(paths)
    count: dict[str, int] = {}
    for p in paths:
        count[p] = count.get(p, 0) + 1
    seen: dict[str, int] = {}
    keys = []
    for p, on in zip(paths, online):
        k = p if count[p] == 1 or on else f"{p} (dying)"
        seen[k] = seen.get(k, 0) + 1
        keys.append(k if seen[k] == 1 else f"{k}#{seen[k]}")
    return keys


def _snapshot_rows(inp: DiffInput, side: Side) -> list[pd.DataFrame]:
    from memtrace.analyses.leftover import charged_per_map_memcg, leftover_memcgs

    s = inp.snapshot
    mc = s.memcgs.reset_index(drop=True)
    keys = _memcg_keys(mc)
    side.memcgs["snapshot"] = set(keys)
    side.steps.setdefault("snapshot", [])
    per = charged_per_map_memcg(s.allocations)
    lm = leftover_memcgs(s.maps, s.allocations, mc, per)
    left = dict(zip(lm["cgroup_id"].astype("int64"), lm["leftover_bytes"].astype("int64")))
    ids = mc["cgroup_id"].astype("int64")
    out = []
    zeros = [0] * len(mc)
    for metric, vals in (("memory_current_bytes", mc["memory_current_bytes"]), ("bpf_bytes", mc["bpf_bytes"]),
                         ("leftover_bytes", ids.map(left).fillna(0)), ("events_max", mc["events_max"])):
        out.append(_long("snapshot", "memcg", keys, [""] * len(mc), metric, vals, zeros))
    maps = s.maps
    _add_maps(side, {int(i): (str(n), str(t), tuple(sorted(x for x in str(p).split(";") if x)))
                     for i, n, t, p in zip(maps["map_id"], maps["name"].fillna(""), maps["type"], maps["pins"].fillna(""))})
    for metric in ("charged_bytes", "uncharged_bytes", "memlock_bytes"):
        v = maps[metric]
        ok = v.notna().to_numpy()
        out.append(_long("snapshot", "map", [""] * int(ok.sum()), [""] * int(ok.sum()), metric, v[ok],
                         [0] * int(ok.sum()), maps["map_id"][ok]))
    a = s.allocations
    if len(a):
        # factorize and bincount: a million allocation rows in tens of milliseconds
        kc, kinds = pd.factorize(a["kind"])
        mc_, mids = pd.factorize(a["map_id"])
        comb = mc_.astype(np.int64) * len(kinds) + kc
        tot = np.bincount(comb, weights=a["charged_bytes"].to_numpy(dtype="float64"),
                          minlength=len(mids) * len(kinds))
        nz = np.flatnonzero(np.bincount(comb, minlength=len(mids) * len(kinds)))
        g = pd.DataFrame({"map_id": np.asarray(mids, dtype="int64")[nz // len(kinds)],
                          "kind": [str(kinds[k]) for k in nz % len(kinds)],
                          "charged_bytes": tot[nz].round().astype("int64")})
        out.append(_long("snapshot", "map", [""] * len(g), [""] * len(g), [f"{k}_charged_bytes" for k in g["kind"]],
                         g["charged_bytes"], [0] * len(g), g["map_id"]))
    return out


def side_numbers(inp: DiffInput, facets: list[str]) -> Side:
    """One input's rows for the facets to compare."""
    side = Side(rows=pd.DataFrame(columns=_LONG), maps=pd.DataFrame(columns=["map_id", "name", "type", "pins"]),
                memcgs={}, steps={}, notes=[])
    parts: list[pd.DataFrame] = []
    # maps first from the snapshot (the end state), then truth (every step's bpftool list)
    if "snapshot" in facets:
        parts += _snapshot_rows(inp, side)
    if "truth" in facets or ("capture" in facets and inp.truth is not None):
        t_parts = _truth_rows(inp, side)
        if "truth" in facets:
            parts += t_parts
    if "capture" in facets:
        parts += _capture_rows(inp, side)
    parts = [p for p in parts if len(p)]
    side.rows = pd.concat(parts, ignore_index=True) if parts else _long("truth", "memcg", [], [], "x", [], [])
    return side


# ---------------------------------------------------------------------------------------------
# matching


def match_maps(base: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, str], dict[int, str]]:
    """Pair maps by pin, then name, then type. Returns the pairing table (``key``, ``base_map_id``,
    ``new_map_id``, ``matched_by``: pin / name / type / base only / new only, ``type``,
    ``map_name``) and each side's id -> key."""
    b = {int(r.map_id): r for r in base.itertuples(index=False)}
    n = {int(r.map_id): r for r in new.itertuples(index=False)}
    bkey: dict[int, str] = {}
    nkey: dict[int, str] = {}
    rows = []

    def pair(bi, ni, key, how):
        bkey[bi], nkey[ni] = key, key
        r = b[bi]
        rows.append((key, bi, ni, how, r.type, r.name))

    pin_owner = {}
    for ni in sorted(n):
        for p in n[ni].pins:
            pin_owner.setdefault(p, ni)
    for bi in sorted(b):
        for p in b[bi].pins:
            ni = pin_owner.get(p)
            if ni is not None and ni not in nkey:
                pair(bi, ni, p, "pin")
                break
    for attr, how in (("name", "name"), ("type", "type")):
        # a pin is an identity: maps pinned at different paths are different maps, never paired by type
        bl = [i for i in sorted(b) if i not in bkey and (getattr(b[i], attr) if attr == "name" else not b[i].pins)]
        nl = [i for i in sorted(n) if i not in nkey and (getattr(n[i], attr) if attr == "name" else not n[i].pins)]
        groups: dict[str, tuple[list, list]] = {}
        for i in bl:
            groups.setdefault(getattr(b[i], attr), ([], []))[0].append(i)
        for i in nl:
            groups.setdefault(getattr(n[i], attr), ([], []))[1].append(i)
        for val, (gb, gn) in groups.items():
            if not gb or not gn:
                continue
            single = len(gb) == len(gn) == 1 and attr == "name"
            for k, (bi, ni) in enumerate(zip(gb, gn), 1):
                pair(bi, ni, val if single else f"{val}#{k}", how)
    # what is left: keyed by pin, else name, else type#k, numbered past the matched ones
    for ids, keys, side, src in ((b, bkey, "base only", "base"), (n, nkey, "new only", "new")):
        used: dict[str, int] = {}
        for k in list(bkey.values()) + list(nkey.values()):
            used[k] = 1
        for i in sorted(ids):
            if i in keys:
                continue
            r = ids[i]
            base_key = r.pins[0] if r.pins else (r.name or f"{r.type}#1")
            key, k = base_key, 1
            stem = base_key.rsplit("#", 1)[0] if not r.pins and not r.name else base_key
            while key in used:
                k += 1
                key = f"{stem}#{k}"
            used[key] = 1
            keys[i] = key
            rows.append((key, i if src == "base" else None, i if src == "new" else None, side, r.type, r.name))
    table = pd.DataFrame(rows, columns=["key", "base_map_id", "new_map_id", "matched_by", "type", "map_name"])
    table = table.astype({"key": "string", "base_map_id": "Int64", "new_map_id": "Int64", "matched_by": "string",
                          "type": "string", "map_name": "string"})
    return table, bkey, nkey


def _with_map_keys(rows: pd.DataFrame, keys: dict[int, str]) -> pd.DataFrame:
    m = rows["entity"].eq("map")
    if m.any():
        rows = rows.copy()
        rows.loc[m, "name"] = rows.loc[m, "map_id"].map(lambda i: keys.get(int(i), f"map id {int(i)}"))
    return rows


def _unmatched(bs: Side, ns: Side, maps: pd.DataFrame, facets: list[str]) -> pd.DataFrame:
    rows = []
    for f in facets:
        bm, nm = bs.memcgs.get(f, set()), ns.memcgs.get(f, set())
        rows += [("base", f, "memcg", p, "memcg only in BASE") for p in sorted(bm - nm)]
        rows += [("new", f, "memcg", p, "memcg only in NEW") for p in sorted(nm - bm)]
        bst, nst = bs.steps.get(f, []), ns.steps.get(f, [])
        bk, nk = {k for k, _ in bst}, {k for k, _ in nst}
        rows += [("base", f, "step", k, f"step #{o + 1} of BASE") for k, o in bst if k not in nk]
        rows += [("new", f, "step", k, f"step #{o + 1} of NEW") for k, o in nst if k not in bk]
    for r in maps.itertuples(index=False):
        if r.matched_by == "base only":
            rows.append(("base", "+".join(facets), "map", r.key, f"map id {r.base_map_id} ({r.type} {r.map_name or '-'})"))
        elif r.matched_by == "new only":
            rows.append(("new", "+".join(facets), "map", r.key, f"map id {r.new_map_id} ({r.type} {r.map_name or '-'})"))
    df = pd.DataFrame(rows, columns=[c.name for c in UNMATCHED_COLUMNS])
    return df.astype({c.name: "string" for c in UNMATCHED_COLUMNS})


# ---------------------------------------------------------------------------------------------
# compare


def compatible(base: DiffInput, new: DiffInput) -> tuple[list[str], list[str]]:
    """(facets both have, facets only one has); InputError when they share none."""
    both = [f for f in base.facets if f in new.facets]
    only = sorted(set(base.facets) ^ set(new.facets))
    if not both:
        def says(i: DiffInput) -> str:
            return f"{i.path} is a {i.kind} ({', '.join(i.facets) or 'nothing'})"

        raise InputError(
            f"nothing to compare: {says(base)}, {says(new)}. "
            "A capture compares with a capture or a lab folder holding one (" + FACET_WHAT["capture"] + "); "
            "a snapshot file with a snapshot file or a lab folder with a *.snapshot or a vmcore and --vmlinux ("
            + FACET_WHAT["snapshot"] + "); a truth.json or lab folder with a lab folder or a capture with its "
            "run's truth (" + FACET_WHAT["truth"] + ")")
    return both, only


def compare(base: DiffInput, new: DiffInput, rules: list[Rule]) -> DiffResult:
    """The diff of two loaded inputs under ``rules`` (later rules win)."""
    facets, only = compatible(base, new)
    bs, ns = side_numbers(base, facets), side_numbers(new, facets)
    maps, bkey, nkey = match_maps(bs.maps, ns.maps)
    b = _with_map_keys(bs.rows, bkey)
    n = _with_map_keys(ns.rows, nkey)
    keys = ["facet", "entity", "name", "step", "metric"]
    b = b.groupby(keys, sort=False, dropna=False).agg(base=("value", "sum"), order_b=("order", "min")).reset_index()
    n = n.groupby(keys, sort=False, dropna=False).agg(new=("value", "sum"), order_n=("order", "min")).reset_index()
    m = b.merge(n, on=keys, how="outer", indicator=True)
    m["base"] = m["base"].astype("Int64").where(m["_merge"].ne("right_only"), pd.NA)
    m["new"] = m["new"].astype("Int64").where(m["_merge"].ne("left_only"), pd.NA)
    m["order"] = m["order_b"].fillna(m["order_n"]).fillna(0).astype("int64")
    m["step_order"] = m["order"]
    m["delta"] = (m["new"].fillna(0) - m["base"].fillna(0)).astype("Int64")
    base_abs = m["base"].abs().astype("Float64")
    m["delta_pct"] = (100 * m["delta"].astype("Float64") / base_abs.where(base_abs > 0)).astype("Float64")
    status = np.where(m["_merge"].eq("left_only"), "removed",
                      np.where(m["_merge"].eq("right_only"), "added",
                               np.where(m["delta"].fillna(0).to_numpy() != 0, "changed", "same")))
    m["status"] = status
    rule_txt, crossed, reason, exempt = [], [], [], []
    for f, e, nm, st, mt, bv, nv in zip(m["facet"], m["entity"], m["name"], m["step"], m["metric"],
                                         m["base"].to_numpy(dtype=object, na_value=None),
                                         m["new"].to_numpy(dtype=object, na_value=None)):
        r = rule_for(rules, f, e, nm, st, mt)
        exempt.append(r is None or r.off)
        if r is None:
            rule_txt.append(None)
            crossed.append(False)
            reason.append(None)
            continue
        why = r.judge(bv, nv)
        rule_txt.append(r.text)
        crossed.append(why is not None)
        reason.append(why)
    m["rule"] = pd.array(rule_txt, dtype="string")
    m["crossed"] = np.asarray(crossed, dtype=bool)
    m["watched"] = ~np.asarray(exempt, dtype=bool)
    m["reason"] = pd.array(reason, dtype="string")
    facet_order = {"truth": 0, "capture": 1, "snapshot": 2}
    ent_order = {"run": 0, "memcg": 1, "map": 2, "event": 3}
    # crossed rows, then changes a rule watches, then changes no rule watches (off), then the rest
    status_rank = {"changed": 1, "added": 1, "removed": 1, "same": 3}
    m["_r"] = np.where(m["crossed"], 0, m["status"].map(status_rank) + np.asarray(exempt, dtype=int))
    m["_f"] = m["facet"].map(facet_order)
    m["_e"] = m["entity"].map(ent_order)
    m = m.sort_values(["_r", "_f", "_e", "name", "order", "metric"], kind="stable")
    out = m[list(DIFF_COLUMN_NAMES)].reset_index(drop=True)
    for c in DIFF_COLUMNS:
        if c.dtype == "string":
            out[c.name] = out[c.name].astype("string")
    unmatched = _unmatched(bs, ns, maps, facets)
    notes = list(base.notes) + list(new.notes) + bs.notes + ns.notes
    for f in only:
        who = "BASE" if f in base.facets else "NEW"
        notes.append(f"{f} left out: only {who} has it ({FACET_WHAT[f]})")
    return DiffResult(rows=out, unmatched=unmatched, maps=maps, base=describe(base), new=describe(new),
                      compared=facets, left_out=only, rules=[r.text for r in rules], notes=notes)


def describe(inp: DiffInput) -> dict:
    return {"path": inp.path, "kind": inp.kind, "kernel": inp.kernel, "facets": list(inp.facets),
            "sources": dict(inp.sources)}


__all__ = ["DiffResult", "compare", "compatible", "match_maps", "side_numbers", "step_keys", "describe", "FACET_WHAT"]

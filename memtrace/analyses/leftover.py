"""Leftover BPF charge: maps whose charge outlived their generation, and who pays for it.

Pure functions over a snapshot's tables (:mod:`memtrace.tables.snapshot`). A map's charge is
*leftover* when its owner memcg is no longer a live, populated generation: ``ghost`` (online,
no tasks), ``dying`` (offline, objcg not yet reparented) or ``reparented`` (the objcg moved to
an ancestor when the owner was removed). Bytes are what the charges cost the memcg
(``charged_bytes`` of the allocation rows), attributed to the memcg each allocation is charged
to now, which need not be the owner (a reparented objcg charges the ancestor).

The recharge rule is the seed RFC's ``memcg_need_recharge()`` (its patch 01 is titled
``memcg_should_recharge``): never recharge from the root memcg; recharge only when the
owner memcg is offline or reparented. A ghost owner is online, so it is not a candidate.
"""

from __future__ import annotations

import pandas as pd

#: owner states whose charge outlived its generation
LEFTOVER_STATES = ("ghost", "dying", "reparented")
#: the memcg stat columns of the snapshot (memory.stat, hierarchical) the split reads
STAT_COLUMNS = ("stat_anon_bytes", "stat_file_bytes", "stat_kernel_bytes", "stat_sock_bytes", "stock_bytes")
#: every owner state, in report order
OWNER_STATES = ("online", "ghost", "dying", "reparented", "none")

MAP_COLUMNS = (
    "map_id", "name", "type", "pins", "owner_state", "owner_path", "original_path", "leftover",
    "charged_bytes", "uncharged_bytes", "charged_to", "recharge_candidate", "recharge_reason",
)


def _parent(path: str) -> str | None:
    return None if path == "/" else (path.rsplit("/", 1)[0] or "/")


def recharge_rule(owner_state: str, owner_path) -> tuple[bool, str]:
    """The RFC's memcg_need_recharge(): (candidate, why)."""
    if owner_state == "none":
        return False, "the map charges no memcg"
    if owner_path == "/":
        return False, "charged to the root memcg: the RFC never recharges from root"
    if owner_state in ("dying", "reparented"):
        return True, f"owner memcg is {'offline' if owner_state == 'dying' else 'reparented'}"
    if owner_state == "ghost":
        return False, "owner memcg is online (a ghost: no tasks); the RFC recharges only offline or reparented owners"
    return False, "owner memcg is online"


def charged_per_map_memcg(allocations: pd.DataFrame) -> pd.DataFrame:
    """Charged bytes per (map_id, charged_cgroup_id), uncharged rows left out: the one pass
    over the allocation rows both leftover tables need (plain numpy columns, so a million
    rows group in tens of milliseconds)."""
    cg = allocations["charged_cgroup_id"].to_numpy(dtype="int64", na_value=-1)
    df = pd.DataFrame({"map_id": allocations["map_id"].to_numpy(dtype="int64"), "charged_cgroup_id": cg,
                       "charged_bytes": allocations["charged_bytes"].to_numpy(dtype="int64")})
    per = df[cg >= 0].groupby(["map_id", "charged_cgroup_id"], sort=False)["charged_bytes"].sum().reset_index()
    return per.sort_values(["map_id", "charged_bytes"], ascending=[True, False], kind="stable").reset_index(drop=True)


def leftover_maps(maps: pd.DataFrame, allocations: pd.DataFrame, memcgs: pd.DataFrame,
                  per: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per map: owner state, who pays now (``owner_path``), the original cgroup where
    the kernel still records it, ``leftover``, bytes charged and uncharged, ``charged_to``
    (``path=bytes`` per memcg actually charged, ';'-separated, largest first) and the RFC rule.
    ``per``: ``charged_per_map_memcg(allocations)``, if the caller has it already."""
    path_of = dict(zip(memcgs["cgroup_id"].astype("int64"), memcgs["path"].astype(str)))
    per = charged_per_map_memcg(allocations) if per is None else per
    to: dict[int, str] = {}
    for mid, grp in per.groupby("map_id", sort=False):
        to[int(mid)] = ";".join(f"{path_of.get(int(c), f'cgroup {int(c)}')}={int(b)}"
                                for c, b in zip(grp["charged_cgroup_id"], grp["charged_bytes"]))
    rows = []
    for m in maps.itertuples(index=False):
        cand, why = recharge_rule(m.owner_state, None if pd.isna(m.owner_path) else m.owner_path)
        rows.append((int(m.map_id), m.name, m.type, m.pins, m.owner_state,
                     None if pd.isna(m.owner_path) else m.owner_path,
                     None if pd.isna(m.original_path) else m.original_path,
                     m.owner_state in LEFTOVER_STATES, int(m.charged_bytes), int(m.uncharged_bytes),
                     to.get(int(m.map_id), ""), cand, why))
    df = pd.DataFrame(rows, columns=list(MAP_COLUMNS))
    return df.astype({"map_id": "int64", "name": "string", "type": "string", "pins": "string",
                      "owner_state": "string", "owner_path": "string", "original_path": "string",
                      "leftover": "bool", "charged_bytes": "int64", "uncharged_bytes": "int64",
                      "charged_to": "string", "recharge_candidate": "bool", "recharge_reason": "string"})


def leftover_memcgs(maps: pd.DataFrame, allocations: pd.DataFrame, memcgs: pd.DataFrame,
                    per: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per memcg: ``memory_current_bytes``, ``own_bytes`` (less its children's),
    BPF bytes charged to it (not its descendants) split by the owner state of the map
    (``bpf_<state>_bytes``), ``leftover_bytes`` (ghost + dying + reparented),
    ``leftover_share`` of ``own_bytes``, and ``leftover_subtree_bytes`` (itself and every
    descendant: what an ancestor carries for removed or idle generations). Where the
    snapshot has memory.stat: ``own_anon_bytes``, ``own_file_bytes``, ``own_kernel_bytes``,
    ``own_sock_bytes`` (less the children's), ``kernel_other_bytes`` (kernel memory that is
    not a BPF map's), ``stock_bytes`` (pages pre-charged in per-CPU stocks: in
    memory.current, in no stat) and ``unexplained_bytes`` (own usage none of these explains;
    null for the root, whose counter does not hold what its system-wide stats count)."""
    state_of = dict(zip(maps["map_id"].astype("int64"), maps["owner_state"].astype(str)))
    a = (charged_per_map_memcg(allocations) if per is None else per).copy()
    a["state"] = a["map_id"].map(state_of).fillna("none")
    by = a.groupby(["charged_cgroup_id", "state"])["charged_bytes"].sum().unstack(fill_value=0)
    stats = [c for c in STAT_COLUMNS if c in memcgs]
    m = memcgs[["cgroup_id", "path", "state", "memory_current_bytes", *stats]].copy()
    m["cgroup_id"] = m["cgroup_id"].astype("int64")
    paths = set(m["path"].astype(str))
    m["parent"] = [p if p in paths else None for p in (_parent(str(x)) for x in m["path"])]
    kids = m[m["parent"].notna()].groupby("parent")
    child_sum = kids["memory_current_bytes"].sum()
    m["own_bytes"] = (m["memory_current_bytes"] - m["path"].map(child_sum).fillna(0)).astype("int64")
    # memory.stat is hierarchical too: a memcg's own part is its value less its children's
    for c in stats:
        if c == "stock_bytes":  # per memcg already, not hierarchical
            continue
        own = m[c] - m["path"].map(kids[c].sum()).fillna(0)
        m["own_" + c.removeprefix("stat_")] = own.astype("Int64")
    for s in OWNER_STATES:
        col = by[s] if s in by.columns else pd.Series(dtype="int64")
        m[f"bpf_{s}_bytes"] = m["cgroup_id"].map(col).fillna(0).astype("int64")
    m["leftover_bytes"] = sum(m[f"bpf_{s}_bytes"] for s in LEFTOVER_STATES).astype("int64")
    own = m["own_bytes"].where(m["own_bytes"] > 0)
    m["leftover_share"] = (m["leftover_bytes"] / own).astype("Float64")
    # where the memcg's own usage went: BPF maps (above, by owner state), anon, file, the
    # rest of kernel memory, socket buffers, and what none of these explains
    if {"stat_anon_bytes", "stat_file_bytes", "stat_kernel_bytes"} <= set(stats):
        bpf = sum(m[f"bpf_{s}_bytes"] for s in OWNER_STATES)
        m["kernel_other_bytes"] = (m["own_kernel_bytes"] - bpf).astype("Int64")
        sock = m["own_sock_bytes"] if "own_sock_bytes" in m else 0
        # pages pre-charged in per-CPU stocks count in memory.current but in no stat
        stock = m["stock_bytes"] if "stock_bytes" in m else 0
        unexplained = m["own_bytes"] - m["own_anon_bytes"] - m["own_file_bytes"] - m["own_kernel_bytes"] - sock - stock
        # the root's counter does not hold what its stats count (system-wide): no split there
        m["unexplained_bytes"] = unexplained.astype("Int64").mask(m["path"].eq("/"))
    # subtree totals: every memcg adds its leftover to itself and each ancestor present
    sub = dict.fromkeys(m["path"].astype(str), 0)
    for path, b in zip(m["path"].astype(str), m["leftover_bytes"]):
        p: str | None = path
        while p is not None:
            if p in sub:
                sub[p] += int(b)
            p = _parent(p)
    m["leftover_subtree_bytes"] = m["path"].astype(str).map(sub).astype("int64")
    return m.drop(columns=["parent"]).sort_values("path", kind="stable").reset_index(drop=True)


def threshold_crossed(memcg_rows: pd.DataFrame, fail_over: str | None) -> str | None:
    """``fail_over``: BYTES (total leftover charge in the snapshot) or N% (a memcg's
    leftover share of its own usage). The finding as one sentence when crossed, else None."""
    if not fail_over:
        return None
    if fail_over.endswith("%"):
        limit = float(fail_over[:-1]) / 100
        over = memcg_rows[memcg_rows["leftover_share"].fillna(0) > limit]
        if over.empty:
            return None
        worst = over.sort_values("leftover_share", ascending=False).iloc[0]
        return (f"{len(over)} memcg(s) over {fail_over} leftover BPF charge; worst {worst['path']}: "
                f"{float(worst['leftover_share']):.1%} of its own {int(worst['own_bytes']):,} B")
    total = int(memcg_rows["leftover_bytes"].sum())
    return f"leftover BPF charge {total:,} B is over {int(fail_over):,} B" if total > int(fail_over) else None


def parse_fail_over(text: str | None) -> str | None:
    """Validate --fail-over: a byte count (suffixes K, M, G: KiB, MiB, GiB) or a percentage."""
    if text is None:
        return None
    t = text.strip()
    if t.endswith("%"):
        try:
            v = float(t[:-1])
        except ValueError:
            v = -1
        if not 0 <= v <= 100:
            raise ValueError(f"--fail-over {text!r}: a percentage must be between 0% and 100%")
        return t
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:].upper(), 1)
    num = t[:-1] if mult != 1 else t
    if not num.isdigit():
        raise ValueError(f"--fail-over {text!r}: give bytes (e.g. 65536, 64K, 2M) or a percentage (e.g. 10%)")
    return str(int(num) * mult)

"""Pure functions over snapshot tables (no drgn, no rendering).

Inputs are the frames declared in :mod:`memtrace.tables.snapshot`.
"""

from __future__ import annotations

import pandas as pd

REQUIRES = {
    "allocation_summary": ["allocations"],
    "memcg_reconciliation": ["memcgs"],
}


def allocation_summary(allocations: pd.DataFrame) -> pd.DataFrame:
    """Allocations grouped by (map_id, role, kind, charged_cgroup_id): count,
    size_bytes, charged_bytes. A NULL charged_cgroup_id is the uncharged bucket."""
    if allocations.empty:
        return pd.DataFrame(
            {
                "map_id": pd.Series([], dtype="int64"),
                "role": pd.Series([], dtype="string"),
                "kind": pd.Series([], dtype="string"),
                "charged_cgroup_id": pd.Series([], dtype="Int64"),
                "count": pd.Series([], dtype="int64"),
                "size_bytes": pd.Series([], dtype="int64"),
                "charged_bytes": pd.Series([], dtype="int64"),
            }
        )
    g = allocations.groupby(["map_id", "role", "kind", "charged_cgroup_id"], dropna=False, sort=True)
    out = g.agg(count=("address", "size"), size_bytes=("size_bytes", "sum"), charged_bytes=("charged_bytes", "sum"))
    out = out.reset_index()
    out["charged_cgroup_id"] = out["charged_cgroup_id"].astype("Int64")
    return out


def memcg_reconciliation(memcgs: pd.DataFrame) -> pd.DataFrame:
    """Per memcg: memory.current against what the snapshot explains.

    ``explained_bytes`` = bpf_bytes + stock_bytes + obj_stock_bytes +
    objcg_charged_bytes + the memory.current of its direct children (the counter is
    hierarchical). ``other_bytes`` = memory.current - explained (user pages, other kernel
    objects, ...).
    """
    df = memcgs.copy()
    paths = set(df["path"])

    def parent(p: str) -> str | None:
        if p == "/":
            return None
        q = p.rsplit("/", 1)[0] or "/"
        return q if q in paths else None

    df["parent"] = df["path"].map(parent)
    # dying memcgs share their path with a live one sometimes; children by memcg path only
    child_sum = df[df["parent"].notna()].groupby("parent")["memory_current_bytes"].sum()
    df["children_bytes"] = df["path"].map(child_sum).fillna(0).astype("int64")
    df["explained_bytes"] = (
        df["bpf_bytes"] + df["stock_bytes"] + df["obj_stock_bytes"] + df["objcg_charged_bytes"] + df["children_bytes"]
    )
    df["other_bytes"] = df["memory_current_bytes"] - df["explained_bytes"]
    return df[
        [
            "cgroup_id",
            "path",
            "state",
            "memory_current_bytes",
            "bpf_bytes",
            "stock_bytes",
            "obj_stock_bytes",
            "objcg_charged_bytes",
            "children_bytes",
            "other_bytes",
        ]
    ]

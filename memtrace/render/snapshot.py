"""Rendering of snapshots: rich tables for people, a JSON envelope for programs.

Kernel strings (map names, cgroup paths, pins) are escaped before rich sees them.
"""

from __future__ import annotations

import json

import pandas as pd
from rich.markup import escape
from rich.table import Table

from memtrace.analyses.snapshot import allocation_summary
from memtrace.tables.snapshot import SCHEMA_VERSION, Snapshot

JSON_SCHEMA = "memtrace.snapshot.json/1"


def _b(n) -> str:
    if n is None or n is pd.NA:
        return "-"
    n = int(n)
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n:,} B"


def _s(v) -> str:
    return "-" if v is None or v is pd.NA else escape(str(v))


def maps_table(snap: Snapshot) -> Table:
    k = snap.header.get("kernel", {})
    t = Table(title=f"BPF maps on {escape(str(k.get('release')))} ({escape(snap.header['target']['kind'])})")
    for col, j in [
        ("id", "right"),
        ("name", "left"),
        ("type", "left"),
        ("owner memcg", "left"),
        ("state", "left"),
        ("charged", "right"),
        ("uncharged", "right"),
        ("map_mem_usage", "right"),
        ("memlock", "right"),
        ("pins", "left"),
    ]:
        t.add_column(col, justify=j)
    for r in snap.maps.itertuples(index=False):
        state = r.owner_state
        if state == "reparented" and r.original_path is not pd.NA and r.original_path is not None:
            state += f" (from {r.original_path})"
        t.add_row(
            str(r.map_id) + ("" if r.complete else "*"),
            _s(r.name),
            _s(r.type),
            _s(r.owner_path),
            _s(state),
            _b(r.charged_bytes),
            _b(r.uncharged_bytes),
            _b(r.mem_usage_bytes),
            _b(r.memlock_bytes),
            _s(r.pins.replace(";", " ")),
        )
    return t


def memcgs_table(snap: Snapshot) -> Table:
    t = Table(title="memory cgroups (dying included)")
    for col, j in [
        ("cgroup id", "right"),
        ("path", "left"),
        ("state", "left"),
        ("memory.current", "right"),
        ("memory.max", "right"),
        ("events max", "right"),
        ("BPF charged", "right"),
        ("maps owned", "right"),
        ("stocks", "right"),
    ]:
        t.add_column(col, justify=j)
    for r in snap.memcgs.itertuples(index=False):
        t.add_row(
            str(r.cgroup_id),
            _s(r.path),
            _s(r.state),
            _b(r.memory_current_bytes),
            _b(r.memory_max_bytes) if r.memory_max_bytes is not pd.NA else "max",
            str(r.events_max),
            _b(r.bpf_bytes),
            str(r.bpf_maps_owned),
            _b(r.stock_bytes + r.obj_stock_bytes + r.objcg_charged_bytes),
        )
    return t


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if v is pd.NA else v) for k, v in rec.items()} for rec in df.to_dict(orient="records")]


def json_envelope(snap: Snapshot) -> str:
    """``{"schema", "snapshot_schema", "header", "maps", "memcgs", "allocation_summary"}``.
    The full allocations table is in the snapshot file (``-o``), not in the JSON."""
    env = {
        "schema": JSON_SCHEMA,
        "snapshot_schema": SCHEMA_VERSION,
        "header": snap.header,
        "maps": _records(snap.maps),
        "memcgs": _records(snap.memcgs),
        "allocation_summary": _records(allocation_summary(snap.allocations)),
    }
    return json.dumps(env, indent=1, default=_default)


def _default(o):
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(type(o))

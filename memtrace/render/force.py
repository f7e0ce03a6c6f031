"""Rendering of the force report (memtrace.analyses.force): rich tables, JSON envelope."""

from __future__ import annotations

import json

import pandas as pd
from rich.table import Table

from memtrace.render.snapshot import _b, _default, _records, _s

JSON_SCHEMA = "memtrace.report.force/1"


def _n(v) -> str:
    return "-" if v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)) else f"{int(v):,}"


def steps_table(steps: pd.DataFrame) -> Table:
    t = Table(title="forced and refused charges per step and memcg (counts are hierarchical)")
    for col in ("step", "memcg", "forcing calls", "forced", "refused calls", "memory.current", "memory.max",
                "above max", "peak above max", "max events"):
        t.add_column(col, justify="left" if col in ("step", "memcg") else "right")
    for r in steps.itertuples(index=False):
        t.add_row(f"{r.step} {_s(r.step_name)}", _s(r.path), _n(r.force_charges), _b(r.forced_bytes),
                  _n(r.refused_charges), _b(r.memory_current_bytes), _b(r.memory_max_bytes), _b(r.over_max_bytes),
                  _b(r.peak_over_max_bytes), _n(r.events_max_raised))
    return t


def tasks_table(tasks: pd.DataFrame) -> Table:
    t = Table(title="per task: forced pages and refused charges (the memcg charged, not its ancestors)")
    for col in ("memcg", "pid", "comm", "forcing calls", "forced", "refused calls"):
        t.add_column(col, justify="left" if col in ("memcg", "comm") else "right")
    for r in tasks.itertuples(index=False):
        t.add_row(_s(r.path if r.path is not None and r.path is not pd.NA else f"cgroup {r.cgroup_id}"), _n(r.pid),
                  _s(r.comm), _n(r.forced_charges), _b(r.forced_bytes), _n(r.refused_charges))
    return t


def refused_table(refused: pd.DataFrame) -> Table:
    t = Table(title="refused charges (try_charge_memcg returned -ENOMEM: the allocation failed with ENOMEM)")
    for col in ("memcg", "gfp", "can reclaim", "pages", "refused calls"):
        t.add_column(col, justify="right" if col in ("pages", "refused calls") else "left")
    for r in refused.itertuples(index=False):
        t.add_row(_s(r.path if r.path is not None and r.path is not pd.NA else f"cgroup {r.cgroup_id}"),
                  f"{_s(r.gfp_flags)} ({'-' if pd.isna(r.gfp) else hex(int(r.gfp))})",
                  "-" if pd.isna(r.can_reclaim) else ("yes" if r.can_reclaim else "no"), _n(r.pages),
                  _n(r.refused_charges))
    return t


def call_sites_table(sites: pd.DataFrame) -> Table:
    t = Table(title="per call site: the function that called try_charge_memcg (the memcg charged, not its ancestors)")
    for col in ("memcg", "call site", "forcing calls", "forced", "refused calls"):
        t.add_column(col, justify="left" if col in ("memcg", "call site") else "right")
    for r in sites.itertuples(index=False):
        t.add_row(_s(r.path if not pd.isna(r.path) else f"cgroup {r.cgroup_id}"), _s(r.call_site), _n(r.forced_charges),
                  _b(r.forced_bytes), _n(r.refused_charges))
    return t


def limits_table(limits: pd.DataFrame, snapshot: str) -> Table:
    t = Table(title=f"forced and refused charges against the limits of {snapshot} (counts are hierarchical)")
    for col in ("memcg", "state", "forcing calls", "forced", "refused calls", "memory.current", "memory.max",
                "memory.high", "above max", "max events"):
        t.add_column(col, justify="left" if col in ("memcg", "state") else "right")
    for r in limits.itertuples(index=False):
        t.add_row(_s(r.path if not pd.isna(r.path) else f"cgroup {r.cgroup_id}"), _s(r.state), _n(r.forced_charges),
                  _b(r.forced_bytes), _n(r.refused_charges), _b(r.memory_current_bytes), _b(r.memory_max_bytes),
                  _b(r.memory_high_bytes), _b(r.over_max_bytes), _n(r.events_max))
    return t


def json_envelope(capture: str, truth: str | None, totals: dict, steps, tasks, refused, behaviour,
                  snapshot: str | None = None, limits=None, call_sites=None) -> str:
    env = {
        "schema": JSON_SCHEMA,
        "capture": capture,
        "truth": truth,
        "snapshot": snapshot,
        "totals": totals,
        "observed": behaviour,
        "steps": _records(steps) if steps is not None else None,
        "limits": _records(limits) if limits is not None else None,
        "tasks": _records(tasks),
        "call_sites": _records(call_sites) if call_sites is not None else None,
        "refused": _records(refused),
    }
    return json.dumps(env, indent=1, default=_default)

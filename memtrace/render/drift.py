"""Rendering of the drift table (memtrace.analyses.drift): rich for people, JSON, markdown."""

from __future__ import annotations

import pandas as pd
from rich.markup import escape
from rich.table import Table

JSON_SCHEMA = "memtrace.drift.json/1"


def _v(v, unit: str) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)):
        return "-"
    return f"{int(v):,}" + (" B" if unit == "bytes" else "")


def drift_table(changes: pd.DataFrame, base: str, new: str) -> Table:
    t = Table(title=f"what changed from {escape(base)} to {escape(new)} (beyond run-to-run noise)")
    for col, j in (("scenario", "left"), ("step", "left"), ("subject", "left"), ("fact", "left"),
                   (base, "right"), (new, "right"), ("change", "left")):
        t.add_column(escape(col), justify=j)
    order = changes.assign(_b=changes["change"].ne("behaviour")).sort_values("_b", kind="stable")
    for r in order.itertuples(index=False):
        t.add_row(escape(r.scenario), escape(r.step), escape(r.subject), escape(r.fact),
                  _v(r.base, r.unit), _v(r.new, r.unit),
                  f"[bold]{r.change}[/bold]" if r.change == "behaviour" else r.change)
    return t


def drift_markdown(changes: pd.DataFrame, base: str, new: str) -> str:
    """A markdown table (behaviour changes first), as README and commit messages carry it."""
    lines = [f"| scenario | step | subject | fact | {base} | {new} | change |", "|---|---|---|---|--:|--:|---|"]
    order = changes.assign(_b=changes["change"].ne("behaviour")).sort_values("_b", kind="stable")
    for r in order.itertuples(index=False):
        lines.append(f"| {r.scenario} | {r.step} | {r.subject} | {r.fact} | {_v(r.base, r.unit)} | "
                     f"{_v(r.new, r.unit)} | {r.change} |")
    return "\n".join(lines)


def drift_json(changes: pd.DataFrame, base: dict, new: dict, scenarios, tolerances: dict) -> dict:
    return {
        "schema": JSON_SCHEMA,
        "base": base,
        "new": new,
        "scenarios": list(scenarios),
        "tolerances": tolerances,
        "changes": [{k: (None if v is None or (isinstance(v, float) and pd.isna(v)) else v)
                     for k, v in r.items()} for r in changes.to_dict("records")],
    }

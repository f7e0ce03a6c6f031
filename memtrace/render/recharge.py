"""Rendering of the recharge report (memtrace.analyses.recharge): rich tables, JSON envelope."""

from __future__ import annotations

import json

import pandas as pd
from rich.markup import escape
from rich.table import Table

from memtrace.render.snapshot import _b, _default, _records, _s

JSON_SCHEMA = "memtrace.report.recharge/1"


def effects_table(summary: dict, steps: pd.DataFrame) -> Table:
    t = Table(title=f"recharge effects: {escape(summary['old'])} (old payer, own charge) -> {escape(summary['new'])} "
                    f"(new generation), steps {escape(summary['from_step'])} .. {escape(summary['to_step'])}")
    for col in ("step", "old own", "new", "combined", "double charge"):
        t.add_column(col, justify="left" if col == "step" else "right")
    for r in steps.itertuples(index=False):
        t.add_row(_s(r.step_name), _b(r.old_own_bytes), _b(r.new_bytes), _b(r.combined_bytes), _b(r.double_charge_bytes))
    return t


def effects_lines(s: dict) -> list[str]:
    lines = [
        f"moved to {s['new']}: {s['moved_to_new']:,} B; released by {s['old']}: {s['released_by_old']:,} B "
        f"(difference {s['stock_batching']:,} B: per-CPU stocks and late frees, not a leak)",
        f"peak double charge at the steps: {s['peak_double_charge']:,} B (at {s['peak_step']})",
        f"left behind on {s['old']} (its own charge at the end): {s['left_behind']:,} B",
    ]
    if s.get("capture_peak_double_charge") is not None:
        lines.append(f"peak double charge in the capture: {s['capture_peak_double_charge']:,} B, "
                     f"more than half the moved bytes above the start for {s['double_charge_s']} s")
    return lines


def whatif_table(per_map: pd.DataFrame) -> Table:
    t = Table(title="what-if: maps that would move")
    for col in ("id", "name", "type", "payer", "common ancestor", "charged", "by kind", "elements", "RFC can move",
                "no mechanism moves", "copy peak", "flags"):
        t.add_column(col, justify="left" if col in ("name", "type", "payer", "common ancestor", "by kind", "flags") else "right")
    for r in per_map.itertuples(index=False):
        kinds = ", ".join(f"{k} {_b(v)}" for k, v in (("slab", r.slab_bytes), ("vmalloc", r.vmalloc_bytes),
                                                        ("pages", r.page_bytes), ("per-CPU", r.percpu_bytes)) if v)
        t.add_row(str(r.map_id), _s(r.name), _s(r.type), _s(r.payer), _s(r.common_ancestor), _b(r.charged_bytes),
                  escape(kinds) or "-", _b(r.element_bytes), _b(r.rfc_movable_bytes), _b(r.unmovable_bytes),
                  _b(r.copy_peak_bytes), _s(r.flags.replace(",", " ")) if r.flags else "")
    return t


def flag_lines(per_map: pd.DataFrame) -> list[str]:
    """The legend of the flags the table shows, and the holders note."""
    from memtrace.analyses.recharge import FLAGS, HOLDERS_NOTE

    used = {f for fl in per_map["flags"] for f in fl.split(",") if f}
    return [f"{code}: {text}" for code, text in FLAGS.items() if code in used] + [HOLDERS_NOTE]


def levels_table(levels: pd.DataFrame, verdict: str) -> Table:
    t = Table(title=f"pre-charge check: {escape(verdict)}")
    for col in ("memcg", "change", "memory.current", "memory.max", "memory.high", "room under max", "room under high", "fits"):
        t.add_column(col, justify="left" if col in ("memcg", "fits") else "right")
    for r in levels.itertuples(index=False):
        t.add_row(_s(r.path) + (" (common ancestor or above: no change)" if r.common_ancestor_or_above else ""),
                  _b(r.change), _b(r.memory_current_bytes), _b(r.memory_max_bytes) if r.memory_max_bytes is not None else "max",
                  _b(r.memory_high_bytes) if r.memory_high_bytes is not None else "max",
                  _b(r.room_under_max) if r.room_under_max is not None else "-",
                  _b(r.room_under_high) if r.room_under_high is not None else "-", "yes" if r.fits else "NO")
    return t


def json_envelope(mode: str, **parts) -> str:
    env = {"schema": JSON_SCHEMA, "mode": mode}
    for k, v in parts.items():
        env[k] = _records(v) if isinstance(v, pd.DataFrame) else v
    return json.dumps(env, indent=1, default=_default)

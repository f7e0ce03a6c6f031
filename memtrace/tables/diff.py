"""The diff table (`memtrace diff`, schema ``memtrace.diff/1``) and what one side of a diff is.

One row per (facet, entity, name, step, metric) found on either side. Values are whole
numbers in the unit the metric's name ends in (``*_bytes``: bytes; ``*_charges``,
``event_count``, ``events_max``: counts). Ids and addresses differ from run to run and are
never keys: memcgs are matched by path, maps by pin, then name, then type, steps by their
marker names (``memtrace.analyses.diff``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from memtrace.tables.events import Column

SCHEMA_ID = "memtrace.diff/1"

#: what an input can hold: the lab's ground truth, a capture (event table), a snapshot
FACETS = ("truth", "capture", "snapshot")

#: The diff table, in column order.
DIFF_COLUMNS: tuple[Column, ...] = (
    Column("facet", "string", "", False, "where the numbers come from: `truth` (truth.json), `capture` (event table), `snapshot`"),
    Column("entity", "string", "", False, "`memcg`, `map`, `event` (an event kind) or `run` (the whole capture)"),
    Column("name", "string", "", False, "the matched key: memcg path; map pin, else name, else `type#k`; event kind (`group:name`); '' for `run`"),
    Column("step", "string", "", False, "step (marker) name, `#k` added to the k-th repeat of a name; '' = the whole input (snapshots, captures without markers)"),
    Column("step_order", "int64", "", False, "the step's position in its run (BASE's, else NEW's): steps sort by it"),
    Column("metric", "string", "", False, "what is compared; its unit is the end of its name (see docs/diff.md)"),
    Column("base", "Int64", "metric", True, "BASE's value; null when BASE has no such row"),
    Column("new", "Int64", "metric", True, "NEW's value; null when NEW has no such row"),
    Column("delta", "Int64", "metric", False, "new - base, a missing side counted as 0"),
    Column("delta_pct", "Float64", "%", True, "100 * delta / |base|; null when base is 0 or missing"),
    Column("status", "string", "", False, "`same`, `changed`, `added` (only in NEW), `removed` (only in BASE)"),
    Column("rule", "string", "", True, "the rule that decided the row (last matching rule), as written; null: none"),
    Column("crossed", "bool", "", False, "the row crosses its rule's limits"),
    Column("watched", "bool", "", False, "a rule with limits applies (false: no rule, or its limits are `off`)"),
    Column("reason", "string", "", True, "why it crossed, e.g. `+70 KiB > 64 KiB and +9.1% > 5%`"),
)

DIFF_COLUMN_NAMES = tuple(c.name for c in DIFF_COLUMNS)

#: The unmatched table: memcgs, maps and steps present on one side only (never dropped).
UNMATCHED_COLUMNS: tuple[Column, ...] = (
    Column("side", "string", "", False, "`base` or `new`: the side that has it"),
    Column("facet", "string", "", False, "facet it was seen in"),
    Column("entity", "string", "", False, "`memcg`, `map` or `step`"),
    Column("name", "string", "", False, "its key on that side (path, pin/name/type#k, step name)"),
    Column("detail", "string", "", False, "what it is on that side (map id, type and name; cgroup id; step index)"),
)


def empty_diff() -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series([], dtype=c.pandas_dtype) for c in DIFF_COLUMNS})


@dataclass
class DiffInput:
    """One side of a diff, loaded: whatever the path held.

    ``kind``: ``capture``, ``lab folder``, ``truth`` (a truth.json alone) or ``snapshot``.
    ``truth``: the lab truth table (``memtrace.tables.lab_truth``) and ``truth_doc`` the parsed
    truth.json (per-step bpftool map lists); ``events``: the event table; ``snapshot``: a
    ``memtrace.tables.snapshot.Snapshot``. ``sources``: the file each facet was read from.
    ``notes``: what was found but not compared (a vmcore without --vmlinux, ...).
    """

    path: str
    kind: str
    truth: pd.DataFrame | None = None
    truth_doc: dict | None = None
    events: pd.DataFrame | None = None
    snapshot: object | None = None
    kernel: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def facets(self) -> tuple[str, ...]:
        have = {"truth": self.truth is not None, "capture": self.events is not None,
                "snapshot": self.snapshot is not None}
        return tuple(f for f in FACETS if have[f])


def diff_markdown_schema() -> str:
    """The diff table as a markdown table, for the docs."""
    lines = ["| column | dtype | meaning |", "|---|---|---|"]
    for c in DIFF_COLUMNS:
        lines.append(f"| `{c.name}` | {c.dtype} | {c.meaning} |")
    return "\n".join(lines) + "\n"


__all__ = ["SCHEMA_ID", "FACETS", "DIFF_COLUMNS", "DIFF_COLUMN_NAMES", "UNMATCHED_COLUMNS", "DiffInput",
           "empty_diff", "diff_markdown_schema"]

"""`memtrace diff` output: a rich table for people, markdown for a GitHub job summary, the JSON
envelope (schema ``memtrace.diff/1``, docs/diff.md). No output here holds a kernel address:
the diff table has none (maps are keyed by pin, name or type; memcgs by path)."""

from __future__ import annotations

import json
import math

import pandas as pd
from rich.markup import escape
from rich.table import Table

from memtrace.tables.diff import SCHEMA_ID

MARK = {"crossed": "✗", "changed": "~", "added": "+", "removed": "-", "same": ""}
#: markdown: plain ASCII/emoji that GitHub renders in a table cell
MD_MARK = {"crossed": "❌", "changed": "~", "added": "+", "removed": "−", "same": ""}


def _num(v) -> str:
    return "" if v is None or (not isinstance(v, str) and pd.isna(v)) else f"{int(v):,}"


def _delta(v) -> str:
    if v is None or pd.isna(v):
        return ""
    v = int(v)
    return f"+{v:,}" if v > 0 else f"{v:,}"


def _pct(v) -> str:
    if v is None or pd.isna(v) or math.isinf(float(v)):
        return ""
    return f"{float(v):+.1f}%"


def _mark(row, marks) -> str:
    return marks["crossed"] if row["crossed"] else marks[row["status"]]


def shown_rows(rows: pd.DataFrame, show_all: bool, limit: int | None) -> tuple[pd.DataFrame, int]:
    """The rows to print (changed first: the table is sorted so) and how many are left out."""
    sel = rows if show_all else rows[rows["crossed"] | rows["status"].ne("same")]
    if limit is not None and len(sel) > limit:
        return sel.iloc[:limit], len(rows) - limit
    return sel, len(rows) - len(sel)


def header_lines(result) -> list[str]:
    def side(label, d):
        k = f", kernel {d['kernel']}" if d.get("kernel") else ""
        return f"{label}: {d['path']} ({d['kind']}: {', '.join(d['facets'])}{k})"

    lines = [side("BASE", result.base), side("NEW", result.new), f"compared: {', '.join(result.compared)}"]
    return lines


def rich_table(result, show_all: bool = False, limit: int | None = None) -> Table:
    rows, left = shown_rows(result.rows, show_all, limit)
    t = Table(title="memtrace diff (✗ crosses its rule, ~ changed, + only in NEW, - only in BASE)", title_justify="left")
    for c, j in (("", "left"), ("facet", "left"), ("entity", "left"), ("name", "left"), ("step", "left"),
                 ("metric", "left"), ("base", "right"), ("new", "right"), ("delta", "right"), ("delta %", "right"),
                 ("rule / why", "left")):
        t.add_column(c, justify=j, overflow="fold")
    for _, r in rows.iterrows():
        why = r["reason"] if r["crossed"] else (r["rule"] if not pd.isna(r["rule"]) else "")
        t.add_row(_mark(r, MARK), r["facet"], r["entity"], escape(str(r["name"])), escape(str(r["step"])),
                  r["metric"], _num(r["base"]), _num(r["new"]), _delta(r["delta"]), _pct(r["delta_pct"]),
                  escape(str(why or "")), style="bold red" if r["crossed"] else None)
    if left:
        t.caption = f"{left:,} unchanged row(s) not shown (--all shows every row)"
    return t


def unmatched_table(result) -> Table | None:
    u = result.unmatched
    if u.empty:
        return None
    t = Table(title="unmatched (on one side only)", title_justify="left")
    for c in ("side", "facet", "entity", "name", "detail"):
        t.add_column(c)
    for r in u.itertuples(index=False):
        t.add_row(r.side, r.facet, r.entity, escape(str(r.name)), escape(str(r.detail)))
    return t


def _md(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown(result, show_all: bool = False, limit: int | None = 100) -> str:
    """A GitHub job summary: a one-line verdict, the table (changed rows first), what is unmatched."""
    rows, left = shown_rows(result.rows, show_all, limit)
    icon = "✅" if result.passed else "❌"
    out = [f"### {icon} memtrace diff: {_md(result.verdict())}", ""]
    out += [f"- {_md(line)}" for line in header_lines(result)]
    out.append("")
    if len(rows):
        out += ["| | facet | entity | name | step | metric | base | new | delta | delta % | rule / why |",
                "|---|---|---|---|---|---|--:|--:|--:|--:|---|"]
        for _, r in rows.iterrows():
            why = r["reason"] if r["crossed"] else (r["rule"] if not pd.isna(r["rule"]) else "")
            out.append("| " + " | ".join(_md(x) for x in (
                _mark(r, MD_MARK), r["facet"], r["entity"], f"`{r['name']}`" if r["name"] else "", r["step"],
                r["metric"], _num(r["base"]), _num(r["new"]), _delta(r["delta"]), _pct(r["delta_pct"]), why or "")) + " |")
    else:
        out.append("No row changed.")
    if left:
        out += ["", f"{left:,} row(s) not shown (unchanged rows: `--all`; more rows: `--max-rows N`)."]
    if not result.unmatched.empty:
        out += ["", "**Unmatched** (on one side only):", ""]
        out += [f"- {r.side}: {r.entity} `{_md(r.name)}` ({_md(r.detail)}; {r.facet})" for r in result.unmatched.itertuples(index=False)]
    if result.notes:
        out += ["", "<details><summary>notes</summary>", ""] + [f"- {_md(n)}" for n in result.notes] + ["", "</details>"]
    return "\n".join(out) + "\n"


def _records(df: pd.DataFrame) -> list[dict]:
    recs = []
    for row in df.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if v is None or (not isinstance(v, (str, bool, list, dict)) and pd.isna(v)):
                clean[k] = None
            elif hasattr(v, "item"):
                clean[k] = v.item()
            else:
                clean[k] = v
        recs.append(clean)
    return recs


def json_envelope(result) -> str:
    doc = {
        "schema": SCHEMA_ID,
        "base": result.base,
        "new": result.new,
        "compared": result.compared,
        "left_out": result.left_out,
        "verdict": {"passed": result.passed, "line": result.verdict(), **result.counts()},
        "rules": result.rules,
        "rows": _records(result.rows),
        "unmatched": _records(result.unmatched),
        "maps": _records(result.maps),
        "notes": result.notes,
    }
    return json.dumps(doc, indent=1)

"""`memtrace ingest TRACE`: load a capture into the event table; summary on stdout, parquet with -o."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from memtrace.cli.app import app, err, out
from memtrace.tables.atomic import write_parquet


def summary(df, st) -> dict:
    from memtrace.tables.events import SCHEMA_ID

    counts = df["event"].value_counts(sort=True)
    by_event = []
    for ev, n in counts.items():
        if n == 0:
            continue
        sub = df[df["event"] == ev]
        b = sub["bytes"]
        by_event.append({"event": str(ev), "count": int(n), "bytes": int(b.sum()) if b.notna().any() else None})
    return {"schema": SCHEMA_ID, "ingest": st.to_dict(), "events": by_event}


@app.command("ingest")
def ingest_cmd(
    trace: Path = typer.Argument(
        ..., metavar="TRACE",
        help="Capture: ftrace text (trace / trace_pipe), trace-cmd report text, trace.dat, or a perfetto trace."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", metavar="FILE.parquet", help="Write the event table to this Parquet file (atomically)."),
    json_out: bool = typer.Option(
        False, "--json", help="Print a JSON envelope (schema memtrace.events/1: ingest counts, events per kind) instead of a table."),
) -> None:
    """Load a trace capture into memtrace's event table and summarise it.

    Example: memtrace ingest out/restart/trace.txt -o restart.parquet
    """
    from memtrace.sources.trace import load_trace

    df, st = load_trace(str(trace))
    for w in st.warnings or []:
        err.print(f"memtrace: warning: {w}", markup=False)
    s = summary(df, st)
    if output is not None:
        write_parquet(df, output, s["ingest"], meta_key="memtrace.ingest")
        err.print(f"memtrace: wrote {len(df)} events to {output}", markup=False)
    if json_out:
        out.print_json(json.dumps(s))
        return
    i = s["ingest"]
    t = Table(title=escape(f"{trace} ({i['format']})"))
    t.add_column("event")
    t.add_column("count", justify="right")
    t.add_column("bytes", justify="right")
    for r in s["events"]:
        t.add_row(escape(r["event"]), str(r["count"]), "" if r["bytes"] is None else str(r["bytes"]))
    t.add_section()
    t.add_row("events parsed", str(i["events_parsed"]), "")
    t.add_row("unknown events", str(i["unknown_events"]), "")
    t.add_row("malformed (dropped)", str(i["malformed"]), "")
    t.add_row("lost events", str(i["lost_events"]) + (f" (+{i['lost_event_flags']} flagged)" if i["lost_event_flags"] else ""), "")
    t.add_row("lines / packets read", f"{i['lines_read']} / {i['packets_read']}", "")
    out.print(t)

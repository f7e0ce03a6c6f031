"""memtrace export: a capture as a perfetto trace (docs/export.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from memtrace.cli.app import app, err, out, required_output


@app.command("export")
def export_cmd(
    capture: Path = typer.Argument(..., metavar="CAPTURE", help="A capture made with memtrace's probes (any format 'memtrace ingest' reads)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", metavar="FILE.pftrace", help="The perfetto trace to write (replaced atomically)."),
    truth: Optional[Path] = typer.Option(None, "--truth", metavar="FILE", help="truth.json of the same lab run: memcg paths, and each memcg's counter anchored at its memory.current at the first step."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary envelope (schema memtrace.export/1)."),
) -> None:
    """A perfetto trace of the capture, for ui.perfetto.dev: each memcg's charged bytes over time, forced and refused charges, the lab's steps, BPF map events.

    Per memcg a counter track in bytes (one shared y axis) built from the capture's page_counter movements, counting like memory.current: the memcg and its descendants. With --truth each track starts at the memcg's memory.current at the first step marker; without it tracks start at 0 and are named "change since capture start". Forced and refused charges are instant events with memcg, pages, map id (when the event carries one), comm, pid and gfp; each lab step is a slice from the previous marker to its own; each map id the events carry gets a track of its own.

    Example: memtrace export out/force/trace.txt --truth out/force/truth.json -o force.pftrace
    """
    from memtrace.analyses import timeline as tl
    from memtrace.render import perfetto_export as render
    from memtrace.sources.trace import load_trace
    from memtrace.tables.lab_truth import load_truth

    import pandas as pd

    dest = Path(required_output(output, None, "FILE.pftrace"))
    events, _ = load_trace(str(capture))
    tt = load_truth(truth) if truth is not None else None
    if tt is not None:
        from memtrace.analyses.force import check_same_run

        check_same_run(events, tt, str(capture), str(truth))
    series, tracks = tl.memcg_counters(events, tt)
    path_of = {int(c): str(p) for c, p in zip(tracks["cgroup_id"], tracks["path"]) if not pd.isna(p)}
    instants = tl.charge_instants(events, path_of, tracks.attrs.get("forced"))
    slices = tl.step_slices(events)
    maps = tl.map_events(events)
    notes = _notes(tt, tracks, instants, slices, maps, series.attrs)
    counts = render.write_trace(dest, series, tracks, instants, slices, maps, tl.capture_span(events)[0])
    for n in notes:
        err.print(f"memtrace: note: {n}", markup=False)
    if json_out:
        out.print(render.json_envelope(str(capture), str(truth) if truth else None, str(dest), counts, tracks, notes),
                  markup=False, soft_wrap=True)
    else:
        err.print(f"wrote {dest}: {counts['tracks']} tracks, {counts['counters']:,} counter values, "
                  f"{counts['instants']:,} forced/refused instants, {counts['slices']} step slices, "
                  f"{counts['maps']} map tracks", markup=False)


def _notes(tt, tracks, instants, slices, maps, attrs) -> list[str]:
    import pandas as pd

    notes = []
    if tt is None:
        notes.append("no --truth: every memcg track starts at 0 at the capture's start (change since capture start)")
    unanchored = [f"cgroup {int(c)}" if pd.isna(p) else str(p)
                  for c, p, a in zip(tracks["cgroup_id"], tracks["path"], tracks["anchor"]) if a == "capture start"]
    if tt is not None and unanchored:
        notes.append(f"no memory.current in the truth for {', '.join(unanchored)}: "
                     "their tracks show the change since capture start")
    own = [f"cgroup {int(c)}" for c, h in zip(tracks["cgroup_id"], tracks["hierarchy"]) if h != "with descendants"]
    if own:
        notes.append(f"no path known for {', '.join(own)} (give --truth): their tracks count only the movements "
                     "on their own counter, not their descendants'")
    if not instants.attrs.get("refusals_recorded"):
        notes.append("the capture has no try_charge/try_charge_ret events: refused charges are not in the trace "
                     "(record them: memtrace probes --format kprobe_events)")
    if slices.empty:
        notes.append("the capture has no lab step markers: no steps track")
    if maps.empty:
        notes.append("no event in the capture carries a BPF map id: no map tracks (forced and refused charges "
                     "carry none; the bpf_map_* allocation probes do)")
    for k in ("unpaired_entries", "unpaired_returns", "movements_without_cgroup"):
        if attrs.get(k):
            notes.append(f"{attrs[k]} page_counter movements {k.replace('_', ' ')}: not on the counter tracks"
                         if k == "movements_without_cgroup" else f"page_counter_try_charge {k.replace('_', ' ')}: {attrs[k]}")
    return notes

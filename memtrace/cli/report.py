"""memtrace report: the answers (leftover charge, ...), from snapshots and captures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from memtrace.cli.app import app, err, out
from memtrace.cli.snapshot import FROM_FILE, LIVE, PLOT, QMP, REDACT, VMCORE, VMLINUX
from memtrace.errors import EXIT_FINDING, EXIT_INCOMPLETE

report_app = typer.Typer(help="Reports: leftover BPF charge and who pays for it.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("leftover")
def leftover_cmd(
    live: bool = LIVE,
    vmcore: Optional[Path] = VMCORE,
    qmp: Optional[Path] = QMP,
    from_file: Optional[Path] = FROM_FILE,
    vmlinux: Optional[Path] = VMLINUX,
    cgroup: Optional[str] = typer.Option(None, "--cgroup", metavar="CGROUP", help="List everything BPF charged to this memcg (path, e.g. /pod)."),
    map_sel: Optional[str] = typer.Option(None, "--map", metavar="ID|NAME|PIN", help="Show one map: its id, name or bpffs pin."),
    fail_over: Optional[str] = typer.Option(
        None, "--fail-over", metavar="BYTES|N%",
        help="Exit 1 when the leftover charge is over BYTES in all (suffix K/M/G for KiB/MiB/GiB), or over N% of some memcg's own usage.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON envelope (schema memtrace.report.leftover/1; holds no kernel addresses)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", metavar="FILE.parquet", help="Write the per-map table as Parquet."),
    plot: Optional[Path] = PLOT,
    redact: bool = REDACT,
) -> None:
    """Maps whose charge outlived their generation (owner ghost, dying or reparented), who pays for it now, and what each memcg carries.

    Per map: the owner memcg's state, the memcg charged now, the original cgroup where the kernel still records it, bytes charged per memcg and uncharged, and the seed RFC's recharge rule (memcg_need_recharge: never from root, only offline or reparented owners). Per memcg: memory.current, its own part (less its children's), the BPF bytes charged to it split by the owner state of the map, the leftover share, and the leftover in its subtree.

    Example: memtrace report leftover --vmcore out/restart/vmcore --vmlinux VMLINUX --fail-over 1M
    """
    from memtrace.analyses.leftover import (
        charged_per_map_memcg,
        leftover_maps,
        leftover_memcgs,
        parse_fail_over,
        threshold_crossed,
    )
    from memtrace.cli.snapshot import snapshot_from_options
    from memtrace.errors import InputError
    from memtrace.render import leftover as render

    try:
        fail_over = parse_fail_over(fail_over)
    except ValueError as e:
        raise InputError(str(e)) from None
    _check_plot(plot)
    snap = snapshot_from_options(live=live, vmcore=vmcore, qmp=qmp, from_file=from_file, vmlinux=vmlinux, redact=redact)
    _say_notes(snap)
    per = charged_per_map_memcg(snap.allocations)
    maps = leftover_maps(snap.maps, snap.allocations, snap.memcgs, per)
    memcgs = leftover_memcgs(snap.maps, snap.allocations, snap.memcgs, per)
    charged_here = None
    if cgroup is not None:
        if cgroup not in set(memcgs["path"].astype(str)):
            raise InputError(f"--cgroup {cgroup!r}: no such memcg in the snapshot; it has: "
                             + ", ".join(sorted(set(memcgs["path"].astype(str)))))
        charged_here = _charged_to(snap, cgroup)
        memcgs = memcgs[memcgs["path"].eq(cgroup)]
        maps = maps[maps["map_id"].isin(charged_here["map_id"]) | maps["owner_path"].eq(cgroup).fillna(False)]
    if map_sel is not None:
        maps = maps[_select_map(maps, map_sel)]
    finding = threshold_crossed(memcgs, fail_over)
    if plot is not None:
        from memtrace.render.plots import plot_owner_states

        plot_owner_states(memcgs, plot, f"BPF map charge per memcg, by the owner state of the map ({snap.header.get('kernel', {}).get('release')})")
        err.print(f"wrote {plot}", markup=False)
    if output is not None:
        from memtrace.tables.atomic import write_parquet

        write_parquet(maps, output)
        err.print(f"wrote {output}", markup=False)
    if json_out:
        out.print(render.json_envelope(snap.header, maps, memcgs, finding, charged_here), markup=False, soft_wrap=True)
    else:
        k = snap.header.get("kernel", {})
        out.print(render.maps_table(maps if map_sel else maps[maps["leftover"] | maps["owner_state"].eq("online")],
                                    f"BPF maps and their charge on {k.get('release')}"))
        if charged_here is not None:
            out.print(render.charged_here_table(charged_here, cgroup))
        if map_sel is None:
            out.print(render.memcgs_table(memcgs))
            where = render.where_table(memcgs)
            if where is not None:
                out.print(where)
            for line in render.summary_lines(maps, memcgs):
                out.print(line, markup=False)
    if finding:
        err.print(f"memtrace: finding: {finding}", markup=False)
    if not snap.header.get("complete", True):
        raise typer.Exit(EXIT_INCOMPLETE)
    if finding:
        raise typer.Exit(EXIT_FINDING)


def _check_plot(plot, needs: str | None = None) -> None:
    """A bad --plot (suffix, folder) is a one-line error before any work."""
    if plot is None:
        return
    from memtrace.errors import InputError
    from memtrace.render.plots import check_plot_path

    check_plot_path(plot)
    if needs:
        raise InputError(f"--plot needs {needs}")


def _say_notes(snap) -> None:
    """The snapshot's own notes (faults, columns an older file lacks) on stderr, as snapshot says them."""
    for n in snap.header.get("notes", []):
        err.print(f"memtrace: note: {n}", markup=False)


def _select_map(maps, sel: str):
    from memtrace.errors import InputError

    hit = maps["name"].eq(sel) | maps["pins"].str.split(";").apply(lambda ps: sel in ps)
    if sel.isdigit():
        hit |= maps["map_id"].eq(int(sel))
    if not hit.any():
        raise InputError(f"--map {sel!r}: no map with that id, name or pin; maps: "
                         + ", ".join(f"{i} {n}" for i, n in zip(maps["map_id"], maps["name"])))
    return hit


def _charged_to(snap, path: str):
    """Allocations charged to the memcg at ``path``, per map and kind."""
    ids = set(snap.memcgs.loc[snap.memcgs["path"].eq(path), "cgroup_id"].astype("int64"))
    a = snap.allocations[snap.allocations["charged_cgroup_id"].isin(ids)]
    g = a.groupby(["map_id", "kind"]).agg(allocations=("address", "size"), charged_bytes=("charged_bytes", "sum")).reset_index()
    return g.merge(snap.maps[["map_id", "name", "owner_state", "owner_path"]], on="map_id", how="left")


@report_app.command("force")
def force_cmd(
    capture: Path = typer.Argument(..., metavar="CAPTURE", help="A capture made with memtrace's probes (any format 'memtrace ingest' reads)."),
    truth: Optional[Path] = typer.Option(None, "--truth", metavar="FILE", help="truth.json of the same lab run (paths, limits, memory.events, steps)."),
    snapshot: Optional[Path] = typer.Option(None, "--snapshot", metavar="FILE", help="A snapshot file of the same host and boot (memtrace snapshot -o): paths and limits (memory.max, memory.high, memory.current, memory.events max) at that moment."),
    fail_over: Optional[int] = typer.Option(None, "--fail-over", metavar="PAGES", min=0, help="Exit 1 when more than PAGES pages were forced above a limit, or any charge was refused and PAGES is 0."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON envelope (schema memtrace.report.force/1)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", metavar="FILE.parquet", help="Write the per-task table as Parquet."),
    plot: Optional[Path] = PLOT,
) -> None:
    """Charges admitted above memory.max (forced) and charges refused at it (ENOMEM).

    Forced: page_counter_charge from try_charge_memcg's force path, per memcg, task and step, with the pages above memory.max at each step and at the peak inside it. Refused: try_charge_memcg calls that returned -ENOMEM, per memcg, gfp and size; they reach user space as ENOMEM. With --truth, whether this kernel raised memory.events max for them is read from the run's own counters and stated.

    With --snapshot (a snapshot file of the same host and boot), each memcg's forced and refused charges are set against its limits at the snapshot.

    Example: memtrace report force out/force/trace.txt --truth out/force/truth.json

    Example: memtrace report force capture.txt --snapshot host.snapshot
    """
    from memtrace.analyses import force as fa
    from memtrace.analyses.charges import stream_charge_tables
    from memtrace.render import force as render
    from memtrace.sources.trace import iter_trace
    from memtrace.tables.lab_truth import load_truth

    _check_plot(plot, None if truth is not None else "--truth (memory.current per step)")
    tt = load_truth(truth) if truth is not None else None
    # read in frames: only the charge tables are kept (a real host's capture outgrows memory)
    events = stream_charge_tables(iter_trace(str(capture)))
    forced = fa.forced_charges(events)
    refusals = fa.has_refusal_probes(events)
    # without the try_charge probes: no rows, the columns of charge_attempts
    refused = fa.refused_charges(events) if refusals else events.attempts.iloc[:0]
    path_of = {}
    steps = limits = None
    behaviour: list[str] = []
    if snapshot is not None:
        from memtrace.tables.snapshot_file import load as load_snapshot

        snap = load_snapshot(snapshot)
        path_of = dict(zip(snap.memcgs["cgroup_id"].astype("int64"), snap.memcgs["path"].astype(str)))
    if tt is not None:
        fa.check_same_run(events, tt, str(capture), str(truth))
        path_of = dict(zip(tt["cgroup_id"].astype("int64"), tt["path"].astype(str)))
        steps = fa.per_step(events, tt)
        behaviour = fa.observed_behaviour(steps)
    if not refusals:
        err.print("memtrace: warning: the capture has no try_charge/try_charge_ret events: refused charges are not "
                  "counted (record them: memtrace probes --format kprobe_events)", markup=False)
    if snapshot is not None:
        fa.check_same_host(forced, refused, snap.memcgs, str(capture), str(snapshot))
        limits = fa.per_memcg_limits(forced, refused, snap.memcgs)
    tasks = fa.by_task(forced, refused, path_of)
    sites = fa.by_call_site(forced, refused, path_of)
    by_gfp = fa.refused_by_gfp(refused, path_of)
    totals = {"forcing_calls": int(len(forced)), "forced_pages": int(forced["pages"].sum()) if len(forced) else 0,
              "refused_calls": int(len(refused)) if refusals else None}
    finding = None
    if fail_over is not None:
        if totals["forced_pages"] > fail_over:
            finding = f"{totals['forced_pages']:,} pages forced above memory.max (over {fail_over:,})"
        elif fail_over == 0 and refusals and totals["refused_calls"]:
            finding = f"{totals['refused_calls']:,} charges refused at memory.max"
    if output is not None:
        from memtrace.tables.atomic import write_parquet

        write_parquet(tasks, output)
        err.print(f"wrote {output}", markup=False)
    if plot is not None:
        from memtrace.render.plots import plot_force

        plot_force(steps, tt, plot, f"forced and refused charges: {capture.name}")
        err.print(f"wrote {plot}", markup=False)
    if json_out:
        out.print(render.json_envelope(str(capture), str(truth) if truth else None, dict(totals, finding=finding),
                                       steps, tasks, by_gfp, behaviour, str(snapshot) if snapshot else None, limits,
                                       sites),
                  markup=False, soft_wrap=True)
    else:
        if steps is not None:
            out.print(render.steps_table(steps))
        if limits is not None:
            out.print(render.limits_table(limits, str(snapshot)))
        out.print(render.tasks_table(tasks))
        if len(sites):
            out.print(render.call_sites_table(sites))
        if refusals:
            out.print(render.refused_table(by_gfp))
        out.print(f"{totals['forcing_calls']:,} forcing calls, {totals['forced_pages']:,} pages forced; "
                  f"{'-' if totals['refused_calls'] is None else format(totals['refused_calls'], ',')} charges refused",
                  markup=False)
        for line in behaviour:
            out.print(line, markup=False)
    if finding:
        err.print(f"memtrace: finding: {finding}", markup=False)
        raise typer.Exit(EXIT_FINDING)


@report_app.command("recharge")
def recharge_cmd(
    capture: Optional[Path] = typer.Argument(None, metavar="[CAPTURE]", help="Effects: the run's capture (memtrace's probes), for the peak inside steps and its duration."),
    truth: Optional[Path] = typer.Option(None, "--truth", metavar="FILE", help="Effects: truth.json of the lab run."),
    old: Optional[str] = typer.Option(None, "--old", metavar="CGROUP", help="Effects: the old payer (the owner, or the ancestor its charge was reparented to)."),
    new: Optional[str] = typer.Option(None, "--new", metavar="CGROUP", help="Effects: the new generation."),
    from_step: Optional[str] = typer.Option(None, "--from-step", metavar="STEP", help="Effects: first step (default: the first the new generation exists in)."),
    to_step: Optional[str] = typer.Option(None, "--to-step", metavar="STEP", help="Effects: last step (default: the last)."),
    to: Optional[str] = typer.Option(None, "--to", metavar="CGROUP", help="What-if: the memcg the maps would move to."),
    map_ids: Optional[list[int]] = typer.Option(None, "--map", metavar="ID", help="What-if: these maps (repeatable; default: the RFC rule's candidates)."),
    live: bool = LIVE,
    vmcore: Optional[Path] = VMCORE,
    qmp: Optional[Path] = QMP,
    from_file: Optional[Path] = FROM_FILE,
    vmlinux: Optional[Path] = VMLINUX,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON envelope (schema memtrace.report.recharge/1)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", metavar="FILE.parquet", help="Write the per-step (effects) or per-map (what-if) table as Parquet."),
    plot: Optional[Path] = PLOT,
    redact: bool = REDACT,
) -> None:
    """What a recharge did (effects: --truth, --old, --new, optional CAPTURE) or would do (what-if: --to CGROUP and a snapshot source).

    Effects: bytes moved to the new generation, released by the old payer, left behind, and the peak double charge at the steps and (with the capture) inside them, with how long it lasted. What-if: per map the bytes by kind, what the RFC's patches could move and what no mechanism moves, the copy's transient peak, the pre-charge check up to the common ancestor ("fits" or "fails at /pod by N B"), and the reviewers' objections as flags. Exit 1 when the what-if does not fit.

    Example: memtrace report recharge out/trace.txt --truth out/truth.json --old /pod --new /pod/gen2

    Example: memtrace report recharge --to /pod/gen2 --vmcore out/vmcore
    """
    from memtrace.analyses import recharge as ra
    from memtrace.errors import InputError
    from memtrace.render import recharge as render
    from memtrace.tables.atomic import write_parquet

    _check_plot(plot)
    if to is not None:
        if truth or old or new or capture:
            raise InputError("--to (what-if) takes a snapshot source, not CAPTURE/--truth/--old/--new (effects)")
        from memtrace.cli.snapshot import snapshot_from_options

        snap = snapshot_from_options(live=live, vmcore=vmcore, qmp=qmp, from_file=from_file, vmlinux=vmlinux, redact=redact)
        _say_notes(snap)
        per_map, levels = ra.what_if(snap.maps, snap.allocations, snap.memcgs, to, map_ids or None)
        v = ra.verdict(levels)
        if output is not None:
            write_parquet(per_map, output)
        if plot is not None:
            from memtrace.render.plots import plot_recharge_whatif

            plot_recharge_whatif(levels, v, plot)
            err.print(f"wrote {plot}", markup=False)
        if json_out:
            out.print(render.json_envelope("what-if", to=to, verdict=v, maps=per_map, levels=levels,
                                           total_bytes=int(per_map["charged_bytes"].sum()), flags=ra.FLAGS,
                                           holders=ra.HOLDERS_NOTE), markup=False, soft_wrap=True)
        else:
            out.print(render.whatif_table(per_map))
            for line in render.flag_lines(per_map):
                out.print(line, markup=False)
            out.print(render.levels_table(levels, v))
            out.print(f"would move {int(per_map['charged_bytes'].sum()):,} B in {len(per_map)} map(s) to {to}: {v}", markup=False)
        if v.startswith("fails"):
            raise typer.Exit(EXIT_FINDING)
        return
    if truth is None or old is None or new is None:
        raise InputError("effects need --truth FILE --old CGROUP --new CGROUP (and optionally CAPTURE); a what-if needs --to CGROUP")
    from memtrace.tables.lab_truth import load_truth

    tt = load_truth(truth)
    events = None
    if capture is not None:
        from memtrace.analyses.charges import stream_charge_tables
        from memtrace.analyses.force import check_same_run
        from memtrace.sources.trace import iter_trace

        events = stream_charge_tables(iter_trace(str(capture)))
        check_same_run(events, tt, str(capture), str(truth))
    summary, steps = ra.effects(tt, old, new, events, from_step, to_step)
    if output is not None:
        write_parquet(steps, output)
    if plot is not None:
        from memtrace.render.plots import plot_recharge_effects

        plot_recharge_effects(summary, steps, plot)
        err.print(f"wrote {plot}", markup=False)
    if json_out:
        out.print(render.json_envelope("effects", summary=summary, steps=steps), markup=False, soft_wrap=True)
    else:
        out.print(render.effects_table(summary, steps))
        for line in render.effects_lines(summary):
            out.print(line, markup=False)

"""memtrace snapshot: BPF maps, their owner memcgs, and their memory charged object by object."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from memtrace.cli.app import app, err, out
from memtrace.errors import EXIT_INCOMPLETE


#: The snapshot source options: one definition for `snapshot` and every report that reads a
#: snapshot (exactly one of --live, --vmcore, --qmp, --from; see snapshot_from_options).
LIVE = typer.Option(False, "--live", help="Read the running kernel through /proc/kcore (root).")
VMCORE = typer.Option(None, "--vmcore", metavar="FILE", help="Read an ELF vmcore.")
QMP = typer.Option(None, "--qmp", metavar="SOCKET", help="Read a running QEMU guest through its QMP socket.")
FROM_FILE = typer.Option(None, "--from", metavar="FILE", help="Load a snapshot file written by 'memtrace snapshot -o' instead of a kernel.")
VMLINUX = typer.Option(None, "--vmlinux", metavar="FILE", help="vmlinux with debug info (checked against the kernel's build id); default: drgn's search.")
#: --plot, on snapshot and every report (memtrace.render.plots; docs/plots.md)
PLOT = typer.Option(None, "--plot", metavar="FILE.png|FILE.svg", help="Also draw the result as a PNG or SVG picture (docs/plots.md).")
#: --redact, on snapshot and every report that reads a snapshot (memtrace.tables.redact; docs/redact.md)
REDACT = typer.Option(False, "--redact", help="Replace every kernel address (they reveal the KASLR base) by a stable token kaddr-N, the same address the same token, in the JSON and the -o file (docs/redact.md).")


@app.command("snapshot")
def snapshot_cmd(
    live: bool = LIVE,
    vmcore: Optional[Path] = VMCORE,
    qmp: Optional[Path] = QMP,
    from_file: Optional[Path] = FROM_FILE,
    vmlinux: Optional[Path] = VMLINUX,
    json_out: bool = typer.Option(
        False, "--json", help="Print a JSON envelope (schema memtrace.snapshot.json/1: maps, memcgs, allocation summary) on stdout."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", metavar="FILE", help="Write the snapshot file (zip: header.json + Parquet tables)."),
    plot: Optional[Path] = PLOT,
    redact: bool = REDACT,
) -> None:
    """Every BPF map, its owner memcg and that memcg's state, and its memory attributed page by page and object by object to the memcgs actually charged.

    The JSON holds raw kernel addresses (they reveal the KASLR base); --redact replaces them with stable tokens.

    Exit status: 0 ok (also when there are no BPF maps: a note goes to stderr), 2 bad input (missing or mismatched vmlinux, truncated vmcore), 3 environment (not root for --live, QMP socket refused), 5 the walk was incomplete (faults on a live kernel).

    Example: memtrace snapshot --vmcore out/restart/vmcore --vmlinux VMLINUX -o restart.snapshot
    """
    from memtrace.errors import InputError
    from memtrace.render.snapshot import json_envelope, maps_table, memcgs_table

    if plot is not None:
        from memtrace.render.plots import check_plot_path

        check_plot_path(plot)
    snap = snapshot_from_options(live=live, vmcore=vmcore, qmp=qmp, from_file=from_file, vmlinux=vmlinux, redact=redact)
    if output is not None:
        from memtrace.tables.snapshot_file import save

        try:
            save(snap, output)
        except OSError as e:
            raise InputError(f"{output}: cannot write: {e.strerror}") from None
        err.print(f"wrote {output}", markup=False)
    if plot is not None:
        from memtrace.render.plots import plot_snapshot

        plot_snapshot(snap, plot)
        err.print(f"wrote {plot}", markup=False)
    h = snap.header
    if snap.maps.empty:
        err.print("memtrace: note: the kernel has no BPF maps", markup=False)
    if h.get("faults"):
        err.print(f"memtrace: warning: {h['faults']} faults while reading a live kernel; results are incomplete", markup=False)
    for n in h.get("notes", []):
        err.print(f"memtrace: note: {n}", markup=False)
    if json_out:
        from memtrace.tables.redact import for_json

        out.print(json_envelope(for_json(snap)), markup=False, highlight=False, soft_wrap=True)
    else:
        out.print(maps_table(snap))
        out.print(memcgs_table(snap))
        err.print(
            f"{len(snap.maps)} maps, {len(snap.allocations):,} allocations, {len(snap.memcgs)} memcgs; "
            f"walk {h.get('walk_s')} s; faults {h.get('faults', 0)}",
            markup=False,
        )
    if not h.get("complete", True):
        raise typer.Exit(EXIT_INCOMPLETE)


def snapshot_from_options(*, live, vmcore, qmp, from_file, vmlinux, redact=False):
    """The snapshot the source options name (exactly one of them): a kernel walked now, or a
    snapshot file. Shared by ``snapshot`` and every report that takes a snapshot source.
    ``redact``: its kernel addresses replaced by tokens (memtrace.tables.redact)."""
    from memtrace.errors import InputError

    chosen = [n for n, v in (("--live", live), ("--vmcore", vmcore), ("--qmp", qmp), ("--from", from_file)) if v]
    if len(chosen) != 1:
        raise InputError("choose exactly one of --live, --vmcore FILE, --qmp SOCKET, --from FILE" + (f" (got {' '.join(chosen)})" if chosen else ""))
    if from_file is not None:
        from memtrace.tables.snapshot_file import load

        snap = load(from_file)
    else:
        snap = _take(live=live, vmcore=vmcore, qmp=qmp, vmlinux=vmlinux)
    if redact:
        from memtrace.tables.redact import redact as redact_snapshot

        snap = redact_snapshot(snap)
    return snap


def _take(*, live, vmcore, qmp, vmlinux):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from memtrace.sources.snapshot import open_target, take_snapshot

    prog, target = open_target(live=live, vmcore=vmcore, qmp=qmp, vmlinux=vmlinux)
    with Progress(
        TextColumn("[dim]snapshot:[/dim] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("opening", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total or None)

        return take_snapshot(prog, target, progress=progress)

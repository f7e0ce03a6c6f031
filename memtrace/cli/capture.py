"""memtrace capture: record memtrace's probes on this host into an ftrace text file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from memtrace.cli.app import OUT_ALIAS, app, err, out, required_output


@app.command("capture")
def capture_cmd(
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", metavar="FILE",
        help="ftrace text file to write, atomically: temp + rename (required).",
    ),
    out_alias: Optional[Path] = OUT_ALIAS,
    duration: Optional[float] = typer.Option(
        None, "--duration", "-d", metavar="SECONDS", help="Seconds to record (default: until Ctrl-C/SIGTERM).", min=0),
    tracefs: Optional[Path] = typer.Option(None, "--tracefs", metavar="DIR", help="tracefs mount point (default: from /proc/mounts)."),
    buffer_kb: int = typer.Option(16384, "--buffer-kb", metavar="KIB", help="Per-CPU ring buffer size in KiB.", min=64),
    all_probes: bool = typer.Option(False, "--all", help="Include probes marked default=false."),
    only: Optional[List[str]] = typer.Option(None, "--only", metavar="PROBE", help="Only these probe names (repeatable)."),
    defs: Optional[List[Path]] = typer.Option(
        None, "--defs", metavar="FILE", help="Probe definition TOML files (repeatable; default: probes/*.toml)."),
    no_instance: bool = typer.Option(False, "--no-instance", help="Record in the top-level buffer instead of a tracefs instance."),
    json_out: bool = typer.Option(
        False, "--json", help="Print a JSON envelope of the capture (schema memtrace.capture/1) on stdout."),
    maxactive: Optional[int] = typer.Option(
        None, "--maxactive", metavar="N", min=1, max=4096,
        help="Instances per kretprobe: calls that may be in flight at once before returns are missed "
        "(default: the kernel's, max(10, 2 x CPUs)). Raise it when the capture reports missed hits of a *_ret probe.",
    ),
    allow_partial: bool = typer.Option(
        False, "--allow-partial",
        help="Exit 0 even when the capture is incomplete (probes skipped or refused, tracepoints not enabled, "
        "events lost, probe hits missed); the warnings and counts are reported all the same.",
    ),
) -> None:
    """Install memtrace's kprobes (for the running kernel), enable its tracepoints, record, and remove everything it created on any exit. Needs root and a mounted tracefs.

    The file is written whenever recording ran. Exit 5 when it is incomplete: a probe skipped or refused, a tracepoint not enabled, events lost (ring buffer) or probe hits missed (kprobe_profile: a kretprobe's maxactive exhausted); --allow-partial makes that 0. Exit 3 when cleanup failed (something this capture created is still defined).

    Example: memtrace capture -o out/capture.txt --duration 30
    """
    output = required_output(output, out_alias, "FILE")
    from memtrace.sources.kernel.target import find_tracefs, live_target
    from memtrace.sources.trace import capture, probedefs

    root = find_tracefs(tracefs)
    capture.check_access(root)
    target = live_target(root)
    ps = probedefs.generate(target, probedefs.load_definitions(defs or None), include_all=all_probes, only=only)
    for p in ps.skipped:
        err.print(f"memtrace: skipped probe {p.event}: {p.skipped}", markup=False)
    cap = capture.Capture(
        root, ps, output, duration=duration, buffer_kb=buffer_kb, use_instance=not no_instance,
        progress=lambda m: err.print(f"capture: {m}", markup=False), maxactive=maxactive,
    )
    res = cap.run()
    for f in res.probes_failed:
        err.print(f"memtrace: warning: probe {f['probe']} not installed: {f['error']}", markup=False)
    for f in res.tracepoints_failed:
        err.print(f"memtrace: warning: tracepoint {f['event']} not enabled: {f['error']}", markup=False)
    for c in res.cleanup_errors:
        err.print(f"memtrace: error: cleanup: {c}", markup=False)
    for t in res.tracepoints_missing:
        err.print(f"memtrace: warning: tracepoint {t} does not exist on this kernel", markup=False)
    if res.lost_total:
        err.print(f"memtrace: warning: {res.lost_total} events lost (ring buffer overrun); use --buffer-kb", markup=False)
    if res.misses_total:
        err.print(
            f"memtrace: warning: {res.misses_total} probe hits missed, no event recorded "
            f"(kprobe_profile: {capture.misses_text(res.misses)}); for a kretprobe "
            "this means all its maxactive instances were in use (raise --maxactive), for a kprobe that it "
            "hit while another probe's handler ran on that CPU",
            markup=False,
        )
    if res.probe_profile_error:
        err.print(f"memtrace: warning: probe misses unknown: {res.probe_profile_error}", markup=False)
    err.print(
        f"wrote {res.path}: {res.bytes_written:,} bytes in {res.duration_s:.1f} s; "
        f"{len(res.probes_installed)} probes, {len(res.tracepoints_enabled)} tracepoints, "
        f"{len(res.probes_failed)} probes failed, {len(ps.skipped)} skipped, {res.lost_total} events lost, "
        f"{res.misses_total} probe hits missed",
        markup=False,
    )
    reasons = res.incomplete_reasons
    if json_out:
        d = res.as_dict()
        d["allow_partial"] = allow_partial
        out.print_json(json.dumps(d))
    if res.cleanup_errors:
        raise typer.Exit(3)
    if reasons:
        if allow_partial:
            err.print(f"memtrace: warning: capture incomplete (accepted by --allow-partial): {'; '.join(reasons)}", markup=False)
        else:
            err.print(f"memtrace: error: capture incomplete: {'; '.join(reasons)} (the file is written; --allow-partial accepts it)", markup=False)
            raise typer.Exit(5)

"""memtrace probes: the capture definitions in probes/*.toml, resolved for one kernel."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from memtrace.cli.app import app, err, out


class Format(str, Enum):
    kprobe_events = "kprobe_events"
    trace_cmd = "trace-cmd"
    perfetto = "perfetto"


class Types(str, Enum):
    """Where --vmlinux offsets come from (anything else is a usage error, exit 2)."""

    dwarf = "dwarf"
    btf = "btf"


def resolve_target(vmlinux: Optional[Path], btf: Optional[Path], live: bool, tracefs: Optional[Path], types: "Types | str"):
    from memtrace.errors import InputError
    from memtrace.sources.kernel.target import btf_target, live_target, vmlinux_target

    chosen = [x for x in (vmlinux is not None, btf is not None, live) if x]
    if len(chosen) > 1:
        raise InputError("give only one of --vmlinux, --btf, --live")
    if vmlinux is not None:
        return vmlinux_target(vmlinux, use_dwarf=(Types(types) is Types.dwarf))
    if btf is not None:
        return btf_target(btf)
    return live_target(tracefs)


@app.command("probes")
def probes_cmd(
    vmlinux: Optional[Path] = typer.Option(None, "--vmlinux", metavar="FILE", help="Generate for this vmlinux (symbols + DWARF or .BTF)."),
    btf: Optional[Path] = typer.Option(None, "--btf", metavar="FILE", help="Generate from a BTF file only (traceability unknown)."),
    live: bool = typer.Option(False, "--live", help="Generate for the running kernel (default when no file is given)."),
    tracefs: Optional[Path] = typer.Option(
        None, "--tracefs", metavar="DIR", help="tracefs mount point for --live (default: from /proc/mounts)."),
    fmt: Format = typer.Option(
        Format.kprobe_events, "--format", "-f", metavar="|".join(f.value for f in Format), help="Output form."),
    json_out: bool = typer.Option(
        False, "--json", help="Print a JSON envelope of the resolved probes (schema memtrace.probes/1, with skip reasons) instead of --format."),
    all_probes: bool = typer.Option(False, "--all", help="Include probes marked default=false (hot paths, diagnostics)."),
    only: Optional[List[str]] = typer.Option(None, "--only", metavar="PROBE", help="Only these probe names (repeatable)."),
    defs: Optional[List[Path]] = typer.Option(
        None, "--defs", metavar="FILE", help="Probe definition TOML files (repeatable; default: probes/*.toml)."),
    types: Types = typer.Option(
        Types.dwarf, "--types", metavar="|".join(t.value for t in Types), help="For --vmlinux: offsets from 'dwarf' (drgn) or 'btf'."),
) -> None:
    """Print memtrace's kprobes and tracepoints for a kernel: kprobe_events lines, a trace-cmd script, or a perfetto TraceConfig. Offsets come from the kernel's own DWARF/BTF.

    Example: memtrace probes --vmlinux VMLINUX --format kprobe_events > kp.txt
    """
    from memtrace.sources.trace import probedefs

    target = resolve_target(vmlinux, btf, live, tracefs, types)
    ps = probedefs.generate(target, probedefs.load_definitions(defs or None), include_all=all_probes, only=only)
    for p in ps.skipped:
        err.print(f"memtrace: skipped probe {p.group}/{p.name}: {p.skipped}", markup=False)
    if json_out:
        out.print_json(json.dumps(ps.as_dict()))
        return
    if fmt is Format.kprobe_events:
        text = probedefs.render_kprobe_events(ps)
    elif fmt is Format.trace_cmd:
        text = probedefs.render_trace_cmd(ps, str(tracefs or "/sys/kernel/tracing"))
    else:
        text = probedefs.render_perfetto(ps)
    out.print(text, end="", markup=False, highlight=False)

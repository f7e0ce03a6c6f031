"""memtrace lab: real Debian kernels in QEMU, replaying the container-restart story."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from memtrace.cli.app import app, err, out
from memtrace.lab.qemu import ACCELS, DEFAULT_ACCEL

lab_app = typer.Typer(help="Boot real Debian kernels in QEMU and run scenarios with ground truth.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")


def _say(msg: str) -> None:
    err.print(f"[dim]lab:[/dim] {msg}", highlight=False)


@lab_app.command("kernels")
def kernels_cmd(
    fetch: bool = typer.Option(False, "--fetch", help="Download the current build of every series (once)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the lab kernels and what is cached; --fetch downloads them."""
    from memtrace.lab import kernels

    rows = []
    for name, series in kernels.SERIES.items():
        k = kernels.fetch(name, progress=_say) if fetch else kernels.cached(name)
        rows.append(
            {
                "series": name,
                "meta_package": series.meta_package,
                "suite": series.suite,
                "release": k.release if k else None,
                "package_version": k.package_version if k else None,
                "vmlinux": str(k.vmlinux) if k else None,
                "vmlinux_build_id": k.build_id if k else None,
            }
        )
    if json_out:
        out.print_json(json.dumps({"cache": str(kernels.cache_dir()), "kernels": rows}))
        return
    t = Table(title=f"lab kernels (cache: {kernels.cache_dir()})")
    for col in ("series", "suite", "release", "package_version", "vmlinux"):
        t.add_column(col)
    for r in rows:
        t.add_row(*[str(r[c]) if r[c] else "[dim]not fetched[/dim]" for c in ("series", "suite", "release", "package_version", "vmlinux")])
    out.print(t)


@lab_app.command("scenarios")
def scenarios_cmd(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the built-in scenarios."""
    from memtrace.lab.run import builtin_scenarios

    sc = builtin_scenarios()
    if json_out:
        out.print_json(json.dumps(sc))
        return
    t = Table(title="built-in scenarios")
    t.add_column("name")
    t.add_column("what it does")
    for k, v in sc.items():
        t.add_row(k, v)
    out.print(t)


@lab_app.command("run")
def run_cmd(
    scenario: str = typer.Argument(..., help="A built-in scenario name, or the path of your own scenario script."),
    kernel: str = typer.Option("6.1", "--kernel", "-k", help="Lab kernel series: 6.1 or 6.12."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for meta.json, truth.json, trace.txt, serial.log, vmcore."),
    keep_running: bool = typer.Option(False, "--keep-running", help="Leave the guest up; print its QMP socket for drgn."),
    no_vmcore: bool = typer.Option(False, "--no-vmcore", help="Skip the vmcore dump."),
    memory_mb: int = typer.Option(512, "--memory", help="Guest memory in MiB.", min=128),
    cpus: int = typer.Option(2, "--cpus", help="Guest vCPUs.", min=1, max=16),
    accel: str = typer.Option(
        DEFAULT_ACCEL, "--accel",
        help=f"QEMU accelerator, one of {', '.join(ACCELS)}. tcg: all vCPUs on one host thread. mttcg: a host thread per vCPU, "
        "faster when vCPUs are busy together, but 6.12 guests oops ('Oops: int3') when a tracepoint or kprobe "
        "is patched in under it.",
    ),
    kprobe_events: Optional[Path] = typer.Option(None, "--kprobe-events", help="kprobe_events lines to install in the guest for the run."),
    timeout: float = typer.Option(900, "--timeout", help="Seconds the scenario may take before the guest is ended."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's meta.json instead of a summary."),
    recorder: str = typer.Option(
        "tracefs", "--recorder",
        help="tracefs: trace.txt (tracefs text). trace-cmd: also trace.dat, recorded in the same run by the host's "
        "trace-cmd (copied into the guest) in a tracefs instance of its own, same events and clock.",
    ),
    live_snapshot: bool = typer.Option(
        False, "--live-snapshot",
        help="After the last step, run 'memtrace snapshot --live' inside the guest (builds a cached Python disk image once; "
        "guest memory at least 2048 MiB); writes live-snapshot.json and live.snapshot.",
    ),
) -> None:
    """Run a scenario on a real kernel; write ground truth, a trace and a vmcore."""
    from memtrace.errors import InputError
    from memtrace.lab.run import run

    probes = None
    if kprobe_events is not None:
        try:
            probes = kprobe_events.read_text()
        except OSError as e:
            raise InputError(f"{kprobe_events}: {e.strerror}") from None
    # SIGTERM ends the run like Ctrl-C: the guest is stopped, nothing half-written is left.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    res = run(
        scenario,
        kernel,
        out_dir,
        keep_running=keep_running,
        vmcore=not no_vmcore,
        memory_mb=memory_mb,
        cpus=cpus,
        accel=accel,
        scenario_timeout=timeout,
        kprobe_events=probes,
        force=force,
        progress=_say,
        live_snapshot=live_snapshot,
        recorder=recorder,
    )
    if json_out:
        out.print_json(json.dumps(res.meta))
    else:
        _summary(res)
    if res.pid:
        err.print(f"guest left running: pid {res.pid}; QMP socket for drgn: {res.qmp_socket}", markup=False)
        err.print(f"  drgn: prog.set_qemu_qmp({str(res.qmp_socket)!r}); stop it with: kill {res.pid}", markup=False)
        out.print(str(res.qmp_socket), markup=False)


def _summary(res) -> None:
    from memtrace.lab.truth import load_truth

    truth = load_truth(res.out / "truth.json")
    t = Table(
        title=f"{res.meta['scenario']} on {res.meta['kernel']['release']}: what the guest reported "
        "(memory.* in bytes)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col, just in (("#", "right"), ("step", "left"), ("cgroup", "left"), ("tasks", "left"),
                      ("current", "right"), ("Δ", "right"), ("max", "right"), ("max ev", "right"), ("maps", "right")):
        t.add_column(col, justify=just, no_wrap=True)
    prev: dict[str, int] = {}
    for step in truth["steps"]:
        first = True
        for path, cg in step["cgroups"].items():
            if path == "/" or path.startswith("/memtrace-settle") or "memory.current" not in cg:
                continue
            cur = cg["memory.current"]
            delta = cur - prev[path] if path in prev else None
            prev[path] = cur
            t.add_row(
                str(step["index"]) if first else "",
                escape(step["name"]) if first else "",
                escape(path),
                "yes" if cg.get("populated") else "no",
                f"{cur:,}",
                f"{delta:+,}" if delta else "",
                f"{cg['memory.max']:,}" if cg.get("memory.max") is not None else "max",
                str(cg.get("memory.events", {}).get("max", "")),
                str(len(step["maps"])) if first else "",
            )
            first = False
    out.print(t)
    tm = res.meta["timings"]
    err.print(
        f"wrote {res.out}: {', '.join(res.meta['files'])}; boot {tm.get('boot_s')} s, "
        f"scenario {tm.get('scenario_s')} s, vmcore {tm.get('vmcore_s', '-')} s",
        markup=False,
    )

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

from memtrace.cli.app import OUT_ALIAS, app, err, out, required_output
from memtrace.lab.qemu import ACCELS, DEFAULT_ACCEL

#: memtrace.lab.initramfs.RECORDERS, spelled out: importing initramfs loads the kernel pins, and a
#: broken pins file must stay a one-line error of the command that reads it, not of every command
#: (tests/test_cli_consistency.py checks the two agree)
RECORDERS = ("tracefs", "trace-cmd")

lab_app = typer.Typer(help="Boot real Debian kernels in QEMU and run scenarios with ground truth.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")


def _say(msg: str) -> None:
    err.print(f"[dim]lab:[/dim] {msg}", highlight=False)


@lab_app.command("kernels")
def kernels_cmd(
    fetch: bool = typer.Option(False, "--fetch", help="Download the named kernels (default: each series' pinned build), once."),
    names: Optional[list[str]] = typer.Option(
        None, "--kernel", "-k", metavar="KERNEL",
        help="With --fetch: a series (its pinned build), a listed build or SERIES@latest; repeatable.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON envelope (schema memtrace.lab.kernels/1) instead of a table."),
) -> None:
    """List the lab's kernel builds, which are pinned, and what is cached; --fetch downloads them.

    Example: memtrace lab kernels --fetch --kernel 6.1 --kernel 6.12 --kernel 6.12.118
    """
    from memtrace.lab import kernels

    if fetch:
        for name in names or list(kernels.SERIES):
            kernels.series_of(name)  # every name checked before any download
        for name in names or list(kernels.SERIES):
            kernels.fetch(name, progress=_say)
    rows = []
    for name, b in kernels.BUILDS.items():
        series = kernels.SERIES[b.series]
        k = kernels.cached(name)
        rows.append(
            {
                "name": name,
                "series": b.series,
                "pinned": series.pinned == name,
                "pinned_on": series.pinned_on if series.pinned == name else None,
                "package": b.package,
                "package_version": b.version,
                "suite": series.suite,
                "release": b.release,
                "vmlinux": str(k.vmlinux) if k else None,
                "vmlinux_build_id": k.build_id if k else None,
            }
        )
    if json_out:
        out.print_json(json.dumps({"schema": "memtrace.lab.kernels/1", "cache": str(kernels.cache_dir()),
                                   "pins": str(kernels.PINS_FILE), "kernels": rows}))
        return
    t = Table(title=f"lab kernels (pins: {kernels.PINS_FILE.name}; cache: {kernels.cache_dir()})")
    for col in ("name", "series", "pinned", "package_version", "release", "vmlinux"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["name"], r["series"], f"yes, {r['pinned_on']}" if r["pinned"] else "",
            r["package_version"], r["release"], r["vmlinux"] or "[dim]not fetched[/dim]",
        )
    out.print(t)
    err.print("--kernel SERIES means its pinned build; SERIES@latest the newest Debian build (memtrace lab drift).")


@lab_app.command("scenarios")
def scenarios_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print a JSON envelope (schema memtrace.lab.scenarios/1) instead of a table."),
) -> None:
    """List the built-in scenarios.

    Example: memtrace lab scenarios --json
    """
    from memtrace.lab.run import builtin_scenarios

    sc = builtin_scenarios()
    if json_out:
        rows = [{"name": k, "description": v} for k, v in sc.items()]
        out.print_json(json.dumps({"schema": "memtrace.lab.scenarios/1", "scenarios": rows}))
        return
    t = Table(title="built-in scenarios")
    t.add_column("name")
    t.add_column("what it does")
    for k, v in sc.items():
        t.add_row(k, v)
    out.print(t)


@lab_app.command("run")
def run_cmd(
    scenario: str = typer.Argument(
        ..., metavar="SCENARIO", help="A built-in scenario name (memtrace lab scenarios), or the path of your own scenario script."),
    kernel: str = typer.Option(
        "6.1", "--kernel", "-k", metavar="KERNEL",
        help="A series (6.1, 6.12: its pinned build), a build listed by 'memtrace lab kernels', or SERIES@latest.",
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", metavar="DIR",
        help="Folder for meta.json, truth.json, trace.txt, serial.log, vmcore (required).",
    ),
    out_alias: Optional[Path] = OUT_ALIAS,
    keep_running: bool = typer.Option(False, "--keep-running", help="Leave the guest up; print its QMP socket for drgn."),
    no_vmcore: bool = typer.Option(False, "--no-vmcore", help="Skip the vmcore dump."),
    memory_mb: int = typer.Option(512, "--memory", metavar="MIB", help="Guest memory in MiB.", min=128),
    cpus: int = typer.Option(2, "--cpus", metavar="N", help="Guest vCPUs.", min=1, max=16),
    accel: str = typer.Option(
        DEFAULT_ACCEL, "--accel", metavar="|".join(ACCELS),
        help=f"QEMU accelerator, one of {', '.join(ACCELS)}. tcg: all vCPUs on one host thread. mttcg: a host thread per vCPU, "
        "faster when vCPUs are busy together, but 6.12 guests oops ('Oops: int3') when a tracepoint or kprobe "
        "is patched in under it.",
    ),
    kprobe_events: Optional[Path] = typer.Option(
        None, "--kprobe-events", metavar="FILE", help="kprobe_events lines to install in the guest for the run."),
    timeout: float = typer.Option(900, "--timeout", metavar="SECONDS", help="Seconds the scenario may take before the guest is ended."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --output folder."),
    json_out: bool = typer.Option(
        False, "--json", help="Print the run's meta.json (schema memtrace.lab.meta/1) instead of a summary."),
    recorder: str = typer.Option(
        "tracefs", "--recorder", metavar="|".join(RECORDERS),
        help="tracefs: trace.txt (tracefs text). trace-cmd: also trace.dat, recorded in the same run by the host's "
        "trace-cmd (copied into the guest) in a tracefs instance of its own, same events and clock.",
    ),
    live_snapshot: bool = typer.Option(
        False, "--live-snapshot",
        help="After the last step, run 'memtrace snapshot --live' inside the guest (builds a cached Python disk image once; "
        "guest memory at least 2048 MiB); writes live-snapshot.json and live.snapshot.",
    ),
) -> None:
    """Run a scenario on a real kernel; write ground truth, a trace and a vmcore.

    Example: memtrace lab run restart --kernel 6.12 -o out/restart
    """
    from memtrace.errors import InputError
    from memtrace.lab.run import run

    out_dir = required_output(output, out_alias, "DIR")
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


@lab_app.command("drift")
def drift_cmd(
    kernel: str = typer.Option(..., "--kernel", "-k", metavar="KERNEL", help="The base: a series (its pinned build) or a listed build."),
    against: Optional[str] = typer.Option(None, "--against", metavar="KERNEL", help="The build to compare with (default: SERIES@latest)."),
    scenarios: Optional[list[str]] = typer.Option(
        None, "--scenario", "-s", metavar="SCENARIO", help="Scenarios to run on both (repeatable; default: restart, ghost, force, recharge)."),
    out_dir: Path = typer.Option(..., "--output", "-o", metavar="DIR", help="Folder for the runs (SCENARIO-RELEASE/); complete runs there are reused."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a markdown table (for a commit message moving a pin)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON envelope (schema memtrace.drift.json/1)."),
) -> None:
    """Run the scenarios on a pinned build and a newer one and show what the kernel changed.

    Facts compared: per step and /pod* cgroup, the change of memory.current and of memory.events max/oom, memory.max, populated; each created map's memlock; the scenario's counts (mapctl's done/failed). Byte facts count as changed beyond max(4 pages, 2%), counts beyond max(2, 5%); a count going from zero to non-zero is a behaviour change. Exit 1 when anything changed, 0 when nothing did.

    Example: memtrace lab drift --kernel 6.12 --against 6.12.118 -o /tmp/drift
    """
    from memtrace.analyses.drift import BYTES_TOLERANCE, COUNT_TOLERANCE
    from memtrace.errors import EXIT_FINDING
    from memtrace.lab.drift import DEFAULT_SCENARIOS, drift_runs
    from memtrace.render.drift import drift_json, drift_markdown, drift_table

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    res = drift_runs(kernel, against, tuple(scenarios or DEFAULT_SCENARIOS), out_dir, progress=_say)
    base, new = res.base.release, res.new.release
    if (base, res.base.package_version) == (new, res.new.package_version):
        err.print(f"{kernel} and {against or 'latest'} are the same build ({base} {res.base.package_version}): nothing to compare")
    if json_out:
        info = lambda k: {"release": k.release, "package_version": k.package_version, "vmlinux_build_id": k.build_id}  # noqa: E731
        out.print_json(json.dumps(drift_json(res.changes, info(res.base), info(res.new), res.scenarios,
                                             {"bytes": list(BYTES_TOLERANCE), "count": list(COUNT_TOLERANCE)})))
    elif markdown:
        out.print(drift_markdown(res.changes, base, new), markup=False)
    else:
        out.print(drift_table(res.changes, base, new))
        err.print(f"{len(res.changes)} facts changed ({int(res.changes['change'].eq('behaviour').sum())} behaviours); "
                  f"runs in {out_dir}")
    if len(res.changes):
        raise typer.Exit(EXIT_FINDING)

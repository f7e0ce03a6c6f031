"""Run one lab scenario on one kernel: boot, run, record, dump, collect.

Output folder (written as ``<out>.partial-*`` and renamed into place only when complete)::

    meta.json      kernel release, vmlinux path and build id, steps with timestamps, timings
    truth.json     the kernel's own counters after every step (see memtrace.lab.truth)
    trace.txt      ftrace text of kmem, percpu, cgroup (vmalloc on 6.12) events over the run
    trace.dat      recorder="trace-cmd" only: `trace-cmd record` of the same run (its own
                   tracefs instance, same clock; the events of `memtrace probes --format
                   trace-cmd`), with trace-cmd.log (its output); meta.json's trace.trace_cmd
                   has the command and the ring-buffer statistics saved in trace.dat
    serial.log     the guest console
    scenario.log   the scenario's stdout and stderr
    files/         whatever the scenario wrote in /out/files in the guest (its own artefacts)
    vmcore         ELF core of the guest at the end (QMP dump-guest-memory); not with --no-vmcore
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from memtrace.errors import GuestError, InputError
from memtrace.lab import initramfs, kernels
from memtrace.lab.qemu import DEFAULT_ACCEL, Guest, accel_arg, qemu_binary
from memtrace.lab.truth import build_truth

META_SCHEMA = "memtrace.lab.meta/1"
#: lib.sh step's console line
STEP_LINE = re.compile(r"MEMTRACE-STEP (\d+) (\S+)")
#: lib.sh vmcore_at's request: dump the guest's memory now, as vmcore-NAME
VMCORE_LINE = re.compile(r"MEMTRACE-VMCORE ([A-Za-z0-9_.-]+)")
OUT_DISK_BYTES = 2 << 30  # sparse; the guest writes a tar of /out onto it


def builtin_scenarios() -> dict[str, str]:
    """Built-in scenario names and their first comment line."""
    found = {}
    for f in resources.files("memtrace.lab").joinpath("scenarios").iterdir():
        if f.name.endswith(".sh"):
            first = f.read_text().splitlines()[0].lstrip("# ").strip()
            found[f.name.removesuffix(".sh")] = first
    return dict(sorted(found.items()))


def load_scenario(scenario: str) -> tuple[str, bytes]:
    """Return (name, script) for a built-in name or a path to the user's own script."""
    builtins = builtin_scenarios()
    if scenario in builtins:
        return scenario, resources.files("memtrace.lab").joinpath("scenarios", f"{scenario}.sh").read_bytes()
    p = Path(scenario)
    if p.is_file():
        data = p.read_bytes()
        if b"\0" in data:
            raise InputError(f"{p}: not a shell script (binary data)")
        return p.stem, data
    if p.exists():
        raise InputError(f"{p}: not a regular file")
    raise InputError(f"unknown scenario {scenario!r}: not a file, and the built-ins are {', '.join(builtins)}")


@dataclass
class RunResult:
    out: Path
    meta: dict
    pid: int | None = None  # set when the guest was left running
    qmp_socket: Path | None = None
    extra: dict = field(default_factory=dict)

    def stop(self) -> None:
        """End a guest left running (``keep_running``) and remove its runtime folder
        (sockets, initramfs, output disk: about 100 MB). Safe to call twice."""
        if self.pid is not None:
            try:
                os.killpg(self.pid, signal.SIGTERM)  # QEMU leads a session of its own
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:  # reap it when it is this process's child (run() in-process)
                    if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                        break
                except ChildProcessError:
                    if not Path(f"/proc/{self.pid}").exists():
                        break
                time.sleep(0.1)
            self.pid = None
        if self.qmp_socket is not None:
            shutil.rmtree(self.qmp_socket.parent, ignore_errors=True)


def run(
    scenario: str,
    kernel_series: str,
    out: Path,
    *,
    keep_running: bool = False,
    vmcore: bool = True,
    memory_mb: int = 512,
    cpus: int = 2,
    accel: str = DEFAULT_ACCEL,
    boot_timeout: float = 120,
    scenario_timeout: float = 900,
    kprobe_events: str | None = None,
    force: bool = False,
    progress=None,
    live_snapshot: bool = False,
    recorder: str = "tracefs",
    record_events: list[str] | None = None,
) -> RunResult:
    """Run ``scenario`` on the lab kernel ``kernel_series``; write results to ``out``.

    ``live_snapshot``: after the last step, run ``memtrace snapshot --live`` inside the guest
    (memtrace.lab.pyroot); its output lands in ``out`` as live-snapshot.json, live.snapshot.
    ``recorder``: "tracefs" (trace.txt only) or "trace-cmd" (trace.txt and, from the same
    run, trace.dat recorded by the host's trace-cmd inside the guest; needs Debian's trace-cmd).
    ``accel``: a key of ``memtrace.lab.qemu.ACCELS``; "tcg" (one host thread for all vCPUs)
    unless you know the guest survives multi-threaded TCG (see there).
    ``record_events``: what trace-cmd records (system:event; those the guest lacks are left
    out); by default the events of `memtrace probes --format trace-cmd`: probes/*.toml's
    tracepoints and the kprobe events of ``kprobe_events``.
    """
    say = progress or (lambda msg: None)
    if recorder not in initramfs.RECORDERS:
        raise InputError(f"unknown recorder {recorder!r}: choose one of {', '.join(initramfs.RECORDERS)}")
    accel_arg(accel)  # an unknown name fails here, before any download
    name, script = load_scenario(scenario)
    kernels.series_of(kernel_series)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise InputError(f"{out}: exists and is not empty; choose another --output or pass --force")
    qemu_binary()  # fail before the download if QEMU is missing
    if recorder == "trace-cmd":
        initramfs._which("trace-cmd")  # likewise for trace-cmd
    kernel = kernels.fetch(kernel_series, progress=say)
    extra, qemu_args = None, ()
    if live_snapshot:
        from memtrace.lab import pyroot

        extra, qemu_args, pyroot_image = pyroot.prepare(kernel, progress=say)
        if memory_mb < pyroot.MIN_MEMORY_MB:
            say(f"live snapshot: guest memory raised to {pyroot.MIN_MEMORY_MB} MiB (drgn and vmlinux)")
            memory_mb = pyroot.MIN_MEMORY_MB
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    # Sockets need short paths (108 bytes): the guest's runtime folder lives in /tmp.
    rundir = Path(tempfile.mkdtemp(prefix="memtrace-guest-"))
    detached = False
    try:
        initrd = initramfs.build(kernel, script, rundir / "initrd.gz", kprobe_events=kprobe_events, extra=extra,
                                 recorder=recorder, record_events=record_events)
        disk = rundir / "out.img"
        with open(disk, "wb") as f:
            f.truncate(OUT_DISK_BYTES)
        steps: list[dict] = []
        t0 = time.time()
        timings: dict[str, float] = {}
        with Guest(
            kernel=kernel.vmlinuz, initrd=initrd, rundir=rundir, out_disk=disk, memory_mb=memory_mb, cpus=cpus,
            accel=accel, extra_args=qemu_args, die_with_parent=not keep_running,
        ) as guest:
            say(f"booting {kernel.release} ({cpus} vCPU, {memory_mb} MiB, {accel.upper()})")
            guest.wait_for(r"MEMTRACE-BOOTED", boot_timeout)
            timings["boot_s"] = round(time.time() - t0, 3)

            def on_line(line: str) -> None:
                m = STEP_LINE.search(line)
                if m:  # (a line printk output broke up is left out; truth.json has every step)
                    idx, step_name = m.group(1), m.group(2)
                    steps.append({"index": int(idx), "name": step_name, "host_time": time.time()})
                    say(f"step {idx} {step_name}")
                v = VMCORE_LINE.search(line)
                if v:
                    # the guest waits on ttyS1 until told; dump-guest-memory pauses it meanwhile
                    if vmcore:
                        say(f"dumping guest memory at {v.group(1)}")
                        guest.dump_memory(work / f"vmcore-{v.group(1)}")
                        guest.tell(f"vmcore-done {v.group(1)}")
                    else:
                        guest.tell(f"vmcore-skipped {v.group(1)}")
                for tag in ("MEMTRACE-ERROR", "MEMTRACE-WARNING"):
                    if tag in line:
                        say(line[line.index(tag):])
                if "MEMTRACE-LIVE " in line:
                    say(line[line.index("MEMTRACE-LIVE ") + 14:])

            m = guest.wait_for(r"MEMTRACE-DONE rc=(\d+)", scenario_timeout, on_line=on_line)
            timings["scenario_s"] = round(time.time() - t0 - timings["boot_s"], 3)
            rc = int(m.group(1))
            _collect_disk(disk, work / "guest")
            shutil.copy(guest.serial_log, work / "serial.log")
            if rc != 0:
                log = (work / "guest" / "scenario.log").read_text(errors="replace").splitlines()[-15:]
                raise GuestError(
                    f"scenario {name!r} failed in the guest (exit {rc})",
                    detail="scenario log tail:\n" + "\n".join("  " + l for l in log),
                )
            if live_snapshot:
                live_meta = pyroot.collect(work / "guest", work, pyroot_image)
                timings["live_snapshot_s"] = live_meta["wall_s"]
            if vmcore:
                say("dumping guest memory")
                t1 = time.time()
                guest.dump_memory(work / "vmcore")
                timings["vmcore_s"] = round(time.time() - t1, 3)
            g = work / "guest"
            truth = build_truth(g)
            for s in steps:
                match = [t for t in truth["steps"] if t["index"] == s["index"]]
                if match:
                    s["uptime_s"] = match[0]["uptime_s"]
            (work / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
            os.replace(g / "trace.txt", work / "trace.txt")
            os.replace(g / "scenario.log", work / "scenario.log")
            if (g / "files").is_dir():  # a scenario's own artefacts (/out/files in the guest)
                os.replace(g / "files", work / "files")
            if recorder == "trace-cmd":
                for f in ("trace.dat", "trace-cmd.log"):
                    if (g / f).exists():
                        os.replace(g / f, work / f)
                if not (work / "trace.dat").exists():
                    log = (work / "trace-cmd.log").read_text(errors="replace").splitlines()[-15:] \
                        if (work / "trace-cmd.log").exists() else ["(no trace-cmd.log)"]
                    raise GuestError("trace-cmd record wrote no trace.dat in the guest",
                                     detail="trace-cmd log tail:\n" + "\n".join("  " + l for l in log))
            meta = {
                "schema": META_SCHEMA,
                "scenario": name,
                "scenario_sha256": hashlib.sha256(script).hexdigest(),
                "kernel": {
                    "name": kernel_series,  # as asked: a series (its pinned build), a build, SERIES@latest
                    "series": kernel.series,
                    "release": kernel.release,
                    "package_version": kernel.package_version,
                    "vmlinux": str(kernel.vmlinux),
                    "vmlinux_build_id": kernel.build_id,
                },
                "guest": {"cpus": cpus, "memory_mb": memory_mb, "accel": accel, "qemu_args": guest.args},
                "steps": steps,
                "timings": timings,
                "trace": _trace_meta(g, work),
                "files": sorted(p.name for p in work.iterdir() if p.name != "guest") + ["meta.json"],
            }
            if live_snapshot:
                meta["live_snapshot"] = live_meta
            (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
            shutil.rmtree(g)
            if out.exists():
                shutil.rmtree(out)
            os.replace(work, out)
            result = RunResult(out=out, meta=meta)
            if keep_running:
                result.pid = guest.detach()
                result.qmp_socket = guest.qmp_drgn
                detached = True
            return result
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
        if not detached:
            shutil.rmtree(rundir, ignore_errors=True)


def _collect_disk(disk: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    try:
        with tarfile.open(disk, "r:") as tar:
            tar.extractall(dest, filter="data")
    except tarfile.TarError as e:
        raise GuestError(f"the guest wrote no readable results to its output disk: {e}") from None


def _trace_cmd_meta(g: Path, work: Path) -> dict | None:
    """What the trace-cmd recorder did: its command, exit status, per-CPU statistics."""
    if not (g / "trace-cmd.cmd").exists():
        return None
    from memtrace.errors import MemtraceError
    from memtrace.sources.trace import tracecmd

    rc = (g / "trace-cmd.rc").read_text().strip() if (g / "trace-cmd.rc").exists() else ""
    stats: dict[str, dict] = {}
    if (work / "trace.dat").exists():
        try:
            # the kernel's ring-buffer statistics trace-cmd saved in the file, per buffer and CPU
            stats = tracecmd.cpu_stats(str(work / "trace.dat"))
        except MemtraceError as e:
            stats = {"error": str(e)}
    per_cpu = [s for b in stats.values() if isinstance(b, dict) for s in b.values() if isinstance(s, dict)]
    started = (g / "trace-cmd.started").read_text().strip() if (g / "trace-cmd.started").exists() else None
    cmd = (g / "trace-cmd.cmd").read_text().strip()
    toks = cmd.split()
    return {
        "command": cmd,
        "events": [toks[i + 1] for i, t in enumerate(toks[:-1]) if t == "-e"],
        "exit_status": int(rc) if rc.lstrip("-").isdigit() else None,
        "trace_dat": (work / "trace.dat").exists(),
        "started": started,
        "per_cpu_stats": stats,
        "overruns": sum(int(s.get("overrun", 0)) for s in per_cpu),
        "dropped_events": sum(int(s.get("dropped events", 0)) for s in per_cpu),
    }


def _trace_meta(g: Path, work: Path | None = None) -> dict:
    stats = {}
    sdir = g / "trace-stats"
    if sdir.is_dir():
        for f in sorted(sdir.iterdir()):
            kv = {}
            for line in f.read_text().splitlines():
                k, _, v = line.partition(":")
                v = v.strip().split()[0] if v.strip() else ""
                try:
                    kv[k.strip()] = float(v) if "." in v else int(v)
                except ValueError:
                    pass
            stats[f.name] = kv
    from memtrace.sources.trace.capture import defined_kprobes, match_kprobe_profile

    installed = (g / "kprobe_events.installed").read_text() if (g / "kprobe_events.installed").exists() else ""
    profile, unmatched = {}, []
    if (g / "kprobe_profile.txt").exists() and installed:
        profile, unmatched = match_kprobe_profile((g / "kprobe_profile.txt").read_text(), defined_kprobes(installed), installed)
    misses = {ev: v["misses"] for ev, v in profile.items() if v["misses"]}
    enabled = (g / "events-enabled.txt").read_text().split() if (g / "events-enabled.txt").exists() else []
    probe_errors = (g / "probe-errors.txt").read_text().splitlines() if (g / "probe-errors.txt").exists() else []
    return {
        "format": "ftrace-text",
        "clock": "boot",
        "events_enabled": enabled,
        "per_cpu_stats": stats,
        "overruns": sum(s.get("overrun", 0) for s in stats.values()),
        "probe_errors": probe_errors,
        "kprobe_events_installed": installed.splitlines(),
        # kprobe_profile at the end: {group/name: {"hits", "misses"}}; a miss loses an event like an overrun
        "probe_profile": profile,
        "probe_profile_unmatched": unmatched,
        "probe_misses": misses,
        "probe_misses_total": sum(misses.values()),
        **({"trace_cmd": tc} if work is not None and (tc := _trace_cmd_meta(g, work)) else {}),
    }

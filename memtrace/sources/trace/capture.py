"""Record memtrace's probes and tracepoints on a live host into an ftrace text file.

The capture runs in a tracefs *instance* of its own (``instances/memtrace-<pid>``) when the
kernel has instances, so the host's top-level tracing_on, buffer size, clock and enabled
events are never touched; without instances it uses the top level and restores what it
changed. kprobe events are global definitions: each one this capture creates is removed
again on every exit path (normal end, signal, error, exception), and one it did not create
is never touched. A probe the kernel refuses is counted and reported; the others go on.

Lost events are read from ``per_cpu/cpuN/stats`` (``overrun``, ``dropped events``) at the
end and reported; the output header carries them too. So are the probes' *misses*, from
tracefs ``kprobe_profile`` (read before the probes are removed): a kretprobe whose
``maxactive`` instances are all in use when its function is entered, or a kprobe hit while
another kprobe handler runs on that CPU, records no event and only counts a miss.

A capture is *incomplete* when anything it was asked to record is not in the file: a probe
skipped (the kernel cannot trace its function) or refused, a tracepoint that would not
enable (or a required one the kernel lacks), events lost in the ring buffer, probe misses.
:attr:`CaptureResult.incomplete_reasons` names each; the CLI exits 5 on them.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from memtrace.errors import EnvironmentProblem, InputError, MemtraceError
from memtrace.sources.trace.probedefs import Probe, ProbeSet, kprobe_event_defs

CAPTURE_SCHEMA = "memtrace.capture/1"

#: the header line that carries the capture's summary as one JSON object (see
#: :func:`read_capture_header`); the other header lines say the same for people
SUMMARY_PREFIX = "# memtrace capture summary: "


class CaptureInterrupted(MemtraceError):
    """A second signal ended the capture before it was written."""

    exit_code = 130


@dataclass
class CaptureResult:
    path: Path | None
    started_ns: int
    duration_s: float
    interrupted: bool
    instance: str | None
    tracepoints_enabled: list[str] = field(default_factory=list)
    tracepoints_failed: list[dict] = field(default_factory=list)
    probes_installed: list[str] = field(default_factory=list)
    probes_failed: list[dict] = field(default_factory=list)
    lost_events: dict[str, dict[str, int]] = field(default_factory=dict)
    cleanup_errors: list[str] = field(default_factory=list)
    bytes_written: int = 0
    #: probes the target kernel cannot take (from generation): [{"probe", "reason"}]
    probes_skipped: list[dict] = field(default_factory=list)
    #: tracepoints of a required (non-optional) group the kernel does not have
    tracepoints_missing: list[str] = field(default_factory=list)
    #: per installed probe (group/name): {"hits": n, "misses": m} from kprobe_profile
    probe_profile: dict[str, dict[str, int]] = field(default_factory=dict)
    #: why the misses could not be read (None: read, or no probe was installed)
    probe_profile_error: str | None = None
    #: settings the capture needs but could not make, one phrase each (trace clock not
    #: boot, pointers hashed, per-CPU loss counters unreadable): the file is then incomplete
    degraded: list[str] = field(default_factory=list)

    @property
    def lost_total(self) -> int:
        return sum(v.get("overrun", 0) + v.get("dropped events", 0) for v in self.lost_events.values())

    @property
    def misses(self) -> dict[str, int]:
        """Probes that missed hits: {group/name: misses}, nonzero only."""
        return {ev: v["misses"] for ev, v in self.probe_profile.items() if v.get("misses")}

    @property
    def misses_total(self) -> int:
        return sum(self.misses.values())

    @property
    def incomplete_reasons(self) -> list[str]:
        """What the file lacks of what was asked for, one short phrase each ([] = complete).
        An interrupted capture (Ctrl-C, SIGTERM) is not incomplete: that is how one ends."""
        r = []
        if self.probes_skipped:
            r.append(f"{len(self.probes_skipped)} probe(s) skipped for this kernel ({_names(p['probe'] for p in self.probes_skipped)})")
        if self.probes_failed:
            r.append(f"{len(self.probes_failed)} probe(s) refused ({_names(p['probe'] for p in self.probes_failed)})")
        if self.tracepoints_failed:
            r.append(f"{len(self.tracepoints_failed)} tracepoint(s) not enabled ({_names(t['event'] for t in self.tracepoints_failed)})")
        if self.tracepoints_missing:
            r.append(f"{len(self.tracepoints_missing)} tracepoint(s) missing from the kernel ({_names(self.tracepoints_missing)})")
        if self.lost_total:
            r.append(f"{self.lost_total} event(s) lost (ring buffer overrun; raise --buffer-kb)")
        if self.misses_total:
            r.append(f"{self.misses_total} probe hit(s) missed ({_names(misses_text(self.misses).split(', '))})")
        if self.probe_profile_error:
            r.append(f"probe misses unknown ({self.probe_profile_error})")
        r.extend(self.degraded)
        return r

    def summary(self) -> dict:
        """The header's JSON line: what ingest needs to know about the capture."""
        return {
            "schema": CAPTURE_SCHEMA,
            "probes_installed": self.probes_installed,
            "probes_failed": [f["probe"] for f in self.probes_failed],
            "probes_skipped": [p["probe"] for p in self.probes_skipped],
            "tracepoints_enabled": self.tracepoints_enabled,
            "tracepoints_failed": [t["event"] for t in self.tracepoints_failed],
            "tracepoints_missing": self.tracepoints_missing,
            "lost_events_total": self.lost_total,
            "probe_misses_total": self.misses_total,
            "probe_misses": self.misses,
            "probe_profile_error": self.probe_profile_error,
            "interrupted": self.interrupted,
            "incomplete": bool(self.incomplete_reasons),
        }

    def as_dict(self) -> dict:
        return {
            "schema": CAPTURE_SCHEMA,
            "path": str(self.path) if self.path else None,
            "duration_s": round(self.duration_s, 3),
            "interrupted": self.interrupted,
            "instance": self.instance,
            "tracepoints_enabled": self.tracepoints_enabled,
            "tracepoints_failed": self.tracepoints_failed,
            "probes_installed": self.probes_installed,
            "probes_failed": self.probes_failed,
            "lost_events_total": self.lost_total,
            "lost_events": self.lost_events,
            "probes_skipped": self.probes_skipped,
            "tracepoints_missing": self.tracepoints_missing,
            "probe_misses_total": self.misses_total,
            "probe_misses": self.misses,
            "probe_profile": self.probe_profile,
            "probe_profile_error": self.probe_profile_error,
            "incomplete": bool(self.incomplete_reasons),
            "incomplete_reasons": self.incomplete_reasons,
            "cleanup_errors": self.cleanup_errors,
            "bytes_written": self.bytes_written,
        }


#: tracefs refuses more (kernel/trace/trace_kprobe.c KRETPROBE_MAXACTIVE_MAX)
MAXACTIVE_MAX = 4096


def with_maxactive(line: str, maxactive: int | None) -> str:
    """A kretprobe line with ``maxactive`` instances (``r:g/n f`` -> ``r64:g/n f``): how many
    calls of the function may be in flight at once before a return is missed. None keeps
    the kernel's default, max(10, 2 x possible CPUs) on 6.1 and 6.12."""
    if maxactive is None or not line.startswith("r"):
        return line
    head, sep, rest = line.partition(":")
    if not sep or not (head == "r" or head[1:].isdigit()):
        return line
    return f"r{maxactive}:{rest}"


def misses_text(misses: dict[str, int], sep: str = ", ") -> str:
    """``event=count`` for each probe that missed hits, by event name."""
    return sep.join(f"{e}={n}" for e, n in sorted(misses.items()))


def _names(items, limit: int = 4) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f", +{len(items) - limit} more" if len(items) > limit else "")


# -- kprobe_profile --------------------------------------------------------------------------


def parse_kprobe_profile(text: str) -> list[tuple[str, int, int]]:
    """tracefs ``kprobe_profile`` -> [(event name, hits, misses)] in the file's order.

    Each line is ``seq_printf("  %-44s %15lu %15lu\\n", name, nhit, nmissed)`` on 6.1 and
    6.12 alike (kernel/trace/trace_kprobe.c probes_profile_seq_show): the event name
    *without* its group, then hits, then misses (for a kretprobe: the entry kprobe's misses
    plus the kretprobe's, i.e. maxactive exhausted)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def defined_kprobes(text: str) -> list[str]:
    """group/name of each kprobe in ``kprobe_events`` text, in order (``p:g/n f ...``, ``r64:g/n ...``)."""
    return [f"{group}/{name}" for group, name in kprobe_event_defs(text, kinds="pr")]


def match_kprobe_profile(profile_text: str, events: list[str], kprobe_events_text: str | None = None
                         ) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Hits and misses of ``events`` (group/name) from ``kprobe_profile``.

    The profile names events without their group. Both files list the kprobes in the same
    (creation) order, so with ``kprobe_events`` at hand the two are zipped line by line and
    every name checked; else (or if they disagree) a name is matched only where it is
    unique. Returns ({event: {"hits", "misses"}}, [events that could not be matched])."""
    rows = parse_kprobe_profile(profile_text)
    found: dict[str, dict[str, int]] = {}
    if kprobe_events_text is not None:
        defs = defined_kprobes(kprobe_events_text)
        if len(defs) == len(rows) and all(d.split("/", 1)[1] == r[0] for d, r in zip(defs, rows)):
            for d, (_, hits, misses) in zip(defs, rows):
                if d in events:
                    found[d] = {"hits": hits, "misses": misses}
            return found, [e for e in events if e not in found]
    by_name: dict[str, list[tuple[int, int]]] = {}
    for name, hits, misses in rows:
        by_name.setdefault(name, []).append((hits, misses))
    for ev in events:
        got = by_name.get(ev.split("/", 1)[-1], [])
        if len(got) == 1:
            found[ev] = {"hits": got[0][0], "misses": got[0][1]}
    return found, [e for e in events if e not in found]


class _TraceFS:
    def __init__(self, root: Path):
        self.root = root

    def write(self, rel: str | Path, text: str, *, append: bool = False) -> None:
        """Write like ``echo text > file``; raises OSError with the kernel's errno."""
        fd = os.open(self.root / rel, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def read(self, rel: str | Path) -> str:
        return (self.root / rel).read_text()

    def exists(self, rel: str | Path) -> bool:
        return (self.root / rel).exists()


def check_access(tracefs: Path) -> None:
    """One clear error before anything is changed."""
    if os.geteuid() != 0:
        raise EnvironmentProblem(f"{tracefs}: capture needs root (tracefs and kprobe_events are root-only)")
    if not os.access(tracefs / "events", os.W_OK) or not os.access(tracefs / "tracing_on", os.W_OK):
        raise EnvironmentProblem(f"{tracefs}: tracefs is not writable (read-only mount or locked down?)")


class Capture:
    """One capture. Use :meth:`run`; everything it set up is undone before it returns or raises."""

    def __init__(
        self,
        tracefs: Path,
        probes: ProbeSet,
        out: Path,
        *,
        duration: float | None = None,
        buffer_kb: int = 16384,
        use_instance: bool = True,
        progress: Callable[[str], None] | None = None,
        stop_after: Callable[[], bool] | None = None,
        maxactive: int | None = None,
    ):
        self.t = _TraceFS(Path(tracefs))
        self.probes = probes
        self.out = Path(out)
        self.duration = duration
        self.buffer_kb = buffer_kb
        self.use_instance = use_instance
        self.say = progress or (lambda m: None)
        self.stop_after = stop_after
        self.maxactive = maxactive
        self._stop = False
        self._signals = 0
        # what this capture changed, for cleanup
        self._created: list[Probe] = []
        self._enabled: list[str] = []
        self._instance: str | None = None
        self._restore: dict[str, str] = {}
        self._lost_unreadable: list[str] = []
        self._dyn_file = "kprobe_events"

    # -- signals ---------------------------------------------------------------------

    def _on_signal(self, signum, frame):
        self._signals += 1
        self._stop = True
        if self._signals > 1:
            raise KeyboardInterrupt

    # -- main ------------------------------------------------------------------------

    def run(self) -> CaptureResult:
        check_access(self.t.root)
        if not self.out.parent.is_dir():
            raise InputError(f"{self.out.parent}: no such folder")
        old = {}
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                old[s] = signal.signal(s, self._on_signal)
            except ValueError:  # not the main thread: the caller handles signals
                pass
        res = CaptureResult(None, time.time_ns(), 0.0, False, None)
        res.probes_skipped = [{"probe": p.event, "reason": p.skipped} for p in self.probes.skipped]
        res.tracepoints_missing = list(getattr(self.probes, "tracepoints_missing_required", []))
        tmp_body = None
        try:
            self._setup(res)
            tmp_body = self._record(res)
            self._stop_probes(res)
            self._read_profile(res)
            self._finish_output(res, tmp_body)
        finally:
            self._cleanup(res)
            if tmp_body is not None and tmp_body.exists():
                tmp_body.unlink()
            for s, h in old.items():
                signal.signal(s, h)
        return res

    def _inst(self, rel: str) -> str:
        return f"instances/{self._instance}/{rel}" if self._instance else rel

    def _setup(self, res: CaptureResult) -> None:
        t = self.t
        if self.use_instance and t.exists("instances"):
            name = f"memtrace-{os.getpid()}"
            try:
                os.mkdir(t.root / "instances" / name)
                self._instance = name
                res.instance = name
            except OSError as e:
                self.say(f"no tracefs instance ({e.strerror}); using the top level and restoring it afterwards")
        if self._instance is None:
            for f in ("tracing_on", "buffer_size_kb", "trace_clock"):
                try:
                    v = t.read(f).strip()
                    if f == "trace_clock":
                        v = next((w.strip("[]") for w in v.split() if w.startswith("[")), "local")
                    elif f == "buffer_size_kb":
                        v = v.split()[0]
                    self._restore[f] = v
                except OSError:
                    pass
        t.write(self._inst("tracing_on"), "0")
        try:
            if "boot" in t.read(self._inst("trace_clock")).replace("[", " ").replace("]", " ").split():
                t.write(self._inst("trace_clock"), "boot")
            else:
                res.degraded.append("trace clock is not boot (the kernel has no boot clock): timestamps do not line up with lab steps")
        except OSError as e:
            res.degraded.append(f"trace clock not set to boot ({e.strerror or e})")
        try:
            t.write(self._inst("buffer_size_kb"), str(self.buffer_kb))
        except OSError as e:
            self.say(f"could not set buffer_size_kb={self.buffer_kb}: {e.strerror}")
        # real addresses in %p fields (kmem:kmalloc ptr=...), so events join to objects
        try:
            if self._instance is None and t.exists("options/hash-ptr"):
                self._restore["options/hash-ptr"] = t.read("options/hash-ptr").strip()
            t.write(self._inst("options/hash-ptr"), "0")
        except OSError as e:
            res.degraded.append(f"pointer hashing not turned off ({e.strerror or e}): event addresses may be hashed")
        if self._instance is None:
            t.write("trace", "")  # clear the top-level buffer (it was saved by nobody)
        # kprobe events
        self._dyn_file = "kprobe_events" if t.exists("kprobe_events") else "dynamic_events"
        existing = self._existing_events()
        for p in self.probes.installable:
            if p.event in existing:
                res.probes_failed.append({"probe": p.event, "line": p.line, "error": "already defined (another capture?); not touched"})
                continue
            line = with_maxactive(p.line, self.maxactive) if p.kind == "kretprobe" else p.line
            try:
                if self._stop:
                    raise OSError(errno.EINTR, "capture interrupted during setup")
                t.write(self._dyn_file, line + "\n", append=True)
            except OSError as e:
                res.probes_failed.append({"probe": p.event, "line": line, "error": self._kernel_error(e)})
                # a partly created event must not survive either
                if p.event in self._existing_events():
                    self._created.append(p)
                continue
            self._created.append(p)
        # enable
        for p in self._created:
            if p.event in {f["probe"] for f in res.probes_failed}:
                continue
            try:
                t.write(self._inst(f"events/{p.event}/enable"), "1")
                self._enabled.append(p.event)
                res.probes_installed.append(p.event)
            except OSError as e:
                res.probes_failed.append({"probe": p.event, "line": p.line, "error": f"enable: {e.strerror}"})
        for tp in self.probes.all_tracepoints:
            ev = tp.replace(":", "/")
            try:
                t.write(self._inst(f"events/{ev}/enable"), "1")
                self._enabled.append(ev)
                res.tracepoints_enabled.append(tp)
            except OSError as e:
                res.tracepoints_failed.append({"event": tp, "error": e.strerror or str(e)})
        if not self._enabled:
            raise EnvironmentProblem("no event could be enabled: nothing to record")

    def _existing_events(self) -> set[str]:
        out = set()
        try:
            text = self.t.read(self._dyn_file)
        except OSError:
            return out
        for line in text.splitlines():
            parts = line.split()
            if parts and ":" in parts[0]:
                out.add(parts[0].split(":", 1)[1])
        return out

    def _kernel_error(self, e: OSError) -> str:
        msg = e.strerror or str(e)
        try:
            log = [l for l in self.t.read("error_log").splitlines() if l.strip()]
            if log:
                tail = [l.strip() for l in log[-3:]]
                msg += ": " + " | ".join(tail)
        except OSError:
            pass
        return msg

    def _record(self, res: CaptureResult) -> Path:
        t = self.t
        fd_out, tmp = tempfile.mkstemp(prefix=f".{self.out.name}.body-", dir=self.out.parent)
        tmp_path = Path(tmp)
        pipe = os.open(t.root / self._inst("trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        t0 = time.monotonic()
        try:
            t.write(self._inst("tracing_on"), "1")
            self.say("recording" + (f" for {self.duration:g} s" if self.duration else " until Ctrl-C"))
            while not self._stop:
                if self.duration is not None and time.monotonic() - t0 >= self.duration:
                    break
                if self.stop_after is not None and self.stop_after():
                    break
                r, _, _ = select.select([pipe], [], [], 0.2)
                if r:
                    res.bytes_written += self._drain(pipe, fd_out, once=True)
            res.interrupted = self._stop
            t.write(self._inst("tracing_on"), "0")
            res.bytes_written += self._drain(pipe, fd_out)
        finally:
            res.duration_s = time.monotonic() - t0
            os.close(pipe)
            os.close(fd_out)
        res.lost_events = self._lost()
        if self._lost_unreadable:
            res.degraded.append(f"lost-event counters unreadable for {', '.join(self._lost_unreadable)}: losses there are unknown")
        return tmp_path

    @staticmethod
    def _drain(pipe: int, fd_out: int, once: bool = False) -> int:
        n = 0
        while True:
            try:
                chunk = os.read(pipe, 1 << 16)
            except BlockingIOError:
                return n
            if not chunk:
                return n
            os.write(fd_out, chunk)
            n += len(chunk)
            if once and len(chunk) < (1 << 16):
                return n

    def _lost(self) -> dict[str, dict[str, int]]:
        out = {}
        base = self.t.root / self._inst("per_cpu")
        if not base.is_dir():
            return out
        for d in sorted(base.iterdir(), key=lambda p: int(p.name[3:]) if p.name[3:].isdigit() else 0):
            try:
                text = (d / "stats").read_text()
            except OSError as e:
                self._lost_unreadable.append(f"{d.name} ({e.strerror or e})")
                continue
            kv = {}
            for line in text.splitlines():
                k, _, v = line.partition(":")
                v = v.strip()
                if k.strip() in ("overrun", "commit overrun", "dropped events", "entries") and v.isdigit():
                    kv[k.strip()] = int(v)
            out[d.name] = kv
        return out

    def _stop_probes(self, res: CaptureResult) -> None:
        """Disable this capture's kprobe events once recording is off: an enabled probe still
        fires, and may miss, until then, and the misses read next must be the recording's."""
        for ev in res.probes_installed:
            if ev in self._enabled:
                try:
                    self.t.write(self._inst(f"events/{ev}/enable"), "0")
                except OSError:
                    pass  # _cleanup tries again and reports

    def _read_profile(self, res: CaptureResult) -> None:
        """Hits and misses of the probes this capture installed, before they are removed."""
        ours = [p for p in res.probes_installed]
        if not ours:
            return
        t = self.t
        if not t.exists("kprobe_profile"):
            res.probe_profile_error = f"{t.root}/kprobe_profile does not exist"
            return
        left = ours
        for _ in range(3):  # another tool adding or removing a kprobe between the two reads
            try:
                defs = t.read("kprobe_events") if t.exists("kprobe_events") else None
                prof = t.read("kprobe_profile")
            except OSError as e:
                res.probe_profile_error = f"kprobe_profile: {e.strerror or e}"
                return
            found, left = match_kprobe_profile(prof, ours, defs)
            res.probe_profile = found
            if not left:
                return
        res.probe_profile_error = f"not in kprobe_profile or ambiguous: {_names(left)}"

    def _finish_output(self, res: CaptureResult, body: Path) -> None:
        """Header + body into a temp file beside the output, then rename (atomic)."""
        ps = self.probes
        header = [
            "# tracer: nop",
            "#",
            f"# memtrace capture ({CAPTURE_SCHEMA}) of {ps.target.description}",
            f"# probes installed: {' '.join(res.probes_installed) or '-'}",
            f"# probes failed: {' '.join(f['probe'] for f in res.probes_failed) or '-'}",
            f"# tracepoints: {' '.join(res.tracepoints_enabled) or '-'}",
            f"# probes skipped: {' '.join(p['probe'] for p in res.probes_skipped) or '-'}",
            f"# lost events (overrun + dropped): {res.lost_total}",
            f"# probe misses (kretprobe maxactive exhausted, or a kprobe hit while another ran): {res.misses_total}"
            + (f" ({misses_text(res.misses, ' ')})" if res.misses else "")
            + (f"; unknown: {res.probe_profile_error}" if res.probe_profile_error else ""),
            f"# interrupted: {'yes' if res.interrupted else 'no'}; clock: boot if available",
            f"# complete: {'no: ' + '; '.join(res.incomplete_reasons) if res.incomplete_reasons else 'yes'}",
            SUMMARY_PREFIX + json.dumps(res.summary(), separators=(",", ":"), sort_keys=True),
            "#",
            "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION",
            "#              | |         |   |||||     |         |",
        ]
        fd, tmp = tempfile.mkstemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent)
        try:
            with os.fdopen(fd, "wb") as f, open(body, "rb") as b:
                f.write(("\n".join(header) + "\n").encode())
                while chunk := b.read(1 << 20):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.out)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        res.path = self.out

    def _cleanup(self, res: CaptureResult) -> None:
        """Undo everything, each step on its own: one failure must not skip the rest.
        Signals are held off meanwhile (a second Ctrl-C must not leave a probe behind)."""
        t = self.t
        masked = self._block_signals()
        try:
            try:
                t.write(self._inst("tracing_on"), "0")
            except OSError as e:
                res.cleanup_errors.append(f"tracing_on: {e.strerror}")
            for ev in reversed(self._enabled):
                try:
                    t.write(self._inst(f"events/{ev}/enable"), "0")
                except OSError as e:
                    res.cleanup_errors.append(f"disable {ev}: {e.strerror}")
            self._enabled.clear()
            if self._instance:
                try:
                    os.rmdir(t.root / "instances" / self._instance)
                except OSError as e:
                    res.cleanup_errors.append(f"remove instance {self._instance}: {e.strerror}")
                else:
                    self._instance = None
            for p in reversed(self._created):
                try:
                    t.write(self._dyn_file, f"-:{p.event}\n", append=True)
                except OSError as e:
                    if p.event in self._existing_events():
                        res.cleanup_errors.append(f"remove probe {p.event}: {self._kernel_error(e)}")
            left = self._existing_events() & {p.event for p in self._created}
            for ev in sorted(left):
                res.cleanup_errors.append(f"probe {ev} is still defined")
            self._created.clear()
            for f, v in self._restore.items():
                try:
                    t.write(f, v)
                except OSError as e:
                    res.cleanup_errors.append(f"restore {f}={v}: {e.strerror}")
        finally:
            if masked is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, masked)

    @staticmethod
    def _block_signals():
        try:
            return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        except (ValueError, OSError):
            return None


# -- reading a capture's header back (for ingest) ------------------------------------------------

_HEADER_MAX_LINES = 64
_OLD_LOST = "# lost events (overrun + dropped): "
_OLD_INSTALLED = "# probes installed: "


def read_capture_header(source) -> dict | None:
    """The summary a ``memtrace capture`` file carries in its header comment, or None when
    the file is not one. ``source``: a path, or the file's first bytes.

    Reads the JSON line (:data:`SUMMARY_PREFIX`); a capture written before it existed gives
    what its plain lines hold (probes installed, lost events). Only the leading ``#`` lines
    are looked at, so an event body can never be mistaken for a header."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(source[: 1 << 16])
    else:
        try:
            with open(source, "rb") as f:
                head = f.read(1 << 16)
        except OSError:
            return None
    lines = head.decode("utf-8", "replace").splitlines()[:_HEADER_MAX_LINES]
    if not any(l.startswith("# memtrace capture (") for l in lines[:4]):
        return None
    out: dict = {}
    for line in lines:
        if not line.startswith("#"):
            break
        if line.startswith(SUMMARY_PREFIX):
            try:
                d = json.loads(line[len(SUMMARY_PREFIX):])
            except ValueError:
                continue
            if isinstance(d, dict):
                return _well_typed(d)
        elif line.startswith(_OLD_LOST) and line[len(_OLD_LOST):].strip().isdigit():
            out["lost_events_total"] = int(line[len(_OLD_LOST):].strip())
        elif line.startswith(_OLD_INSTALLED):
            out["probes_installed"] = [w for w in line[len(_OLD_INSTALLED):].split() if w != "-"]
    return out or None


#: the summary's fields a reader uses, and what each must be (any other value is dropped)
_SUMMARY_TYPES = {
    "lost_events_total": int, "probe_misses_total": int, "probe_misses": dict, "probe_profile_error": str,
    "probes_installed": list, "probes_failed": list, "probes_skipped": list, "tracepoints_failed": list,
    "tracepoints_missing": list,
}


def _well_typed(d: dict) -> dict:
    """The summary with every field a reader uses of the type it must have (a hand-edited or
    damaged header line must not make ingest fail): lists of names, {name: count}."""
    out = {}
    for k, v in d.items():
        t = _SUMMARY_TYPES.get(k)
        if t is None:
            out[k] = v
        elif t is int and isinstance(v, int) and not isinstance(v, bool):
            out[k] = v
        elif t is str and isinstance(v, str):
            out[k] = v
        elif t is dict and isinstance(v, dict):
            out[k] = {e: n for e, n in v.items() if isinstance(n, int) and not isinstance(n, bool)}
        elif t is list and isinstance(v, list):
            out[k] = [x if isinstance(x, str) else str(x.get("probe") or x.get("event")) if isinstance(x, dict) else str(x)
                      for x in v]
    return out


def capture_kprobe_groups(summary: dict) -> dict[str, str]:
    """{event name: group} for the probes a capture installed (trace lines name events
    without their group)."""
    out = {}
    for ev in summary.get("probes_installed") or []:
        if isinstance(ev, str) and "/" in ev:
            g, n = ev.split("/", 1)
            out[n] = g
    return out


def apply_capture_summary(st, summary: dict) -> None:
    """Carry a capture header's counts into ingest stats (``IngestStats``).

    lost_events: the header's count comes from the kernel's per-CPU ``overrun`` and
    ``dropped events``; the body's ``CPU:N [LOST n EVENTS]`` lines count the same overruns
    as the reader met them, so the larger of the two is kept (never their sum).
    probe_misses: hits the kernel counted but recorded no event for (kprobe_profile), set
    where the stats have the field; each kind of loss is also a warning."""
    lost = summary.get("lost_events_total")
    if isinstance(lost, int) and lost > st.lost_events:
        st.lost_events = lost
    misses = summary.get("probe_misses_total")
    misses = misses if isinstance(misses, int) else 0
    if hasattr(st, "probe_misses"):
        st.probe_misses = misses
    per = summary.get("probe_misses") or {}
    if misses:
        st.warn(f"the capture's probes missed {misses} hits (no event recorded): {misses_text(per)}")
    if summary.get("probe_profile_error"):
        st.warn(f"the capture could not count its probes' misses: {summary['probe_profile_error']}")
    for key, what in (("probes_failed", "refused by the kernel"), ("probes_skipped", "skipped for the kernel"),
                      ("tracepoints_failed", "not enabled"), ("tracepoints_missing", "missing from the kernel")):
        if summary.get(key):
            st.warn(f"the capture has no events of {', '.join(summary[key])}: {what}")

"""Record memtrace's probes and tracepoints on a live host into an ftrace text file.

The capture runs in a tracefs *instance* of its own (``instances/memtrace-<pid>``) when the
kernel has instances, so the host's top-level tracing_on, buffer size, clock and enabled
events are never touched; without instances it uses the top level and restores what it
changed. kprobe events are global definitions: each one this capture creates is removed
again on every exit path (normal end, signal, error, exception), and one it did not create
is never touched. A probe the kernel refuses is counted and reported; the others go on.

Lost events are read from ``per_cpu/cpuN/stats`` (``overrun``, ``dropped events``) at the
end and reported; the output header carries them too.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from memtrace.errors import EnvironmentProblem, InputError, MemtraceError
from memtrace.sources.trace.probedefs import Probe, ProbeSet

CAPTURE_SCHEMA = "memtrace.capture/1"


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

    @property
    def lost_total(self) -> int:
        return sum(v.get("overrun", 0) + v.get("dropped events", 0) for v in self.lost_events.values())

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
            "cleanup_errors": self.cleanup_errors,
            "bytes_written": self.bytes_written,
        }


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
    ):
        self.t = _TraceFS(Path(tracefs))
        self.probes = probes
        self.out = Path(out)
        self.duration = duration
        self.buffer_kb = buffer_kb
        self.use_instance = use_instance
        self.say = progress or (lambda m: None)
        self.stop_after = stop_after
        self._stop = False
        self._signals = 0
        # what this capture changed, for cleanup
        self._created: list[Probe] = []
        self._enabled: list[str] = []
        self._instance: str | None = None
        self._restore: dict[str, str] = {}
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
        tmp_body = None
        try:
            self._setup(res)
            tmp_body = self._record(res)
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
        except OSError:
            pass
        try:
            t.write(self._inst("buffer_size_kb"), str(self.buffer_kb))
        except OSError as e:
            self.say(f"could not set buffer_size_kb={self.buffer_kb}: {e.strerror}")
        # real addresses in %p fields (kmem:kmalloc ptr=...), so events join to objects
        try:
            if self._instance is None and t.exists("options/hash-ptr"):
                self._restore["options/hash-ptr"] = t.read("options/hash-ptr").strip()
            t.write(self._inst("options/hash-ptr"), "0")
        except OSError:
            pass
        if self._instance is None:
            t.write("trace", "")  # clear the top-level buffer (it was saved by nobody)
        # kprobe events
        self._dyn_file = "kprobe_events" if t.exists("kprobe_events") else "dynamic_events"
        existing = self._existing_events()
        for p in self.probes.installable:
            if p.event in existing:
                res.probes_failed.append({"probe": p.event, "line": p.line, "error": "already defined (another capture?); not touched"})
                continue
            try:
                if self._stop:
                    raise OSError(errno.EINTR, "capture interrupted during setup")
                t.write(self._dyn_file, p.line + "\n", append=True)
            except OSError as e:
                res.probes_failed.append({"probe": p.event, "line": p.line, "error": self._kernel_error(e)})
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
            except OSError:
                continue
            kv = {}
            for line in text.splitlines():
                k, _, v = line.partition(":")
                v = v.strip()
                if k.strip() in ("overrun", "commit overrun", "dropped events", "entries") and v.isdigit():
                    kv[k.strip()] = int(v)
            out[d.name] = kv
        return out

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
            f"# lost events (overrun + dropped): {res.lost_total}",
            f"# interrupted: {'yes' if res.interrupted else 'no'}; clock: boot if available",
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

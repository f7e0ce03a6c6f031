"""Trace captures → the event table (`memtrace.tables.events`).

`load_trace(path)` sniffs the format (ftrace text, trace-cmd report, trace.dat, perfetto) and
returns `(events, IngestStats)`. `trace-cmd report` text (its `cpus=N` first line, or event
lines only trace-cmd prints, in the first 64 KiB: `detect.sniff`) is rewritten into tracefs'
spelling as a trace.dat's own report is (`tracecmd.to_tracefs_text`); tracefs text is parsed
as it is.
"""

from __future__ import annotations

import json
import os

import pandas as pd

from memtrace.errors import InputError
from memtrace.sources.trace import detect
from memtrace.tables.events import IngestStats, check_events, conform_events


def _sidecar_kprobe_groups(path: str) -> tuple[dict[str, str], str | None]:
    """Kprobe groups from a lab `meta.json` next to the trace (`trace.kprobe_events_installed`),
    and a warning when such a file is there but cannot be read as one (none when absent)."""
    from memtrace.sources.trace.ftrace_text import kprobe_groups_from_defs

    meta = os.path.join(os.path.dirname(os.path.abspath(path)), "meta.json")
    if not os.path.exists(meta):
        return {}, None
    try:
        with open(meta) as f:
            m = json.load(f)
        return kprobe_groups_from_defs((m.get("trace") or {}).get("kprobe_events_installed") or []), None
    except (OSError, ValueError, AttributeError, TypeError, RecursionError) as e:  # RecursionError: nested too deeply
        return {}, f"{meta}: not a lab meta.json, its kprobe groups are not used ({type(e).__name__}: {e})"


def _resolve(path: str, kprobe_groups: dict[str, str] | None) -> tuple[str, dict[str, str], str | None]:
    """(format, kprobe groups, a warning about the sidecar meta.json or None) of a capture path."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a trace file")
    fmt = detect.sniff_file(path)
    sidecar, sidecar_warning = _sidecar_kprobe_groups(path)
    return fmt, {**sidecar, **(kprobe_groups or {})}, sidecar_warning


def load_trace(path: str, *, kprobe_groups: dict[str, str] | None = None) -> tuple[pd.DataFrame, IngestStats]:
    """Load any supported capture into the event table."""
    fmt, groups, sidecar_warning = _resolve(path, kprobe_groups)
    # A decoder exception that is not an InputError is memtrace's bug, not bad input: it
    # reaches the CLI as an internal error (exit 70, with its traceback).
    df, st = _load(path, fmt, groups)
    if sidecar_warning:
        st.warn(sidecar_warning)
    return check_events(conform_events(df)), st


def iter_trace(path: str, *, kprobe_groups: dict[str, str] | None = None, frame_bytes: int | None = None,
               stats: IngestStats | None = None):
    """Any supported capture as event tables in capture order, each indexed by its rows'
    positions in the whole capture: ftrace text in frames of about ``frame_bytes`` of text
    (memory: one frame), the other formats whole (one frame; perfetto and trace.dat are
    decoded by libraries that read the whole file). ``stats`` (an IngestStats) accumulates
    what was read."""
    fmt, groups, sidecar_warning = _resolve(path, kprobe_groups)
    st = stats if stats is not None else IngestStats()
    if fmt in (detect.PERFETTO, detect.TRACE_DAT, detect.TRACECMD_REPORT):
        df, one = _load(path, fmt, groups)
        for k, v in vars(one).items():
            setattr(st, k, v)
        frames = [df]
    else:
        from memtrace.sources.trace.ftrace_text import FRAME_BYTES, iter_ftrace_text

        frames = iter_ftrace_text(path, kprobe_groups=groups, frame_bytes=frame_bytes or FRAME_BYTES, stats=st)
    for df in frames:
        yield check_events(conform_events(df))
    if sidecar_warning:
        st.warn(sidecar_warning)


def _load(path: str, fmt: str, groups: dict[str, str]) -> tuple[pd.DataFrame, IngestStats]:
    if fmt == detect.PERFETTO:
        from memtrace.sources.trace.perfetto import load_perfetto

        df, st = load_perfetto(path, kprobe_groups=groups)
    elif fmt == detect.TRACE_DAT:
        from memtrace.sources.trace.tracecmd import load_trace_dat

        df, st = load_trace_dat(path, kprobe_groups=groups)
    elif fmt == detect.TRACECMD_REPORT:
        from memtrace.sources.trace.tracecmd import load_report_text

        df, st = load_report_text(path, kprobe_groups=groups)
    else:
        from memtrace.sources.trace.ftrace_text import load_ftrace_text

        df, st = load_ftrace_text(path, kprobe_groups=groups)
    return df, st


__all__ = ["load_trace", "iter_trace", "IngestStats"]

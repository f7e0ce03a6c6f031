"""trace-cmd: `trace-cmd report` text, and trace.dat read through `trace-cmd report`."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pandas as pd

from memtrace.errors import EnvironmentProblem, InputError
from memtrace.sources.trace.ftrace_text import parse_ftrace_text
from memtrace.tables.events import IngestStats


def load_report_text(path: str, *, kprobe_groups=None) -> tuple[pd.DataFrame, IngestStats]:
    """`trace-cmd report` output: `comm-pid [cpu] ts: event: fields`, header lines skipped."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_ftrace_text(data, path=path, fmt="trace-cmd-report", kprobe_groups=kprobe_groups)


def load_trace_dat(path: str, *, kprobe_groups=None, trace_cmd: str | None = None) -> tuple[pd.DataFrame, IngestStats]:
    """A trace.dat, converted with `trace-cmd report -t` (nanosecond timestamps)."""
    exe = trace_cmd or shutil.which("trace-cmd")
    if not exe:
        raise EnvironmentProblem(f"{path}: is a trace.dat; reading it needs trace-cmd (apt-get install trace-cmd)")
    with tempfile.TemporaryDirectory(prefix="memtrace-tracecmd-") as d:
        out = os.path.join(d, "report.txt")
        with open(out, "wb") as f:
            p = subprocess.run([exe, "report", "-t", "-i", path], stdout=f, stderr=subprocess.PIPE)
        if p.returncode != 0:
            msg = p.stderr.decode("utf-8", "replace").strip().splitlines()
            raise InputError(f"{path}: trace-cmd report failed: {msg[-1] if msg else 'exit ' + str(p.returncode)}")
        with open(out, "rb") as f:
            data = f.read()
    return parse_ftrace_text(data, path=path, fmt="trace.dat", kprobe_groups=kprobe_groups)

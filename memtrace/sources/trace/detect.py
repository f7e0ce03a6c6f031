"""Which capture format a file is, from its first bytes."""

from __future__ import annotations

import re

from memtrace.errors import InputError

TRACE_DAT_MAGIC = b"\x17\x08\x44tracing"

FTRACE_TEXT = "ftrace-text"
TRACECMD_REPORT = "trace-cmd-report"
TRACE_DAT = "trace.dat"
PERFETTO = "perfetto"

_EVENT_LINE = re.compile(rb"^\s*.*-\d+\s+(?:\(\s*[-\d]*\)\s+)?\[\d+\]\s+.*\d:\s+[^:\s]+:", re.M)


def sniff(head: bytes, path: str = "<buffer>") -> str:
    """Format of a capture from its first few KiB."""
    if not head:
        raise InputError(f"{path}: empty file")
    if head.startswith(TRACE_DAT_MAGIC):
        return TRACE_DAT
    if head.startswith(b"# tracer:") or head.startswith(b"#"):
        return FTRACE_TEXT
    if re.match(rb"^(version = \d+|cpus=\d+)", head):
        return TRACECMD_REPORT
    if _EVENT_LINE.search(head[:65536]):
        return FTRACE_TEXT
    # perfetto: a Trace is repeated field 1 (tag 0x0a) packets
    if head[0] == 0x0A:
        return PERFETTO
    try:
        head.decode("utf-8")
        text = True
    except UnicodeDecodeError:
        text = False
    if text and b"\n" in head:
        return FTRACE_TEXT  # text with no recognised event line yet; the parser will judge
    raise InputError(f"{path}: not a trace (not ftrace text, trace-cmd report, trace.dat or perfetto)")


def sniff_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a trace file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    return sniff(head, path)

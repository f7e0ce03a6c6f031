"""Which capture format a file is, from its first bytes."""

from __future__ import annotations

import re

from memtrace.errors import InputError

TRACE_DAT_MAGIC = b"\x17\x08\x44tracing"

FTRACE_TEXT = "ftrace-text"
TRACECMD_REPORT = "trace-cmd-report"
TRACE_DAT = "trace.dat"
PERFETTO = "perfetto"

_EVENT_LINE = re.compile(rb"^\s*.*-\d+\s+(?:\(\s*[-\d]*\)\s+)?\[\d+\]\s*.*\d:\s+[^:\s]+:", re.M)
#: `trace-cmd report`'s first line (`cpus=N`; `version = N` from older trace-cmd)
_REPORT_HEADER = re.compile(rb"\s*(?:version = \d+|cpus=\d+)[ \t\r]*(?:\n|$)")
#: how `trace-cmd report` event lines differ from tracefs' (which never prints these):
_REPORT_SIGNS = re.compile(
    # a buffer name before comm (tracefs pads comm to 16 columns: its lines start with a space)
    rb"^[^\s#:][^\s:]*: +\S[^\n]*?-\d+ +(?:\(\s*[-\d]*\)\s+)?\[\d+\]"
    # a marker printed by its format, "%ps: %s" (tracefs: tracing_mark_write: TEXT)
    rb"|\d: print: +[A-Za-z_][\w.]*: "
    # a kprobe's ip as its format's "(%lx)" / "(%lx <- %lx)" (tracefs: (func+0x0/0x60))
    rb"|\d: [^:\s]+: +\([0-9a-f]{16}(?: <- [0-9a-f]{16})?\)"
    # a NULL pointer as printf's %p prints it (tracefs: 0000000000000000)
    rb"|=\(nil\)[ \r\n]"
    # a raw-count timestamp (trace-cmd prints the boot and mono clocks so, "%12llu": no blank
    # after [cpu] from 12 digits on) right after [cpu]: tracefs prints latency flags there
    # ("d..1."), unless its irq-info option is off
    rb"|^ *\S[^\n]*?-\d+ +\[\d+\] *\d+: "
    # any timestamp with no blank after [cpu] ("%5llu.%09llu" filled: 6+ digit seconds)
    rb"|^ *\S[^\n]*?-\d+ +\[\d+\]\d",
    re.M,
)
#: an event line of `trace-cmd report -l` (latency format): [buffer: ]comm-pid, the CPU with
#: the latency flags run into it (irqs-off first, never a digit), the timestamp, then (with
#: --ts-diff) "(+DIFF)" or padding. A timestamp that fills its width ("%12llu", "%5llu.")
#: follows the flags with no blank: then the flags are taken as 5 characters (irqs-off,
#: need-resched, hard/softirq, preempt depth, migrate-disable: what trace-cmd 3.1 printed for
#: the lab's 6.1 and 6.12 recordings; "-0x.." when unknown). Other widths are not read then.
REPORT_LATENCY_LINE = re.compile(
    rb"^([^\s#:][^\s:]*: )?( *\S[^\n]*?-\d+) +(\d+)(?:([^\s\d]\S{3,6}) +|([^\s\d]\S{4}|-0x[0-9a-f]+))"
    rb"(\d+(?:\.\d+)?: )(?=(?: *\(\+-?[\d.]+\))? *[^:\s]+:)", re.M)


def sniff(head: bytes, path: str = "<buffer>") -> str:
    """Format of a capture from its first few KiB."""
    if not head:
        raise InputError(f"{path}: empty file")
    if head.startswith(TRACE_DAT_MAGIC):
        return TRACE_DAT
    if head.startswith(b"# tracer:") or head.startswith(b"#"):
        return FTRACE_TEXT
    if _REPORT_HEADER.match(head):
        return TRACECMD_REPORT
    if _EVENT_LINE.search(head[:65536]):
        # trace-cmd report text without its header line (cut, grepped): its event lines say so
        return TRACECMD_REPORT if _REPORT_SIGNS.search(head[:65536]) else FTRACE_TEXT
    if REPORT_LATENCY_LINE.search(head[:65536]):
        return TRACECMD_REPORT  # `trace-cmd report -l` text without its header line
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

"""`trace-cmd report` text handed to memtrace (`trace-cmd report > out.txt` on another host):
detected by its header or its event lines (memtrace.sources.trace.detect), rewritten into
tracefs' spelling by the normaliser trace.dat ingest uses (tracecmd.to_tracefs_text), without
the trace.dat's kallsyms and event formats.

The last tests make real report text from the committed fixtures/captures/*.trace.dat with
the host's trace-cmd, with and without -N (plugins), and compare it with ingesting the
trace.dat itself: the same frame but for two columns that need the trace.dat's kallsyms:
`args` of kprobe events (their ip stays an address) and `call_site` (no ``/0xsize``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from memtrace.analyses.charges import charges_by_step
from memtrace.sources.trace import detect, load_trace
from memtrace.sources.trace.tracecmd import parse_report_text, strip_buffer_prefixes
from memtrace.tables.lab_truth import load_truth

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "fixtures" / "captures"
TRACEFS_EXCERPTS = [CAPTURES / "force-6.1.page_counter.txt", ROOT / "fixtures" / "traces" / "restart-6.1.excerpt.txt"]

needs_trace_cmd = pytest.mark.skipif(shutil.which("trace-cmd") is None,
                                     reason="making report text needs trace-cmd (scripts/setup installs it)")

# lines of `trace-cmd report` of force-6.12.trace.dat (buffer memtrace-tc), unmodified
KPROBE = (b"memtrace-tc:           mapctl-470   [000] 10626570045: force_charge:         "
          b"(ffffffffa1017df4) counter=0xffff89eb81ca1900 nr=1 cgid=62\n")
KRETPROBE = (b"memtrace-tc:            mkdir-257   [001]  5799848271: pc_try_charge_ret:    "
             b"(ffffffff82b330b0 <- ffffffff82b3a8a7) ok=1\n")
MARKER = (b"memtrace-tc:               sh-253   [001]  7319005210: print:                "
          b"tracing_mark_write: memtrace_step 001 start\n")
KFREE_PLUGIN = (b"memtrace-tc:        trace-cmd-241   [000]  5587581291: kfree:                "
                b"(tomoyo_check_open_permission+0x107) call_site=tomoyo_check_open_permission+0x107 ptr=(nil)\n")
# of the full force run on 6.1 that made force-6.1.trace.dat, with plugins (plugin_kmem)
KMEM_PLUGIN = (b"            trace-cmd-160   [000]  6683143840: kmem_cache_alloc:     "
               b"(getname_flags.part.0+0x2b) call_site=getname_flags.part.0+0x2b ptr=0xffff8c9e413f1000 "
               b"bytes_req=4096 bytes_alloc=4096 gfp_flags=GFP_KERNEL node=-1 accounted=false\n")
# of `trace-cmd report -l` of force-6.1.trace.dat (latency format), unmodified
LATENCY = (b"memtrace-tc:    sleep-240     1.Ns1.  5588807251: kfree:                "
           b"(security_cred_free+0x3c) call_site=security_cred_free+0x3c ptr=0xffff8cb7d1211310\n")
KFREE_N = (b"            trace-cmd-247   [001]  6683979250: kfree:                "
           b"call_site=tomoyo_check_open_permission+0x107 ptr=0xffff8cb7c1b7c000\n")


def _one(text: bytes, **kw):
    ev, st = parse_report_text(text, **kw)
    assert len(ev) == 1 and st.malformed == 0, st
    return ev.iloc[0], st


# -- detection: from the first 64 KiB only -----------------------------------------------------

@pytest.mark.parametrize("head", [
    b"cpus=2\n" + KFREE_N,
    b"\nversion = 6\ncpus=2\n" + KFREE_N,
    KFREE_N + KPROBE,           # no header (cut or grepped), a buffer prefix
    KFREE_N + KPROBE.split(b":", 1)[1],  # a kprobe's raw ip
    MARKER.split(b":", 1)[1],   # print: tracing_mark_write: TEXT
    KFREE_PLUGIN.split(b":", 1)[1],  # ptr=(nil)
    KFREE_N,                    # a raw-count timestamp right after [cpu]
    LATENCY,                    # report -l: no [cpu], CPU and flags run together
])
def test_sniff_trace_cmd_report(head):
    assert detect.sniff(head) == detect.TRACECMD_REPORT


@pytest.mark.parametrize("path", TRACEFS_EXCERPTS)
def test_sniff_tracefs_text_stays_ftrace_text(path):
    data = path.read_bytes()
    assert detect.sniff(data[:65536]) == detect.FTRACE_TEXT
    # without its header (trace_pipe): its lines are tracefs' (latency flags, comm padded)
    body = b"".join(l for l in data.splitlines(keepends=True) if not l.startswith(b"#"))
    assert detect.sniff(body[:65536]) == detect.FTRACE_TEXT
    # a comm with a colon (kworker/0:1) is no buffer prefix
    assert detect.sniff(b"    kworker/0:1-12      [000] d..1.     3.857403: kfree: call_site=x+0x1/0x2 ptr=0\n") == detect.FTRACE_TEXT


# -- the five ways trace-cmd's text differs, and the rules for kprobes without a symbol table --

def test_kprobe_raw_ip_known_from_probe_definitions():
    """force_charge is one of memtrace's probes (probes/memcg.toml, group memtrace): no hint needed."""
    e, st = _one(KPROBE)
    assert (str(e["event"]), int(e["pages"]), int(e["cgroup_id"]), str(e["comm"]), st.unknown_events) == \
        ("memtrace:force_charge", 1, 62, "mapctl", 0)
    assert e["args"] == "(0xffffffffa1017df4+0x0) counter=0xffff89eb81ca1900"
    no_buffer, _ = _one(KPROBE.split(b":", 1)[1])  # the top-level buffer has no prefix
    assert no_buffer.equals(e)


def test_kprobe_group_from_caller_wins():
    e, _ = _one(KPROBE, kprobe_groups={"force_charge": "mine"})
    assert str(e["event"]) == "mine:force_charge"


def test_kretprobe_in_tracefs_order():
    e, _ = _one(KRETPROBE)
    assert (str(e["event"]), e["args"]) == ("memtrace:pc_try_charge_ret", "(0xffffffff82b3a8a7 <- 0xffffffff82b330b0) ok=1")


def test_unknown_name_with_raw_ip_is_a_kprobe_of_the_default_group():
    e, st = _one(b"cpus=1\n  a-1 [000] 100: my_probe: (ffffffff81000010) nr=3 x=7\n")
    assert (str(e["event"]), int(e["pages"]), e["args"], st.unknown_events) == \
        ("kprobes:my_probe", 3, "(0xffffffff81000010+0x0) x=7", 0)


def test_known_tracepoint_wins_over_a_prefix_unless_a_known_kprobe():
    """The decision for a `(...)` prefix on a tracepoint's name: plugin_kmem's (it repeats
    call_site=) is removed on any event; another `(sym+0xoff)` is removed on a known tracepoint
    unless the name is a known kprobe (a caller's or memtrace's probe); a raw ip on a known
    tracepoint that is not a known kprobe is left in its text."""
    e, _ = _one(KFREE_PLUGIN)
    assert (str(e["event"]), str(e["call_site"]), int(e["ptr"]), str(e["comm"])) == \
        ("kmem:kfree", "tomoyo_check_open_permission+0x107", 0, "trace-cmd")
    other = b"cpus=1\n  a-1 [000] 100: kfree:                (foo+0x10) call_site=bar+0x2 ptr=0x10\n"
    e, _ = _one(other)
    assert (str(e["event"]), int(e["ptr"])) == ("kmem:kfree", 16) and pd.isna(e["args"])
    e, _ = _one(other, kprobe_groups={"kfree": "mine"})
    assert str(e["event"]) == "mine:kfree" and e["args"].startswith("(foo+0x10)")
    e, _ = _one(b"cpus=1\n  a-1 [000] 100: kfree: (ffffffff81000010) call_site=bar+0x2 ptr=0x10\n")
    assert (str(e["event"]), e["args"]) == ("kmem:kfree", "(ffffffff81000010)")


def test_kmem_plugin_prefix_on_another_kmem_event():
    e, _ = _one(KMEM_PLUGIN)
    assert (str(e["event"]), int(e["bytes"]), int(e["bytes_req"]), str(e["call_site"])) == \
        ("kmem:kmem_cache_alloc", 4096, 4096, "getname_flags.part.0+0x2b")


def test_latency_format_line():
    e, st = _one(b"cpus=2\n" + LATENCY)
    assert (str(e["comm"]), int(e["pid"]), int(e["cpu"]), int(e["ts_ns"]), str(e["event"]), int(e["ptr"])) == \
        ("sleep", 240, 1, 5588807251, "kmem:kfree", 0xffff8cb7d1211310)
    assert any("report -l" in w for w in st.warnings)


# `trace-cmd report` and `report -R` of one trace.dat (the force scenario recorded on 6.1 with
# the default probes' tracepoints), unmodified: the same three events
PLAIN_AND_RAW_GFP = [
    (b"memtrace-tc:            sleep-184   [000]  4483661041: mm_page_alloc:        page=0xffffffffb379a99e "
     b"pfn=0x252e order=1 migratetype=0 gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO\n",
     b"memtrace-tc:            sleep-184   [000]  4483661041: mm_page_alloc:         pfn=0x252e order=1 "
     b"gfp_flags=0x400dc0 migratetype=0\n", True),
    (b"memtrace-tc:            sleep-184   [000]  4483808711: kmalloc:              (security_prepare_creds+0xc5) "
     b"call_site=security_prepare_creds+0xc5 ptr=0xffff8992011c2960 bytes_req=16 bytes_alloc=16 "
     b"gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO node=-1 accounted=true\n",
     b"memtrace-tc:            sleep-184   [000]  4483808711: kmalloc:               call_site=security_prepare_creds+0xc5 "
     b"ptr=0xffff8992011c2960 bytes_req=16 bytes_alloc=16 gfp_flags=0x400dc0 node=-1\n", True),
    (b"memtrace-tc:        trace-cmd-183   [001]  4485109081: kmalloc:              (show_header+0x3b) "
     b"call_site=show_header+0x3b ptr=0xffff89921ca5c000 bytes_req=4136 bytes_alloc=8192 gfp_flags=GFP_KERNEL "
     b"node=-1 accounted=false\n",
     b"memtrace-tc:        trace-cmd-183   [001]  4485109081: kmalloc:               call_site=show_header+0x3b "
     b"ptr=0xffff89921ca5c000 bytes_req=4136 bytes_alloc=8192 gfp_flags=0xcc0 node=-1\n", False),
]


@pytest.mark.parametrize("plain, raw, accounted", PLAIN_AND_RAW_GFP, ids=["mm_page_alloc", "kmalloc-account", "kmalloc"])
def test_raw_gfp_number_gives_accounted(plain, raw, accounted):
    """-R prints gfp_flags as a number and no `accounted=`: read as `gfp`, whose
    __GFP_ACCOUNT bit gives `accounted`, as the flag names and `accounted=` do."""
    p, _ = _one(b"cpus=2\n" + plain)
    r, _ = _one(b"cpus=2\n" + raw)
    assert bool(p["accounted"]) is bool(r["accounted"]) is accounted
    assert pd.isna(r["gfp_flags"]) and int(r["gfp"]) == int(raw.split(b"gfp_flags=")[1].split()[0], 16)
    for c in ("ts_ns", "event", "bytes", "bytes_req", "ptr", "pfn", "order", "pages", "call_site"):
        assert (pd.isna(p[c]) and pd.isna(r[c])) or p[c] == r[c], c


@pytest.mark.parametrize("line, ts_ns", [
    # trace-cmd prints the raw count with "%12llu" and seconds with "%5llu.": from 12 digits
    # (boot clock past 100 s of uptime) or 6-digit seconds (27.8 h) no blank follows [cpu]
    (b"           sleep-3946  [001]111264306005: kfree: call_site=x+0x1 ptr=0x10\n", 111264306005),
    (b"           sleep-3946  [001]1112643060051: kfree: call_site=x+0x1 ptr=0x10\n", 1112643060051),
    (b"           sleep-3946  [001]100000.123456789: kfree: call_site=x+0x1 ptr=0x10\n", 100000123456789),
    (b"           sleep-3946  [001] 11126430600: kfree: call_site=x+0x1 ptr=0x10\n", 11126430600),
    # -l: the flags (5 characters on these kernels) then the timestamp, no blank
    (b"   sleep-3946     1.....111264306005: kfree: call_site=x+0x1 ptr=0x10\n", 111264306005),
    (b"   sleep-3946    12.Ns1.111264306005: kfree: call_site=x+0x1 ptr=0x10\n", 111264306005),
    (b"   sleep-3946     1.....100000.123456789: kfree: call_site=x+0x1 ptr=0x10\n", 100000123456789),
], ids=["12-digits", "13-digits", "6-digit-secs", "11-digits", "-l-12-digits", "-l-cpu12", "-l-6-digit-secs"])
def test_timestamp_filling_its_width(line, ts_ns):
    for text in (b"cpus=2\n" + line, line * 2):  # with the header, and cut (detected by its lines)
        ev, st = parse_report_text(text) if text.startswith(b"cpus") else load_trace_bytes(text)
        assert st.malformed == 0 and len(ev) == (1 if text.startswith(b"cpus") else 2), st
        e = ev.iloc[0]
        assert (int(e["ts_ns"]), int(e["pid"]), str(e["event"]), int(e["ptr"])) == (ts_ns, 3946, "kmem:kfree", 16)
        assert int(e["cpu"]) == (12 if b"  12." in line else 1)


def load_trace_bytes(data: bytes):
    """`load_trace` on bytes: the format sniffed as `memtrace ingest` does."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".txt") as f:
        f.write(data)
        f.flush()
        ev, st = load_trace(f.name)
        assert st.format == "trace-cmd-report", st.format
        return ev, st


def test_ts_diff_only_after_the_timestamp_and_negative():
    """--ts-diff: "(+N)" after the header's timestamp goes, also "(+-N)" (time went backwards,
    printed with %lld); the same text inside a marker stays."""
    text = (b"cpus=1\n"
            b"              sh-247   [001]  6203536261:          print:                tracing_mark_write: step 1:   x: (+7)   y: z\n"
            b"              sh-247   [001]  6203536170: (+-91)   kfree:                call_site=x+0x1 ptr=0x10\n")
    ev, st = parse_report_text(text)
    assert st.malformed == 0 and len(ev) == 2
    assert ev["marker"].iloc[0] == "step 1:   x: (+7)   y: z"
    assert (int(ev["ts_ns"].iloc[1]), int(ev["ptr"].iloc[1])) == (6203536170, 16)


def test_crlf_line_ends():
    e, _ = _one(KFREE_PLUGIN.replace(b"\n", b"\r\n"))
    assert (str(e["event"]), int(e["ptr"]), str(e["call_site"])) == ("kmem:kfree", 0, "tomoyo_check_open_permission+0x107")


def test_marker_and_buffer_prefix():
    """Also: trace-cmd prints a clock it does not know to be ns-as-seconds (boot, mono) as a
    raw count, which is read as nanoseconds."""
    e, _ = _one(MARKER)
    assert (str(e["event"]), e["marker"], str(e["comm"]), int(e["pid"]), int(e["ts_ns"])) == \
        ("ftrace:print", "memtrace_step 001 start", "sh", 253, 7319005210)


def test_a_raw_ip_inside_fields_is_left_alone():
    e, _ = _one(b"cpus=1\n  a-1 [000] 100: tracing_mark_write: x: (ffffffff81000010) y\n")
    assert e["marker"] == "x: (ffffffff81000010) y"


def test_buffer_prefixes_found_in_the_text():
    text = (b"cpus=2\nA: " + KFREE_N.lstrip() + b"note: not an event line\n" + KFREE_N
            + b"long-name.2:" + KFREE_N + b"A:" + KFREE_N)
    out, names = strip_buffer_prefixes(text)
    assert names == [b"A", b"long-name.2"]
    assert out == b"cpus=2\n " + KFREE_N.lstrip() + b"note: not an event line\n" + KFREE_N * 3
    assert strip_buffer_prefixes(KFREE_N * 2) == (KFREE_N * 2, [])


# -- whole reports of the trace.dat fixtures ------------------------------------------------------

def _report(kernel: str, flags: list[str], dest: Path) -> Path:
    dat = CAPTURES / f"force-{kernel}.trace.dat"
    dest.write_bytes(subprocess.run(["trace-cmd", "report", *flags, "-i", str(dat)], capture_output=True, check=True).stdout)
    return dest


@needs_trace_cmd
@pytest.mark.parametrize("flags", [[], ["-N"], ["-t", "-N"], ["-l"], ["-l", "-t", "-N"], ["-R"], ["--ts-diff"],
                                   ["-l", "--ts-diff", "-R"]],
                         ids=["plugins", "-N", "-t-N", "-l", "-l-t-N", "-R", "--ts-diff", "-l--ts-diff-R"])
@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_report_text_reads_as_the_trace_dat(kernel, flags, tmp_path):
    dat, sd = load_trace(str(CAPTURES / f"force-{kernel}.trace.dat"))
    rep, sr = load_trace(str(_report(kernel, flags, tmp_path / "report.txt")))
    assert (sd.format, sr.format) == ("trace.dat", "trace-cmd-report")
    assert (sr.events_parsed, sr.unknown_events, sr.malformed, sr.lost_events) == (sd.events_parsed, 0, 0, 0)
    # the same frame, but for the two columns that need the trace.dat's kallsyms
    same = [c for c in dat.columns if c not in ("args", "call_site")]
    if "-l" in flags:  # latency format: comm cut to 8 characters, and a warning says so
        same.remove("comm")
        assert rep["comm"].astype(str).tolist() == dat["comm"].astype(str).str[:8].tolist()
        assert any("comm is cut to 8 characters" in w for w in sr.warnings)
    else:
        assert not any("report -l" in w for w in sr.warnings or [])
    pd.testing.assert_frame_equal(rep[same], dat[same])
    # call_site: trace-cmd's sym+0xoff, without tracefs' /0xsize
    assert rep["call_site"].astype(str).tolist() == \
        dat["call_site"].astype(str).str.replace(r"/0x[0-9a-f]+$", "", regex=True).tolist()
    # args: the same but for the ip of the kprobe events
    kp = dat["event"].astype(str).str.startswith("memtrace:")
    assert rep["args"][~kp].equals(dat["args"][~kp])
    strip = r"^\([^)]*\) ?"
    assert rep["args"][kp].str.replace(strip, "", regex=True).tolist() == dat["args"][kp].str.replace(strip, "", regex=True).tolist()
    ret = dat["event"].astype(str).str.endswith("_ret")
    assert rep["args"][kp & ~ret].str.match(r"\(0xffffffff[0-9a-f]{8}\+0x0\)").all()
    assert rep["args"][kp & ret].str.match(r"\(0xffffffff[0-9a-f]{8} <- 0xffffffff[0-9a-f]{8}\)").all()
    # and memtrace's analyses read both the same
    truth = load_truth(CAPTURES / f"force-{kernel}.trace.dat.truth.json")
    pd.testing.assert_frame_equal(charges_by_step(rep, truth), charges_by_step(dat, truth))


@needs_trace_cmd
@pytest.mark.parametrize("flags", [[], ["-l"], ["-l", "--ts-diff", "-R"]], ids=["plain", "-l", "-l--ts-diff-R"])
def test_report_text_without_header_and_the_cli(tmp_path, flags):
    """grep'd report text (no `cpus=` line): the event lines say what it is; `memtrace ingest
    --json` names the format."""
    text = _report("6.12", flags, tmp_path / "full.txt").read_bytes()
    cut = tmp_path / "cut.txt"
    cut.write_bytes(b"".join(l for l in text.splitlines(keepends=True) if b"cpus=" not in l))
    p = subprocess.run([sys.executable, "-m", "memtrace", "ingest", str(cut), "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["ingest"]["format"] == "trace-cmd-report"
    assert (s["ingest"]["unknown_events"], s["ingest"]["malformed"]) == (0, 0)
    counts = {e["event"]: e["count"] for e in s["events"]}
    assert counts["memtrace:force_charge"] == 53 and counts["ftrace:print"] == 5 and counts["kmem:kfree"] == 27118
    assert not any(re.match(r"kprobes:", e) for e in counts)

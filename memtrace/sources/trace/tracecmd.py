"""trace-cmd: `trace-cmd report` text, and trace.dat read through `trace-cmd report`.

A trace.dat is turned into text by the host's `trace-cmd report -t -N` and parsed as text;
`trace-cmd report` text a user made elsewhere (`trace-cmd report > out.txt`, with or without
-t / -N) is read the same way, by the same normaliser (`to_tracefs_text`), minus what needs
the trace.dat itself (its kallsyms, its event formats):

* ``-t``: full timestamps (nanoseconds). For clocks trace-cmd does not know to be in
  nanoseconds-as-seconds ("boot", "mono", ...; trace-cmd 3.1 lists only local, global, uptime
  and perf) it prints the raw count, e.g. ``6683093950:`` rather than ``6.683093950:``, with or
  without -t. Text made without -t from a local-clock file has microseconds only.
* ``-N``: no libtraceevent plugins. The plugins are whatever the reading host has installed
  and they rewrite events' text (Debian's plugin_kmem prints kmalloc & co. as
  ``(getname_flags.part.0+0x2b) call_site=...``, which looks like a kprobe's ``(func+0x0/0x40)``
  prefix); without them every event is printed by its own format from the trace.dat. In text
  made with plugins, plugin_kmem's prefix (it repeats the call_site= after it) is removed, and
  any other ``(sym+0xoff)`` prefix on a known tracepoint that is not a known kprobe: the
  tracepoint wins. Other plugins' rewrites (sched_switch's ``==>`` form, ...) stay as printed.
* A trace.dat holding more than one buffer (``trace-cmd record -B NAME`` always writes the
  top-level buffer too, empty) has every line prefixed by its buffer's name, ``NAME: comm-pid
  [cpu] ...``. The buffers are read with ``trace-cmd dump --summary`` (text: found at line
  starts, where a tracefs line never has one) and those prefixes removed; if more than one
  buffer of a trace.dat holds events they end up in one table and a warning says so.
* Kprobe events: their format's print fmt is ``"(%lx) ..."`` (``"(%lx <- %lx) ..."``, with
  ``__probe_func`` first, for return probes), so trace-cmd prints raw addresses,
  ``(ffffffffb3d330b0) counter=...`` and ``(ffffffffb3d330b0 <- ffffffffb3d3a8a7) ok=1``, where
  tracefs prints ``(page_counter_try_charge+0x0/0xb0)`` and ``(try_charge_memcg+0xc7/0x780 <-
  page_counter_try_charge)`` (return address first). The events with a ``__probe_ip`` or
  ``__probe_func`` field (``dump --events``) get their addresses symbolised with the trace.dat's
  own kallsyms (``dump --kallsyms``) into tracefs' form. Text has no kallsyms: the kprobes are
  known by name (`EventKinds`) and keep their addresses, ``(0xffffffffb3d330b0+0x0)`` and
  ``(0xffffffffb3d3a8a7 <- 0xffffffffb3d330b0)`` (tracefs' order; ``+0x0`` marks an entry
  probe's ip for the text parser, as tracefs' ``+0x0/0xb0`` does); so does an address missing
  from a trace.dat's kallsyms.
* Other differences from tracefs' text, made to read as tracefs prints them: a trace marker
  is ``print:    tracing_mark_write: TEXT`` (the event's name, then its "%ps: %s" format),
  tracefs prints ``tracing_mark_write: TEXT``; a NULL pointer is ``(nil)`` (tracefs:
  ``0000000000000000``); a ``%pS`` call site is ``sym+0xoff`` (tracefs: ``sym+0xoff/0xsize``;
  the size is added from a trace.dat's kallsyms when the name is unique there; text keeps
  ``sym+0xoff``). mm_page_alloc's ``page=`` stays wrong (libtraceevent cannot evaluate
  ``vmemmap_base``); its ``pfn`` is right.
* ``-l`` (latency format, text only): ``comm-pid  CPUflags  ts: event: ...`` (``trace-cm-241
  0.....  5587581291: kfree: ...``), comm cut to 8 characters and the CPU number run into the
  flags, is rewritten to ``comm-pid [CPU] flags ts:``; comm stays cut (a warning says so).
* ``--ts-diff`` (text only): the ``(+DIFF)`` after each timestamp is dropped.
* ``-R`` (raw fields): a kprobe's ``__probe_ip=IP`` (``__probe_func=F __probe_ret_ip=R``) is
  read as ``(IP)`` (``(F <- R)``), a marker's ``ip=tracing_mark_write buf=TEXT`` as
  ``tracing_mark_write: TEXT``, and a ``gfp_flags=0x...`` number (``-R`` prints no flag names)
  as ``gfp=0x...``, so ``accounted`` comes from its ``__GFP_ACCOUNT`` bit.
* Kprobe groups: text names a kprobe event without its group; a trace.dat stores it
  (``report -E`` lists system:event), so ``memtrace:pc_try_charge`` needs no lab meta.json.
  Text takes them from the caller (load_trace: a lab meta.json beside the file), then from
  memtrace's probe definitions (memtrace/probes/*.toml), else the kernel's default group ``kprobes``.
* The kernel's per-CPU statistics saved at the end of the recording (``report --stat``):
  overruns and dropped events count as lost events (a trace.dat only).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pandas as pd

from memtrace.errors import EnvironmentProblem, InputError
from memtrace.sources.trace import detect
from memtrace.sources.trace.ftrace_text import MARKER_EVENTS, group_of, parse_ftrace_text
from memtrace.tables.events import IngestStats

#: `trace-cmd dump --summary`: [buffer "NAME", "CLOCK" clock, 4096 page size, 2 cpus, 1220715 bytes flyrecord data]
_BUFFER = re.compile(r'\[buffer "([^"]*)", "([^"]*)" clock, \d+ page size, (\d+) cpus, (\d+) bytes')


def parse_report_text(data: bytes, *, path: str = "<buffer>", kprobe_groups=None) -> tuple[pd.DataFrame, IngestStats]:
    """`trace-cmd report` text (with or without -t, -N, buffer prefixes), read as load_trace_dat
    reads its own `trace-cmd report`, without what needs the trace.dat (its kallsyms and event
    formats; see `to_tracefs_text`). Kprobe events are known by name: `kprobe_groups`, then
    memtrace's probe definitions (memtrace/probes/*.toml), then memtrace's own names; a raw
    ``(ffffffff...)`` ip on any other event that is not a known tracepoint is a kprobe too (group
    ``kprobes``, the kernel's default)."""
    groups = {**probe_definition_groups(), **(kprobe_groups or {})}
    kinds = EventKinds(kprobe_names=set(groups))
    data, latency = from_latency_format(_without_ts_diff(data))
    df, st = parse_ftrace_text(to_tracefs_text(data, kinds), path=path, fmt=detect.TRACECMD_REPORT, kprobe_groups=groups)
    if latency:
        st.warn(f"{path}: `trace-cmd report -l` text: comm is cut to 8 characters there, and stays so")
    return df, st


#: `--ts-diff`: "(+DIFF)" and its padding after a line's first "TIMESTAMP:" (only padding on a
#: CPU's first line; "(+-N)" when time went backwards: trace-cmd prints the difference with %lld)
_TS_DIFF = re.compile(rb"^([^\n]*?\d:) +(?:\(\+-?[\d.]+\) +)?(?=[^\s:]+: )", re.M)


def _without_ts_diff(data: bytes) -> bytes:
    """`trace-cmd report --ts-diff` text without the diffs (decided on the first 64 KiB)."""
    return _TS_DIFF.sub(rb"\1 ", data) if b": (+" in data[:65536] else data


#: an ordinary event line's [cpu]
_CPU_BRACKETS = re.compile(rb"^[^\n]*?-\d+ +(?:\(\s*[-\d]*\)\s+)?\[\d+\]", re.M)


def from_latency_format(data: bytes) -> tuple[bytes, bool]:
    """`trace-cmd report -l` text → `trace-cmd report` text (``comm-pid [CPU] flags ts:``), and
    whether it was latency format: decided on the first 64 KiB (an event line in latency
    format, none with ``[CPU]``)."""
    head = data[:65536]
    if _CPU_BRACKETS.search(head) or not detect.REPORT_LATENCY_LINE.search(head):
        return data, False
    return detect.REPORT_LATENCY_LINE.sub(lambda m: b"%s%s [%s] %s %s" % (
        m.group(1) or b"", m.group(2), m.group(3), m.group(4) or m.group(5), m.group(6)), data), True


def load_report_text(path: str, *, kprobe_groups=None) -> tuple[pd.DataFrame, IngestStats]:
    """A file of `trace-cmd report` text (`parse_report_text`)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_report_text(data, path=path, kprobe_groups=kprobe_groups)


def probe_definition_groups() -> dict[str, str]:
    """{event name: group} of the kprobe events memtrace's own definitions (memtrace/probes/*.toml) make."""
    from memtrace.sources.trace.probedefs import default_kprobe_groups

    return default_kprobe_groups()


def _run(exe: str, args: list[str], path: str, out=subprocess.PIPE) -> bytes:
    p = subprocess.run([exe, *args, "-i", path], stdout=out, stderr=subprocess.PIPE)
    if p.returncode != 0:
        msg = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise InputError(f"{path}: trace-cmd {args[0]} failed: {msg[-1] if msg else 'exit ' + str(p.returncode)}")
    return p.stdout if out is subprocess.PIPE else b""


def buffers(path: str, *, trace_cmd: str | None = None) -> list[dict]:
    """The buffers of a trace.dat: name ("" for the top level), clock, cpus, bytes of data."""
    exe = _exe(path, trace_cmd)
    text = _run(exe, ["dump", "--summary"], path).decode("utf-8", "replace")
    return [{"name": n, "clock": c, "cpus": int(k), "bytes": int(b)} for n, c, k, b in _BUFFER.findall(text)]


def cpu_stats(path: str, *, trace_cmd: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """The per-CPU ring-buffer statistics trace-cmd saved at the end of the recording
    (`report --stat`), by buffer name ("" for the top level) and cpu ("cpu0", ...)."""
    exe = _exe(path, trace_cmd)
    text = _run(exe, ["report", "--stat"], path).decode("utf-8", "replace")
    out: dict[str, dict[str, dict[str, float]]] = {}
    buf, cpu = "", None
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if k == "Buffer":
            buf, cpu = v, None
        elif k == "CPU" and v.isdigit():
            cpu = f"cpu{v}"
            out.setdefault(buf, {})[cpu] = {}
        elif cpu is not None and v:
            try:
                out[buf][cpu][k] = float(v.split()[0])
            except ValueError:
                pass
    return out


def event_systems(path: str, *, trace_cmd: str | None = None) -> dict[str, str]:
    """{event name: system} of every event format stored in a trace.dat (`report -E`)."""
    exe = _exe(path, trace_cmd)
    text = _run(exe, ["report", "-E"], path).decode("utf-8", "replace")
    out: dict[str, str] = {}
    for line in text.splitlines():
        system, sep, name = line.strip().partition(":")
        if sep and system and name and " " not in line.strip():
            out.setdefault(name, system)
    return out


def kprobe_events(path: str, *, trace_cmd: str | None = None) -> tuple[set[str], set[str]]:
    """Names of the kprobe (``__probe_ip``) and kretprobe (``__probe_func``) events of a trace.dat."""
    exe = _exe(path, trace_cmd)
    text = _run(exe, ["dump", "--events"], path).decode("utf-8", "replace")
    entry, ret = set(), set()
    for block in re.split(r"\n(?=name: )", text):
        m = re.match(r"name: (\S+)", block)
        if not m:
            continue
        if re.search(r"field:unsigned long __probe_ip;", block):
            entry.add(m.group(1))
        elif re.search(r"field:unsigned long __probe_func;", block):
            ret.add(m.group(1))
    return entry, ret


class _Symbols:
    """Address → `name+0xoff/0xsize` from kallsyms text, as the kernel's %pS prints it
    (the size runs to the next symbol's address)."""

    def __init__(self, text: bytes) -> None:
        addrs, names = [], []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3 or parts[1] in (b"a", b"A") or len(parts[0]) != 16:
                continue
            try:
                a = int(parts[0], 16)
            except ValueError:
                continue
            mod = b" " + parts[3] if len(parts) > 3 else b""
            addrs.append(a)
            names.append((parts[2], mod))
        order = np.argsort(np.array(addrs, dtype=np.uint64), kind="stable")
        self.addrs = np.array(addrs, dtype=np.uint64)[order]
        self.names = [names[i] for i in order]
        self.distinct = np.unique(self.addrs)
        self._by_name: dict[bytes, int | None] | None = None

    def size_of(self, name: bytes) -> int | None:
        """The size of the symbol called ``name`` if that name is unique in kallsyms."""
        if self._by_name is None:
            by: dict[bytes, int | None] = {}
            for a, (n, _) in zip(self.addrs.tolist(), self.names):
                by[n] = None if (n in by and by[n] != a) else a
            self._by_name = by
        a = self._by_name.get(name)
        if a is None:
            return None
        j = int(np.searchsorted(self.distinct, np.uint64(a), side="right"))
        return int(self.distinct[j]) - a if j < len(self.distinct) else None

    def lookup(self, addr: int, offset: bool = True) -> bytes | None:
        if not len(self.addrs):
            return None
        i = int(np.searchsorted(self.addrs, np.uint64(addr), side="right")) - 1
        if i < 0:
            return None
        start = int(self.addrs[i])
        # the last name at this address (kallsyms order), as the kernel's lookup does
        name, mod = self.names[i]
        j = int(np.searchsorted(self.distinct, np.uint64(addr), side="right"))
        if j >= len(self.distinct):
            return None
        size = int(self.distinct[j]) - start
        if not offset:
            return name + mod
        return b"%s+0x%x/0x%x%s" % (name, addr - start, size, mod)


# -- trace-cmd's spelling → tracefs' -------------------------------------------------------------
#
# One normaliser for both inputs: the output of `trace-cmd report` that load_trace_dat runs, and
# `trace-cmd report` text a user made elsewhere (parse_report_text). Only the first has the file's
# kallsyms (`_Symbols`) and its event formats (which events are kprobes); text goes without.

#: a line's buffer prefix, `NAME:` right before the padded comm. A tracefs line never starts with
#: one: comm (at most 15 characters) is printed right-aligned in 16 columns, so it starts with a space.
_BUFFER_PREFIX = re.compile(rb"\n([^\s#:][^\s:]*):(?= +\S)")
_BUFFER_PREFIX_FIRST = re.compile(rb"([^\s#:][^\s:]*):(?= +\S)")
#: what follows a buffer prefix: an event header (comm-pid, optional tgid, [cpu])
_AFTER_PREFIX = re.compile(rb" +\S[^\n]*?-\d+ +(?:\(\s*[-\d]*\)\s+)?\[\d+\]")
#: a marker: its "%ps: %s" format's "NAME: ", or with -R its raw fields "ip=NAME buf="
_MARKER = re.compile(rb": print: +(?:([A-Za-z_][\w.]*: )|ip=\S+ buf=)")
_NIL = re.compile(rb"=\(nil\)(?=[ \r\n])")
_CALL_SITE = re.compile(rb"( call_site=)([A-Za-z_][\w.]*)\+0x([0-9a-f]+)(?=[ \n])")
#: libtraceevent's plugin_kmem prints "(%s+0x%x) ", the call site, before kmalloc & co.'s own
#: fields (call_site=... first): removed by one regex substitution, no Python per line
_KMEM_PLUGIN = re.compile(rb"\(([A-Za-z_][\w.]*\+0x[0-9a-f]+)\) (?=call_site=\1[ \r\n])")
#: a parenthesised prefix (right after an event name's colon, `_prefixes` checks): a kprobe's
#: "(%lx)", a kretprobe's "(%lx <- %lx)" (16 hex digits: a 64-bit kernel address), or a
#: plugin's "(sym+0xoff)". The search starts at "(", rarer in trace text than ":".
_PREFIX = re.compile(rb"\((?:([0-9a-f]{16})(?: <- ([0-9a-f]{16}))?|([A-Za-z_][\w.]*\+0x[0-9a-f]+))\)( ?)")


def strip_buffer_prefixes(data: bytes, names=()) -> tuple[bytes, list[bytes]]:
    """`data` without its lines' buffer prefixes (a trace.dat with several buffers: ``NAME:
    comm-pid [cpu] ...``), and the buffer names removed. `names`: names known beforehand (a
    trace.dat's `dump --summary`); others are found at line starts. A few passes over the text
    whatever its size: one replace per buffer name, and searches that skip every line starting
    with a space (every tracefs line and every line already stripped)."""
    found: list[bytes] = []

    def remove(data: bytes, name: bytes) -> bytes:
        tag = name + b":"
        return (data[len(tag):] if data.startswith(tag) else data).replace(b"\n" + tag, b"\n")

    for n in sorted(names, key=len, reverse=True):
        data = remove(data, n)
        found.append(n)
    pos = 0
    m = _BUFFER_PREFIX_FIRST.match(data)
    while m is not None or (m := _BUFFER_PREFIX.search(data, pos)) is not None:
        name = m.group(1)
        if name not in found and _AFTER_PREFIX.match(data, m.end()):
            found.append(name)
            data = remove(data, name)
            pos = m.start()  # the text before this line did not change
            m = _BUFFER_PREFIX_FIRST.match(data) if pos == 0 else None
            continue
        pos, m = m.end(), None  # a line that merely starts with `word:`
    return data, found


class EventKinds:
    """Which events are kprobes. A trace.dat's own formats say it exactly (`entry`/`ret`: the
    events with a __probe_ip or __probe_func field); for text, by name: a known kprobe name
    (`kprobe_names`: a caller's groups, memtrace's probe definitions, memtrace's own), else any
    name that is not a known tracepoint."""

    def __init__(self, entry: set[str] | None = None, ret: set[str] | None = None, kprobe_names=()) -> None:
        self.exact = entry is not None or ret is not None
        self.entry, self.ret = set(entry or ()), set(ret or ())
        self.names = set(kprobe_names) | self.entry | self.ret

    def kprobe(self, name: str, is_return: bool) -> bool:
        if self.exact:
            return name in (self.ret if is_return else self.entry)
        return name in self.names or (group_of(name) is None and name not in MARKER_EVENTS)

    def tracepoint(self, name: str) -> bool:
        """A known tracepoint (its group known to memtrace) and not a known kprobe: its text wins."""
        return name not in self.names and group_of(name) is not None


def to_tracefs_text(data: bytes, kinds: EventKinds, *, symbols: "_Symbols | None" = None,
                    buffers: list[str] | None = None) -> bytes:
    """trace-cmd report text → tracefs' spelling (module docstring). `buffers`: buffer names
    known beforehand (a trace.dat's); prefixes of others are found in the text. Without `symbols` (text a user
    hands in), addresses stay numbers: a kprobe's ``(ffffffffa1017df4)`` becomes
    ``(0xffffffffa1017df4+0x0)`` (the ``+0x`` marks it a kprobe's ip for the text parser, as
    tracefs' ``(func+0x0/0x60)`` does), a kretprobe's ``(FUNC <- RET)`` ``(0xRET <- 0xFUNC)``
    (tracefs' order), and call sites keep trace-cmd's ``sym+0xoff`` (no ``/0xsize``)."""
    data, _ = strip_buffer_prefixes(data, [n.encode() for n in buffers or ()])
    data = _from_raw_fields(data)
    data = _sub_rare(data, b": print: ", _MARKER, lambda m: b": " + (m.group(1) or b"tracing_mark_write: "))
    data = _NIL.sub(b"=0x0", data)
    if symbols is not None:
        data = _CALL_SITE.sub(_call_sites(symbols), data)
    return _prefixes(data, kinds, symbols)


#: `report -R` (raw fields) spellings: a kprobe's and a kretprobe's ip fields right after the
#: event name, a gfp number (a marker's fields: `_MARKER`)
_RAW_KPROBE = re.compile(rb"(: +)__probe_ip=([0-9a-f]{16})(?=[ \r\n])")
_RAW_KRETPROBE = re.compile(rb"(: +)__probe_func=([0-9a-f]{16}) __probe_ret_ip=([0-9a-f]{16})(?=[ \r\n])")
_RAW_GFP = re.compile(rb" gfp_flags=(0x[0-9a-f]+)(?=[ \r\n])")


def _from_raw_fields(data: bytes) -> bytes:
    """`trace-cmd report -R` text in the spelling of `trace-cmd report` (module docstring);
    each rewrite only runs when its field name is in the text."""
    if b"__probe_ip=" in data:
        data = _RAW_KPROBE.sub(rb"\1(\2)", data)
    if b"__probe_ret_ip=" in data:
        data = _RAW_KRETPROBE.sub(rb"\1(\2 <- \3)", data)
    if b" gfp_flags=0x" in data:
        data = _RAW_GFP.sub(rb" gfp=\1", data)
    return data


def _sub_rare(data: bytes, needle: bytes, rx: re.Pattern, repl) -> bytes:
    """`rx.sub(repl, data)` for a pattern whose every match starts with `needle` and that matches
    a few lines of a capture (step markers): bytes.find looks for it, far faster than the regex."""
    out, last = [], 0
    i = data.find(needle)
    while i >= 0:
        m = rx.match(data, i)
        if m is not None:
            out += (data[last:i], repl(m))
            last = m.end()
        i = data.find(needle, m.end() if m is not None else i + 1)
    return data if not out else b"".join(out) + data[last:]


def _call_sites(syms: "_Symbols"):
    sizes: dict[bytes, bytes] = {}

    def call_site(m: re.Match) -> bytes:
        key = m.group(0)
        got = sizes.get(key)
        if got is None:
            size = syms.size_of(m.group(2))
            got = key + (b"/0x%x" % size if size else b"")
            sizes[key] = got
        return got

    return call_site


def _prefixes(data: bytes, kinds: EventKinds, syms: "_Symbols | None") -> bytes:
    """The parenthesised prefix after an event's name: kprobe addresses in tracefs' form; a
    plugin's ``(sym+0xoff) `` removed (tracefs prints the fields only): plugin_kmem's, that
    repeats the call_site= that follows it, on any event (a kprobe's ip is never symbolic in
    trace-cmd's text); any other such prefix on a known tracepoint (that is not a known kprobe)."""
    cache: dict[tuple, bytes] = {}

    def named(a: bytes, offset: bool = True) -> bytes | None:
        return syms.lookup(int(a, 16), offset=offset) if syms is not None else None

    def sub(m: re.Match) -> bytes:
        # before the "(": `TIMESTAMP: NAME:` and the padding (C-speed finds, no regex: this
        # runs once per kprobe line, and per kmem line of a report made with plugins)
        st = m.start()
        colon = data.rfind(b":", max(0, st - 64), st)
        if colon < 0 or data[colon + 1: st].strip(b" ") or colon + 1 == st:
            return m.group(0)  # not right after an event name: inside an event's fields
        ns = data.rfind(b" ", max(0, colon - 96), colon) + 1
        if ns < 3 or data[ns - 2: ns] != b": " or not data[ns - 3: ns - 2].isdigit():
            return m.group(0)
        name = data[ns:colon]
        key = (name, m.group(0))
        got = cache.get(key)
        if got is None:
            a, b, plugin, space = m.groups()
            got = m.group(0)
            name = name.decode("utf-8", "replace")
            if plugin is not None:
                if kinds.tracepoint(name):
                    got = b""
            elif kinds.kprobe(name, b is not None):
                if b is None:
                    got = b"(" + (named(a) or b"0x" + a + b"+0x0") + b")" + space
                else:
                    # trace-cmd: (func <- ret_ip); tracefs: (ret_ip as sym+off/size <- func as sym)
                    got = b"(" + (named(b) or b"0x" + b) + b" <- " + (named(a, offset=False) or b"0x" + a) + b")" + space
            cache[key] = got
        return got

    data = _KMEM_PLUGIN.sub(b"", data)  # before `sub` reads positions in it
    return _PREFIX.sub(sub, data)


def _exe(path: str, trace_cmd: str | None) -> str:
    exe = trace_cmd or shutil.which("trace-cmd")
    if not exe:
        raise EnvironmentProblem(f"{path}: is a trace.dat; reading it needs trace-cmd (apt-get install trace-cmd)")
    return exe


def load_trace_dat(path: str, *, kprobe_groups=None, trace_cmd: str | None = None) -> tuple[pd.DataFrame, IngestStats]:
    """A trace.dat, converted with `trace-cmd report -t -N` (see the module docstring)."""
    exe = _exe(path, trace_cmd)
    notes: list[str] = []

    def optional(fn, default):
        # the metadata steps: a trace-cmd too old for one (no `dump`) costs that step only
        try:
            return fn()
        except InputError as e:
            notes.append(f"{e}; read without it")
            return default

    bufs = optional(lambda: buffers(path, trace_cmd=exe), [])
    with tempfile.TemporaryDirectory(prefix="memtrace-tracecmd-") as d:
        out = os.path.join(d, "report.txt")
        with open(out, "wb") as f:
            _run(exe, ["report", "-t", "-N"], path, out=f)
        with open(out, "rb") as f:
            data = f.read()
    kp = optional(lambda: kprobe_events(path, trace_cmd=exe), None)
    syms = optional(lambda: _Symbols(_run(exe, ["dump", "--kallsyms"], path)), None)
    # a trace.dat names each event's group (system) itself; a caller's mapping wins
    systems = optional(lambda: event_systems(path, trace_cmd=exe), {})
    if kp is not None:
        entry, ret = kp
        kinds = EventKinds(entry, ret)
        groups = {n: systems[n] for n in entry | ret if n in systems}
    else:  # without `dump --events`: kprobes by name, as for text (the parser asks groups of kprobes only)
        groups = dict(systems)
        kinds = EventKinds(kprobe_names={*(kprobe_groups or {}), *probe_definition_groups()})
    groups.update(kprobe_groups or {})
    # `NAME:` before each line of a file with several buffers (found in the text without `dump`)
    named = [b["name"] for b in bufs if b["name"]] if len(bufs) > 1 else []
    data = to_tracefs_text(data, kinds, symbols=syms, buffers=named)
    df, st = parse_ftrace_text(data, path=path, fmt="trace.dat", kprobe_groups=groups)
    with_data = [b["name"] or "(top level)" for b in bufs if b["bytes"] > 0]
    if len(with_data) > 1:
        st.warn(f"events of {len(with_data)} buffers ({', '.join(with_data)}) are merged into one table")
    lost = 0
    for per_cpu in optional(lambda: cpu_stats(path, trace_cmd=exe), {}).values():
        for s in per_cpu.values():
            lost += int(s.get("overrun", 0)) + int(s.get("dropped events", 0))
    for n in notes:
        st.warn(n)
    if lost > st.lost_events:
        st.warn(f"the kernel's statistics saved in the trace.dat count {lost} events lost (overrun or dropped)")
        st.lost_events = lost
    return df, st

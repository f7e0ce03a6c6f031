"""trace-cmd: `trace-cmd report` text, and trace.dat read through `trace-cmd report`.

A trace.dat is turned into text by the host's `trace-cmd report -t -N` and parsed as text:

* ``-t``: full timestamps (nanoseconds). For clocks trace-cmd does not know to be in
  nanoseconds-as-seconds ("boot", "mono", ...; trace-cmd 3.1 lists only local, global, uptime
  and perf) it prints the raw count, e.g. ``6683093950:`` rather than ``6.683093950:``.
* ``-N``: no libtraceevent plugins. The plugins are whatever the reading host has installed
  and they rewrite events' text (Debian's plugin_kmem prints kmalloc & co. as
  ``(getname_flags.part.0+0x2b) call_site=...``, which looks like a kprobe's ``(func+0x0/0x40)``
  prefix); without them every event is printed by its own format from the trace.dat.
* A trace.dat holding more than one buffer (``trace-cmd record -B NAME`` always writes the
  top-level buffer too, empty) has every line prefixed by its buffer's name, ``NAME: comm-pid
  [cpu] ...``. The buffers are read with ``trace-cmd dump --summary`` and those prefixes
  removed; if more than one buffer holds events they end up in one table and a warning says so.
* Kprobe events: their format's print fmt is ``"(%lx) ..."`` (``"(%lx <- %lx) ..."``, with
  ``__probe_func`` first, for return probes), so trace-cmd prints raw addresses,
  ``(ffffffffb3d330b0) counter=...`` and ``(ffffffffb3d330b0 <- ffffffffb3d3a8a7) ok=1``, where
  tracefs prints ``(page_counter_try_charge+0x0/0xb0)`` and ``(try_charge_memcg+0xc7/0x780 <-
  page_counter_try_charge)`` (return address first). The events with a ``__probe_ip`` or
  ``__probe_func`` field (``dump --events``) get their addresses symbolised with the trace.dat's
  own kallsyms (``dump --kallsyms``) into tracefs' form.
* Other differences from tracefs' text, made to read as tracefs prints them: a trace marker
  is ``print:    tracing_mark_write: TEXT`` (the event's name, then its "%ps: %s" format),
  tracefs prints ``tracing_mark_write: TEXT``; a NULL pointer is ``(nil)`` (tracefs:
  ``0000000000000000``); a ``%pS`` call site is ``sym+0xoff`` (tracefs: ``sym+0xoff/0xsize``;
  the size is added from kallsyms when the name is unique there). mm_page_alloc's ``page=``
  stays wrong (libtraceevent cannot evaluate ``vmemmap_base``); its ``pfn`` is right.
* Kprobe groups: text names a kprobe event without its group; a trace.dat stores it
  (``report -E`` lists system:event), so ``memtrace:pc_try_charge`` needs no lab meta.json.
* The kernel's per-CPU statistics saved at the end of the recording (``report --stat``):
  overruns and dropped events count as lost events.
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
from memtrace.sources.trace.ftrace_text import parse_ftrace_text
from memtrace.tables.events import IngestStats

#: `trace-cmd dump --summary`: [buffer "NAME", "CLOCK" clock, 4096 page size, 2 cpus, 1220715 bytes flyrecord data]
_BUFFER = re.compile(r'\[buffer "([^"]*)", "([^"]*)" clock, \d+ page size, (\d+) cpus, (\d+) bytes')


def load_report_text(path: str, *, kprobe_groups=None) -> tuple[pd.DataFrame, IngestStats]:
    """`trace-cmd report` output: `comm-pid [cpu] ts: event: fields`, header lines skipped."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_ftrace_text(data, path=path, fmt="trace-cmd-report", kprobe_groups=kprobe_groups)


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


_MARKER = re.compile(rb": print: +([A-Za-z_][\w.]*: )")
_NIL = re.compile(rb"=\(nil\)(?=[ \n])")
_CALL_SITE = re.compile(rb"( call_site=)([A-Za-z_][\w.]*)\+0x([0-9a-f]+)(?=[ \n])")


def _as_tracefs_text(data: bytes, path: str, exe: str, entry: set[str], ret: set[str]) -> bytes:
    """trace-cmd report text → tracefs' spelling (module docstring)."""
    data = _MARKER.sub(rb": \1", data)
    data = _NIL.sub(b"=0x0", data)
    syms = _Symbols(_run(exe, ["dump", "--kallsyms"], path))
    sizes: dict[bytes, bytes] = {}

    def call_site(m: re.Match) -> bytes:
        key = m.group(0)
        got = sizes.get(key)
        if got is None:
            size = syms.size_of(m.group(2))
            got = key + (b"/0x%x" % size if size else b"")
            sizes[key] = got
        return got

    data = _CALL_SITE.sub(call_site, data)
    return _symbolise_kprobes(data, entry, ret, syms)


#: a kprobe's "(%lx)" or a kretprobe's "(%lx <- %lx)" right after the event name's colon
_RAW_IP = re.compile(rb":( +)\(([0-9a-f]{16})(?: <- ([0-9a-f]{16}))?\)")


def _symbolise_kprobes(data: bytes, entry: set[str], ret: set[str], syms: "_Symbols") -> bytes:
    if not (entry | ret):
        return data
    entry_b, ret_b = {n.encode() for n in entry}, {n.encode() for n in ret}
    cache: dict[tuple, bytes] = {}

    def sub(m: re.Match) -> bytes:
        # the event name: from the space before it to the colon this match starts at
        name = data[data.rfind(b" ", 0, m.start()) + 1: m.start()]
        key = (name, m.group(0))
        got = cache.get(key)
        if got is None:
            pad, a, b = m.group(1), m.group(2), m.group(3)
            got = m.group(0)
            if b is None and name in entry_b:
                s = syms.lookup(int(a, 16))
                if s:
                    got = b":" + pad + b"(" + s + b")"
            elif b is not None and name in ret_b:
                # trace-cmd: (func <- ret_ip); tracefs: (ret_ip as sym+off/size <- func as sym)
                f, r = syms.lookup(int(a, 16), offset=False), syms.lookup(int(b, 16))
                if f and r:
                    got = b":" + pad + b"(" + r + b" <- " + f + b")"
            cache[key] = got
        return got

    return _RAW_IP.sub(sub, data)


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
    named = [b["name"] for b in bufs if b["name"]]
    if len(bufs) > 1 and named:
        # `NAME:` before each event line of a file with several buffers
        for n in sorted(named, key=len, reverse=True):
            tag = n.encode() + b":"
            data = (data[len(tag):] if data.startswith(tag) else data).replace(b"\n" + tag, b"\n")
    entry, ret = optional(lambda: kprobe_events(path, trace_cmd=exe), (set(), set()))
    data = optional(lambda: _as_tracefs_text(data, path, exe, entry, ret), data)
    # a trace.dat names each kprobe event's group (system) itself; a caller's mapping wins
    systems = optional(lambda: event_systems(path, trace_cmd=exe), {})
    groups = {n: systems[n] for n in entry | ret if n in systems}
    groups.update(kprobe_groups or {})
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

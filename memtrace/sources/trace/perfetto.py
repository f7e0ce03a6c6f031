"""Perfetto protobuf traces → event table, with the `perfetto` pip package's own protos.

No trace_processor binary is needed. Read: ftrace event bundles (typed kmem, cgroup, print,
task and kprobe events; legacy `GenericFtraceEvent`s; dense generic events described by
`generic_event_descriptors`), `compressed_packets` (zlib), the process tree and
`task_newtask` / `task_rename` for thread names, and loss: bundles flagged `lost_events` and the
per-CPU ring-buffer `overrun` / `dropped_events` deltas of `ftrace_stats`.

The outer `Trace` is split packet by packet (field 1, length-delimited) so a cut or corrupt
file keeps every packet before the damage; the damage is counted, and fatal only when nothing
decodes. Perfetto's `KprobeEvent` carries the probe name and type only, no fetch-args, so kprobe
rows from perfetto have no `cgroup_id`.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.message import DecodeError

from memtrace.errors import EnvironmentProblem, InputError
from memtrace.sources.trace.ftrace_text import NUMERIC_BASE, canonical_event, columns_for, derive
from memtrace.tables.events import COLUMNS, EVENT_COLUMNS, IngestStats, coerce_events, values_out_of_range_warning

_TYPED_ALLOC = {"kmalloc", "kmem_cache_alloc", "kmalloc_node", "kmem_cache_alloc_node"}
_I31 = 1 << 31  # pid, cpu, order: Int32 columns
_I63 = 1 << 63  # ts_ns and the Int64 size columns
_M64 = (1 << 64) - 1
#: [lo, hi) of the integer columns a value must fit; UInt64 columns take any value mod 2^64
_RANGE = {"Int64": (-_I63, _I63), "Int32": (-_I31, _I31), "UInt32": (0, 1 << 32)}
_MOD64_COLS = {"ptr", "gfp", "pfn", "cgroup_id"}
_TYPED_FREE = {"kfree", "kmem_cache_free"}
_HEX_STR_COLS = {"call_site"}


def _pb2():
    try:
        from perfetto.protos.perfetto.trace import perfetto_trace_pb2
    except ImportError as e:  # pragma: no cover - perfetto is a dependency
        raise EnvironmentProblem(f"the perfetto Python package is needed to read perfetto traces ({e})") from None
    return perfetto_trace_pb2


def _varint(data, pos):
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise IndexError
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _split_packets(pb, n):
    """Spans of the Trace's packets, and (offset, cut) of the damage that ends it, if any.
    ``pb`` may run on past ``n`` (zero padding): nothing there is read as data."""
    pkts = []
    pos = 0
    while pos < n:
        try:
            key, p2 = _varint(pb, pos)
            field, wire = key >> 3, key & 7
            if wire == 2:
                ln, p3 = _varint(pb, p2)
                if p3 + ln > n:
                    return pkts, (pos, True)
                if field == 1:
                    pkts.append((p3, p3 + ln))
                pos = p3 + ln
            elif wire == 0:
                _, end = _varint(pb, p2)
                if end > n:  # read into the zero padding past the data
                    raise IndexError
                pos = end
            elif wire in (1, 5):  # fixed64, fixed32
                if p2 + (8 if wire == 1 else 4) > n:
                    return pkts, (pos, True)
                pos = p2 + (8 if wire == 1 else 4)
            else:
                raise ValueError(f"wire type {wire}")
        except IndexError:  # a key, length or value varint runs past the end: cut there
            return pkts, (pos, True)
        except ValueError:
            return pkts, (pos, False)
    return pkts, None


def _report_damage(st: IngestStats, where: str, n: int, damage) -> None:
    """Count and report the damage that ended a packet stream (from `_split_packets`)."""
    if damage is None:
        return
    pos, cut = damage
    st.truncated = True
    st.malformed += 1
    if cut:
        st.warn(f"{where}: cut inside a packet at byte {pos} of {n}; kept the packets before it")
    else:
        st.warn(f"{where}: undecodable bytes at offset {pos} of {n}; kept the packets before it")


def iter_packet_bytes(data, st: IngestStats, where: str):
    """Yield each TracePacket's bytes from a serialized Trace; count damage in `st`."""
    n = len(data)
    pkts, damage = _split_packets(data, n)
    for s, e in pkts:
        yield data[s:e]
    _report_damage(st, where, n, damage)


class _Builder:
    """Column arrays filled by row index."""

    _ROW_LISTS = ("ts", "cpu", "pid", "event")

    def __init__(self):
        self.ts: list[int] = []
        self.cpu: list[int] = []
        self.pid: list[int] = []
        self.event: list[str] = []
        self.cols: dict[str, dict[int, object]] = {}
        #: field values that do not fit their column: left null, the event kept
        self.values_out_of_range = 0
        #: text fields that were not UTF-8 (decoded with replacement characters)
        self.bad_text = 0

    def text(self, v):
        """A string field's value as str: upb hands back bytes when they are not UTF-8."""
        if isinstance(v, bytes):
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                self.bad_text += 1
                return v.decode("utf-8", "replace")
        return v

    def add(self, ts, cpu, pid, event) -> int:
        self.ts.append(ts)
        self.cpu.append(cpu)
        self.pid.append(pid)
        self.event.append(event)
        return len(self.ts) - 1

    def set(self, col, row, value):
        self.cols.setdefault(col, {})[row] = value

    def set_many(self, col, rows, values):
        d = self.cols.setdefault(col, {})
        d.update(zip(rows, values))


def _field_value(f):
    """Value of a GenericFtraceEvent.Field."""
    w = f.WhichOneof("value")
    return getattr(f, w) if w else None


def _kv_str(b, k, v):
    return f"{k}={b.text(v)}"


_COLS_FOR: dict[str, dict[str, str]] = {}  # columns_for, per event name


def _text_int(s: str, base: int) -> int | None:
    """A number written as text, read as the text formats read it (`parse_ints`): optional
    '-', optional 0x (then hex), else digits of the column's base; None if it is not one."""
    t = s[1:] if s.startswith("-") else s
    if t[:2] in ("0x", "0X"):
        base, t = 16, t[2:]
    elif base != 16:  # 0: decimal unless 0x
        base = 10
    if not t or not all(c in (_HEXDIGITS if base == 16 else _DECDIGITS) for c in t):
        return None
    v = int(t, base)
    return -v if s.startswith("-") else v


_HEXDIGITS = frozenset("0123456789abcdefABCDEF")
_DECDIGITS = frozenset("0123456789")


def _route(b: _Builder, row: int, event: str, known: bool, fields: list[tuple[str, object]]):
    """Put named field values into columns, the rest into args. A number that does not fit its
    column (UInt64 columns take any value mod 2^64) is left null there, kept as `key=value` in args,
    and counted in `b.values_out_of_range`: the event stays, as in the text formats."""
    mapping = (_COLS_FOR.get(event) or _COLS_FOR.setdefault(event, columns_for(event))) if known else {}
    rest = []
    used = set()
    for k, v in fields:
        col = mapping.get(k)
        if col and col not in used and v is not None:
            if col in NUMERIC_BASE:
                if isinstance(v, (bytes, str)):
                    s = b.text(v)
                    v = _text_int(s, NUMERIC_BASE[col])
                    if v is None:
                        rest.append(_kv_str(b, k, s))
                        continue
                try:
                    v = int(v)
                except (TypeError, ValueError):  # not a number (a repeated or message field)
                    rest.append(_kv_str(b, k, v))
                    continue
                if col in _MOD64_COLS and -_M64 <= v <= _M64:  # any 64-bit magnitude, mod 2^64
                    v &= _M64
                elif col in _MOD64_COLS:
                    b.values_out_of_range += 1
                    rest.append(f"{k}={v}")
                    continue
                else:
                    lo, hi = _RANGE[COLUMNS[col].dtype]
                    if not lo <= v < hi:
                        b.values_out_of_range += 1
                        rest.append(f"{k}={v}")
                        continue
                b.set(col, row, v)
            elif col == "accounted":
                v = b.text(v)
                b.set(col, row, bool(v) if not isinstance(v, str) else v.lower() in ("1", "true"))
            elif col in _HEX_STR_COLS and isinstance(v, int):
                b.set(col, row, f"0x{v & _M64:x}")
            elif col == "gfp_flags" and isinstance(v, int):
                b.set("gfp", row, v & _M64)
            else:
                b.set(col, row, b.text(v) if isinstance(v, bytes) else str(v))
            used.add(col)
        else:
            rest.append(_kv_str(b, k, v))
    if rest:
        b.set("args", row, " ".join(rest))


class _Reader:
    def __init__(self, st: IngestStats, kprobe_groups=None):
        pb2 = _pb2()
        self.pb2 = pb2
        self.st = st
        self.b = _Builder()
        self.kprobe_groups = kprobe_groups
        self.names: dict[int, str] = {}  # tid -> comm
        self.proc_names: dict[int, str] = {}
        self.dense: dict[int, tuple[str, object]] = {}  # field id -> (group, message class)
        self.stats_start: dict[int, tuple[int, int, int]] = {}
        self.stats_end: dict[int, tuple[int, int, int]] = {}
        self.typed: dict[str, tuple[list[int], list]] = {}  # oneof name -> (rows, messages)
        self.fe_fields = pb2.FtraceEvent.DESCRIPTOR.fields_by_name
        #: events dropped as malformed because ts, pid or cpu does not fit its column
        self.out_of_range = 0

    def _out_of_range(self):
        self.st.malformed += 1
        self.out_of_range += 1

    def packet(self, raw: bytes, depth: int = 0):
        pb2 = self.pb2
        pkt = pb2.TracePacket()
        try:
            pkt.ParseFromString(raw)
        except DecodeError:  # damaged bytes; any other exception is memtrace's bug
            self.st.malformed += 1
            return
        self.st.packets_read += 1
        if pkt.HasField("compressed_packets"):
            try:
                inner = zlib.decompress(pkt.compressed_packets)
            except zlib.error as e:
                self.st.malformed += 1
                self.st.warn(f"{self.st.path}: compressed_packets not zlib ({e}); skipped")
                return
            self.inner_packets(inner, f"{self.st.path} (compressed packets)", depth + 1)
            return
        which = pkt.WhichOneof("data")
        if which == "ftrace_events":
            self.bundle(pkt.ftrace_events)
        elif which == "process_tree":
            text = self.b.text
            for t in pkt.process_tree.threads:
                if t.name:
                    self.names[t.tid] = text(t.name)
            for p in pkt.process_tree.processes:
                if p.cmdline:
                    name = text(p.cmdline[0])
                    if not p.cmdline_is_comm:
                        name = name.rsplit("/", 1)[-1]
                    self.proc_names[p.pid] = name
        elif which == "ftrace_stats":
            fs = pkt.ftrace_stats
            d = self.stats_start if fs.phase == pb2.FtraceStats.Phase.START_OF_TRACE else self.stats_end
            for c in fs.cpu_stats:
                d[c.cpu] = (c.overrun, c.commit_overrun, c.dropped_events)

    def inner_packets(self, inner: bytes, where: str, depth: int):
        for r in iter_packet_bytes(inner, self.st, where):
            self.packet(r, depth)

    def bundle(self, bundle):
        st = self.st
        b = self.b
        cpu = bundle.cpu
        if bundle.lost_events:
            st.lost_event_flags += 1
        for d in bundle.generic_event_descriptors:
            self.dense[d.field_id] = (self.b.text(d.group_name), d.event_descriptor)
        if bundle.HasField("compact_sched"):
            cs = bundle.compact_sched
            k = len(cs.switch_timestamp) + len(cs.waking_timestamp)
            if k:
                st.warn(f"{st.path}: {k} compact sched events (sched_switch/sched_waking) not read")
        typed = self.typed
        add = b.add
        cpu_bad = cpu >= _I31
        for ev in bundle.event:
            which = ev.WhichOneof("event")
            if which is None:
                self._dense_event(ev, cpu)
                continue
            ts = ev.timestamp
            pid = ev.pid
            if pid >= _I31 or ts >= _I63 or cpu_bad:  # cannot be put in the Int32 / int64 columns
                self._out_of_range()
                continue
            row = add(ts, cpu, pid, which)
            lst = typed.get(which)
            if lst is None:
                lst = typed[which] = ([], [])
            lst[0].append(row)
            lst[1].append(getattr(ev, which))

    def _dense_event(self, ev, cpu):
        from google.protobuf.unknown_fields import UnknownFieldSet

        st = self.st
        for uf in UnknownFieldSet(ev):
            if uf.wire_type != 2 or uf.field_number not in self.dense:
                continue
            group, desc = self.dense[uf.field_number]
            try:
                cls = self._dense_class(uf.field_number, desc)
                msg = cls()
                msg.ParseFromString(uf.data)
            except (DecodeError, TypeError, KeyError):  # damaged bytes; a descriptor the pool will not build
                st.malformed += 1
                return
            if ev.pid >= _I31 or ev.timestamp >= _I63 or cpu >= _I31:
                self._out_of_range()
                return
            name = cls.DESCRIPTOR.name
            event, known = (f"{group}:{name}", True) if group else canonical_event(name)
            if not known:
                st.unknown_event_names[name] = st.unknown_event_names.get(name, 0) + 1
            row = self.b.add(ev.timestamp, cpu, ev.pid, event)
            _route(self.b, row, event, True, [(f.name, v) for f, v in msg.ListFields()])
            return
        st.malformed += 1

    _classes: dict = {}

    def _dense_class(self, field_id, desc_bytes):
        key = (field_id, desc_bytes)
        cls = self._classes.get(key)
        if cls is None:
            from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

            dp = descriptor_pb2.DescriptorProto()
            dp.ParseFromString(desc_bytes)
            fdp = descriptor_pb2.FileDescriptorProto(name=f"memtrace_dense_{field_id}_{len(self._classes)}.proto",
                                                     package=f"memtrace.dense{len(self._classes)}")
            fdp.message_type.add().CopyFrom(dp)
            pool = descriptor_pool.DescriptorPool()
            pool.Add(fdp)
            cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{fdp.package}.{dp.name}"))
            self._classes[key] = cls
        return cls

    # --- per-type column extraction --------------------------------------------------------
    def finish(self) -> pd.DataFrame:
        self.typed_columns()
        return self.frame()

    def _fitting(self, col, rows, values, top, key) -> dict[int, str]:
        """Set `col` where the value is below `top`; the rest stay null and are counted, and
        come back as {row: "key=value"} for the event's args (nothing is lost)."""
        bad = {}
        if values and max(values) >= top:
            ok = [(r, v) for r, v in zip(rows, values) if v < top]
            bad = {r: f"{key}={v}" for r, v in zip(rows, values) if v >= top}
            self.b.values_out_of_range += len(bad)
            rows, values = [r for r, _ in ok], [v for _, v in ok]
        self.b.set_many(col, rows, values)
        return bad

    @staticmethod
    def _args(rows, parts) -> list[str | None]:
        """Per row, the args text from `parts` (each a {row: text} or a per-row list, in the
        event's field order), blanks left out; None where a row has none."""
        out = []
        for i, r in enumerate(rows):
            got = [p.get(r) if isinstance(p, dict) else p[i] for p in parts]
            out.append(" ".join(g for g in got if g) or None)
        return out

    def report(self, path: str):
        """Warnings for what was dropped or decoded lossily (same in both paths)."""
        st = self.st
        if self.out_of_range:
            st.warn(f"{path}: {self.out_of_range} event(s) dropped as malformed: pid or cpu >= 2^31, "
                    "or timestamp >= 2^63 ns")
        st.values_out_of_range += self.b.values_out_of_range
        if self.b.values_out_of_range:
            st.warn(values_out_of_range_warning(path, self.b.values_out_of_range))
        if self.b.bad_text:
            st.warn(f"{path}: {self.b.bad_text} text field(s) not UTF-8; decoded with replacement characters")

    def typed_columns(self):
        """Columns of the typed events collected in `self.typed`, into the builder."""
        b = self.b
        st = self.st
        unknown = st.unknown_event_names
        text = b.text
        for which, (rows, msgs) in self.typed.items():
            if which in _TYPED_ALLOC:
                ev = f"kmem:{which}"
                ba = [m.bytes_alloc for m in msgs]
                br = [m.bytes_req for m in msgs]
                # uint64 sizes: the Int64 columns hold < 2^63; args in the kernel's field order
                bad_req = self._fitting("bytes_req", rows, br, _I63, "bytes_req")
                bad_alloc = self._fitting("bytes", rows, ba, _I63, "bytes_alloc")
                b.set_many("call_site", rows, [f"0x{m.call_site:x}" for m in msgs])
                b.set_many("gfp", rows, [m.gfp_flags for m in msgs])
                b.set_many("ptr", rows, [m.ptr for m in msgs])
                node = [f"node={m.node}" for m in msgs] if which.endswith("_node") else {}
                if bad_req or bad_alloc or node:
                    args = self._args(rows, [bad_req, bad_alloc, node])
                    b.set_many("args", *zip(*[(r, a) for r, a in zip(rows, args) if a is not None]))
            elif which in _TYPED_FREE:
                ev = f"kmem:{which}"
                b.set_many("call_site", rows, [f"0x{m.call_site:x}" for m in msgs])
                b.set_many("ptr", rows, [m.ptr for m in msgs])
            elif which == "mm_page_alloc":
                ev = "kmem:mm_page_alloc"
                b.set_many("gfp", rows, [m.gfp_flags for m in msgs])
                bad = self._orders(rows, msgs)
                b.set_many("pfn", rows, [m.pfn for m in msgs])
                b.set_many("args", rows, self._args(rows, [[f"page=0x{m.page:x}" for m in msgs], bad,
                                                           [f"migratetype={m.migratetype}" for m in msgs]]))
            elif which == "mm_page_free":
                ev = "kmem:mm_page_free"
                bad = self._orders(rows, msgs)
                b.set_many("pfn", rows, [m.pfn for m in msgs])
                b.set_many("args", rows, self._args(rows, [[f"page=0x{m.page:x}" for m in msgs], bad]))
            elif which == "print":
                ev = "ftrace:print"
                b.set_many("marker", rows, [(x if type(x) is str else text(x)).rstrip("\n") for x in (m.buf for m in msgs)])
            elif which == "kprobe_event":
                type_name = self.pb2.KprobeEvent.KprobeType.Name
                for r, m in zip(rows, msgs):
                    e, _ = canonical_event(text(m.name), kprobe=True, kprobe_groups=self.kprobe_groups)
                    b.event[r] = e
                    b.set("args", r, f"type={type_name(m.type)}")
                continue
            elif which == "generic":
                for r, m in zip(rows, msgs):
                    en = text(m.event_name)
                    e, known = canonical_event(en, kprobe_groups=self.kprobe_groups)
                    b.event[r] = e
                    if not known:
                        unknown[en] = unknown.get(en, 0) + 1
                    _route(b, r, e, True, [(text(f.name), _field_value(f)) for f in m.field])
                continue
            else:
                ev, known = canonical_event(which)
                if which in ("cgroup_attach_task",) or which.startswith("cgroup_"):
                    for r, m in zip(rows, msgs):
                        fields = [(f.name, v) for f, v in m.ListFields()]
                        if not any(k in ("path", "dst_path") for k, _ in fields):
                            fields = [("path" if k == "cname" else k, v) for k, v in fields]
                        _route(b, r, ev, known, fields)
                else:
                    if not known:
                        unknown[which] = unknown.get(which, 0) + len(rows)
                    for r, m in zip(rows, msgs):
                        _route(b, r, ev, known, [(f.name, v) for f, v in m.ListFields()])
                for r in rows:
                    b.event[r] = ev
                if which == "task_newtask":
                    for m in msgs:
                        self.names[m.pid] = text(m.comm)
                elif which == "task_rename":
                    for m in msgs:
                        self.names[m.pid] = text(m.newcomm)
                continue
            for r in rows:
                b.event[r] = ev
        self.typed = {}

    def _orders(self, rows, msgs):
        """order (uint32) into the Int32 column; larger ones are left null (counted)."""
        return self._fitting("order", rows, [m.order for m in msgs], _I31, "order")

    def frame(self) -> pd.DataFrame:
        """The builder's rows as the event table, sorted by time."""
        b = self.b
        n = len(b.ts)
        data = {
            "ts_ns": pd.Series(np.asarray(b.ts, dtype=np.uint64).astype(np.int64)),
            "cpu": pd.Series(pd.array(np.asarray(b.cpu, dtype=np.int32), dtype="Int32")),
            "pid": pd.Series(pd.array(np.asarray(b.pid, dtype=np.int32), dtype="Int32")),
            "event": pd.Series(pd.Categorical(b.event)),
        }
        names = {**self.proc_names, **self.names}
        pid_arr = np.asarray(b.pid, dtype=np.int64)
        if names:
            uniq, inv = np.unique(pid_arr, return_inverse=True)
            cats = [names.get(int(p)) for p in uniq]
            cat_index = {c: i for i, c in enumerate(sorted({c for c in cats if c is not None}))}
            codes_u = np.array([cat_index[c] if c is not None else -1 for c in cats], dtype=np.int32)
            data["comm"] = pd.Series(pd.Categorical.from_codes(codes_u[inv] if n else np.zeros(0, np.int32),
                                                               categories=list(cat_index)))
        for col, d in b.cols.items():
            rows = np.fromiter(d.keys(), dtype=np.int64, count=len(d))
            c = COLUMNS[col]
            if c.dtype in ("Int64", "Int32", "UInt64", "UInt32"):
                npdt = {"Int64": np.int64, "Int32": np.int32, "UInt64": np.uint64, "UInt32": np.uint32}[c.dtype]
                vals = np.zeros(n, dtype=npdt)
                mask = np.ones(n, dtype=bool)
                if npdt in (np.uint64, np.uint32):
                    v = np.fromiter(((x & ((1 << 64) - 1)) for x in d.values()), dtype=np.uint64, count=len(d))
                else:
                    v = np.fromiter(d.values(), dtype=np.int64, count=len(d))
                vals[rows] = v.astype(npdt)
                mask[rows] = False
                data[col] = pd.Series(pd.arrays.IntegerArray(vals, mask))
            elif c.dtype == "boolean":
                vals = np.zeros(n, dtype=bool)
                mask = np.ones(n, dtype=bool)
                vals[rows] = np.fromiter(d.values(), dtype=bool, count=len(d))
                mask[rows] = False
                data[col] = pd.Series(pd.arrays.BooleanArray(vals, mask))
            else:
                obj = np.full(n, None, dtype=object)
                obj[rows] = list(d.values())
                data[col] = pd.Series(obj)
        df = pd.DataFrame(data)
        if n:
            df = df.sort_values("ts_ns", kind="stable").reset_index(drop=True)
        return derive(coerce_events(df))

    def lost_from_stats(self) -> int:
        lost = 0
        for cpu, end in self.stats_end.items():
            start = self.stats_start.get(cpu, (0, 0, 0))
            lost += sum(max(0, e - s) for e, s in zip(end, start))
        return lost


# ---------------------------------------------------------------------------------------------
# The fast path: the protobuf wire format decoded with numpy, all events of a kind at once.
#
# Packets are split in Python (a few fields each); an ftrace bundle's events are found by pointer
# doubling over the positions of the event tag; each FtraceEvent, and each busy event type's
# message, is read field by field in lock step over all events, varints eight bytes at a time.
# A packet with anything unusual (other packet kinds, dense or merged events, a damaged event,
# groups, non-UTF-8 text) goes whole through the protobuf-object path above, in its place, so
# results are those of that path alone (`memtrace.testing.perfetto.parse_perfetto_reference`,
# which the tests hold this one to). Field numbers come from the package's descriptors.

_U = np.uint64
_H80 = _U(0x8080808080808080)
_M7F = _U(0x7F7F7F7F7F7F7F7F)
_BYTEIDX = _U(0x0001020304050607)
_PADB = 16  # zero bytes after a buffer, for 8-byte reads at its end
#: bytes of packets decoded at once: per-event temporaries stay a few times this
WINDOW_BYTES = 4 << 20


class _Wire:
    """Field numbers, read from the perfetto package's descriptors once."""

    def __init__(self, pb2):
        tp = pb2.TracePacket.DESCRIPTOR
        self.pkt_ftrace = tp.fields_by_name["ftrace_events"].number
        self.pkt_data = {f.number for f in tp.oneofs_by_name["data"].fields}
        bd = pb2.FtraceEventBundle.DESCRIPTOR.fields_by_name
        self.b_cpu = bd["cpu"].number
        self.b_event = bd["event"].number
        self.b_lost = bd["lost_events"].number
        self.b_event_tag = (self.b_event << 3) | 2
        assert self.b_event_tag < 0x80
        fe = pb2.FtraceEvent.DESCRIPTOR
        self.e_ts = fe.fields_by_name["timestamp"].number
        self.e_pid = fe.fields_by_name["pid"].number
        self.oneof = {f.number: f.name for f in fe.oneofs_by_name["event"].fields}
        self.oneof_nums = np.zeros(max(self.oneof) + 1, bool)  # field number -> in the oneof
        self.oneof_nums[list(self.oneof)] = True
        self.classes = {}
        proto = pb2.FtraceEvent()
        for num, name in self.oneof.items():
            self.classes[num] = type(getattr(proto, name))
        self.by_name = {name: num for num, name in self.oneof.items()}
        self.hot = {}  # field number -> (oneof name, {field name: (number, type)})
        for name in _HOT:
            if name in self.by_name:
                num = self.by_name[name]
                msg = fe.fields_by_name[name].message_type
                self.hot[num] = (name, {f.name: (f.number, f.type, f.default_value) for f in msg.fields})
        self.kprobe_types = {v.number: v.name for v in pb2.KprobeEvent.KprobeType.DESCRIPTOR.values}


_HOT = ("kmalloc", "kmem_cache_alloc", "kmalloc_node", "kmem_cache_alloc_node", "kfree", "kmem_cache_free",
        "mm_page_alloc", "mm_page_free", "print", "kprobe_event")
_WIRE = None


def _wire():
    global _WIRE
    if _WIRE is None:
        _WIRE = _Wire(_pb2())
    return _WIRE


def _u64_view(pb) -> np.ndarray:
    return np.ndarray(buffer=pb, dtype="<u8", shape=(len(pb) - 7,), strides=(1,))


def _padded(data, n=None) -> bytearray:
    n = len(data) if n is None else n
    pb = bytearray(n + _PADB)
    pb[:n] = data[:n] if not isinstance(data, memoryview) else data[:n]
    return pb


def _varints(U, p):
    """Varints at positions `p` (int64): (value uint64, length int64, ok). Needs 16 readable bytes
    after each position; the caller checks the end against its limit."""
    x = U[p]
    stop = np.bitwise_and(~x, _H80)
    m = stop - _U(1)
    np.bitwise_xor(m, stop, out=m)  # the bytes up to the first without a continuation bit
    ln = np.bitwise_count(m).astype(np.int64)
    np.right_shift(ln, 3, out=ln)
    v = np.bitwise_and(x, _M7F, out=x)
    np.bitwise_and(v, m, out=v)
    top = int(ln.max()) if len(ln) else 0
    if top > 1:
        v = ((v & _U(0x7F007F007F007F00)) >> _U(1)) | (v & _U(0x007F007F007F007F))
    if top > 2:
        v = ((v & _U(0x3FFF00003FFF0000)) >> _U(2)) | (v & _U(0x00003FFF00003FFF))
    if top > 4:
        v = ((v & _U(0x0FFFFFFF00000000)) >> _U(4)) | (v & _U(0x000000000FFFFFFF))
    ok = np.ones(len(p), bool)
    if top == 8:
        long_ = np.flatnonzero(stop == 0)
        if long_.size:
            y = U[p[long_] + 8]
            b8 = y & _U(0xFF)
            b9 = (y >> _U(8)) & _U(0xFF)
            nine = b8 < 0x80
            v[long_] |= ((b8 & _U(0x7F)) << _U(56)) | np.where(nine, _U(0), (b9 & _U(0x7F)) << _U(63))
            ln[long_] = np.where(nine, 9, 10)
            ok[long_] = nine | (b9 < 0x80)
    return v, ln, ok


def _keys(arr, U, p):
    """Field keys at `p`: single bytes read as such, longer keys as varints."""
    b0 = arr[p]
    multi = np.flatnonzero(b0 >= 0x80)
    key = b0.astype(np.uint64)
    kl = np.ones(len(p), np.int64)
    ok = np.ones(len(p), bool)
    if multi.size:
        k2, l2, o2 = _varints(U, p[multi])
        key[multi], kl[multi], ok[multi] = k2, l2, o2
    return key, kl, ok


def _scan(arr, U, s, e, want_v=(), want_l=(), oneof=None):
    """Read messages [s, e) field by field, all at once.

    want_v: varint field numbers (last occurrence wins, default 0); want_l: length-delimited field
    numbers (span of the last occurrence, and a count); oneof: a bool table by field number of the
    fields whose length-delimited occurrences are recorded as (field, start, end, count).
    Returns (values dict, spans dict, oneof tuple, bad mask)."""
    m = len(s)
    bad = np.zeros(m, bool)
    vals = {f: np.zeros(m, np.uint64) for f in want_v}
    spans = {f: [np.zeros(m, np.int64), np.zeros(m, np.int64), np.zeros(m, np.int32)] for f in want_l}
    if oneof is not None:
        o_f = np.zeros(m, np.int64)
        o_s = np.zeros(m, np.int64)
        o_e = np.zeros(m, np.int64)
        o_n = np.zeros(m, np.int32)
    act = np.arange(m)
    pos = s.astype(np.int64, copy=True)
    lim_all = e.astype(np.int64)
    # a message whose span runs past the buffer (a damaged length upstream) is damaged itself
    past = (lim_all > len(arr)) | (pos < 0)
    if past.any():
        bad[past] = True
        act = act[~past]
    rounds = 0
    while act.size:
        rounds += 1
        p = pos[act]
        lim = lim_all[act]
        more = p < lim
        if not more.all():
            act, p, lim = act[more], p[more], lim[more]
            if not act.size:
                break
        if rounds > 64:
            bad[act] = True
            break
        key, kl, ok = _keys(arr, U, p)
        p = p + kl
        field = (key >> _U(3)).astype(np.int64)
        wire = (key & _U(7)).astype(np.int64)
        ok &= (field != 0) & (key < _U(1 << 32))
        val, vl, vok = _varints(U, p)
        w0 = wire == 0
        w2 = wire == 2
        ok &= vok | ~(w0 | w2)
        big = w2 & (val > _U(1 << 40))
        ok &= ~big
        ln = np.where(w2, val, _U(0)).astype(np.int64)
        nxt = np.where(w0, p + vl, np.where(w2, p + vl + ln, np.where(wire == 1, p + 8, p + 4)))
        ok &= (wire == 0) | w2 | (wire == 1) | (wire == 5)
        ok &= nxt <= lim
        for f in want_v:
            sel = ok & w0 & (field == f)
            if sel.any():
                vals[f][act[sel]] = val[sel]
        for f in want_l:
            sel = ok & w2 & (field == f)
            if sel.any():
                r = act[sel]
                sp = spans[f]
                sp[0][r] = (p + vl)[sel]
                sp[1][r] = nxt[sel]
                sp[2][r] += 1
        if oneof is not None:
            sel = ok & w2
            if sel.any():
                idx = np.flatnonzero(sel)
                fi = field[idx]
                hit = oneof[np.minimum(fi, len(oneof) - 1)] & (fi < len(oneof))
                idx = idx[hit]
                r = act[idx]
                o_f[r] = field[idx]
                o_s[r] = (p + vl)[idx]
                o_e[r] = nxt[idx]
                o_n[r] += 1
        bad[act[~ok]] = True
        act = act[ok]
        pos[act] = nxt[ok]
    return vals, spans, ((o_f, o_s, o_e, o_n) if oneof is not None else None), bad


def _py_field(pb, pos, end):
    """(field, wire, value or (start, end), next) of the field at pos; ValueError/IndexError when damaged."""
    key, p = _varint(pb, pos)
    field, wire = key >> 3, key & 7
    if field == 0 or key >= 1 << 32:
        raise ValueError("bad key")
    if wire == 0:
        v, p = _varint(pb, p)
    elif wire == 2:
        ln, p = _varint(pb, p)
        v = (p, p + ln)
        p += ln
    elif wire == 1:
        v, p = None, p + 8
    elif wire == 5:
        v, p = None, p + 4
    else:
        raise ValueError("wire type")
    if p > end:
        raise ValueError("past end")
    return field, wire, v, p


def _hexcols(v):
    """uint64 → (m×16 ASCII hex digits, most significant first; digit count, at least 1)"""
    m = len(v)
    sh = (np.arange(15, -1, -1, dtype=np.uint64) * _U(4))
    nib = ((v[:, None] >> sh[None, :]) & _U(15)).astype(np.uint8)
    chars = np.where(nib < 10, nib + 48, nib + 87).astype(np.uint8)
    nz = nib != 0
    first = np.where(nz.any(1), nz.argmax(1), 15)
    return chars, (16 - first).astype(np.int64) if m else np.zeros(0, np.int64)


def _deccols(v):
    """int64 → (m×20 ASCII, right-aligned with '-' for negatives; width)"""
    neg = v < 0
    a = np.where(neg, -(v.astype(np.int64)), v).astype(np.uint64)
    cols = []
    x = a.copy()
    for _ in range(20):
        cols.append((x % _U(10)).astype(np.uint8) + 48)
        x //= _U(10)
    chars = np.stack(cols[::-1], 1) if len(v) else np.zeros((0, 20), np.uint8)
    nd = np.ones(len(v), np.int64)
    x = a // _U(10)
    while (x > 0).any():
        nd += x > 0
        x //= _U(10)
    chars = np.hstack([np.full((len(v), 1), 48, np.uint8), chars])
    r = np.flatnonzero(neg)
    chars[r, 20 - nd[r]] = 45  # '-' just before the digits
    return chars, nd + neg, neg


def _strings(pieces, m):
    """Concatenate per-row pieces into a large_string array. Each piece is bytes (the same for every
    row) or (m×w matrix, lengths) taken right-aligned."""
    mats, masks = [], []
    for pc_ in pieces:
        if isinstance(pc_, bytes):
            mats.append(np.broadcast_to(np.frombuffer(pc_, np.uint8), (m, len(pc_))))
            masks.append(np.ones((m, len(pc_)), bool))
        else:
            mat, ln = pc_
            w = mat.shape[1]
            mats.append(mat)
            masks.append(np.arange(w)[None, :] >= (w - ln)[:, None])
    mat = np.hstack(mats)
    mask = np.hstack(masks)
    data = mat[mask]
    offs = np.zeros(m + 1, np.int64)
    np.cumsum(mask.sum(1), out=offs[1:])
    return pa.Array.from_buffers(pa.large_string(), m, [None, pa.py_buffer(offs), pa.py_buffer(data.tobytes())])


def _span_strings(arr, s, e):
    """Byte spans [s, e) of `arr` as a large_binary array."""
    ln = (e - s).astype(np.int64)
    offs = np.zeros(len(s) + 1, np.int64)
    np.cumsum(ln, out=offs[1:])
    tot = int(offs[-1])
    idx = np.repeat(s - offs[:-1], ln) + np.arange(tot, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_binary(), len(s), [None, pa.py_buffer(offs), pa.py_buffer(arr[idx].tobytes())])


class _HotRows:
    """The rows of one busy event type: ordinals and column values."""

    def __init__(self, event, ords, cols, events=None):
        self.event = event  # event name for all rows, or None with `events` (codes, names)
        self.events = events
        self.ords = ords
        self.cols = cols  # column -> numpy values (numeric) / (codes, strings) category / pa array (string)


class _OrdBuilder(_Builder):
    _ROW_LISTS = _Builder._ROW_LISTS + ("ords",)

    def __init__(self, reader):
        super().__init__()
        self.reader = reader
        self.ords: list[int] = []

    def add(self, ts, cpu, pid, event) -> int:
        r = self.reader
        self.ords.append(r.next_ord)
        r.next_ord += 1
        return super().add(ts, cpu, pid, event)

    def add_at(self, ordinal, ts, cpu, pid, event) -> int:
        self.ords.append(ordinal)
        return _Builder.add(self, ts, cpu, pid, event)


class _FastReader(_Reader):
    def __init__(self, st: IngestStats, kprobe_groups=None):
        super().__init__(st, kprobe_groups)
        self.w = _wire()
        self.next_ord = 0
        self.b = _OrdBuilder(self)
        self.oc = _OrdColumns()

    def inner_packets(self, inner: bytes, where: str, depth: int):
        self.segment(_padded(inner), len(inner), where, depth)

    # --- one buffer of packets ---------------------------------------------------------------
    def segment(self, pb, n: int, where: str, depth: int = 0):
        st = self.st
        pkts, damage = _split_packets(pb, n)
        arr = np.frombuffer(pb, np.uint8)
        U = _u64_view(pb)
        # phase A: which packets are plain ftrace bundles; their header fields
        kind = []  # per packet: bundle index, or -1 (object path)
        bun = []  # [cpu, lost, ev_start, end]
        for s, e in pkts:
            kind.append(self._classify(pb, s, e, bun))
        B_all = np.array(bun, dtype=np.int64).reshape(len(bun), 4)
        # the rest a window of packets at a time, so that per-event temporaries stay small
        wins = []
        i = 0
        while i < len(pkts):
            lo = pkts[i][0]
            j = i + 1
            while j < len(pkts) and pkts[j][1] - lo <= WINDOW_BYTES:
                j += 1
            wins.append((i, j))
            i = j
        if bun:  # room for at most one event per event tag
            tag = self.w.b_event_tag
            upper = sum(int(np.count_nonzero(arr[pkts[i][0] : pkts[j - 1][1]] == tag)) for i, j in wins)
            self.oc.ensure(self.next_ord + upper)
        for i, j in wins:
            self._window(pb, arr, U, pkts[i:j], kind[i:j], B_all, depth)
        _report_damage(st, where, n, damage)

    def _window(self, pb, arr, U, pkts, kind, B_all, depth):
        st = self.st
        bis = [k for k in kind if k >= 0]
        ba = bis[0] if bis else 0
        nb = len(bis)
        B = B_all[ba : ba + nb]
        bad_b = np.zeros(nb, bool)
        ev = None
        ev_bid = np.zeros(0, np.int64)
        has = np.flatnonzero(B[:, 2] >= 0) if nb else np.zeros(0, np.int64)
        if has.size:
            ev_pos, ev_bid, run_end, bad_run = self._chains(arr, U, pkts[0][0], pkts[-1][1], B, has)
            bad_b |= bad_run
            # phase C: fields after the events
            for bi in has[run_end[has] < B[has, 3]].tolist():
                if not bad_b[bi]:
                    bad_b[bi] = not self._tail(pb, int(run_end[bi]), int(B[bi, 3]), B, bi)
            if ev_pos.size:
                ev = self._events(arr, U, ev_pos, ev_bid, B, bad_b)
            del ev_pos
        # phase F: in packet order
        first_ev = np.searchsorted(ev_bid, np.arange(nb + 1))
        for (s, e), k in zip(pkts, kind):
            bi = k - ba
            if k < 0 or bad_b[bi]:
                self.packet(bytes(pb[s:e]), depth)
                continue
            st.packets_read += 1
            if B[bi, 1]:
                st.lost_event_flags += 1
            a, z = int(first_ev[bi]), int(first_ev[bi + 1])
            if z > a:
                ev["ord"][a:z] = np.arange(self.next_ord, self.next_ord + (z - a))
                for jj in ev["slow_at"].get(bi, ()):
                    kk, msg = ev["slow"][jj]
                    self._add_typed(int(ev["ord"][kk]), int(ev["ts"][kk]), int(B[bi, 0]), int(ev["pid"][kk]),
                                    ev["which"][kk], msg)
                self.next_ord += z - a
        if ev is not None:
            self._hot(arr, ev, B, bad_b)

    def _add_typed(self, ordinal, ts, cpu, pid, which, msg):
        row = self.b.add_at(ordinal, ts, cpu, pid, which)
        lst = self.typed.get(which)
        if lst is None:
            lst = self.typed[which] = ([], [])
        lst[0].append(row)
        lst[1].append(msg)

    def _classify(self, pb, s, e, bun) -> int:
        """Bundle index of a packet that is an ftrace bundle and nothing odd, else -1."""
        w = self.w
        span = None
        try:
            p = s
            while p < e:
                field, wire, v, p = _py_field(pb, p, e)
                if field in w.pkt_data:
                    if field != w.pkt_ftrace or wire != 2 or span is not None:
                        return -1
                    span = v
                elif wire == 2:
                    return -1
            if span is None:
                return -1
            bs, be = span
            cpu = lost = 0
            p = bs
            ev_start = -1
            while p < be:
                if pb[p] == w.b_event_tag:
                    ev_start = p
                    break
                field, wire, v, p = _py_field(pb, p, be)
                if wire == 2:
                    return -1
                if wire == 0:
                    if field == w.b_cpu:
                        cpu = v & 0xFFFFFFFF
                    elif field == w.b_lost:
                        lost = int(v != 0)
        except (IndexError, ValueError):
            return -1
        bun.append((cpu, lost, ev_start, be))
        return len(bun) - 1

    def _tail(self, pb, p, be, B, bi) -> bool:
        """Fields after a bundle's events: only numbers (cpu, lost_events, clocks)."""
        w = self.w
        try:
            while p < be:
                field, wire, v, p = _py_field(pb, p, be)
                if wire == 2:
                    return False
                if wire == 0:
                    if field == w.b_cpu:
                        B[bi, 0] = v & 0xFFFFFFFF
                    elif field == w.b_lost:
                        B[bi, 1] = int(v != 0)
        except (IndexError, ValueError):
            return False
        return True

    def _chains(self, arr, U, lo, hi, B, has):
        """Positions of each bundle's run of events (pointer doubling over event-tag candidates)."""
        tag = self.w.b_event_tag
        starts = B[has, 2]
        ends = B[has, 3]
        cand = np.flatnonzero(arr[lo:hi] == tag)
        cand += lo
        j = np.searchsorted(starts, cand, side="right") - 1
        keep = j >= 0
        keep[keep] = cand[keep] < ends[j[keep]]
        cand, j = cand[keep], j[keep]
        K = len(cand)
        ln, ll, ok = _varints(U, cand + 1)
        ok &= ln < _U(1 << 40)
        nxt_pos = cand + 1 + ll + np.where(ok, ln, _U(0)).astype(np.int64)
        end_b = ends[j]
        over = ~ok | (nxt_pos > end_b)
        k = np.searchsorted(cand, nxt_pos)
        kk = np.minimum(k, K - 1)
        link = ~over & (nxt_pos < end_b) & (k < K) & (cand[kk] == nxt_pos)
        nxt = np.full(K + 1, K, np.int64)
        nxt[:K][link] = k[link]
        S = np.searchsorted(cand, starts)
        reached = [S]
        cur = S
        J = nxt
        while True:
            new = J[np.concatenate(reached) if len(reached) > 1 else cur]
            new = new[new < K]
            if not new.size:
                break
            reached.append(new)
            J = J[J]
        on = np.zeros(K + 1, bool)
        for r_ in reached:
            on[r_] = True
        nodes = np.flatnonzero(on[:K])  # in position order
        bid_local = j[nodes]
        # last node of each bundle's run
        last = np.full(len(has), -1, np.int64)
        last[bid_local] = nodes  # sorted: the last write per bundle is the largest
        nb = len(B)
        run_end = np.full(nb, -1, np.int64)
        bad = np.zeros(nb, bool)
        run_end[has] = nxt_pos[last]
        bad[has] = over[last]
        return cand[nodes], has[bid_local], run_end, bad

    def _events(self, arr, U, pos, bid, B, bad_b):
        """FtraceEvent fields of every event; marks bundles with odd events as bad."""
        w = self.w
        ln, ll, _ = _varints(U, pos + 1)
        s = pos + 1 + ll
        e = s + ln.astype(np.int64)
        vals, _, (o_f, o_s, o_e, o_n), bad = _scan(arr, U, s, e, want_v=(w.e_ts, w.e_pid), oneof=w.oneof_nums)
        pid = vals[w.e_pid] & _U(0xFFFFFFFF)
        # out-of-range pid / timestamp: the object path counts those events malformed
        bad |= (o_n != 1) | (pid >= _U(1 << 31)) | (vals[w.e_ts] >= _U(1 << 63))
        ev = {"ts": vals[w.e_ts], "pid": pid.astype(np.int32), "f": o_f, "s": o_s, "e": o_e,
              "ord": np.zeros(len(pos), np.int64), "bid": bid, "bad": bad}
        # hot types: decode now so that damage sends the packet to the object path
        is_hot = np.isin(o_f, np.fromiter(w.hot, np.int64, len(w.hot))) & ~bad
        ev["hot"] = {}
        for f in np.unique(o_f[is_hot]).tolist():
            rows = np.flatnonzero(is_hot & (o_f == f))
            res = self._decode_hot(arr, U, f, rows, o_s[rows], o_e[rows])
            bad[rows[res.pop("_bad")]] = True
            ev["hot"][f] = (rows, res)
        # other typed events: protobuf objects, as the object path would make them
        slow = []
        slow_at = {}
        which = {}
        for k in np.flatnonzero(~is_hot & ~bad).tolist():
            f = int(o_f[k])
            try:
                msg = w.classes[f].FromString(arr[o_s[k]:o_e[k]].tobytes())
            except DecodeError:
                bad[k] = True
                continue
            slow.append((k, msg))
            which[k] = w.oneof[f]
        bad_b[np.unique(bid[bad])] = True
        bad_b |= B[:, 0] >= 1 << 31  # a cpu the object path cannot put in int32
        for j, (k, _) in enumerate(slow):
            b_ = int(bid[k])
            if not bad_b[b_]:
                slow_at.setdefault(b_, []).append(j)
        ev["slow"], ev["slow_at"] = slow, slow_at
        ev["which"] = which
        return ev

    def _decode_hot(self, arr, U, f, rows, s, e) -> dict:
        name, fields = self.w.hot[f]
        vnums = tuple(num for (num, t, _) in fields.values() if t != 9)
        lnums = tuple(num for (num, t, _) in fields.values() if t == 9)
        vals, spans, _, bad = _scan(arr, U, s, e, want_v=vnums, want_l=lnums)
        out = {}
        for fname, (num, t, _) in fields.items():
            if t == 9:
                sp = spans[num]
                bad |= sp[2] > 1
                out[fname] = (sp[0], sp[1], sp[2] > 0)
            else:
                v = vals[num]
                if t in (13,):  # uint32
                    v = v & _U(0xFFFFFFFF)
                elif t in (5, 14):  # int32 / enum
                    v = (v & _U(0xFFFFFFFF)).astype(np.uint32).view(np.int32).astype(np.int64)
                out[fname] = v
        if name in ("kmalloc", "kmem_cache_alloc", "kmalloc_node", "kmem_cache_alloc_node"):
            bad |= (out["bytes_alloc"] >= _U(1 << 63)) | (out["bytes_req"] >= _U(1 << 63))
        elif name in ("mm_page_alloc", "mm_page_free"):
            bad |= out["order"] >= _U(1 << 31)
        elif name == "kprobe_event":
            bad |= ~np.isin(out["type"], np.fromiter(self.w.kprobe_types, np.int64))
        if name in ("print", "kprobe_event"):
            key = "buf" if name == "print" else "name"
            a, z, present = out[key]
            a = np.where(present, a, 0)
            z = np.where(present, z, 0)
            strs = _span_strings(arr, a, z)
            try:
                strs = strs.cast(pa.large_string())
            except pa.ArrowInvalid:  # not UTF-8: those events go to the object path
                ok = np.array([_is_utf8(x) for x in strs.to_pylist()], bool)
                bad |= ~ok
                strs = pa.array([x.decode() if o else "" for x, o in zip(strs.to_pylist(), ok)], pa.large_string())
            out[key] = strs
        out["_bad"] = bad
        return out

    # --- columns of the hot events -----------------------------------------------------------
    def _hot(self, arr, ev, B, bad_b):
        """Write the busy events' columns into the ordinal-indexed column store."""
        cpu_of_b = B[:, 0]
        oc = self.oc
        for f, (rows, res) in ev["hot"].items():
            bid = ev["bid"][rows]
            keep = ~bad_b[bid]  # bundles with an odd event went whole to the object path
            if not keep.all():
                rows = rows[keep]
                bid = bid[keep]
                res = {k: (v[keep] if isinstance(v, np.ndarray) else
                           (tuple(x[keep] for x in v) if isinstance(v, tuple) else v.filter(pa.array(keep))))
                       for k, v in res.items()}
            if not rows.size:
                continue
            name = self.w.hot[f][0]
            o = ev["ord"][rows]
            oc.ensure(int(o.max()) + 1)
            oc.get("ts_ns", np.int64)[o] = ev["ts"][rows].view(np.int64)
            oc.get("cpu", np.int32)[o] = cpu_of_b[bid]
            oc.get("pid", np.int32)[o] = ev["pid"][rows]
            evc = oc.get("event", np.int32)
            m = len(rows)
            if name in ("kmalloc", "kmem_cache_alloc", "kmalloc_node", "kmem_cache_alloc_node",
                        "kfree", "kmem_cache_free"):
                evc[o] = oc.event_id(f"kmem:{name}")
                if "bytes_alloc" in res:
                    oc.num("bytes", o, res["bytes_alloc"].view(np.int64))
                    oc.num("bytes_req", o, res["bytes_req"].view(np.int64))
                    oc.num("gfp", o, res["gfp_flags"])
                oc.hexcat("call_site", o, res["call_site"])
                oc.num("ptr", o, res["ptr"])
                if name.endswith("_node"):
                    d, nd, _ = _deccols(res["node"])
                    oc.text("args", o, _strings([b"node=", (d, nd)], m))
            elif name == "mm_page_alloc" or name == "mm_page_free":
                evc[o] = oc.event_id(f"kmem:{name}")
                if name == "mm_page_alloc":
                    oc.num("gfp", o, res["gfp_flags"])
                oc.num("order", o, res["order"].astype(np.int64).astype(np.int32))
                oc.num("pfn", o, res["pfn"])
                h, nh = _hexcols(res["page"])
                if name == "mm_page_alloc":
                    d, nd, _ = _deccols(res["migratetype"])
                    oc.text("args", o, _strings([b"page=0x", (h, nh), b" migratetype=", (d, nd)], m))
                else:
                    oc.text("args", o, _strings([b"page=0x", (h, nh)], m))
            elif name == "print":
                evc[o] = oc.event_id("ftrace:print")
                oc.text("marker", o, pc.utf8_rtrim(res["buf"], characters="\n"))
            elif name == "kprobe_event":
                names = res["name"]
                uniq = pc.unique(names).to_pylist()
                codes = pc.index_in(names, pa.array(uniq, names.type)).to_numpy(zero_copy_only=False)
                ids = np.array([oc.event_id(canonical_event(u, kprobe=True, kprobe_groups=self.kprobe_groups)[0])
                                for u in uniq], np.int32)
                evc[o] = ids[codes.astype(np.int64)]
                tn = sorted(self.w.kprobe_types)
                tcodes = np.searchsorted(tn, res["type"])
                oc.text("args", o, pa.array([f"type={self.w.kprobe_types[t]}" for t in tn], pa.large_string()).take(pa.array(tcodes)))
            oc.rows += m


_NP = {"Int64": np.int64, "Int32": np.int32, "UInt64": np.uint64, "UInt32": np.uint32}


class _OrdColumns:
    """Columns indexed by event ordinal, zero-filled (untouched pages cost nothing), grown on demand."""

    def __init__(self):
        self.cap = 0
        self.a: dict[str, np.ndarray] = {}
        self.valid: dict[str, np.ndarray] = {}
        self.events: dict[str, int] = {}
        self.hex: dict[str, dict[int, int]] = {}  # category column -> {value: id + 1}
        self.texts: dict[str, list] = {}  # string column -> [(ordinals, arrow array)]
        self.rows = 0

    def ensure(self, need: int):
        if need <= self.cap:
            return
        cap = max(need, 2 * self.cap)
        for d in (self.a, self.valid):
            for k, v in d.items():
                nv = np.zeros(cap, v.dtype)
                nv[: self.cap] = v
                d[k] = nv
        self.cap = cap

    def get(self, name, dtype) -> np.ndarray:
        v = self.a.get(name)
        if v is None:
            v = self.a[name] = np.zeros(self.cap, dtype)
        return v

    def num(self, col, o, values):
        self.get(col, _NP[COLUMNS[col].dtype])[o] = values.astype(_NP[COLUMNS[col].dtype])
        va = self.valid.get(col)
        if va is None:
            va = self.valid[col] = np.zeros(self.cap, bool)
        va[o] = True

    def event_id(self, name) -> int:
        return self.events.setdefault(name, len(self.events))

    def hexcat(self, col, o, values):
        codes, uniq = pd.factorize(values)
        ids = self.hex.setdefault(col, {})
        gid = np.array([ids.setdefault(int(u), len(ids) + 1) for u in uniq.tolist()], np.int32)
        self.get(col, np.int32)[o] = gid[codes]

    def text(self, col, o, arr):
        self.texts.setdefault(col, []).append((o, arr))

    def take(self, name, n, perm):
        """The first n values in time order; the store's array goes."""
        v = self.a.pop(name)
        out = v[:n] if perm is None else v[perm]
        if perm is None:
            out = out.copy() if v.base is not None or len(v) != n else v
        del v
        return out


def _is_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _finish_fast(self: _FastReader) -> pd.DataFrame:
    """The event table from the builder's rows (object path) and the column store (numpy), by ordinal."""
    self.typed_columns()
    b = self.b
    oc = self.oc
    if not oc.rows:
        return self.frame()  # no busy-type rows: builder order is ordinal order
    n = self.next_ord  # ordinals
    oc.ensure(n)
    bo = np.asarray(b.ords, np.int64)
    oc.get("ts_ns", np.int64)[bo] = np.asarray(b.ts, dtype=np.uint64).astype(np.int64)
    oc.get("cpu", np.int32)[bo] = np.asarray(b.cpu, dtype=np.int32)
    oc.get("pid", np.int32)[bo] = np.asarray(b.pid, dtype=np.int32)
    oc.get("event", np.int32)[bo] = np.fromiter((oc.event_id(e) for e in b.event), np.int32, len(b.event))
    ts = oc.a["ts_ns"][:n]
    perm = None if n < 2 or bool((ts[1:] >= ts[:-1]).all()) else np.argsort(ts, kind="stable")
    del ts
    m_out = n if perm is None else len(perm)  # rows

    def valid_of(col):
        va = oc.valid.pop(col, None)
        if va is None:
            return np.zeros(m_out, bool)
        return va[:n] if perm is None else va[perm]

    data = {"ts_ns": pd.Series(oc.take("ts_ns", n, perm), copy=False)}
    data["cpu"] = pd.Series(pd.arrays.IntegerArray(oc.take("cpu", n, perm), np.zeros(m_out, bool)), copy=False)
    pid = oc.take("pid", n, perm)
    data["pid"] = pd.Series(pd.arrays.IntegerArray(pid, np.zeros(m_out, bool)), copy=False)
    # event: categories sorted, as pd.Categorical makes them
    names = list(oc.events)
    cats = pd.Categorical(sorted(names)).categories
    at = {c: i for i, c in enumerate(cats)}
    remap = np.array([at[x] for x in names], np.int32)
    data["event"] = pd.Series(pd.Categorical.from_codes(remap[oc.take("event", n, perm)], categories=cats), copy=False)
    # comm, as the object path names threads
    tnames = {**self.proc_names, **self.names}
    if tnames:
        inv, uniq = pd.factorize(pid)
        cn = [tnames.get(int(x)) for x in uniq]
        cat_index = {c: i for i, c in enumerate(sorted({c for c in cn if c is not None}))}
        codes_u = np.array([cat_index[c] if c is not None else -1 for c in cn], dtype=np.int32)
        comm = codes_u[inv]
        del inv
        data["comm"] = pd.Series(pd.Categorical.from_codes(comm, categories=list(cat_index)), copy=False)
        del comm
    del pid
    # the other columns
    present = list(b.cols) + [c for c in (*oc.a, *oc.texts) if c not in b.cols and c in COLUMNS
                              and c not in ("ts_ns", "cpu", "pid", "event")]
    for col in present:
        c = COLUMNS[col]
        d = b.cols.pop(col, {})
        rows = bo[np.fromiter(d.keys(), dtype=np.int64, count=len(d))]
        if c.dtype in _NP:
            npdt = _NP[c.dtype]
            if d:
                if npdt in (np.uint64, np.uint32):
                    v = np.fromiter(((x & ((1 << 64) - 1)) for x in d.values()), dtype=np.uint64, count=len(d))
                else:
                    v = np.fromiter(d.values(), dtype=np.int64, count=len(d))
                oc.num(col, rows, v.astype(npdt))
            vals = oc.take(col, n, perm) if col in oc.a else np.zeros(m_out, npdt)
            data[col] = pd.Series(pd.arrays.IntegerArray(vals, ~valid_of(col)), copy=False)
        elif c.dtype == "boolean":
            vals = np.zeros(n, dtype=bool)
            mask = np.ones(n, dtype=bool)
            vals[rows] = np.fromiter(d.values(), dtype=bool, count=len(d))
            mask[rows] = False
            if perm is not None:
                vals, mask = vals[perm], mask[perm]
            data[col] = pd.Series(pd.arrays.BooleanArray(vals, mask), copy=False)
        elif c.dtype == "category":
            strs = list(d.values())
            ids = oc.hex.pop(col, {})
            id_str = [""] * (len(ids) + 1)
            for val, i in ids.items():
                id_str[i] = f"0x{val:x}"
            allv = set(strs) | set(id_str[1:])
            cats = pd.Series(np.array(sorted(allv), dtype=object)).astype("category").cat.categories
            at = {x: i for i, x in enumerate(cats)}
            table = np.array([-1] + [at[x] for x in id_str[1:]], np.int32)
            codes = table[oc.take(col, n, None)] if col in oc.a else np.full(n, -1, np.int32)
            codes[rows] = np.fromiter((at[x] for x in strs), np.int32, len(strs))
            if perm is not None:
                codes = codes[perm]
            data[col] = pd.Series(pd.Categorical.from_codes(codes, categories=cats), copy=False)
            del codes
        else:  # string
            srcs = [pa.array(list(d.values()), pa.large_string())]
            idx = np.full(n, -1, np.int64)
            idx[rows] = np.arange(len(d))
            off = len(d)
            for o, v in oc.texts.pop(col, ()):
                idx[o] = off + np.arange(len(v))
                off += len(v)
                srcs.append(v.cast(pa.large_string()))
            if perm is not None:
                idx = idx[perm]
            src = pa.concat_arrays(srcs)
            del srcs
            col_arr = src.take(pa.array(idx, mask=idx < 0))
            del src, idx
            data[col] = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([col_arr])), copy=False)
    self.oc = _OrdColumns()
    cols = {}
    for c in EVENT_COLUMNS:
        s = data.pop(c.name, None)
        if s is None:
            s = _null_column(c, m_out)
        cols[c.name] = s
    df = pd.DataFrame(cols, copy=False)
    del cols, data  # derive replaces columns: the old arrays go now
    return derive(df)


def _null_column(c, n):
    """An all-null column, as `coerce_events` adds it."""
    if c.dtype == "category":
        return pd.Series(pd.Categorical.from_codes(np.full(n, -1, np.int8), categories=pd.Index([], dtype="float64")), copy=False)
    if c.dtype == "string":
        return pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([pa.nulls(n, pa.large_string())])), copy=False)
    if c.dtype == "boolean":
        return pd.Series(pd.arrays.BooleanArray(np.zeros(n, bool), np.ones(n, bool)), copy=False)
    npdt = {"Int64": np.int64, "Int32": np.int32, "UInt64": np.uint64, "UInt32": np.uint32}[c.dtype]
    return pd.Series(pd.arrays.IntegerArray(np.zeros(n, npdt), np.ones(n, bool)), copy=False)


_FastReader.finish = _finish_fast


def _parse_fast(pb, n: int, path: str, kprobe_groups) -> tuple[pd.DataFrame, IngestStats]:
    st = IngestStats(path=path, format="perfetto", unknown_event_names={})
    if n == 0:
        raise InputError(f"{path}: empty file")
    r = _FastReader(st, kprobe_groups)
    if isinstance(pb, list):  # [buffer]: ours to drop once decoded
        pb = pb.pop()
    r.segment(pb, n, path)
    del pb
    if st.packets_read == 0:
        raise InputError(f"{path}: not a perfetto trace: no packet decodes")
    return _finish(r, st, path)


def _finish(r, st: IngestStats, path: str) -> tuple[pd.DataFrame, IngestStats]:
    """Build the frame of a reader (`_FastReader`, or the `_Reader` of the tests' reference) and
    close its stats."""
    df = r.finish()
    st.lost_events += r.lost_from_stats()
    st.events_parsed = len(df)
    st.unknown_events = int(sum(st.unknown_event_names.values()))
    r.report(path)
    if st.malformed:
        st.warn(f"{path}: {st.malformed} packet(s)/event(s) could not be decoded")
    return df, st


def parse_perfetto(data: bytes, *, path: str = "<buffer>", kprobe_groups=None) -> tuple[pd.DataFrame, IngestStats]:
    """Parse a serialized perfetto Trace into the event table (the numpy wire decoder, with the
    protobuf-object path for every packet it does not take)."""
    if len(data) == 0:
        raise InputError(f"{path}: empty file")
    return _parse_fast(_padded(data), len(data), path, kprobe_groups)


def load_perfetto(path: str, *, kprobe_groups=None) -> tuple[pd.DataFrame, IngestStats]:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            pb = bytearray(size + _PADB)
            n = f.readinto(memoryview(pb)[:size]) or 0
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    if n == 0:
        raise InputError(f"{path}: empty file")
    held = [pb]
    del pb
    return _parse_fast(held, n, path, kprobe_groups)

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

import zlib

import numpy as np
import pandas as pd

from memtrace.errors import EnvironmentProblem, InputError
from memtrace.sources.trace.ftrace_text import NUMERIC_BASE, canonical_event, columns_for, derive
from memtrace.tables.events import COLUMNS, IngestStats, coerce_events

_TYPED_ALLOC = {"kmalloc", "kmem_cache_alloc", "kmalloc_node", "kmem_cache_alloc_node"}
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


def iter_packet_bytes(data, st: IngestStats, where: str):
    """Yield each TracePacket's bytes from a serialized Trace; count damage in `st`."""
    pos = 0
    n = len(data)
    while pos < n:
        try:
            key, p2 = _varint(data, pos)
            field, wire = key >> 3, key & 7
            if wire == 2:
                ln, p3 = _varint(data, p2)
                if p3 + ln > n:
                    st.truncated = True
                    st.malformed += 1
                    st.warn(f"{where}: cut inside a packet at byte {pos} of {n}; kept the packets before it")
                    return
                if field == 1:
                    yield data[p3 : p3 + ln]
                pos = p3 + ln
            elif wire == 0:
                _, pos = _varint(data, p2)
            elif wire == 1:
                pos = p2 + 8
            elif wire == 5:
                pos = p2 + 4
            else:
                raise ValueError(f"wire type {wire}")
        except (IndexError, ValueError):
            st.truncated = True
            st.malformed += 1
            st.warn(f"{where}: undecodable bytes at offset {pos} of {n}; kept the packets before it")
            return


class _Builder:
    """Column arrays filled by row index."""

    def __init__(self):
        self.ts: list[int] = []
        self.cpu: list[int] = []
        self.pid: list[int] = []
        self.event: list[str] = []
        self.cols: dict[str, dict[int, object]] = {}

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


def _kv_str(k, v):
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return f"{k}={v}"


def _route(b: _Builder, row: int, event: str, known: bool, fields: list[tuple[str, object]]):
    """Put named field values into columns, the rest into args."""
    mapping = columns_for(event) if known else {}
    rest = []
    used = set()
    for k, v in fields:
        col = mapping.get(k)
        if col and col not in used and v is not None:
            if col in NUMERIC_BASE:
                if isinstance(v, (bytes, str)):
                    s = v.decode() if isinstance(v, bytes) else v
                    try:
                        v = int(s, 16) if (col == "ptr" or s.lower().startswith("0x")) else int(s)
                    except ValueError:
                        rest.append(_kv_str(k, s))
                        continue
                v = int(v)
                if col == "ptr" or col == "gfp" or col == "pfn" or col == "cgroup_id":
                    v &= (1 << 64) - 1
                b.set(col, row, v)
            elif col == "accounted":
                b.set(col, row, bool(v) if not isinstance(v, str) else v.lower() in ("1", "true"))
            elif col in _HEX_STR_COLS and isinstance(v, int):
                b.set(col, row, f"0x{v & ((1 << 64) - 1):x}")
            elif col == "gfp_flags" and isinstance(v, int):
                b.set("gfp", row, v & ((1 << 64) - 1))
            else:
                b.set(col, row, v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
            used.add(col)
        else:
            rest.append(_kv_str(k, v))
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

    def packet(self, raw: bytes, depth: int = 0):
        pb2 = self.pb2
        pkt = pb2.TracePacket()
        try:
            pkt.ParseFromString(raw)
        except Exception:  # google.protobuf.message.DecodeError
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
            for r in iter_packet_bytes(inner, self.st, f"{self.st.path} (compressed packets)"):
                self.packet(r, depth + 1)
            return
        which = pkt.WhichOneof("data")
        if which == "ftrace_events":
            self.bundle(pkt.ftrace_events)
        elif which == "process_tree":
            for t in pkt.process_tree.threads:
                if t.name:
                    self.names[t.tid] = t.name
            for p in pkt.process_tree.processes:
                if p.cmdline:
                    name = p.cmdline[0]
                    if not p.cmdline_is_comm:
                        name = name.rsplit("/", 1)[-1]
                    self.proc_names[p.pid] = name
        elif which == "ftrace_stats":
            fs = pkt.ftrace_stats
            d = self.stats_start if fs.phase == pb2.FtraceStats.Phase.START_OF_TRACE else self.stats_end
            for c in fs.cpu_stats:
                d[c.cpu] = (c.overrun, c.commit_overrun, c.dropped_events)

    def bundle(self, bundle):
        st = self.st
        b = self.b
        cpu = bundle.cpu
        if bundle.lost_events:
            st.lost_event_flags += 1
        for d in bundle.generic_event_descriptors:
            self.dense[d.field_id] = (d.group_name, d.event_descriptor)
        if bundle.HasField("compact_sched"):
            cs = bundle.compact_sched
            k = len(cs.switch_timestamp) + len(cs.waking_timestamp)
            if k:
                st.warn(f"{st.path}: {k} compact sched events (sched_switch/sched_waking) not read")
        typed = self.typed
        add = b.add
        for ev in bundle.event:
            which = ev.WhichOneof("event")
            if which is None:
                self._dense_event(ev, cpu)
                continue
            row = add(ev.timestamp, cpu, ev.pid, which)
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
            cls = self._dense_class(uf.field_number, desc)
            msg = cls()
            try:
                msg.ParseFromString(uf.data)
            except Exception:
                st.malformed += 1
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
        b = self.b
        st = self.st
        unknown = st.unknown_event_names
        for which, (rows, msgs) in self.typed.items():
            if which in _TYPED_ALLOC:
                ev = f"kmem:{which}"
                b.set_many("bytes", rows, [m.bytes_alloc for m in msgs])
                b.set_many("bytes_req", rows, [m.bytes_req for m in msgs])
                b.set_many("call_site", rows, [f"0x{m.call_site:x}" for m in msgs])
                b.set_many("gfp", rows, [m.gfp_flags for m in msgs])
                b.set_many("ptr", rows, [m.ptr for m in msgs])
                if which.endswith("_node"):
                    b.set_many("args", rows, [f"node={m.node}" for m in msgs])
            elif which in _TYPED_FREE:
                ev = f"kmem:{which}"
                b.set_many("call_site", rows, [f"0x{m.call_site:x}" for m in msgs])
                b.set_many("ptr", rows, [m.ptr for m in msgs])
            elif which == "mm_page_alloc":
                ev = "kmem:mm_page_alloc"
                b.set_many("gfp", rows, [m.gfp_flags for m in msgs])
                b.set_many("order", rows, [m.order for m in msgs])
                b.set_many("pfn", rows, [m.pfn for m in msgs])
                b.set_many("args", rows, [f"page=0x{m.page:x} migratetype={m.migratetype}" for m in msgs])
            elif which == "mm_page_free":
                ev = "kmem:mm_page_free"
                b.set_many("order", rows, [m.order for m in msgs])
                b.set_many("pfn", rows, [m.pfn for m in msgs])
                b.set_many("args", rows, [f"page=0x{m.page:x}" for m in msgs])
            elif which == "print":
                ev = "ftrace:print"
                b.set_many("marker", rows, [m.buf.rstrip("\n") for m in msgs])
            elif which == "kprobe_event":
                type_name = self.pb2.KprobeEvent.KprobeType.Name
                for r, m in zip(rows, msgs):
                    e, _ = canonical_event(m.name, kprobe=True, kprobe_groups=self.kprobe_groups)
                    b.event[r] = e
                    b.set("args", r, f"type={type_name(m.type)}")
                continue
            elif which == "generic":
                for r, m in zip(rows, msgs):
                    e, known = canonical_event(m.event_name, kprobe_groups=self.kprobe_groups)
                    b.event[r] = e
                    if not known:
                        unknown[m.event_name] = unknown.get(m.event_name, 0) + 1
                    _route(b, r, e, True, [(f.name, _field_value(f)) for f in m.field])
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
                        self.names[m.pid] = m.comm
                elif which == "task_rename":
                    for m in msgs:
                        self.names[m.pid] = m.newcomm
                continue
            for r in rows:
                b.event[r] = ev
        self.typed = {}
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


def parse_perfetto(data: bytes, *, path: str = "<buffer>", kprobe_groups=None) -> tuple[pd.DataFrame, IngestStats]:
    st = IngestStats(path=path, format="perfetto", unknown_event_names={})
    if len(data) == 0:
        raise InputError(f"{path}: empty file")
    r = _Reader(st, kprobe_groups)
    mv = memoryview(data)
    for raw in iter_packet_bytes(mv, st, path):
        r.packet(bytes(raw))
    if st.packets_read == 0:
        raise InputError(f"{path}: not a perfetto trace: no packet decodes")
    df = r.finish()
    st.lost_events += r.lost_from_stats()
    st.events_parsed = len(df)
    st.unknown_events = int(sum(st.unknown_event_names.values()))
    if st.malformed:
        st.warn(f"{path}: {st.malformed} packet(s)/event(s) could not be decoded")
    return df, st


def load_perfetto(path: str, *, kprobe_groups=None) -> tuple[pd.DataFrame, IngestStats]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_perfetto(data, path=path, kprobe_groups=kprobe_groups)


def events_to_trace(df: pd.DataFrame, *, bundle_size: int = 1000, compress: bool = False) -> bytes:
    """Encode an event table as a perfetto Trace with the package's own protos (typed kmem, cgroup and
    print events; other events as legacy GenericFtraceEvents; a process tree for comm names).

    Used to feed real lab events through the perfetto reader (tests, bench): the reverse of
    `parse_perfetto` for the fields perfetto's protos carry.
    """
    pb2 = _pb2()
    trace = pb2.Trace()
    pkt = trace.packet.add()
    seen = {}
    for p, c in zip(df["pid"].astype("Int64"), df["comm"].astype(object)):
        if p is not pd.NA and c is not None and c == c and int(p) not in seen:
            seen[int(p)] = c
    for tid, name in seen.items():
        t = pkt.process_tree.threads.add()
        t.tid = tid
        t.name = name
    cols = {c: df[c].tolist() for c in df.columns}
    n = len(df)
    ev_names = [str(e) for e in cols["event"]]

    def _u(v):
        return None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else v

    for cpu in sorted({int(c) for c in cols["cpu"] if _u(c) is not None}):
        rows = [i for i in range(n) if _u(cols["cpu"][i]) is not None and int(cols["cpu"][i]) == cpu]
        for b0 in range(0, len(rows), bundle_size):
            bundle = trace.packet.add().ftrace_events
            bundle.cpu = cpu
            for i in rows[b0 : b0 + bundle_size]:
                ev = bundle.event.add()
                ev.timestamp = int(cols["ts_ns"][i])
                ev.pid = int(cols["pid"][i])
                group, _, name = ev_names[i].rpartition(":")
                if name in ("kmalloc", "kmem_cache_alloc") and group == "kmem":
                    m = getattr(ev, name)
                    m.bytes_alloc = int(_u(cols["bytes"][i]) or 0)
                    m.bytes_req = int(_u(cols["bytes_req"][i]) or 0)
                    if _u(cols["ptr"][i]) is not None:
                        m.ptr = int(cols["ptr"][i])
                    if _u(cols["gfp"][i]) is not None:
                        m.gfp_flags = int(cols["gfp"][i])
                    cs = _u(cols["call_site"][i])
                    if cs is not None and str(cs).startswith("0x"):
                        m.call_site = int(str(cs), 16)
                elif name in ("kfree", "kmem_cache_free") and group == "kmem":
                    m = getattr(ev, name)
                    if _u(cols["ptr"][i]) is not None:
                        m.ptr = int(cols["ptr"][i])
                    cs = _u(cols["call_site"][i])
                    if cs is not None and str(cs).startswith("0x"):
                        m.call_site = int(str(cs), 16)
                elif name in ("mm_page_alloc", "mm_page_free") and group == "kmem":
                    m = getattr(ev, name)
                    m.order = int(_u(cols["order"][i]) or 0)
                    if _u(cols["pfn"][i]) is not None:
                        m.pfn = int(cols["pfn"][i])
                    if name == "mm_page_alloc" and _u(cols["gfp"][i]) is not None:
                        m.gfp_flags = int(cols["gfp"][i])
                elif ev_names[i] == "ftrace:print":
                    ev.print.buf = (_u(cols["marker"][i]) or "") + "\n"
                elif group == "cgroup" and name in ("cgroup_mkdir", "cgroup_rmdir", "cgroup_release"):
                    m = getattr(ev, name)
                    if _u(cols["cgroup_id"][i]) is not None:
                        m.id = int(cols["cgroup_id"][i])
                    if _u(cols["cgroup_path"][i]) is not None:
                        m.path = str(cols["cgroup_path"][i])
                else:
                    g = ev.generic
                    g.event_name = name
                    for col in ("cgroup_id", "bytes", "bytes_req", "ptr", "pfn", "order", "pages", "ret"):
                        v = _u(cols[col][i])
                        if v is not None:
                            f = g.field.add()
                            f.name = {"cgroup_id": "id", "bytes": "bytes_alloc" if group == "percpu" else "size",
                                      "bytes_req": "size", "pages": "nr_pages"}.get(col, col)
                            f.uint_value = int(v)
                    for col in ("call_site", "gfp_flags", "cgroup_path"):
                        v = _u(cols[col][i])
                        if v is not None:
                            f = g.field.add()
                            f.name = {"cgroup_path": "path"}.get(col, col)
                            f.str_value = str(v)
    raw = trace.SerializeToString()
    if not compress:
        return raw
    out = pb2.Trace()
    out.packet.add().compressed_packets = zlib.compress(raw)
    return out.SerializeToString()

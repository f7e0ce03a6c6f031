"""A capture's timeline (memtrace.analyses.timeline) as a perfetto trace for ui.perfetto.dev.

Written with the perfetto package's own protos and builder
(``perfetto.trace_builder.proto_builder.TraceProtoBuilder``, ``perfetto_trace_pb2``): one
``TrackDescriptor`` per track, then ``TrackEvent`` packets on one packet sequence:

* a group track "memcg charged bytes" with one counter track per memcg
  (``CounterDescriptor`` unit ``UNIT_SIZE_BYTES``, all with the ``y_axis_share_key``
  ``memtrace.memcg.bytes`` so the memcgs share one axis), ``TYPE_COUNTER`` values in bytes;
* "forced charges" and "refused charges" tracks with ``TYPE_INSTANT`` events whose debug
  annotations are the memcg, pages, map id (when the event carries one), comm, pid and gfp;
* a "steps" track with one slice per lab step (``TYPE_SLICE_BEGIN`` / ``TYPE_SLICE_END``);
* a group track "BPF maps" with a track per map id the capture's events carry, holding each
  such event as an instant.

Timestamps are the capture's own (the boot clock in lab captures), in ns. The file is built
in chunks of packets (each chunk a serialized ``Trace``; concatenated ``Trace`` messages are
one ``Trace``) into a temporary file next to the output, renamed into place only when
complete: an interrupted or failed export leaves no partial file and never a half-replaced one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

JSON_SCHEMA = "memtrace.export/1"
#: every memcg counter track shares this y axis in the UI
Y_AXIS_SHARE_KEY = "memtrace.memcg.bytes"
#: packets per serialized chunk
CHUNK = 50_000
SEQ = 1  # trusted_packet_sequence_id of every packet

#: track uuids: fixed for the singletons, a base plus an index for the rest
UUID_MEMCG_GROUP, UUID_STEPS, UUID_FORCED, UUID_REFUSED, UUID_MAP_GROUP = 1, 2, 3, 4, 5
UUID_MEMCG_BASE = 1 << 32
UUID_MAP_BASE = 2 << 32


def memcg_track_name(t) -> str:
    """The UI name of a memcg's counter track (``t``: a row of ``timeline.memcg_counters``' tracks)."""
    from memtrace.analyses.timeline import ANCHOR_NONE

    who = t.path if t.path is not None and t.path is not pd.NA else f"cgroup {int(t.cgroup_id)}"
    if t.hierarchy != "with descendants":
        who += " (own counter only)"
    if t.anchor == ANCHOR_NONE:
        return f"{who}: change since capture start"
    return f"{who}: charged bytes"


def _pb():
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    return pb


def _ann(te, name: str, value) -> None:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return
    a = te.debug_annotations.add()
    a.name = name
    if isinstance(value, str):
        a.string_value = value
    else:
        a.int_value = int(value)


class _Writer:
    """Packets into chunks of about ``CHUNK`` packets, each chunk written to ``f`` as one
    serialized ``Trace``. Packets come either as protobuf objects (``packet``: built in a
    TraceProtoBuilder) or as wire bytes (``raw``: encoded by ``_Rows``); both keep their order
    in the chunk, and every chunk is closed by serializing its builder."""

    def __init__(self, f):
        from perfetto.trace_builder.proto_builder import TraceProtoBuilder

        self._cls = TraceProtoBuilder
        self.f = f
        self.b = TraceProtoBuilder()
        self.parts: list[bytes] = []  # the chunk so far, in order, before the builder's packets
        self.n = 0
        self.first = True

    def packet(self, ts: int | None = None):
        # a full chunk is written before the next packet is added (not after: the caller
        # fills the packet in after this returns, and a serialized one would stay empty)
        if self.n >= CHUNK:
            self.flush()
        p = self.b.add_packet()
        p.trusted_packet_sequence_id = SEQ
        if self.first:
            p.sequence_flags = _pb().TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
            self.first = False
        if ts is not None:
            p.timestamp = int(ts)
        self.n += 1
        return p

    def raw(self, encode, rows: int, per_row: int = 1) -> None:
        """``rows`` rows of ``per_row`` packets each, as wire bytes: ``encode(lo, hi, first)``
        returns the bytes of rows ``lo:hi`` (``first``: the first of them is the sequence's first
        packet, which carries the sequence flags)."""
        lo = 0
        while lo < rows:
            k = min(rows - lo, max(1, (CHUNK - self.n) // per_row))
            if len(self.b.trace.packet):  # the builder's packets come before these
                self.parts.append(self.b.serialize())
                self.b = self._cls()
            self.parts.append(encode(lo, lo + k, self.first))
            self.first = False
            self.n += k * per_row
            lo += k
            if self.n >= CHUNK:
                self.flush()

    def flush(self):
        self.parts.append(self.b.serialize())
        self.b = self._cls()
        data = b"".join(self.parts)
        self.parts = []
        self.n = 0
        if data:
            self.f.write(data)


# -- wire encoding of the repetitive packets -------------------------------------------------
#
# A packet is ``Trace.packet`` (a length-delimited field) around a TracePacket, whose
# ``track_event`` is a length-delimited TrackEvent, and so on. ``_Rows`` builds n such byte
# strings at once: a list of pieces, each a (n, w) uint8 matrix of which row i's first
# ``lens[i]`` bytes belong to row i. Integer fields are varints computed with array operations;
# constant and string fields are bytes serialized by perfetto's own classes (one per distinct
# value), picked per row. Field numbers and wire types come from the classes' descriptors.
# Fields are laid out in field-number order, as the protobuf runtime serializes them, so the
# bytes equal the object-built ones (tests/test_export.py checks that they decode the same).


def _varint_int(v: int) -> bytes:
    out = bytearray()
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _varints(v: np.ndarray, prefix: bytes = b"") -> tuple[np.ndarray, np.ndarray, bool]:
    """``prefix`` then the varint bytes of each value (int64 as its two's complement, as
    protobuf's int64 fields): a (w, n) uint8 matrix (byte k of every value in row k), each
    value's length (int32) and whether every value is w long."""
    v = np.asarray(v)
    u = v.astype(np.int64, copy=False).view(np.uint64) if v.dtype.kind in "ib" else v.astype(np.uint64, copy=False)
    n, p = len(u), len(prefix)
    if not n:
        return np.zeros((p + 1, 0), np.uint8), np.zeros(0, np.int32), True
    w = max(1, (int(u.max()).bit_length() + 6) // 7)
    mat = np.empty((p + w, n), dtype=np.uint8)
    if p:
        mat[:p] = np.frombuffer(prefix, dtype=np.uint8)[:, None]
    for k in range(w):
        mat[p + k] = u >> np.uint64(7 * k)  # the low 8 bits
    mat[p:] &= 0x7F
    if w == 1:
        return mat, np.full(n, p + 1, np.int32), True
    lens = np.full(n, p + 1, np.int32)
    for k in range(1, w):
        lens += u >= np.uint64(1 << (7 * k))
    mat[p:p + w - 1] |= (np.arange(p + 1, p + w, dtype=np.int32)[:, None] < lens).view(np.uint8) << 7
    return mat, lens, bool(u.min() >= np.uint64(1 << (7 * (w - 1))))


_WIRE = None


def _tag(msg, field: str) -> bytes:
    """The key (field number and wire type) of ``msg``'s field, from its descriptor."""
    global _WIRE
    from google.protobuf.descriptor import FieldDescriptor as FD

    if _WIRE is None:
        _WIRE = {**{t: 0 for t in (FD.TYPE_INT64, FD.TYPE_UINT64, FD.TYPE_INT32, FD.TYPE_UINT32, FD.TYPE_ENUM,
                                   FD.TYPE_BOOL)},
                 **{t: 2 for t in (FD.TYPE_STRING, FD.TYPE_BYTES, FD.TYPE_MESSAGE)}}
    f = msg.DESCRIPTOR.fields_by_name[field]
    if f.type not in _WIRE:
        raise TypeError(f"{msg.DESCRIPTOR.name}.{field}: field type {f.type} is not encoded here")
    return _varint_int(f.number << 3 | _WIRE[f.type])


class _Table:
    """Byte strings picked per row by ``_Rows.table``: a padded (width, entries + 1) matrix,
    one column per entry and a last, empty one that code -1 picks."""

    def __init__(self, entries: list[bytes]):
        w = max((len(e) for e in entries), default=0)
        self.mat = np.zeros((max(w, 1), len(entries) + 1), dtype=np.uint8)
        for i, e in enumerate(entries):
            self.mat[:len(e), i] = np.frombuffer(e, dtype=np.uint8)
        self.lens = np.array([len(e) for e in entries] + [0], dtype=np.int32)


class _Rows:
    """n byte strings (rows) built from pieces with array operations (see above). Pieces are
    held transposed, (w, n): byte k of every row in one contiguous line."""

    def __init__(self, n: int):
        self.n = n
        self.mats: list[np.ndarray] = []
        self.lens: list[np.ndarray] = []
        self.full: list[bool] = []  # the piece's every row is as wide as its matrix

    def _add(self, mat, lens, full):
        self.mats.append(mat)
        self.lens.append(lens)
        self.full.append(full)
        return self

    def frag(self, b: bytes) -> "_Rows":
        """The same bytes in every row."""
        return self._add(np.broadcast_to(np.frombuffer(b, dtype=np.uint8)[:, None], (len(b), self.n)),
                         np.full(self.n, len(b), dtype=np.int32), True)

    def table(self, t: "_Table", codes: np.ndarray) -> "_Rows":
        """Row i gets entry ``codes[i]`` of ``t``, nothing where the code is -1."""
        codes = np.asarray(codes, dtype=np.int64)
        return self._add(t.mat[:, codes], t.lens[codes], False)

    def varint(self, msg, field: str, values, present: np.ndarray | None = None) -> "_Rows":
        """The integer field ``field`` of ``msg`` (absent where ``present`` is False)."""
        mat, lens, full = _varints(values, _tag(msg, field))
        if present is not None:
            lens, full = np.where(present, lens, 0).astype(np.int32), False
        return self._add(mat, lens, full)

    def message(self, msg, field: str, inner: "_Rows", present: np.ndarray | None = None) -> "_Rows":
        """The message field ``field`` of ``msg`` holding ``inner``'s rows."""
        if present is not None:
            inner.lens = [np.where(present, x, 0).astype(np.int32) for x in inner.lens]
            inner.full = [False] * len(inner.lens)
        self.varint(msg, field, inner.size(), present)
        self.mats += inner.mats
        self.lens += inner.lens
        self.full += inner.full
        return self

    def size(self) -> np.ndarray:
        tot = np.zeros(self.n, dtype=np.int64)
        for x in self.lens:
            tot += x
        return tot

    def tobytes(self) -> bytes:
        if not self.n or not self.mats:
            return b""
        mat = np.concatenate(self.mats, axis=0).T  # (n, w): row i's bytes in order, then padding
        if all(self.full):
            return np.ascontiguousarray(mat).tobytes()
        mask = np.empty((mat.shape[1], self.n), dtype=bool)
        c = 0
        cols = np.arange(mat.shape[1], dtype=np.int32)
        for m, x, full in zip(self.mats, self.lens, self.full):
            w = m.shape[0]
            if full:
                mask[c:c + w] = True
            else:
                np.less(cols[:w, None], x, out=mask[c:c + w])
            c += w
        return np.ascontiguousarray(mat)[np.ascontiguousarray(mask.T)].tobytes()


def _present(s: pd.Series) -> np.ndarray:
    return s.notna().to_numpy()


def _ints(s: pd.Series) -> np.ndarray:
    """An integer column as int64 with 0 where null (their presence says which)."""
    if isinstance(s.dtype, pd.api.extensions.ExtensionDtype) or s.dtype.kind not in "iu":
        s = s.astype("Int64").fillna(0)
    return s.to_numpy(dtype=np.int64)


class _Packets:
    """TracePackets of one kind for rows ``lo:hi`` of column arrays, as wire bytes."""

    def __init__(self):
        pb = _pb()
        self.pb = pb
        self.TP, self.TE, self.DA, self.T = pb.TracePacket, pb.TrackEvent, pb.DebugAnnotation, pb.Trace
        self.seq = self.TP(trusted_packet_sequence_id=SEQ).SerializeToString()

    def te_frag(self, **kw) -> bytes:
        """TrackEvent fields serialized by perfetto's TrackEvent (one field: its key and value)."""
        return self.TE(**kw).SerializeToString()

    def te_table(self, kws: list[dict]) -> _Table:
        return _Table([self.TE(**kw).SerializeToString() for kw in kws])

    def str_ann(self, name: str, values: list[str]) -> _Table:
        """One serialized ``debug_annotations`` element per value: a string annotation."""
        return self.te_table([{"debug_annotations": [self.DA(name=name, string_value=v)]} for v in values])

    def int_ann(self, te: _Rows, name: str, values: np.ndarray, present: np.ndarray) -> None:
        da = _Rows(te.n).varint(self.DA, "int_value", values).frag(self.DA(name=name).SerializeToString())
        te.message(self.TE, "debug_annotations", da, present)

    def packet(self, out: _Rows, ts: np.ndarray, te: _Rows, first: bool) -> None:
        """A TracePacket on the sequence around ``te`` into ``out`` (a Trace: its ``packet`` field)."""
        n = out.n
        p = _Rows(n).varint(self.TP, "timestamp", ts).frag(self.seq)
        p.message(self.TP, "track_event", te)
        if first:
            flags = np.zeros(n, dtype=bool)
            flags[0] = True
            p.varint(self.TP, "sequence_flags", np.full(n, self.TP.SEQ_INCREMENTAL_STATE_CLEARED, dtype=np.int64),
                     flags)
        out.message(self.T, "packet", p)


def _atomic_write(dest: Path, fill) -> None:
    """``fill(binary file)`` written atomically (memtrace.tables.atomic.write_stream)."""
    from memtrace.tables.atomic import write_stream

    write_stream(dest, fill)


def write_trace(dest: Path, series: pd.DataFrame, tracks: pd.DataFrame, instants: pd.DataFrame,
                slices: pd.DataFrame, map_events: pd.DataFrame, start_ns: int, encoder: str = "wire") -> dict:
    """Write the perfetto trace to ``dest`` (atomically); return the counts written:
    ``tracks`` (TrackDescriptors), ``counters`` (counter values: each memcg's value at
    ``start_ns``, the capture's start, then one per change), ``instants`` (forced and refused
    charges), ``slices`` (steps), ``maps`` (map tracks), ``map_instants`` (their events).

    ``encoder``: ``"wire"`` (default) encodes the counter values, instants and slices as
    protobuf wire bytes with array operations; ``"objects"`` builds every packet as a
    ``TracePacket`` object (about 1.5 µs per counter packet, several per instant). Both write
    the same packets; track descriptors are always built with perfetto's classes."""
    if encoder not in ("wire", "objects"):
        raise ValueError(f"encoder must be 'wire' or 'objects', not {encoder!r}")
    wire = encoder == "wire"
    pb = _pb()
    TE = pb.TrackEvent
    CD = pb.CounterDescriptor
    counts = {"tracks": 0, "counters": 0, "instants": 0, "slices": 0, "maps": 0, "map_instants": 0}

    def fill(f):
        w = _Writer(f)
        P = _Packets() if wire else None

        def track(uuid, name, parent=None, counter=False):
            td = w.packet().track_descriptor
            td.uuid = uuid
            td.name = name
            if parent is not None:
                td.parent_uuid = parent
            if counter:
                td.counter.unit = CD.UNIT_SIZE_BYTES
                td.counter.y_axis_share_key = Y_AXIS_SHARE_KEY
            counts["tracks"] += 1

        # -- memcg counters
        uuid_of: dict[int, int] = {}
        if len(tracks):
            track(UUID_MEMCG_GROUP, "memcg charged bytes (memory.current: the memcg and its descendants)")
        for i, t in enumerate(tracks.itertuples(index=False)):
            uuid_of[int(t.cgroup_id)] = UUID_MEMCG_BASE + i
            track(UUID_MEMCG_BASE + i, memcg_track_name(t), UUID_MEMCG_GROUP, counter=True)
        # each track's value at the start of the capture, then every change
        uu = np.array([uuid_of[int(c)] for c in tracks["cgroup_id"]], dtype=np.int64) if len(tracks) \
            else np.zeros(0, np.int64)
        tss = np.full(len(tracks), int(start_ns), dtype=np.int64)
        vals = tracks["start_bytes"].to_numpy(dtype=np.int64) if len(tracks) else np.zeros(0, np.int64)
        if len(series):
            order = np.lexsort((series["row"].to_numpy(), series["ts_ns"].to_numpy()))  # by ts_ns, then row
            cg = series["cgroup_id"].to_numpy(dtype=np.int64)[order]
            ids = np.array(sorted(uuid_of), dtype=np.int64)
            uu = np.concatenate([uu, np.asarray([uuid_of[c] for c in ids], dtype=np.int64)[np.searchsorted(ids, cg)]])
            tss = np.concatenate([tss, series["ts_ns"].to_numpy(dtype=np.int64)[order]])
            vals = np.concatenate([vals, series["value_bytes"].to_numpy(dtype=np.int64)[order]])
        if wire:
            counter = P.te_frag(type=TE.TYPE_COUNTER)

            def counters(lo, hi, first):
                out = _Rows(hi - lo)
                te = _Rows(hi - lo).frag(counter).varint(TE, "track_uuid", uu[lo:hi]).varint(TE, "counter_value",
                                                                                          vals[lo:hi])
                P.packet(out, tss[lo:hi], te, first)
                return out.tobytes()

            w.raw(counters, len(tss))
        else:
            uul, tsl, vl = uu.tolist(), tss.tolist(), vals.tolist()
            for k in range(len(tsl)):
                te = w.packet(tsl[k]).track_event
                te.type = TE.TYPE_COUNTER
                te.track_uuid = uul[k]
                te.counter_value = vl[k]
        counts["counters"] += len(tss)

        # -- forced / refused instants
        kinds = {str(k) for k in instants["kind"].dropna().unique()} if len(instants) else set()
        if "forced" in kinds or len(tracks):
            track(UUID_FORCED, "forced charges (page_counter_charge above memory.max)")
        if instants.attrs.get("refusals_recorded", "refused" in kinds):
            track(UUID_REFUSED, "refused charges (try_charge_memcg returned -ENOMEM)")
        if wire and len(instants):
            _instants(w, P, instants)
            counts["instants"] += len(instants)
        else:
            for r in instants.itertuples(index=False):
                te = w.packet(r.ts_ns).track_event
                te.type = TE.TYPE_INSTANT
                te.track_uuid = UUID_FORCED if r.kind == "forced" else UUID_REFUSED
                te.name = f"{r.kind} charge"
                _ann(te, "memcg", r.path if r.path is not None and r.path is not pd.NA else None)
                _ann(te, "cgroup_id", r.cgroup_id)
                _ann(te, "pages", r.pages)
                _ann(te, "map_id", r.map_id)
                _ann(te, "comm", r.comm)
                _ann(te, "pid", r.pid)
                if r.gfp is not None and r.gfp is not pd.NA:
                    _ann(te, "gfp", hex(int(r.gfp)))
                counts["instants"] += 1

        # -- steps
        if len(slices):
            track(UUID_STEPS, "steps (lab step markers: step k runs from marker k-1 to marker k)")
        if wire and len(slices):
            _slices(w, P, slices)
            counts["slices"] += len(slices)
        else:
            for r in slices.itertuples(index=False):
                te = w.packet(r.start_ns).track_event
                te.type = TE.TYPE_SLICE_BEGIN
                te.track_uuid = UUID_STEPS
                te.name = f"{int(r.step)} {r.step_name}"
                _ann(te, "step", r.step)
                te = w.packet(r.end_ns).track_event
                te.type = TE.TYPE_SLICE_END
                te.track_uuid = UUID_STEPS
                counts["slices"] += 1

        # -- maps
        if len(map_events):
            track(UUID_MAP_GROUP, "BPF maps (events that carry a map id)")
            ids = sorted(int(m) for m in map_events["map_id"].unique())
            muuid = {m: UUID_MAP_BASE + i for i, m in enumerate(ids)}
            for m in ids:
                track(muuid[m], f"map {m}", UUID_MAP_GROUP)
            counts["maps"] = len(ids)
            if wire:
                _map_instants(w, P, map_events, np.array(ids, dtype=np.int64))
                counts["map_instants"] += len(map_events)
            else:
                for r in map_events.itertuples(index=False):
                    te = w.packet(r.ts_ns).track_event
                    te.type = TE.TYPE_INSTANT
                    te.track_uuid = muuid[int(r.map_id)]
                    te.name = str(r.event).rsplit(":", 1)[-1]
                    _ann(te, "map_id", r.map_id)
                    _ann(te, "bytes", r.bytes)
                    _ann(te, "cgroup_id", r.cgroup_id)
                    _ann(te, "comm", r.comm)
                    _ann(te, "pid", r.pid)
                    counts["map_instants"] += 1
        w.flush()

    _atomic_write(Path(dest), fill)
    return counts


def _str_codes(s: pd.Series) -> tuple[np.ndarray, list[str]]:
    """A string column factorized: codes (-1 for null) and the distinct strings."""
    codes, uniq = pd.factorize(s.astype(object).where(s.notna(), None), use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), [str(u) for u in uniq]


def _instants(w: _Writer, P: _Packets, instants: pd.DataFrame) -> None:
    """The forced and refused charges as wire bytes: the packets ``write_trace``'s object path
    builds (the same annotations, present where the value is)."""
    TE = P.TE
    ts = instants["ts_ns"].to_numpy(dtype=np.int64)
    kind_c, kinds = _str_codes(instants["kind"])
    uuid_t = P.te_table([{"track_uuid": UUID_FORCED if k == "forced" else UUID_REFUSED} for k in kinds])
    name_t = P.te_table([{"name": f"{k} charge"} for k in kinds])
    path_c, paths = _str_codes(instants["path"])
    comm_c, comms = _str_codes(instants["comm"])
    gfp_c, gfp_u = pd.factorize(instants["gfp"], use_na_sentinel=True)
    gfp_c, gfps = np.asarray(gfp_c, dtype=np.int64), [hex(int(g)) for g in gfp_u]
    ints = {c: (_ints(instants[c]), _present(instants[c])) for c in ("cgroup_id", "pages", "map_id", "pid")}
    memcg_t, comm_t, gfp_t = P.str_ann("memcg", paths), P.str_ann("comm", comms), P.str_ann("gfp", gfps)
    instant = P.te_frag(type=TE.TYPE_INSTANT)

    def enc(lo, hi, first):
        n = hi - lo
        te = _Rows(n).table(memcg_t, path_c[lo:hi])
        for c in ("cgroup_id", "pages", "map_id"):
            P.int_ann(te, c, ints[c][0][lo:hi], ints[c][1][lo:hi])
        te.table(comm_t, comm_c[lo:hi])
        P.int_ann(te, "pid", ints["pid"][0][lo:hi], ints["pid"][1][lo:hi])
        te.table(gfp_t, gfp_c[lo:hi])
        te.frag(instant).table(uuid_t, kind_c[lo:hi]).table(name_t, kind_c[lo:hi])
        out = _Rows(n)
        P.packet(out, ts[lo:hi], te, first)
        return out.tobytes()

    w.raw(enc, len(instants))


def _slices(w: _Writer, P: _Packets, slices: pd.DataFrame) -> None:
    """Each step as a TYPE_SLICE_BEGIN and a TYPE_SLICE_END packet, as wire bytes."""
    TE = P.TE
    # a name per distinct (step, step name)
    name_c, pairs = pd.MultiIndex.from_arrays([slices["step"].astype("int64"), slices["step_name"].astype(str)]).factorize()
    name_t = P.te_table([{"name": f"{int(st)} {nm}"} for st, nm in pairs])
    step, has_step = _ints(slices["step"]), _present(slices["step"])
    start, end = slices["start_ns"].to_numpy(dtype=np.int64), slices["end_ns"].to_numpy(dtype=np.int64)
    begin_f = P.te_frag(type=TE.TYPE_SLICE_BEGIN, track_uuid=UUID_STEPS)
    end_f = P.te_frag(type=TE.TYPE_SLICE_END, track_uuid=UUID_STEPS)

    def enc(lo, hi, first):
        n = hi - lo
        te = _Rows(n)
        P.int_ann(te, "step", step[lo:hi], has_step[lo:hi])
        te.frag(begin_f).table(name_t, name_c[lo:hi])
        out = _Rows(n)
        P.packet(out, start[lo:hi], te, first)
        P.packet(out, end[lo:hi], _Rows(n).frag(end_f), False)
        return out.tobytes()

    w.raw(enc, len(slices), per_row=2)


def _map_instants(w: _Writer, P: _Packets, map_events: pd.DataFrame, ids: np.ndarray) -> None:
    """The events that carry a map id, as instants on their map's track, as wire bytes."""
    TE = P.TE
    ts = map_events["ts_ns"].to_numpy(dtype=np.int64)
    uu = UUID_MAP_BASE + np.searchsorted(ids, _ints(map_events["map_id"]))
    ev_c, evs = _str_codes(map_events["event"])
    name_t = P.te_table([{"name": e.rsplit(":", 1)[-1]} for e in evs])
    comm_c, comms = _str_codes(map_events["comm"])
    comm_t = P.str_ann("comm", comms)
    ints = {c: (_ints(map_events[c]), _present(map_events[c])) for c in ("map_id", "bytes", "cgroup_id", "pid")}
    instant = P.te_frag(type=TE.TYPE_INSTANT)

    def enc(lo, hi, first):
        n = hi - lo
        te = _Rows(n)
        for c in ("map_id", "bytes", "cgroup_id"):
            P.int_ann(te, c, ints[c][0][lo:hi], ints[c][1][lo:hi])
        te.table(comm_t, comm_c[lo:hi])
        P.int_ann(te, "pid", ints["pid"][0][lo:hi], ints["pid"][1][lo:hi])
        te.frag(instant).varint(TE, "track_uuid", uu[lo:hi]).table(name_t, ev_c[lo:hi])
        out = _Rows(n)
        P.packet(out, ts[lo:hi], te, first)
        return out.tobytes()

    w.raw(enc, len(map_events))


def json_envelope(capture: str, truth: str | None, output: str, counts: dict, tracks: pd.DataFrame,
                  notes: list[str]) -> str:
    from memtrace.render.snapshot import _default, _records

    env = {"schema": JSON_SCHEMA, "capture": capture, "truth": truth, "output": output, **counts,
           "memcgs": _records(tracks), "notes": notes}
    return json.dumps(env, default=_default, indent=1)

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
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from memtrace.errors import InputError

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
    """Packets into chunks of TraceProtoBuilder, each chunk serialized into ``f``."""

    def __init__(self, f):
        from perfetto.trace_builder.proto_builder import TraceProtoBuilder

        self._cls = TraceProtoBuilder
        self.f = f
        self.b = TraceProtoBuilder()
        self.n = 0
        self.first = True

    def packet(self, ts: int | None = None):
        p = self.b.add_packet()
        p.trusted_packet_sequence_id = SEQ
        if self.first:
            p.sequence_flags = _pb().TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
            self.first = False
        if ts is not None:
            p.timestamp = int(ts)
        self.n += 1
        if self.n % CHUNK == 0:
            self.flush()
        return p

    def flush(self):
        if len(self.b.trace.packet):
            self.f.write(self.b.serialize())
        self.b = self._cls()


def _atomic_write(dest: Path, fill) -> None:
    """``fill(binary file)`` into a temporary file beside ``dest``, renamed into place when done
    (the pattern of memtrace.tables.atomic.write_parquet)."""
    dest = Path(dest)
    d = dest.parent if str(dest.parent) else Path(".")
    if not d.is_dir():
        raise InputError(f"{dest}: directory {d} does not exist")
    if dest.is_dir():
        raise InputError(f"{dest}: is a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
        # mkstemp makes the file 0600: give it the mode a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise InputError(f"{dest}: cannot write: {e.strerror or e}") from None
        raise


def write_trace(dest: Path, series: pd.DataFrame, tracks: pd.DataFrame, instants: pd.DataFrame,
                slices: pd.DataFrame, map_events: pd.DataFrame, start_ns: int) -> dict:
    """Write the perfetto trace to ``dest`` (atomically); return the counts written:
    ``tracks`` (TrackDescriptors), ``counters`` (counter values: each memcg's value at
    ``start_ns``, the capture's start, then one per change), ``instants`` (forced and refused
    charges), ``slices`` (steps), ``maps`` (map tracks), ``map_instants`` (their events)."""
    pb = _pb()
    TE = pb.TrackEvent
    CD = pb.CounterDescriptor
    counts = {"tracks": 0, "counters": 0, "instants": 0, "slices": 0, "maps": 0, "map_instants": 0}

    def fill(f):
        w = _Writer(f)

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
        for t in tracks.itertuples(index=False):
            p = w.packet(start_ns)
            te = p.track_event
            te.type = TE.TYPE_COUNTER
            te.track_uuid = uuid_of[int(t.cgroup_id)]
            te.counter_value = int(t.start_bytes)
            counts["counters"] += 1
        if len(series):
            s = series.sort_values(["ts_ns", "row"], kind="stable")
            uu = s["cgroup_id"].astype("int64").map(uuid_of).to_numpy(dtype=np.int64).tolist()
            tss = s["ts_ns"].to_numpy().tolist()
            vals = s["value_bytes"].to_numpy().tolist()
            add, flush_every = w.b.add_packet, CHUNK
            ctype = TE.TYPE_COUNTER
            for k in range(len(tss)):
                p = add()
                p.timestamp = tss[k]
                p.trusted_packet_sequence_id = SEQ
                te = p.track_event
                te.type = ctype
                te.track_uuid = uu[k]
                te.counter_value = vals[k]
                w.n += 1
                if w.n % flush_every == 0:
                    w.flush()
                    add = w.b.add_packet
            counts["counters"] += len(tss)

        # -- forced / refused instants
        kinds = set(instants["kind"].astype(str)) if len(instants) else set()
        if "forced" in kinds or len(tracks):
            track(UUID_FORCED, "forced charges (page_counter_charge above memory.max)")
        if instants.attrs.get("refusals_recorded", "refused" in kinds):
            track(UUID_REFUSED, "refused charges (try_charge_memcg returned -ENOMEM)")
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


def json_envelope(capture: str, truth: str | None, output: str, counts: dict, tracks: pd.DataFrame,
                  notes: list[str]) -> str:
    from memtrace.render.snapshot import _default, _records

    env = {"schema": JSON_SCHEMA, "capture": capture, "truth": truth, "output": output, **counts,
           "memcgs": _records(tracks), "notes": notes}
    return json.dumps(env, default=_default, indent=1)

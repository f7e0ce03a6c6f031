"""Perfetto helpers for the tests and the bench (not used by memtrace's commands).

* `parse_perfetto_reference`: every packet through the protobuf-object reader (`_Reader`, which
  the production wire decoder also uses for packets it does not take): the reference the fast
  path (`parse_perfetto`) is tested against.
* `events_to_trace`: an event table encoded as a perfetto trace with the perfetto package's own
  protos.
"""

from __future__ import annotations

import zlib

import pandas as pd

from memtrace.errors import InputError
from memtrace.sources.trace.perfetto import _finish, _pb2, _Reader, iter_packet_bytes
from memtrace.tables.events import IngestStats


def parse_perfetto_reference(data: bytes, *, path: str = "<buffer>", kprobe_groups=None) -> tuple[pd.DataFrame, IngestStats]:
    """The same parse with protobuf objects for every packet: the reference the fast path is tested against."""
    st = IngestStats(path=path, format="perfetto", unknown_event_names={})
    if len(data) == 0:
        raise InputError(f"{path}: empty file")
    r = _Reader(st, kprobe_groups)
    mv = memoryview(data)
    for raw in iter_packet_bytes(mv, st, path):
        r.packet(bytes(raw))
    if st.packets_read == 0:
        raise InputError(f"{path}: not a perfetto trace: no packet decodes")
    return _finish(r, st, path)


def events_to_trace(df: pd.DataFrame, *, bundle_size: int = 1000, compress: bool = False) -> bytes:
    """Encode an event table as a perfetto Trace with the package's own protos (typed kmem, cgroup and
    print events; other events as legacy GenericFtraceEvents; a process tree for comm names).

    Used to feed real lab events through the perfetto reader (tests, bench): the reverse of
    `memtrace.sources.trace.perfetto.parse_perfetto` for the fields perfetto's protos carry.
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

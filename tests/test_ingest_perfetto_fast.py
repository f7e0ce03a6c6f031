"""The numpy wire decoder (`parse_perfetto`) against the protobuf-object path
(`parse_perfetto_reference`): the same frame, dtypes, categories and stats, on real lab events
encoded with the perfetto package's protos, cut and compressed, and on hand-made odd packets.
All inputs are committed fixtures (fixtures/traces, fixtures/captures) or made here."""

from __future__ import annotations

import zlib
from pathlib import Path

import pandas as pd
import pytest

from memtrace.errors import InputError
from memtrace.sources.trace import load_trace
from memtrace.sources.trace.perfetto import parse_perfetto
from memtrace.testing.perfetto import events_to_trace, parse_perfetto_reference

REPO = Path(__file__).resolve().parent.parent
EXCERPTS = sorted((REPO / "fixtures" / "traces").glob("*.excerpt.txt"))
CAPTURES = sorted((REPO / "fixtures" / "captures").glob("*.page_counter.txt")) + sorted(
    (REPO / "fixtures" / "captures").glob("*.trace.dat")
)
assert EXCERPTS and len(CAPTURES) == 6, "fixtures/traces or fixtures/captures is missing files"


#: what both decoders say about input with no packet that decodes (cut to a few bytes, or a
#: single compressed packet cut short)
NO_PACKETS = "not a perfetto trace: no packet decodes"


def assert_same(raw: bytes, *, reject: str | None = None):
    """Both paths give the same frame, dtypes, categories and stats; returns the frame.

    Any exception from either path fails the test, unless ``reject`` says the input is one
    both must refuse: then both must raise InputError with the same one-line message, and
    that message must contain ``reject``."""
    if reject is not None:
        with pytest.raises(InputError) as ref_err:
            parse_perfetto_reference(raw)
        with pytest.raises(InputError) as fast_err:
            parse_perfetto(raw)
        assert reject in ref_err.value.message, ref_err.value.message
        assert fast_err.value.message == ref_err.value.message
        assert "\n" not in fast_err.value.message
        return None
    rdf, rst = parse_perfetto_reference(raw)
    df, st = parse_perfetto(raw)
    pd.testing.assert_frame_equal(df, rdf, check_exact=True)
    for c in df.columns:
        assert df[c].dtype == rdf[c].dtype, c
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            assert df[c].cat.categories.equals(rdf[c].cat.categories), c
            assert df[c].cat.categories.dtype == rdf[c].cat.categories.dtype, c
    assert st.to_dict() == rst.to_dict()
    return df


@pytest.fixture(scope="module", params=[p.name for p in EXCERPTS])
def excerpt(request):
    df, _ = load_trace(str(REPO / "fixtures" / "traces" / request.param))
    return df


@pytest.mark.parametrize("bundle_size", [7, 64, 1000])
@pytest.mark.parametrize("compress", [False, True])
def test_excerpt_same_as_object_path(excerpt, bundle_size, compress):
    raw = events_to_trace(excerpt, bundle_size=bundle_size, compress=compress)
    df = assert_same(raw)
    assert len(df) == len(excerpt)
    for cut in (len(raw) * 2 // 3, len(raw) - 5, len(raw) - 1):
        # compressed, an excerpt is one packet: cut anywhere, nothing is left that decodes
        out = assert_same(raw[:cut], reject=NO_PACKETS if compress else None)
        if not compress:  # complete packets before the cut decode (none, if it cuts the first bundle)
            assert len(out) <= len(df)
    assert_same(raw[:3], reject=NO_PACKETS)


def test_excerpt_compressed_packets_between_plain_ones(excerpt):
    plain = events_to_trace(excerpt, bundle_size=16)
    half = events_to_trace(excerpt.iloc[: len(excerpt) // 2], bundle_size=16)
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb2

    t = pb2.Trace()
    t.packet.add().compressed_packets = zlib.compress(half)
    t.packet.add().compressed_packets = b"not zlib"
    raw = plain + t.SerializeToString() + plain[: len(plain) // 2]  # ends with a cut packet
    assert_same(raw)


def _odd_trace() -> bytes:
    """Hand-made packets: every kind the fast path sends back to the object path, between plain ones."""
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb2

    t = pb2.Trace()
    p = t.packet.add()
    th = p.process_tree.threads.add()
    th.tid, th.name = 7, "worker"
    pr = p.process_tree.processes.add()
    pr.pid, pr.cmdline[:] = 8, ["/usr/bin/proc8"]

    def bundle(cpu, **kw):
        pk = t.packet.add()
        pk.trusted_packet_sequence_id = 3
        b = pk.ftrace_events
        b.cpu = cpu
        for k, v in kw.items():
            setattr(b, k, v)
        return b

    b = bundle(0, lost_events=True)
    for i in range(40):
        e = b.event.add()
        e.timestamp, e.pid = 1000 + i * (i % 3), 7 + i % 3
        kind = i % 10
        if kind == 0:
            e.kmalloc.bytes_alloc, e.kmalloc.bytes_req, e.kmalloc.ptr = 64 + i, 60, 0xFFFF888000000000 + i
            e.kmalloc.gfp_flags, e.kmalloc.call_site = 0x400CC0 if i % 20 else 0xCC0, 0xFFFFFFFF81000000 + i % 4
        elif kind == 1:
            e.kfree.ptr, e.kfree.call_site = 0xFFFF888000000000 + i, 0xFFFFFFFF81234567
        elif kind == 2:
            e.mm_page_alloc.order, e.mm_page_alloc.pfn, e.mm_page_alloc.page = i % 4, 1234567 + i, 0xFFFFEA0000000000 + i
            e.mm_page_alloc.gfp_flags, e.mm_page_alloc.migratetype = 0x400DC0, (i % 3) - 1
        elif kind == 3:
            e.mm_page_free.order, e.mm_page_free.pfn = 2, 99 + i
        elif kind == 4:
            e.print.buf = f"B|{i}|släp ✓\n\n"
        elif kind == 5:
            e.kprobe_event.name, e.kprobe_event.type = ("try_charge" if i % 20 else "my_probe"), i % 4
        elif kind == 6:
            e.kmalloc_node.bytes_alloc, e.kmalloc_node.node, e.kmalloc_node.ptr = 128, -1 if i % 20 else 1, i
        elif kind == 7:
            e.kmem_cache_alloc.bytes_alloc = 32
        elif kind == 8:
            e.cgroup_mkdir.id, e.cgroup_mkdir.path = 42 + i, f"/lab/g{i}"
        else:
            g = e.generic
            g.event_name = "percpu_alloc_percpu"
            f = g.field.add()
            f.name, f.uint_value = "bytes_alloc", 4096
            f = g.field.add()
            f.name, f.str_value = "call_site", "pcpu_alloc+0x10/0x20"
    e = bundle(1).event.add()
    e.timestamp, e.pid = 1005, 0
    e.task_newtask.pid, e.task_newtask.comm = 9, "child"
    # a dense generic event (field id outside FtraceEvent) with its descriptor
    from google.protobuf import descriptor_pb2

    d = descriptor_pb2.DescriptorProto(name="my_dense")
    fd = d.field.add()
    fd.name, fd.number, fd.type = "size", 1, descriptor_pb2.FieldDescriptorProto.TYPE_UINT64
    b = bundle(1)
    gd = b.generic_event_descriptors.add()
    gd.field_id, gd.group_name, gd.event_descriptor = 65000, "percpu", d.SerializeToString()
    e = b.event.add()
    e.timestamp, e.pid = 1006, 7
    ev_raw = e.SerializeToString() + bytes([0xC2, 0xBE, 0x1F, 2, 8, 5])  # field 65000, {size: 5}
    del b.event[:]
    b2 = bundle(1)
    k = b2.event.add()
    k.timestamp, k.kfree.ptr = 1007, 5
    t.packet.add().ftrace_stats.phase = pb2.FtraceStats.Phase.END_OF_TRACE
    t.packet[-1].ftrace_stats.cpu_stats.add(cpu=0, overrun=3)
    raw = t.SerializeToString()
    # the dense event, spliced by hand into the generic-descriptor bundle
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb2b

    bb = pb2b.FtraceEventBundle()
    bb.cpu = 1
    bb.generic_event_descriptors.add().CopyFrom(gd)
    braw = bb.SerializeToString() + bytes([0x12, len(ev_raw)]) + ev_raw
    pkt = bytes([0x0A]) + _vi(len(braw)) + braw
    raw += bytes([0x0A]) + _vi(len(pkt)) + pkt
    return raw


def _vi(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def test_odd_packets_same_as_object_path():
    raw = _odd_trace()
    df = assert_same(raw)
    assert df is not None and len(df) > 40
    assert assert_same(raw[: len(raw) - 3]) is not None


def test_damaged_events_same_as_object_path():
    raw = events_to_trace(load_trace(str(EXCERPTS[0]))[0], bundle_size=32)
    for k in range(1, 60):  # flip bytes all over: damage is judged as the object path judges it
        bad = bytearray(raw)
        i = (k * 7919) % len(bad)
        bad[i] ^= 0x80 if k % 2 else 0x7F
        assert_same(bytes(bad))


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_lab_capture_same_as_object_path(path):
    """The committed lab captures (tracefs text and trace-cmd trace.dat, tens of thousands of
    events), re-encoded as perfetto: whole, cut in half, and in small compressed bundles."""
    df, _ = load_trace(str(path))
    assert len(df) > 300
    raw = events_to_trace(df)
    out = assert_same(raw)
    assert len(out) == len(df)
    half = assert_same(raw[: len(raw) // 2])
    assert len(half) < len(df)
    packed = assert_same(events_to_trace(df, bundle_size=500, compress=True))
    assert len(packed) == len(df)


def test_small_windows_same_as_object_path(excerpt, monkeypatch):
    """Many decode windows (and column stores grown across compressed segments) change nothing."""
    import memtrace.sources.trace.perfetto as pf

    monkeypatch.setattr(pf, "WINDOW_BYTES", 300)
    plain = events_to_trace(excerpt, bundle_size=5)
    packed = events_to_trace(excerpt, bundle_size=9, compress=True)
    assert_same(plain)
    assert_same(plain + packed + plain[:-7])
    assert_same(_odd_trace())

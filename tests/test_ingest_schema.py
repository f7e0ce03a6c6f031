"""`memtrace ingest X -o F.parquet` writes the one documented schema whatever X is: every
column of memtrace/tables/events.py with the Arrow type its pandas dtype maps to, for each
input format, an empty capture, and columns that are null in every row (a perfetto trace
has no cgroup_path or gfp_flags: they were written as doubles)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memtrace.tables.events import EVENT_COLUMNS
from test_ingest_bad import _repro

ROOT = Path(__file__).resolve().parent.parent

#: the Arrow type each schema dtype is written as
ARROW = {
    "int64": pa.int64(), "Int64": pa.int64(), "Int32": pa.int32(), "UInt64": pa.uint64(), "UInt32": pa.uint32(),
    "boolean": pa.bool_(),
}


def _is(c, t: pa.DataType) -> bool:
    if c.dtype == "category":
        return pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type))
    if c.dtype == "string":
        return pa.types.is_string(t) or pa.types.is_large_string(t)
    return t == ARROW[c.dtype]


def _inputs(tmp: Path) -> dict[str, Path]:
    perfetto = tmp / "t.pftrace"
    perfetto.write_bytes(_repro())
    from test_ingest_bad import pb2

    t = pb2.Trace()
    t.packet.add().timestamp = 1000  # a packet, no event: an empty event table
    empty = tmp / "empty.pftrace"
    empty.write_bytes(t.SerializeToString())
    return {
        "ftrace text": ROOT / "fixtures" / "traces" / "restart-6.1.excerpt.txt",
        "kprobe text": ROOT / "fixtures" / "captures" / "force-6.12.page_counter.txt",
        "trace.dat": ROOT / "fixtures" / "captures" / "force-6.1.trace.dat",
        "perfetto (all-null columns)": perfetto,
        "empty capture (perfetto, no events)": empty,
    }


@pytest.mark.parametrize("kind", ["ftrace text", "kprobe text", "trace.dat", "perfetto (all-null columns)", "empty capture (perfetto, no events)"])
def test_written_parquet_has_the_documented_schema(kind, tmp_path):
    src = _inputs(tmp_path)[kind]
    out = tmp_path / "events.parquet"
    r = subprocess.run([sys.executable, "-m", "memtrace", "ingest", str(src), "-o", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    schema = pq.read_schema(out)
    assert schema.names == [c.name for c in EVENT_COLUMNS]
    wrong = {c.name: str(schema.field(c.name).type) for c in EVENT_COLUMNS if not _is(c, schema.field(c.name).type)}
    assert wrong == {}, wrong
    if kind.startswith("empty"):
        assert pq.read_metadata(out).num_rows == 0

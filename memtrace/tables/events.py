"""The event table: one row per trace event, whatever the capture format.

This module is the contract between the trace sources (ftrace text, trace-cmd, perfetto) and
everything downstream. The table is written once, as data (`EVENT_COLUMNS`), and used to
coerce frames at ingestion (`coerce_events`), to check them in tests (`validate_events`) and to
generate the docs (`events_markdown`).

Per-event meaning of the size columns (x86-64, `PAGE_SIZE` = 4096):

| event | `bytes` | `bytes_req` | `pages` / `order` | `accounted` |
|---|---|---|---|---|
| `kmem:kmalloc`, `kmem:kmem_cache_alloc` | `bytes_alloc` | `bytes_req` | – | the event's `accounted` field (6.0+ text); for `kmalloc` without it, `gfp & __GFP_ACCOUNT` |
| `kmem:kfree`, `kmem:kmem_cache_free` | – (not in the event) | – | – | – |
| `kmem:mm_page_alloc`, `kmem:mm_page_free` | `pages * PAGE_SIZE` | – | `1 << order`, `order` | `mm_page_alloc`: `gfp & __GFP_ACCOUNT` |
| `percpu:percpu_alloc_percpu` | `bytes_alloc` (6.1+, all CPUs) else `size` | `size` | – | – |
| `vmalloc:alloc_vmap_area` | `size` | – | – | – |
| `cgroup:*` | – | – | – | – (`cgroup_id` = `id` / `dst_id`) |
| kprobes (`memcg:try_charge`, ...) | arg `size=` | – | arg `nr=`/`nr_pages=`, or `1 << order=` | – (`cgroup_id` = arg `cgid=`) |

`__GFP_ACCOUNT` is `0x400000` in 5.15, 6.1, 6.12 and 7.1 (kernel-notes §6.1); text captures show
gfp as flag names (`gfp_flags`), where `GFP_KERNEL_ACCOUNT` / `__GFP_ACCOUNT` is looked for instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from memtrace.errors import InputError

#: bytes per page on the kernels memtrace targets (x86-64)
PAGE_SIZE = 4096
#: ___GFP_ACCOUNT, the same bit in 5.15, 6.1, 6.12 and 7.1
GFP_ACCOUNT = 0x400000

SCHEMA_ID = "memtrace.events/1"

STRING = pd.StringDtype("pyarrow")


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # pandas dtype name; "string" means pd.StringDtype("pyarrow")
    unit: str
    nullable: bool
    meaning: str

    @property
    def pandas_dtype(self):
        return STRING if self.dtype == "string" else pd.api.types.pandas_dtype(self.dtype)


#: The event table, in column order.
EVENT_COLUMNS: tuple[Column, ...] = (
    Column("ts_ns", "int64", "ns", False, "event time on the trace clock (boot clock in lab captures)"),
    Column("cpu", "Int32", "", True, "CPU that recorded the event"),
    Column("pid", "Int32", "", True, "thread id (kernel pid) current when the event fired; 0 = idle"),
    Column("comm", "category", "", True, "thread name: from the event line (text) or the process tree / task events (perfetto)"),
    Column("event", "category", "", False, "`group:name`, e.g. `kmem:kmalloc`, `memcg:try_charge`; bare `name` when the group is unknown"),
    Column("cgroup_id", "UInt64", "", True, "cgroup id (kernfs node id) the event names: cgroup `id=`/`dst_id=`, kprobe `cgid=`"),
    Column("cgroup_path", "category", "", True, "cgroup path of cgroup events (`path=` / `dst_path=`)"),
    Column("bytes", "Int64", "bytes", True, "bytes the event allocates or charges (see the per-event table)"),
    Column("bytes_req", "Int64", "bytes", True, "bytes requested by the caller (`bytes_req`, percpu `size`)"),
    Column("pages", "Int64", "pages", True, "pages: `1 << order` for page events, kprobe `nr=`/`nr_pages=`"),
    Column("order", "Int32", "", True, "page allocation order"),
    Column("gfp", "UInt64", "", True, "numeric gfp mask when the capture carries it (perfetto, kprobe `gfp=`)"),
    Column("gfp_flags", "category", "", True, "gfp flags as the text capture printed them, e.g. `GFP_KERNEL|__GFP_ZERO`"),
    Column("accounted", "boolean", "", True, "allocation is memcg-accounted (see the per-event table); null when unknown"),
    Column("ptr", "UInt64", "address", True, "object address (`ptr`; `va_start` for vmalloc areas)"),
    Column("call_site", "category", "", True, "allocation call site: symbol+off/size (text) or 0x-address (perfetto)"),
    Column("pfn", "UInt64", "", True, "page frame number of page events"),
    Column("map_id", "UInt32", "", True, "BPF map id when the event carries one (kprobe `map_id=`)"),
    Column("ret", "Int64", "", True, "return value of return probes (`ret=`, `retval=`, `ok=`)"),
    Column("marker", "string", "", True, "trace_marker text (`ftrace:print`, shown as tracing_mark_write)"),
    Column("args", "string", "", True, "raw fields not mapped to a column (`k=v ...`); all fields of unknown events"),
)

COLUMNS: dict[str, Column] = {c.name: c for c in EVENT_COLUMNS}
COLUMN_NAMES: tuple[str, ...] = tuple(COLUMNS)


class SchemaError(InputError):
    """A frame does not follow the event table."""


def empty_events() -> pd.DataFrame:
    """An event table with no rows."""
    return pd.DataFrame({c.name: pd.Series([], dtype=c.pandas_dtype) for c in EVENT_COLUMNS})


def coerce_events(df: pd.DataFrame, *, strict: bool = True) -> pd.DataFrame:
    """Return `df` with exactly the schema's columns, in order, with the schema's dtypes.

    Missing nullable columns are added as all-null; extra columns raise `SchemaError` when
    `strict`, else are dropped. Float columns are never produced: nullable ints stay nullable.
    """
    extra = [c for c in df.columns if c not in COLUMNS]
    if extra and strict:
        raise SchemaError(f"event table has columns outside the schema: {', '.join(map(str, extra))}")
    n = len(df)
    data = {}
    for c in EVENT_COLUMNS:
        if c.name in df.columns:
            s = df[c.name]
            if str(s.dtype) != str(c.pandas_dtype) or (c.dtype == "string" and s.dtype != STRING):
                try:
                    s = s.astype(c.pandas_dtype)
                except (TypeError, ValueError) as e:
                    raise SchemaError(f"column {c.name!r} cannot be {c.dtype}: {e}") from None
            data[c.name] = s.reset_index(drop=True)
        elif c.nullable:
            data[c.name] = pd.Series(pd.array([None] * n, dtype=c.pandas_dtype))
        else:
            raise SchemaError(f"event table lacks required column {c.name!r}")
    return pd.DataFrame(data)


def validate_events(df: pd.DataFrame) -> list[str]:
    """Problems with `df` as an event table (empty list = valid)."""
    problems = []
    if tuple(df.columns) != COLUMN_NAMES:
        problems.append(f"columns {list(df.columns)} != schema {list(COLUMN_NAMES)}")
    for c in EVENT_COLUMNS:
        if c.name not in df.columns:
            continue
        s = df[c.name]
        if c.dtype == "string":
            if s.dtype != STRING:
                problems.append(f"{c.name}: dtype {s.dtype} != string[pyarrow]")
        elif str(s.dtype) != str(c.pandas_dtype):
            problems.append(f"{c.name}: dtype {s.dtype} != {c.dtype}")
        if not c.nullable and s.isna().any():
            problems.append(f"{c.name}: {int(s.isna().sum())} nulls in a non-nullable column")
    return problems


def conform_events(df: pd.DataFrame) -> pd.DataFrame:
    """The category columns with string categories even when every value is null (pandas
    gives an all-null category float64 categories, which Parquet would then store as
    doubles): one Arrow schema whatever the input. Returns ``df``, changed in place."""
    for c in EVENT_COLUMNS:
        if c.dtype == "category" and c.name in df and str(df[c.name].dtype) == "category":
            cats = df[c.name].cat.categories
            if len(cats) == 0 or cats.dtype.kind == "f":
                df[c.name] = df[c.name].cat.set_categories(pd.Index([str(x) for x in cats], dtype="string"))
    return df


def check_events(df: pd.DataFrame) -> pd.DataFrame:
    """Raise `SchemaError` unless `df` is a valid event table; return it."""
    problems = validate_events(df)
    if problems:
        raise SchemaError("event table does not match schema: " + "; ".join(problems))
    return df


def events_markdown() -> str:
    """The schema as a markdown table, for the docs."""
    lines = [
        f"Event table `{SCHEMA_ID}`",
        "",
        "| column | dtype | unit | nullable | meaning |",
        "|---|---|---|---|---|",
    ]
    for c in EVENT_COLUMNS:
        dt = "string[pyarrow]" if c.dtype == "string" else c.dtype
        lines.append(f"| `{c.name}` | {dt} | {c.unit or '–'} | {'yes' if c.nullable else 'no'} | {c.meaning} |")
    return "\n".join(lines) + "\n"


def values_out_of_range_warning(path: str, k: int) -> str:
    """The one warning a reader gives for a file with `k` field values that do not fit their
    column (`IngestStats.values_out_of_range`); the same words for every format."""
    return (f"{path}: {k} field value(s) do not fit their column (size >= 2^63, order >= 2^31, ...): "
            "left null, events kept")


@dataclass
class IngestStats:
    """What loading a capture read, kept, and could not use. Every output reports it."""

    path: str = ""
    format: str = ""
    #: text lines seen (text formats), including headers and comments
    lines_read: int = 0
    #: TracePackets decoded (perfetto), including those inside compressed packets
    packets_read: int = 0
    #: rows in the event table
    events_parsed: int = 0
    #: rows whose event has no known group (kept, with all fields in `args`)
    unknown_events: int = 0
    unknown_event_names: dict[str, int] | None = None
    #: lines / packets / events that could not be decoded and were dropped
    malformed: int = 0
    #: field values that are numbers but do not fit their column (a size >= 2^63, an order >= 2^31,
    #: a negative map_id, any magnitude >= 2^64; the UInt64 columns take any value mod 2^64): the
    #: column is left null, the event kept, and the field's `key=value` goes to `args`
    values_out_of_range: int = 0
    #: events the kernel or the recorder says it dropped (ring-buffer overruns, LOST lines)
    lost_events: int = 0
    #: places where loss is flagged without a count (perfetto `lost_events: true` bundles)
    lost_event_flags: int = 0
    #: probe hits the kernel counted but recorded no event for (a `memtrace capture` header's
    #: kprobe_profile misses: a kretprobe's maxactive instances all in use, a kprobe hit
    #: inside another probe's handler)
    probe_misses: int = 0
    #: the capture ended mid-record (partial last line, cut protobuf)
    truncated: bool = False
    warnings: list[str] | None = None

    def warn(self, msg: str) -> None:
        if self.warnings is None:
            self.warnings = []
        self.warnings.append(msg)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "lines_read": self.lines_read,
            "packets_read": self.packets_read,
            "events_parsed": self.events_parsed,
            "unknown_events": self.unknown_events,
            "unknown_event_names": dict(sorted((self.unknown_event_names or {}).items())),
            "malformed": self.malformed,
            "values_out_of_range": self.values_out_of_range,
            "lost_events": self.lost_events,
            "lost_event_flags": self.lost_event_flags,
            "probe_misses": self.probe_misses,
            "truncated": self.truncated,
            "warnings": list(self.warnings or []),
        }

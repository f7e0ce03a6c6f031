"""Schema of `memtrace snapshot`: the tidy tables `maps`, `allocations`, `memcgs`.

This module is the contract between the drgn source, the analyses, the renderers and
the snapshot file. Each column is declared once: name, dtype, unit, nullability, meaning.
``coerce()`` applies it at ingestion, ``validate()`` checks it in tests, and
``schema_markdown()`` renders the docs.

Conventions: bytes are int64 ``*_bytes``; addresses uint64 (hex only when rendered);
nullable integers use pandas ``Int64``/``UInt64`` (never float NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SCHEMA_VERSION = "memtrace.snapshot/1"


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # pandas dtype
    unit: str
    nullable: bool
    meaning: str


C = Column

MAPS = [
    C("map_id", "int64", "", False, "BPF map id (map_idr)"),
    C("name", "string", "", False, "map name (may be empty)"),
    C("type", "string", "", False, "map type, bpftool spelling (hash, lru_percpu_hash, ...)"),
    C("flags", "int64", "", False, "map_flags (BPF_F_*)"),
    C("key_size", "int64", "bytes", False, "key size"),
    C("value_size", "int64", "bytes", False, "value size"),
    C("max_entries", "int64", "", False, "max_entries"),
    C("pins", "string", "", False, "bpffs paths the map is pinned at, ';'-separated ('' if none)"),
    C("map_address", "uint64", "address", False, "struct bpf_map *"),
    C("owner_kind", "string", "", False, "what the map records: objcg (6.0+), memcg (5.11-5.19), none (5.10)"),
    C("owner_objcg", "UInt64", "address", True, "map->objcg; NULL: the map charges no memcg"),
    C("owner_cgroup_id", "Int64", "", True, "cgroup id of the memcg the map charges now (objcg->memcg); NULL: none"),
    C("owner_path", "string", "", True, "cgroup path of that memcg"),
    C(
        "owner_state",
        "string",
        "",
        False,
        "online | ghost (online, no tasks) | dying (memcg offline, objcg not yet reparented) | "
        "reparented (objcg moved to an ancestor) | none (charges nobody)",
    ),
    C("original_cgroup_id", "Int64", "", True, "cgroup the map was charged to before reparenting, when known (6.7+: memcg->orig_objcg of a not-yet-freed memcg)"),
    C("original_path", "string", "", True, "path of original_cgroup_id"),
    C("mem_usage_bytes", "Int64", "bytes", True, "the kernel's map_mem_usage() estimate recomputed (6.4+, known types); NULL otherwise"),
    C("memlock_bytes", "Int64", "bytes", True, "fdinfo memlock as the kernel computes it (map_mem_usage on 6.4+, else bpf_map_memory_footprint)"),
    C("charged_bytes", "int64", "bytes", False, "sum of the map's allocations charged to some memcg"),
    C("uncharged_bytes", "int64", "bytes", False, "sum of the map's allocations charged to no memcg"),
    C("allocations", "int64", "", False, "number of allocation rows"),
    C("complete", "bool", "", False, "False when a fault or a cut chain made the walk of this map incomplete"),
]

ALLOCATIONS = [
    C("map_id", "int64", "", False, "map owning the allocation"),
    C(
        "role",
        "string",
        "",
        False,
        "what it is for: map_struct, buckets, elems, element, value, value_handle, map_locked, elem_count, "
        "extra_elems, bpf_ma_cached, bpf_ma_cached_value, ringbuf_page, ringbuf_pages_array, trie_node, "
        "local_storage (a socket's/inode's/task's/cgroup's struct bpf_local_storage, listed once, under the "
        "map it was allocated through when the kernel records it, else the first map walked with an element "
        "on it), inner_map_meta, vm_pages_array",
    ),
    C("kind", "string", "", False, "slab_object | large_kmalloc | page | vmalloc_page | percpu | unknown"),
    C("address", "uint64", "address", False, "start of the object/page; per-CPU: the __percpu pointer"),
    C("size_bytes", "int64", "bytes", False, "footprint: s->size, PAGE_SIZE<<order, or per-CPU size x ncpu"),
    C(
        "charged_bytes",
        "int64",
        "bytes",
        False,
        "what the charge costs its memcg: slab s->size+8, per-CPU pcpu_obj_full_size, pages PAGE_SIZE<<order; "
        "0 when uncharged",
    ),
    C("objcg", "UInt64", "address", True, "struct obj_cgroup * the allocation is charged to; NULL = uncharged"),
    C("charged_cgroup_id", "Int64", "", True, "cgroup id of objcg->memcg now; NULL = uncharged bucket"),
    C("slab_cache", "string", "", True, "slab cache name for slab objects"),
]

MEMCGS = [
    C("cgroup_id", "int64", "", False, "cgroup id (cgroup2 inode number)"),
    C("path", "string", "", False, "cgroup path ('/' root); for a dying memcg its old path"),
    C("memcg_address", "uint64", "address", False, "struct mem_cgroup *"),
    C("css_flags", "int64", "", False, "css.flags (CSS_ONLINE=2, CSS_RELEASED=4, CSS_DYING=16)"),
    C("online", "bool", "", False, "CSS_ONLINE set"),
    C("dying", "bool", "", False, "offline (or CSS_DYING) but not yet freed"),
    C("populated", "bool", "", False, "the cgroup or a descendant has tasks"),
    C("state", "string", "", False, "root | online | ghost (online, unpopulated, holds BPF charges) | dying"),
    C("memory_current_bytes", "int64", "bytes", False, "page_counter usage x PAGE_SIZE (memory.current)"),
    C("memory_max_bytes", "Int64", "bytes", True, "memory.max; NULL = max"),
    C("memory_high_bytes", "Int64", "bytes", True, "memory.high; NULL = max"),
    C("events_max", "int64", "", False, "memory.events max"),
    C("events_oom", "int64", "", False, "memory.events oom"),
    C("events_oom_kill", "int64", "", False, "memory.events oom_kill"),
    C("events_high", "int64", "", False, "memory.events high"),
    C("objcg", "UInt64", "address", True, "memcg->objcg (NULL once offline)"),
    C("orig_objcg", "UInt64", "address", True, "memcg->orig_objcg (6.7+)"),
    C("stock_bytes", "int64", "bytes", False, "pages pre-charged in per-CPU stocks for this memcg x PAGE_SIZE"),
    C("obj_stock_bytes", "int64", "bytes", False, "bytes in per-CPU object stocks whose objcg charges this memcg"),
    C("objcg_charged_bytes", "int64", "bytes", False, "sum of nr_charged_bytes of objcgs charging this memcg"),
    C("bpf_bytes", "int64", "bytes", False, "BPF map allocations charged to this memcg (not its descendants)"),
    C("bpf_maps_owned", "int64", "", False, "maps whose owner memcg is this one"),
    C("stat_anon_bytes", "Int64", "bytes", True, "memory.stat anon (hierarchical, as last flushed)"),
    C("stat_file_bytes", "Int64", "bytes", True, "memory.stat file"),
    C("stat_kernel_bytes", "Int64", "bytes", True, "memory.stat kernel (all kmem: slab, vmalloc, stacks, ...)"),
    C("stat_slab_bytes", "Int64", "bytes", True, "memory.stat slab"),
    C("stat_percpu_bytes", "Int64", "bytes", True, "memory.stat percpu"),
    C("stat_vmalloc_bytes", "Int64", "bytes", True, "memory.stat vmalloc"),
    C("stat_sock_bytes", "Int64", "bytes", True, "memory.stat sock (network buffers; not in kernel)"),
]

TABLES: dict[str, list[Column]] = {"maps": MAPS, "allocations": ALLOCATIONS, "memcgs": MEMCGS}

#: The kernel addresses of each table: every column declared with unit ``address`` above (the
#: one place they are listed). They reveal the KASLR base; ``memtrace.tables.redact`` turns
#: them into tokens for ``--redact``. A new pointer column must be declared with that unit.
ADDRESS_COLUMNS: dict[str, frozenset[str]] = {
    t: frozenset(c.name for c in cols if c.unit == "address") for t, cols in TABLES.items()
}


def empty(table: str) -> pd.DataFrame:
    cols = TABLES[table]
    return pd.DataFrame({c.name: pd.Series([], dtype=c.dtype) for c in cols})


def frame(table: str, rows: list[dict]) -> pd.DataFrame:
    """Build a table from row dicts, each column straight into its schema dtype (no
    float detour: a nullable 64-bit address must not pass through float64)."""
    cols = TABLES[table]
    data = {}
    for c in cols:
        vals = [r.get(c.name) for r in rows]
        if c.dtype in ("Int64", "UInt64"):
            data[c.name] = pd.array(vals, dtype=c.dtype)
        elif c.dtype == "string":
            data[c.name] = pd.array(vals, dtype="string")
        elif c.dtype == "uint64":
            data[c.name] = pd.Series(np.array(vals, dtype=np.uint64))
        else:
            data[c.name] = pd.Series(vals, dtype=c.dtype)
    return pd.DataFrame(data)


def coerce(table: str, df: pd.DataFrame) -> pd.DataFrame:
    """Columns in schema order and dtype. Raises KeyError on a missing column."""
    cols = TABLES[table]
    out = {}
    for c in cols:
        s = df[c.name]
        if c.dtype == "string":
            s = s.astype("string")
        elif c.dtype in ("Int64", "UInt64"):
            s = s.astype(c.dtype)
        else:
            s = s.astype(c.dtype)
        out[c.name] = s
    return pd.DataFrame(out)


def validate(table: str, df: pd.DataFrame) -> list[str]:
    """Problems with ``df`` against the schema (empty list = valid)."""
    problems = []
    cols = TABLES[table]
    names = [c.name for c in cols]
    if list(df.columns) != names:
        problems.append(f"{table}: columns {list(df.columns)} != {names}")
        return problems
    for c in cols:
        if str(df[c.name].dtype) != c.dtype:
            problems.append(f"{table}.{c.name}: dtype {df[c.name].dtype} != {c.dtype}")
        if not c.nullable and df[c.name].isna().any():
            problems.append(f"{table}.{c.name}: has nulls")
    return problems


def schema_markdown() -> str:
    """The schema as markdown tables (for the docs)."""
    lines = [f"Schema `{SCHEMA_VERSION}`", ""]
    for t, cols in TABLES.items():
        lines += [f"### {t}", "", "| column | dtype | unit | nullable | meaning |", "|---|---|---|---|---|"]
        for c in cols:
            lines.append(f"| `{c.name}` | {c.dtype} | {c.unit} | {'yes' if c.nullable else 'no'} | {c.meaning} |")
        lines.append("")
    return "\n".join(lines)


@dataclass
class Snapshot:
    """One snapshot: a header (dict, JSON-able) and the three tables."""

    header: dict
    maps: pd.DataFrame
    allocations: pd.DataFrame
    memcgs: pd.DataFrame

    def table(self, name: str) -> pd.DataFrame:
        return getattr(self, name)

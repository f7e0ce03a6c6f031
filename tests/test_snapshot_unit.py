"""memtrace snapshot without a kernel: schema, snapshot file, rendering, CLI errors."""

from __future__ import annotations

import json
import zipfile

import pandas as pd
import pytest
from typer.testing import CliRunner

from memtrace.analyses.snapshot import allocation_summary, memcg_reconciliation
from memtrace.render.snapshot import json_envelope, maps_table
from memtrace.tables.snapshot import TABLES, Snapshot, frame, schema_markdown, validate
from memtrace.tables.snapshot_file import load, save

BIG = 0xFFFF8A3D8645ABC0  # an address above 2**63: must survive without a float detour


def _snap() -> Snapshot:
    maps = frame(
        "maps",
        [
            {
                "map_id": 7, "name": "[red]x", "type": "hash", "flags": 0, "key_size": 8, "value_size": 100,
                "max_entries": 4099, "pins": "/sys/fs/bpf/[b]a", "map_address": BIG, "owner_kind": "objcg",
                "owner_objcg": BIG, "owner_cgroup_id": 23, "owner_path": "/pod", "owner_state": "reparented",
                "original_cgroup_id": None, "original_path": None, "mem_usage_bytes": None, "memlock_bytes": 462848,
                "charged_bytes": 5128, "uncharged_bytes": 32, "allocations": 3, "complete": True,
            }
        ],
    )
    allocs = frame(
        "allocations",
        [
            {"map_id": 7, "role": "map_struct", "kind": "slab_object", "address": BIG, "size_bytes": 1024,
             "charged_bytes": 1032, "objcg": BIG, "charged_cgroup_id": 23, "slab_cache": "kmalloc-cg-1k"},
            {"map_id": 7, "role": "buckets", "kind": "vmalloc_page", "address": BIG + 4096, "size_bytes": 4096,
             "charged_bytes": 4096, "objcg": BIG, "charged_cgroup_id": 23, "slab_cache": None},
            {"map_id": 7, "role": "map_locked", "kind": "percpu", "address": 0x3A000, "size_bytes": 8,
             "charged_bytes": 0, "objcg": None, "charged_cgroup_id": None, "slab_cache": None},
        ],
    )
    memcgs = frame(
        "memcgs",
        [
            {"cgroup_id": 1, "path": "/", "memcg_address": BIG, "css_flags": 11, "online": True, "dying": False,
             "populated": True, "state": "root", "memory_current_bytes": 1 << 20, "memory_max_bytes": None,
             "events_max": 0, "events_oom": 0, "events_oom_kill": 0, "events_high": 0, "objcg": None,
             "orig_objcg": None, "stock_bytes": 0, "obj_stock_bytes": 0, "objcg_charged_bytes": 0, "bpf_bytes": 0,
             "bpf_maps_owned": 0},
            {"cgroup_id": 23, "path": "/pod", "memcg_address": BIG + 64, "css_flags": 10, "online": True,
             "dying": False, "populated": False, "state": "ghost", "memory_current_bytes": 12288,
             "memory_max_bytes": 65536, "events_max": 2, "events_oom": 0, "events_oom_kill": 0, "events_high": 0,
             "objcg": BIG, "orig_objcg": None, "stock_bytes": 4096, "obj_stock_bytes": 0,
             "objcg_charged_bytes": 100, "bpf_bytes": 5128, "bpf_maps_owned": 1},
        ],
    )
    header = {"kernel": {"release": "6.1.0-test", "build_id": "ab"}, "target": {"kind": "vmcore", "path": "x"},
              "faults": 0, "complete": True, "notes": []}
    return Snapshot(header=header, maps=maps, allocations=allocs, memcgs=memcgs)


def test_frames_match_schema():
    s = _snap()
    for t in TABLES:
        assert validate(t, s.table(t)) == []
    assert int(s.maps["owner_objcg"][0]) == BIG
    assert s.allocations["objcg"].isna().tolist() == [False, False, True]


def test_file_roundtrip(tmp_path):
    s = _snap()
    save(s, tmp_path / "s.zip")
    r = load(tmp_path / "s.zip")
    assert r.header["schema"] == "memtrace.snapshot/1"
    for t in TABLES:
        pd.testing.assert_frame_equal(r.table(t), s.table(t))


def test_file_errors(tmp_path):
    from memtrace.errors import InputError

    (tmp_path / "junk").write_text("hello")
    with pytest.raises(InputError, match="not a memtrace snapshot"):
        load(tmp_path / "junk")
    with zipfile.ZipFile(tmp_path / "old.zip", "w") as z:
        z.writestr("header.json", json.dumps({"schema": "memtrace.snapshot/0"}))
    with pytest.raises(InputError, match="schema"):
        load(tmp_path / "old.zip")
    with pytest.raises(InputError, match="no such file"):
        load(tmp_path / "missing.zip")


def test_render_escapes_kernel_strings():
    from rich.console import Console

    c = Console(record=True, width=300)
    c.print(maps_table(_snap()))
    text = c.export_text()
    assert "[red]x" in text and "/sys/fs/bpf/[b]a" in text


def test_json_envelope():
    env = json.loads(json_envelope(_snap()))
    assert env["maps"][0]["owner_objcg"] == BIG
    assert env["maps"][0]["original_cgroup_id"] is None
    summ = {(r["role"], r["charged_cgroup_id"]): r["charged_bytes"] for r in env["allocation_summary"]}
    assert summ == {("buckets", 23): 4096, ("map_struct", 23): 1032, ("map_locked", None): 0}


def test_analyses():
    s = _snap()
    assert allocation_summary(s.allocations)["count"].sum() == 3
    rec = memcg_reconciliation(s.memcgs).set_index("path")
    assert rec.loc["/pod", "other_bytes"] == 12288 - 5128 - 4096 - 100
    assert rec.loc["/", "children_bytes"] == 12288


def test_schema_doc_lists_every_column():
    md = schema_markdown()
    for cols in TABLES.values():
        for c in cols:
            assert f"`{c.name}`" in md


def _cli(args):
    from memtrace.cli.app import _register, app

    _register()
    return CliRunner().invoke(app, args, standalone_mode=False, catch_exceptions=True)


def test_cli_from_file(tmp_path):
    save(_snap(), tmp_path / "s.zip")
    r = _cli(["snapshot", "--from", str(tmp_path / "s.zip"), "--json"])
    assert r.exception is None, r.exception
    assert json.loads(r.stdout)["maps"][0]["name"] == "[red]x"


@pytest.mark.parametrize(
    "args,msg",
    [
        ([], "choose exactly one"),
        (["--vmcore", "/nonexistent/vmcore"], "no such file"),
        (["--from", "/nonexistent.zip"], "no such file"),
        (["--qmp", "/nonexistent.sock"], "no such QMP socket"),
    ],
)
def test_cli_errors_are_one_line(args, msg):
    from memtrace.errors import MemtraceError

    r = _cli(["snapshot", *args])
    assert isinstance(r.exception, MemtraceError)
    assert msg in r.exception.message and "\n" not in r.exception.message


# -- the local-storage walk on a made-up kernel memory (real struct layouts) ----------------


@pytest.fixture(scope="module", params=["6.1", "6.12"])
def ls_prog(request):
    """A drgn Program with a cached lab kernel's DWARF types and no memory yet (the test
    adds it); skipped when the kernel is not cached (no download here)."""
    from memtrace.lab import kernels
    from memtrace.sources.kernel.typeinfo import DwarfTypes

    k = kernels.cached(request.param)
    if k is None:
        pytest.skip(f"lab kernel {request.param} not cached")
    return request.param, DwarfTypes(k.vmlinux).prog


class _Mem:
    """Little-endian memory at BASE, handed to drgn as one segment."""

    BASE = 0xFFFF888000100000

    def __init__(self, size=1 << 16):
        self.buf = bytearray(size)
        self.next = self.BASE

    def alloc(self, size, align=64):
        self.next = (self.next + align - 1) & ~(align - 1)
        a = self.next
        self.next += size
        return a

    def put(self, addr, value):
        self.buf[addr - self.BASE : addr - self.BASE + 8] = value.to_bytes(8, "little")

    def install(self, prog):
        prog.add_memory_segment(self.BASE, len(self.buf), lambda addr, n, off, phys: bytes(self.buf[off : off + n]))


def _walker(prog):
    """A MapMemoryWalker without the kernel-wide resolvers: objects/area record addresses."""
    import struct as _struct

    import numpy as np

    from memtrace.sources.kernel.bpf import AllocBatch, MapMemoryWalker, WalkStats

    w = object.__new__(MapMemoryWalker)
    w.prog, w.stats, w._u64, w._storages = prog, WalkStats(), _struct.Struct("<Q"), {}

    def objects(mid, role, addrs):
        a = np.asarray(list(addrs), dtype=np.uint64)
        z = np.zeros(len(a))
        return AllocBatch(mid, role, z.astype(object), a, z.astype(np.int64), z.astype(np.uint64), z.astype(object))

    w.objects = objects
    w.area = lambda mid, role, addr: [objects(mid, role, [addr])]
    return w


def _roles(batches):
    out: dict[str, list[int]] = {}
    for b in batches:
        out.setdefault(b.role, []).extend(int(a) for a in b.address)
    return out


def test_local_storage_walk_lists_each_storage_once(ls_prog):
    """Two sk_storage-like maps A and B sharing three owners: every element is listed
    under its map; each storage once, under local_storage->smap when the kernel has it
    (6.12) and it is set, else under the first map walked (6.1: always)."""
    from drgn import Object, offsetof, sizeof

    series, prog = ls_prog
    t = prog.type
    m = _Mem()
    smap_t = t("struct bpf_local_storage_map")
    elem_t = t("struct bpf_local_storage_elem")
    st_t = t("struct bpf_local_storage")
    has_smap = any(x.name == "smap" for x in st_t.members)
    assert has_smap == (series == "6.12")  # the feature bpf.py detects
    maps = []
    for _ in range(2):
        s = m.alloc(sizeof(smap_t))
        b = m.alloc(2 * 16)
        m.put(s + offsetof(smap_t, "buckets"), b)
        m.buf[s + offsetof(smap_t, "bucket_log") - m.BASE] = 1
        maps.append((s, b))
    storages = [m.alloc(sizeof(st_t)) for _ in range(3)]
    # storage 0 allocated through A, 1 through B, 2's allocating element is gone (smap NULL)
    if has_smap:
        m.put(storages[0] + offsetof(st_t, "smap"), maps[0][0])
        m.put(storages[1] + offsetof(st_t, "smap"), maps[1][0])
    elems = {0: [], 1: []}
    for i, (s, b) in enumerate(maps):
        prev = {0: b, 1: b + 16}
        for j, st in enumerate(storages):
            e = m.alloc(sizeof(elem_t) + 64)
            m.put(e + offsetof(elem_t, "local_storage"), st)
            m.put(e + offsetof(elem_t, "sdata.smap"), s)
            m.put(prev[j % 2], e + offsetof(elem_t, "map_node"))  # bucket head or previous next
            prev[j % 2] = e + offsetof(elem_t, "map_node.next")
            elems[i].append(e)
    m.install(prog)
    w = _walker(prog)
    ra = _roles(w._local_storage(Object(prog, "struct bpf_map *", maps[0][0]), 1))
    rb = _roles(w._local_storage(Object(prog, "struct bpf_map *", maps[1][0]), 2))
    assert sorted(ra["element"]) == sorted(elems[0]) and sorted(rb["element"]) == sorted(elems[1])
    assert ra["buckets"] == [maps[0][1]] and ra["map_struct"] == [maps[0][0]]
    if has_smap:
        assert sorted(ra["local_storage"]) == sorted([storages[0], storages[2]])
        assert rb["local_storage"] == [storages[1]]
    else:
        assert sorted(ra["local_storage"]) == sorted(storages) and rb["local_storage"] == []
    assert (w.stats.faults, w.stats.truncated_chains) == (0, 0)
    # a map freed under a live walk gives back the storages it listed (B keeps its own)
    w.forget_map(1)
    rb2 = _roles(w._local_storage(Object(prog, "struct bpf_map *", maps[1][0]), 2))
    assert sorted(rb2["local_storage"]) == sorted(storages if not has_smap else [storages[2]])


def test_local_storage_walk_cuts_loops_foreign_and_faulting_chains(ls_prog):
    """Bucket 0: e0 -> e1 -> e0 (a loop); bucket 1: e2 -> e3 (e3's sdata.smap is another
    map: memory reused under a live walk) ; after the first pass, e2 -> unmapped (a fault).
    Each cut is counted and what was read before it is kept."""
    from drgn import Object, offsetof, sizeof

    _, prog = ls_prog
    t = prog.type
    m = _Mem()
    smap_t, elem_t, st_t = t("struct bpf_local_storage_map"), t("struct bpf_local_storage_elem"), t("struct bpf_local_storage")
    s, b = m.alloc(sizeof(smap_t)), m.alloc(32)
    m.put(s + offsetof(smap_t, "buckets"), b)
    m.buf[s + offsetof(smap_t, "bucket_log") - m.BASE] = 1
    st = m.alloc(sizeof(st_t))
    e = [m.alloc(sizeof(elem_t) + 64) for _ in range(4)]
    for x in e:
        m.put(x + offsetof(elem_t, "local_storage"), st)
        m.put(x + offsetof(elem_t, "sdata.smap"), s)
    m.put(e[3] + offsetof(elem_t, "sdata.smap"), s + 4096)
    m.put(b, e[0]), m.put(e[0], e[1]), m.put(e[1], e[0])
    m.put(b + 16, e[2]), m.put(e[2], e[3])
    m.install(prog)
    w = _walker(prog)
    r = _roles(w._local_storage(Object(prog, "struct bpf_map *", s), 1))
    assert sorted(r["element"]) == sorted(e[:3]) and r["local_storage"] == [st]
    assert (w.stats.faults, w.stats.truncated_chains) == (0, 2)
    m.put(e[2], 0xFFFF888FFFF00000)  # next: nowhere drgn can read
    w = _walker(prog)
    r = _roles(w._local_storage(Object(prog, "struct bpf_map *", s), 1))
    assert sorted(r["element"]) == sorted(e[:3])
    assert (w.stats.faults, w.stats.truncated_chains) == (1, 1)

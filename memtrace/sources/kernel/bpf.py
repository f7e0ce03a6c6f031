"""BPF maps: owner, pins, the kernel's own size estimates, and every allocation a map owns.

Where each map type's memory lives (see kernel-notes §2), per version:

* hash family (HASH, PERCPU_HASH, LRU_*, HASH_OF_MAPS): ``struct bpf_htab`` (area), the
  ``buckets`` area, and either the preallocated ``elems`` area (plus, per-CPU, one per-CPU
  value per element) or, with ``BPF_F_NO_PREALLOC``, one allocation per element reached
  through the buckets; since Linux kernel commit fba1a1c6c912 ("bpf: Convert hash map to
  bpf_mem_alloc.") (in v6.1) those come from bpf_mem_alloc, whose per-CPU free lists
  also hold charged objects. Per-CPU no-prealloc values come from ``pcpu_ma``: a 16-byte
  ``[llist_node][pptr]`` object plus the per-CPU area.
* ``map_locked[]`` (per-CPU int, 5.13-7.0), ``map->elem_count`` (per-CPU s64, 6.4+ and
  the Debian 6.1 backport) and ``extra_elems`` (per-CPU pointer): allocated through
  ``bpf_map_alloc_percpu`` inside ``map_alloc``, before ``map->objcg`` is set.
* arrays: one area holding ``struct bpf_array`` and the values (``BPF_F_MMAPABLE``: the
  area starts a page before ``array->value``); PERCPU_ARRAY: ``pptrs[]`` plus one per-CPU
  value per entry.
* ringbuf: ``struct bpf_ringbuf_map`` (area), the ``rb->pages`` array (area) and
  ``rb->nr_pages`` pages charged one by one (the vmap has no ``vm->pages``).
* LPM trie: ``struct lpm_trie`` (area) and one kmalloc per node, reached from
  ``trie->root`` (bpf_mem_alloc since ~6.13: then its free lists too).
* local storage (SK_STORAGE, INODE_STORAGE, TASK_STORAGE, CGRP_STORAGE; kernel-notes §2.6):
  ``struct bpf_local_storage_map`` (area), the ``buckets`` array (``bpf_map_kvcalloc``
  inside ``map_alloc``, before ``map->objcg`` is set: uncharged on 6.0+), one element
  (``struct bpf_local_storage_elem``, ``smap->elem_size`` bytes) per owner (socket, inode,
  task, cgroup) reached through the buckets' ``map_node`` hlists, and each owner's
  ``struct bpf_local_storage`` (``selem->local_storage``). One storage is shared by every
  map with an element on that owner but was allocated, and charged, through one of them:
  6.12 records that map in ``local_storage->smap`` (cleared when that map's element on the
  owner goes), 6.1 does not. The storage is listed once: under ``local_storage->smap``
  when set, else under the first map walked that has an element on it. Both are
  ``bpf_map_kzalloc`` on 6.1; on 6.12 task and cgroup storage (``smap->bpf_ma``) take them
  from the map's ``selem_ma``/``storage_ma`` bpf_mem_alloc instead, whose free lists are
  listed too. sk and inode storage keep ``bpf_map_kzalloc`` on 6.12 (their ``map_alloc``
  passes ``bpf_ma = false``); their bpf_mem_allocs are never initialised (``cache`` NULL)
  and add nothing. The lab covers all four types (tests/test_localstorage_lab.py,
  tests/test_taskstorage_lab.py).
* any other type: the area holding the map struct only.

Inner maps of map-in-map types are ordinary maps in ``map_idr``; they are not followed
from the outer map. ``inner_map_meta`` (``kzalloc(GFP_USER)``, never charged) is listed.

An "area" (``bpf_map_area_alloc``) is a slab object, a large kmalloc, or a vmalloc range;
:meth:`MapMemoryWalker.area` tells which.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from drgn import FaultError, Object, Program, container_of, offsetof, sizeof
from drgn.helpers.linux.bpf import bpf_map_for_each
from drgn.helpers.linux.cpumask import for_each_possible_cpu, num_possible_cpus
from drgn.helpers.linux.percpu import per_cpu_ptr

from memtrace.sources.kernel.page import page_kmem_objcg, page_layout
from memtrace.sources.kernel.percpu import PercpuResolver
from memtrace.sources.kernel.slab import SlabResolver
from memtrace.sources.kernel.vmalloc import pages_objcgs, vmalloc_area

BPF_F_NO_PREALLOC = 1 << 0
BPF_F_MMAPABLE = 1 << 10

HASH_TYPES = {"hash", "percpu_hash", "lru_hash", "lru_percpu_hash", "hash_of_maps"}
ARRAY_TYPES = {"array", "percpu_array", "prog_array", "perf_event_array", "cgroup_array", "array_of_maps"}
PERCPU_HASH_TYPES = {"percpu_hash", "lru_percpu_hash"}
LRU_TYPES = {"lru_hash", "lru_percpu_hash"}
FD_VALUE_TYPES = {"prog_array", "perf_event_array", "cgroup_array", "array_of_maps", "hash_of_maps"}
#: kernel/bpf/bpf_local_storage.c maps (not the legacy CGROUP_STORAGE of local_storage.c)
LOCAL_STORAGE_TYPES = {"sk_storage", "inode_storage", "task_storage", "cgrp_storage"}
#: most elements one local-storage map walk reads before calling its chains cut (an
#: element per socket/inode/task/cgroup: millions at most on a real host)
LOCAL_STORAGE_LIMIT = 1 << 22


def bpf_map_type_name(map: Object) -> str:
    """``BPF_MAP_TYPE_LRU_HASH`` -> ``"lru_hash"`` (bpftool's spelling)."""
    t = map.map_type
    for name, value in t.type_.enumerators:
        if value == t.value_():
            return name.removeprefix("BPF_MAP_TYPE_").lower()
    return str(t.value_())


def bpf_map_owner(map: Object) -> tuple[str, int]:
    """What a map charges: ("objcg", addr) on 6.0+ (addr 0: charges nobody),
    ("memcg", addr) on 5.11-5.19, ("none", 0) on 5.10 (memlock rlimit only).

    Linux kernel commit 4201d9ab3e42 ("bpf: reparent bpf maps on memcg offlining") (in
    v6.0) replaced ``map->memcg`` with ``map->objcg``.
    """
    try:
        return "objcg", map.objcg.value_()
    except AttributeError:
        pass
    try:
        return "memcg", map.memcg.value_()
    except AttributeError:
        return "none", 0


@dataclass
class AllocBatch:
    """Allocations of one map with one role, as parallel arrays.

    ``kind``: slab_object | large_kmalloc | page | vmalloc_page | percpu | unknown.
    ``size``: footprint in bytes (slab: ``s->size``; pages: ``PAGE_SIZE << order``;
    per-CPU: the allocation size for ONE cpu, rounded to 4).
    ``objcg``: 0 = not charged.
    """

    map_id: int
    role: str
    kind: np.ndarray
    address: np.ndarray
    size: np.ndarray
    objcg: np.ndarray
    cache: np.ndarray

    def __len__(self) -> int:
        return len(self.address)


def _const(n: int, v, dtype=object) -> np.ndarray:
    a = np.empty(n, dtype=dtype)
    a[:] = v
    return a


@dataclass
class WalkStats:
    faults: int = 0
    truncated_chains: int = 0
    notes: list[str] = field(default_factory=list)


class MapMemoryWalker:
    """Enumerates the memory of BPF maps. One per snapshot (it caches slab heads,
    per-CPU chunk vectors and types).

    :param prog: the kernel
    """

    def __init__(self, prog: Program):
        self.prog = prog
        self.lay = page_layout(prog)
        self.slab = SlabResolver(prog)
        self.pcpu = PercpuResolver(prog)
        self.ncpu = num_possible_cpus(prog)
        self.stats = WalkStats()
        self._u64 = struct.Struct("<Q")
        #: local storages already listed: address -> map id listing it (one storage is
        #: shared by the maps with an element on its owner; see :meth:`_local_storage`)
        self._storages: dict[int, int] = {}

    def forget_map(self, map_id: int) -> None:
        """Drop what the walk of ``map_id`` claimed (a map freed under a live walk), so
        a later map may list the local storages it shares."""
        self._storages = {a: m for a, m in self._storages.items() if m != map_id}

    # -- generic areas -----------------------------------------------------------

    def objects(self, map_id: int, role: str, addrs) -> AllocBatch:
        """Batch for kmalloc'ed objects (any address inside each object)."""
        r = self.slab.resolve(addrs)
        return AllocBatch(map_id, role, r.kind, r.base, r.size, r.objcg, r.cache)

    def area(self, map_id: int, role: str, addr: int) -> list[AllocBatch]:
        """Batches for one ``bpf_map_area_alloc``/kmalloc/vmalloc allocation containing
        ``addr``: a slab object or large kmalloc, or a vmalloc area page by page (plus its
        never-charged ``vm->pages`` array)."""
        if not addr:
            return []
        if self.lay.in_direct_map(addr):
            return [self.objects(map_id, role, [addr])]
        va = vmalloc_area(self.prog, addr)
        if va is None:
            self.stats.notes.append(f"map {map_id}: {role} at {addr:#x} is in no known area")
            return []
        n = len(va.pages)
        out = [
            AllocBatch(
                map_id,
                role,
                _const(n, "vmalloc_page"),
                np.uint64(va.va_start) + np.arange(n, dtype=np.uint64) * np.uint64(self.lay.page_size),
                _const(n, self.lay.page_size, np.int64),
                pages_objcgs(self.prog, va.pages),
                _const(n, ""),
            )
        ]
        if va.pages_array:
            out += self.area(map_id, "vm_pages_array", va.pages_array)
        return out

    def percpu(self, map_id: int, role: str, ptrs, size: int) -> AllocBatch:
        """Batch for per-CPU allocations of ``size`` bytes each."""
        ptrs = np.asarray(ptrs, dtype=np.uint64)
        ptrs = ptrs[ptrs != 0]
        _, objcg = self.pcpu.resolve(ptrs)
        n = len(ptrs)
        return AllocBatch(
            map_id, role, _const(n, "percpu"), ptrs, _const(n, (size + 3) & ~3, np.int64), objcg, _const(n, "")
        )

    # -- chains --------------------------------------------------------------------

    def _llist(self, first: int, limit: int) -> list[int]:
        """Nodes of an llist (``next`` at offset 0) from ``first``."""
        out = []
        rd = self.prog.read_u64
        node = first
        while node and len(out) < limit:
            out.append(node)
            node = rd(node)
        if node:
            self.stats.truncated_chains += 1
        return out

    # -- per type ------------------------------------------------------------------

    def walk(self, map: Object) -> list[AllocBatch]:
        """Every allocation owned by ``map`` (``struct bpf_map *``)."""
        mid = map.id.value_()
        mtype = bpf_map_type_name(map)
        out: list[AllocBatch] = []
        if mtype in HASH_TYPES:
            out += self._htab(map, mid, mtype)
        elif mtype in ARRAY_TYPES:
            out += self._array(map, mid, mtype)
        elif mtype == "ringbuf" or mtype == "user_ringbuf":
            out += self._ringbuf(map, mid)
        elif mtype == "lpm_trie":
            out += self._trie(map, mid)
        elif mtype in LOCAL_STORAGE_TYPES:
            out += self._local_storage(map, mid)
        else:
            out += self.area(mid, "map_struct", map.value_())
        meta = map.inner_map_meta.value_()
        if meta:
            out += self.area(mid, "inner_map_meta", meta)
        try:
            ec = map.elem_count.value_()
        except AttributeError:
            ec = 0
        if ec:
            out.append(self.percpu(mid, "elem_count", [ec], 8))
        return out

    def _htab(self, map: Object, mid: int, mtype: str) -> list[AllocBatch]:
        prog = self.prog
        htab = container_of(map, "struct bpf_htab", "map")
        out = self.area(mid, "map_struct", htab.value_())
        n_buckets = htab.n_buckets.value_()
        buckets = htab.buckets.value_()
        out += self.area(mid, "buckets", buckets)
        try:
            locks = [p.value_() for p in htab.map_locked]
            out.append(self.percpu(mid, "map_locked", locks, 4))
        except AttributeError:
            pass  # 7.1: rqspinlock buckets, no map_locked
        key_size = map.key_size.value_()
        value_size = map.value_size.value_()
        elem_t = prog.type("struct htab_elem")
        key_off = offsetof(elem_t, "key")
        val_off = key_off + ((key_size + 7) & ~7)
        elem_size = htab.elem_size.value_()
        percpu = mtype in PERCPU_HASH_TYPES
        pcpu_size = (value_size + 7) & ~7
        elems = htab.elems.value_()
        if elems:
            out += self.area(mid, "elems", elems)
            if percpu:
                n = map.max_entries.value_()
                ptrs = self._strided_u64(elems + val_off, elem_size, n)
                out.append(self.percpu(mid, "value", ptrs, pcpu_size))
            else:
                try:
                    extra = htab.extra_elems.value_()
                except AttributeError:
                    extra = 0
                if extra:
                    out.append(self.percpu(mid, "extra_elems", [extra], 8))
        else:
            # no-prealloc: walk every bucket's hlist_nulls chain
            heads = np.frombuffer(prog.read(buckets, n_buckets * sizeof(prog.type("struct bucket"))), dtype="<u8")
            stride = sizeof(prog.type("struct bucket")) // 8
            firsts = heads[::stride]
            firsts = firsts[(firsts & np.uint64(1)) == 0].tolist()
            limit = 4 * max(map.max_entries.value_(), 1) + 1024
            rd = prog.read_u64
            elems_l: list[int] = []
            vals: list[int] = []
            handles: list[int] = []
            try:
                ptp_off = offsetof(elem_t, "ptr_to_pptr")
            except LookupError:
                ptp_off = None
            for node in firsts:
                while not (node & 1):
                    elems_l.append(node)
                    if percpu:
                        vals.append(rd(node + val_off))
                        if ptp_off is not None:
                            handles.append(rd(node + ptp_off))
                    if len(elems_l) > limit:
                        self.stats.truncated_chains += 1
                        break
                    node = rd(node)
            out.append(self.objects(mid, "element", elems_l))
            if percpu:
                out.append(self.percpu(mid, "value", vals, pcpu_size))
                handles = [h for h in handles if h and self.lay.in_direct_map(h)]
                if handles and _has_member(htab, "pcpu_ma") and htab.pcpu_ma.cache.value_():
                    out.append(self.objects(mid, "value_handle", handles))
        for ma_name in ("ma", "pcpu_ma"):
            try:
                ma = getattr(htab, ma_name)
            except AttributeError:
                continue
            out += self._bpf_ma(mid, ma)
        return out

    def _strided_u64(self, start: int, stride: int, n: int, chunk: int = 1 << 14) -> np.ndarray:
        """``n`` u64 values at ``start + i*stride``, read in large chunks."""
        res = np.empty(n, dtype=np.uint64)
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            raw = self.prog.read(start + i * stride, (m - 1) * stride + 8)
            buf = np.frombuffer(raw, dtype=np.uint8)
            idx = (np.arange(m) * stride)[:, None] + np.arange(8)
            res[i : i + m] = np.ascontiguousarray(buf[idx]).view("<u8").ravel()
        return res

    def _bpf_ma(self, mid: int, ma: Object) -> list[AllocBatch]:
        """Objects parked in a bpf_mem_alloc's per-CPU caches (charged, not in use), each
        listed by its slab object (the llist_node is the object's first word; what the
        kernel hands out is object + 8). Charged to the objcg ``bpf_mem_alloc_init`` took
        from the creating task, which for a map is the map's own. Seen on 6.12's task and
        cgroup storage (tests/test_taskstorage_lab.py): 4 objects per CPU prefilled at map
        creation, refills of 48 from irq_work, ``free_llist`` alone holding them (its count
        equals the kernel's ``free_cnt``)."""
        caches = []
        try:
            if ma.cache.value_():
                for cpu in for_each_possible_cpu(self.prog):
                    caches.append(per_cpu_ptr(ma.cache, cpu))
            if ma.caches.value_():
                for cpu in for_each_possible_cpu(self.prog):
                    cc = per_cpu_ptr(ma.caches, cpu)
                    for i in range(len(cc.cache)):
                        caches.append(cc.cache[i].address_of_())
        except AttributeError:
            return []
        if not caches:
            return []
        objs: list[int] = []
        pcpu: dict[int, list[int]] = {}
        lists = [
            "free_llist",
            "free_llist_extra",
            "free_by_rcu",
            "waiting_for_gp",
            "free_llist_extra_rcu",
            "free_by_rcu_ttrace",
            "waiting_for_gp_ttrace",
        ]
        for c in caches:
            percpu_size = c.percpu_size.value_() if _has_member(c, "percpu_size") else 0
            unit = c.unit_size.value_()
            for ln in lists:
                if not _has_member(c, ln):
                    continue
                nodes = self._llist(getattr(c, ln).first.value_(), 1 << 20)
                objs += nodes
                if percpu_size:
                    pcpu.setdefault(unit, []).extend(self.prog.read_u64(n + 8) for n in nodes)
        out = []
        if objs:
            out.append(self.objects(mid, "bpf_ma_cached", objs))
        for unit, ptrs in pcpu.items():
            out.append(self.percpu(mid, "bpf_ma_cached_value", ptrs, unit))
        return out

    def _array(self, map: Object, mid: int, mtype: str) -> list[AllocBatch]:
        array = container_of(map, "struct bpf_array", "map")
        flags = map.map_flags.value_()
        if flags & BPF_F_MMAPABLE:
            out = self.area(mid, "map_struct", array.value.address_of_().value_())
        else:
            out = self.area(mid, "map_struct", array.value_())
        if mtype == "percpu_array":
            n = map.max_entries.value_()
            base = array.pptrs.address_of_().value_()
            ptrs = np.frombuffer(self.prog.read(base, 8 * n), dtype="<u8")
            out.append(self.percpu(mid, "value", ptrs, array.elem_size.value_()))
        return out

    def _ringbuf(self, map: Object, mid: int) -> list[AllocBatch]:
        rb_map = container_of(map, "struct bpf_ringbuf_map", "map")
        out = self.area(mid, "map_struct", rb_map.value_())
        rb = rb_map.rb
        pages_arr = rb.pages.value_()
        nr = rb.nr_pages.value_()
        out += self.area(mid, "ringbuf_pages_array", pages_arr)
        pages = np.frombuffer(self.prog.read(pages_arr, 8 * nr), dtype="<u8")
        lay = self.lay
        out.append(
            AllocBatch(
                mid,
                "ringbuf_page",
                _const(nr, "page"),
                np.array([lay.page_to_virt(int(p)) for p in pages], dtype=np.uint64),
                _const(nr, lay.page_size, np.int64),
                np.array([page_kmem_objcg(self.prog, int(p)) for p in pages], dtype=np.uint64),
                _const(nr, ""),
            )
        )
        return out

    def _trie(self, map: Object, mid: int) -> list[AllocBatch]:
        trie = container_of(map, "struct lpm_trie", "map")
        out = self.area(mid, "map_struct", trie.value_())
        off = offsetof(self.prog.type("struct lpm_trie_node"), "child")
        rd = self.prog.read_u64
        nodes = []
        stack = [trie.root.value_()]
        limit = 4 * max(map.max_entries.value_(), 1) + 1024
        while stack:
            n = stack.pop()
            if not n:
                continue
            nodes.append(n)
            if len(nodes) > limit:
                self.stats.truncated_chains += 1
                break
            stack.append(rd(n + off))
            stack.append(rd(n + off + 8))
        out.append(self.objects(mid, "trie_node", nodes))
        try:
            out += self._bpf_ma(mid, trie.ma)  # LPM trie on bpf_mem_alloc (~6.13+)
        except AttributeError:
            pass
        return out

    def _local_storage(self, map: Object, mid: int) -> list[AllocBatch]:
        """sk/inode/task/cgrp storage: the smap, its buckets, every element linked in the
        buckets (role ``element``) and the ``bpf_local_storage`` each points to (role
        ``local_storage``), listed once per snapshot: under the map that allocated it when
        the kernel records it (``local_storage->smap``: in 6.12, not in 6.1) and that map's
        element is still there, else under the first map walked with an element on it. A
        storage whose ``smap`` names another map is left to that map: its element on the
        owner is in that map's buckets (the kernel clears ``smap`` when it goes).

        A chain is cut (``truncated_chains``) when it revisits an element, passes
        :data:`LOCAL_STORAGE_LIMIT`, or reaches an element whose ``sdata.smap`` is not this
        map (memory freed and reused under a live walk); a fault cuts the chain it hit
        (``faults``) and keeps the rest.
        """
        prog = self.prog
        smap = container_of(map, "struct bpf_local_storage_map", "map")
        smap_addr = smap.value_()
        out = self.area(mid, "map_struct", smap_addr)
        buckets = smap.buckets.value_()
        out += self.area(mid, "buckets", buckets)
        nb = 1 << smap.bucket_log.value_()
        bucket_sz = sizeof(prog.type("struct bpf_local_storage_map_bucket"))
        heads = np.frombuffer(prog.read(buckets, nb * bucket_sz), dtype="<u8")[:: bucket_sz // 8]
        elem_t = prog.type("struct bpf_local_storage_elem")
        node_off = offsetof(elem_t, "map_node")  # the hlist_node the bucket links (next first)
        ls_off = offsetof(elem_t, "local_storage")
        owner_off = offsetof(elem_t, "sdata") + offsetof(prog.type("struct bpf_local_storage_data"), "smap")
        span = max(ls_off, owner_off) + 8
        u64 = self._u64.unpack_from
        seen: set[int] = set()
        elems: list[int] = []
        storages: list[int] = []
        for first in heads.tolist():
            node = first
            try:
                while node:
                    if node in seen or len(seen) >= LOCAL_STORAGE_LIMIT:
                        self.stats.truncated_chains += 1
                        break
                    selem = node - node_off
                    raw = prog.read(selem, span)
                    if u64(raw, owner_off)[0] != smap_addr:
                        self.stats.truncated_chains += 1
                        break
                    seen.add(node)
                    elems.append(selem)
                    storages.append(u64(raw, ls_off)[0])
                    node = u64(raw, node_off)[0]
            except FaultError:
                self.stats.faults += 1
        out.append(self.objects(mid, "element", elems))
        # 6.12: storage->smap, the map it was allocated through (absent in 6.1)
        try:
            alloc_off = offsetof(prog.type("struct bpf_local_storage"), "smap")
        except LookupError:
            alloc_off = None
        mine: list[int] = []
        for st in storages:
            if not st or st in self._storages:
                continue
            if alloc_off is not None:
                try:
                    by = prog.read_u64(st + alloc_off)
                except FaultError:
                    self.stats.faults += 1
                    continue
                if by and by != smap_addr:
                    continue  # listed by the map that allocated it
            self._storages[st] = mid
            mine.append(st)
        out.append(self.objects(mid, "local_storage", mine))
        for ma_name in ("selem_ma", "storage_ma"):  # 6.12 (used when smap->bpf_ma)
            if _has_member(smap, ma_name):
                out += self._bpf_ma(mid, getattr(smap, ma_name))
        return out


def _has_member(obj: Object, name: str) -> bool:
    try:
        obj.type_.type.member(name) if obj.type_.kind.name == "POINTER" else obj.type_.member(name)
        return True
    except LookupError:
        return False


# -- the kernel's own size estimates ---------------------------------------------------


def bpf_map_has_mem_usage(prog: Program) -> bool:
    """Whether the kernel has ``map_ops->map_mem_usage`` (6.4+; Linux kernel commit
    90a5527d7686 ("bpf: add new map ops ->map_mem_usage") (in v6.4)). Then fdinfo
    ``memlock`` is that estimate; before, it is ``bpf_map_memory_footprint``."""
    try:
        prog.type("struct bpf_map_ops").member("map_mem_usage")
        return True
    except LookupError:
        return False


def bpf_map_mem_usage(map: Object) -> int | None:
    """Recomputes ``map->ops->map_mem_usage(map)`` for the types memtrace knows (6.4+
    formulas, as in 6.12), or None for other types or kernels without it."""
    prog = map.prog_
    if not bpf_map_has_mem_usage(prog):
        return None
    mtype = bpf_map_type_name(map)
    ncpu = num_possible_cpus(prog)
    vsize = (map.value_size.value_() + 7) & ~7
    if mtype in HASH_TYPES:
        htab = container_of(map, "struct bpf_htab", "map")
        prealloc = not (map.map_flags.value_() & BPF_F_NO_PREALLOC)
        percpu = mtype in PERCPU_HASH_TYPES
        lru = mtype in LRU_TYPES
        # kernel/bpf/hashtab.c htab_map_mem_usage(), with the kernel's own sizeof()s
        ptr = sizeof(prog.type("void *"))  # sizeof(struct htab_elem *), sizeof(void *)
        llist_node = sizeof(prog.type("struct llist_node"))  # LLIST_NODE_SZ
        usage = sizeof(htab.type_.type)
        usage += sizeof(prog.type("struct bucket")) * htab.n_buckets.value_()
        if _has_member(htab, "map_locked"):
            usage += sizeof(prog.type("int")) * ncpu * len(htab.map_locked)
        elem_size = htab.elem_size.value_()
        if prealloc:
            n = map.max_entries.value_()
            if not percpu and not lru:
                n += ncpu
            usage += elem_size * n
            if percpu:
                usage += vsize * ncpu * n
            elif not lru:
                usage += ptr * ncpu
        else:
            if htab.use_percpu_counter.value_():
                from drgn.helpers.linux.percpu import percpu_counter_sum

                n = percpu_counter_sum(htab.pcount.address_of_())
            else:
                n = htab.count.counter.value_()
            usage += (elem_size + llist_node) * n
            if percpu:
                usage += (llist_node + ptr) * n + vsize * ncpu * n
        return usage
    if mtype in ARRAY_TYPES:
        array = container_of(map, "struct bpf_array", "map")
        entries = map.max_entries.value_()
        es = array.elem_size.value_()
        usage = sizeof(array.type_.type)
        if mtype == "percpu_array":
            return usage + entries * sizeof(prog.type("void *")) + entries * es * ncpu  # the per-CPU pointers
        if map.map_flags.value_() & BPF_F_MMAPABLE:
            ps = prog["PAGE_SIZE"].value_()
            return ((usage + ps - 1) // ps * ps) + ((entries * es + ps - 1) // ps * ps)
        return usage + entries * es
    if mtype in ("ringbuf", "user_ringbuf"):
        rb_map = container_of(map, "struct bpf_ringbuf_map", "map")
        nr = rb_map.rb.nr_pages.value_()
        nr_data = map.max_entries.value_() >> prog["PAGE_SHIFT"].value_()
        nr_meta = nr - nr_data
        return sizeof(rb_map.type_.type) + (nr << prog["PAGE_SHIFT"].value_()) + (nr_meta + 2 * nr_data) * 8
    if mtype == "lpm_trie":
        trie = container_of(map, "struct lpm_trie", "map")
        es = sizeof(prog.type("struct lpm_trie_node")) + trie.data_size.value_() + map.value_size.value_()
        return es * trie.n_entries.value_()
    if mtype in LOCAL_STORAGE_TYPES:
        # bpf_local_storage_map_mem_usage (6.12 bpf_local_storage.c:745): the smap and its
        # buckets only ("The dynamically callocated selems are not counted currently.")
        smap = container_of(map, "struct bpf_local_storage_map", "map")
        bucket = sizeof(prog.type("struct bpf_local_storage_map_bucket"))
        return sizeof(smap.type_.type) + (bucket << smap.bucket_log.value_())
    return None


def bpf_map_memlock(map: Object) -> int | None:
    """fdinfo ``memlock``: ``map_mem_usage`` on 6.4+, else (5.11-6.3)
    ``bpf_map_memory_footprint()`` = round_up(max_entries * round_up(key + value, 8),
    PAGE_SIZE), with per-CPU values times ncpu and fd-valued maps counting 4 bytes."""
    prog = map.prog_
    if bpf_map_has_mem_usage(prog):
        return bpf_map_mem_usage(map)
    try:
        pages = map.memory.pages.value_()  # 5.10 and older
        return pages * prog["PAGE_SIZE"].value_()
    except AttributeError:
        pass
    mtype = bpf_map_type_name(map)
    vs = map.value_size.value_()
    if mtype in PERCPU_HASH_TYPES or mtype in ("percpu_array", "percpu_cgroup_storage"):
        vs = ((vs + 7) & ~7) * num_possible_cpus(prog)
    elif mtype in FD_VALUE_TYPES:
        vs = 4
    size = (map.key_size.value_() + vs + 7) & ~7
    ps = prog["PAGE_SIZE"].value_()
    return (map.max_entries.value_() * size + ps - 1) // ps * ps


# -- pins --------------------------------------------------------------------------------


def bpf_map_pins(prog: Program) -> dict[int, list[str]]:
    """{map address: [pinned paths]} from every mounted bpffs (initial mount namespace)."""
    from drgn.helpers.linux.fs import d_path, for_each_mount
    from drgn.helpers.linux.list import hlist_for_each_entry, list_for_each_entry

    try:
        iops = prog["bpf_map_iops"].address_of_().value_()
    except KeyError:
        return {}
    out: dict[int, list[str]] = {}
    for mnt in for_each_mount(prog, fstype="bpf"):
        root = mnt.mnt.mnt_root
        stack = [root]
        seen = 0
        while stack and seen < 1_000_000:
            d = stack.pop()
            seen += 1
            try:
                children = hlist_for_each_entry("struct dentry", d.d_children.address_of_(), "d_sib")
            except AttributeError:
                children = list_for_each_entry("struct dentry", d.d_subdirs.address_of_(), "d_child")
            for c in children:
                ino = c.d_inode
                if not ino:
                    continue
                if ino.i_op.value_() == iops:
                    path = d_path(mnt.mnt.address_of_(), c).decode(errors="replace")
                    out.setdefault(ino.i_private.value_(), []).append(path)
                stack.append(c)
    for v in out.values():
        v.sort()
    return out


def bpf_maps(prog: Program) -> Iterator[Object]:
    """Every ``struct bpf_map *`` in ``map_idr`` (drgn's ``bpf_map_for_each``)."""
    return bpf_map_for_each(prog)


def bpf_map_listed(prog: Program, map_id: int, addr: int) -> bool:
    """Whether ``map_idr`` still maps ``map_id`` to the map at ``addr``.

    On a running kernel a map can be freed between listing it and reading it: the last
    ``bpf_map_put`` removes its id (``bpf_map_free_id``) before the deferred free, so a
    map still listed after its walk was not freed during it, and what was read of it
    belongs to it (a freed map's memory may hold garbage, or another object, by then).
    """
    from drgn.helpers.linux.idr import idr_find

    return idr_find(prog["map_idr"].address_of_(), map_id).value_() == addr

"""Slab object -> the objcg it is charged to, for many objects at once.

Where a slab keeps its per-object objcg vector:

* 5.9-5.16: ``page->memcg_data`` (``page->obj_cgroups`` before 5.11) with
  ``MEMCG_DATA_OBJCGS`` (bit 0); entries are ``struct obj_cgroup *``.
* 5.17-6.9: ``slab->memcg_data``; Linux kernel commit d122019bf061 ("mm: Split slab into
  its own type") (in v5.17). Same encoding.
* 6.10+: ``slab->obj_exts`` holding ``struct slabobj_ext[]`` (the objcg is its first
  member); Linux kernel commit 21c690a349ba ("mm: introduce slabobj_ext to support slab
  object extensions") (in v6.10). Flags mask ``__NR_OBJEXTS_FLAGS - 1``.
* 7.0+: a per-slab ``stride`` between vector entries (the vector can live in slab padding).
  Read from ``slab->stride`` when that member exists. **Untested**: no 7.x lab kernel.

The object index is ``(addr - slab_address) // s->size`` (SLUB's ``obj_to_index`` is an
exact reciprocal division). A charged object costs ``s->size + sizeof(void *)``
(``obj_full_size``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from drgn import Object, Program, offsetof

from memtrace.sources.kernel.page import has_symbol, page_compound_order, page_is_slab, page_kmem_objcg, page_layout


@dataclass(frozen=True)
class _SlabStrategy:
    slab_type: str  # "struct slab" or "struct page"
    off_cache: int
    off_vec: int | None
    vec_flags_mask: int
    vec_required_bit: int  # bit that marks a vector (OBJCGS / OBJEXTS)
    default_stride: int
    off_stride: int | None
    stride_size: int


def _strategy(prog: Program) -> _SlabStrategy:
    try:
        return prog.cache["memtrace_slab_strategy"]
    except KeyError:
        pass
    try:
        t = prog.type("struct slab")
        slab_type = "struct slab"
    except LookupError:
        t = prog.type("struct page")
        slab_type = "struct page"
    off_cache = offsetof(t, "slab_cache")
    off_stride = None
    stride_size = 0
    try:
        # 6.10+: obj_exts
        off_vec = offsetof(t, "obj_exts")
        try:
            mask = prog["__NR_OBJEXTS_FLAGS"].value_() - 1
        except KeyError:
            mask = 7
        bit = prog["MEMCG_DATA_OBJEXTS"].value_() if has_symbol(prog, "MEMCG_DATA_OBJEXTS") else 1
        stride = prog.type("struct slabobj_ext").size
        try:
            off_stride = offsetof(t, "stride")
            stride_size = t.member("stride").type.size if hasattr(t, "member") else 2
        except (LookupError, AttributeError):
            off_stride = None
    except LookupError:
        try:
            off_vec = offsetof(t, "memcg_data")
        except LookupError:
            try:
                off_vec = offsetof(t, "obj_cgroups")  # 5.9/5.10
            except LookupError:
                off_vec = None
        mask = 3
        bit = 1
        stride = 8
    s = _SlabStrategy(slab_type, off_cache, off_vec, mask, bit, stride, off_stride, stride_size)
    prog.cache["memtrace_slab_strategy"] = s
    return s




@dataclass
class CacheInfo:
    addr: int
    name: str
    size: int  # s->size: object stride incl. metadata
    objects: int  # objects per slab


@dataclass
class SlabInfo:
    head: int  # struct page/slab address
    base: int  # virtual address of the first object
    cache: CacheInfo | None
    vec: np.ndarray | None  # objcg per object index (uint64), or None: no vector (uncharged)


@dataclass
class ResolvedObjects:
    """Per-object results, parallel arrays."""

    kind: np.ndarray  # object dtype: "slab_object" | "large_kmalloc" | "page" | "unknown"
    base: np.ndarray  # uint64 object (or allocation) start
    size: np.ndarray  # int64 footprint: s->size, or PAGE_SIZE << order
    objcg: np.ndarray  # uint64, 0 = not charged
    cache: np.ndarray  # object dtype: slab cache name or ""


class SlabResolver:
    """Resolves direct-map addresses to slab objects (or large-kmalloc pages) and their
    objcg. Caches slab heads and caches for one snapshot; not thread-safe.

    :param prog: the kernel
    """

    def __init__(self, prog: Program):
        self.prog = prog
        self.lay = page_layout(prog)
        self.st = _strategy(prog)
        self._caches: dict[int, CacheInfo] = {}
        self._heads: dict[int, SlabInfo | tuple] = {}

    def cache_info(self, addr: int) -> CacheInfo:
        c = self._caches.get(addr)
        if c is None:
            s = Object(self.prog, "struct kmem_cache *", addr)
            c = CacheInfo(addr, s.name.string_().decode(errors="replace"), s.size.value_(), s.oo.x.value_() & 0xFFFF)
            self._caches[addr] = c
        return c

    def head_info(self, head: int):
        """SlabInfo for a slab head page, or ("page", order, objcg) for other pages."""
        h = self._heads.get(head)
        if h is not None:
            return h
        prog, st = self.prog, self.st
        if page_is_slab(prog, head):
            cache = self.cache_info(prog.read_u64(head + st.off_cache))
            vec = None
            if st.off_vec is not None:
                v = prog.read_u64(head + st.off_vec)
                if v & st.vec_required_bit and v & ~st.vec_flags_mask:
                    ptr = v & ~st.vec_flags_mask & 0xFFFFFFFFFFFFFFFF
                    stride = st.default_stride
                    if st.off_stride is not None:
                        stride = int.from_bytes(prog.read(head + st.off_stride, st.stride_size), "little") or stride
                    raw = prog.read(ptr, cache.objects * stride)
                    vec = np.frombuffer(raw, dtype="<u8")[:: stride // 8].copy() if stride % 8 == 0 else None
            h = SlabInfo(head, self.lay.page_to_virt(head), cache, vec)
        else:
            order = page_compound_order(prog, head)
            h = ("page", order, page_kmem_objcg(prog, head))
        self._heads[head] = h
        return h

    def resolve(self, addrs) -> ResolvedObjects:
        """Resolve an array of addresses of kmalloc'ed memory (any address inside the object)."""
        addrs = np.asarray(addrs, dtype=np.uint64)
        n = len(addrs)
        lay = self.lay
        kind = np.empty(n, dtype=object)
        base = np.zeros(n, dtype=np.uint64)
        size = np.zeros(n, dtype=np.int64)
        objcg = np.zeros(n, dtype=np.uint64)
        cache = np.empty(n, dtype=object)
        cache[:] = ""
        kind[:] = "unknown"
        if n == 0:
            return ResolvedObjects(kind, base, size, objcg, cache)
        pob = np.uint64(lay.page_offset_base)
        ok = (addrs >= pob) & (addrs < pob + np.uint64(lay.max_pfn << lay.page_shift))
        pages = np.uint64(lay.vmemmap_base) + ((addrs - pob) >> np.uint64(lay.page_shift)) * np.uint64(lay.sizeof_page)
        upages, inv = np.unique(pages, return_inverse=True)
        heads = np.empty(len(upages), dtype=np.uint64)
        read_u64 = self.prog.read_u64
        off_ch = lay.off_compound_head
        for i, p in enumerate(upages.tolist()):
            ch = read_u64(p + off_ch)
            heads[i] = ch - 1 if ch & 1 else p
        obj_heads = heads[inv]
        uheads, hinv = np.unique(obj_heads, return_inverse=True)
        order_ = np.argsort(hinv, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(hinv, minlength=len(uheads)))))
        for j, h in enumerate(uheads.tolist()):
            sel = order_[bounds[j] : bounds[j + 1]]
            sel = sel[ok[sel]]
            if len(sel) == 0:
                continue
            info = self.head_info(h)
            if isinstance(info, SlabInfo) and info.cache is not None:
                c = info.cache
                idx = (addrs[sel] - np.uint64(info.base)) // np.uint64(c.size)
                kind[sel] = "slab_object"
                base[sel] = np.uint64(info.base) + idx * np.uint64(c.size)
                size[sel] = c.size
                cache[sel] = c.name
                if info.vec is not None:
                    good = idx < len(info.vec)
                    objcg[sel[good]] = info.vec[idx[good].astype(np.int64)]
            else:
                _, order, oc = info
                kind[sel] = "large_kmalloc" if order > 0 else "page"
                base[sel] = lay.page_to_virt(h)
                size[sel] = lay.page_size << order
                objcg[sel] = oc
        return ResolvedObjects(kind, base, size, objcg, cache)


def objcg_pointer_size(prog: Program) -> int:
    """``sizeof(struct obj_cgroup *)``: what a charged slab object adds for its slot in the
    slab's objcg vector, and a charged per-CPU allocation per PCPU_MIN_ALLOC_SIZE bytes."""
    return prog.type("struct obj_cgroup *").size


def obj_full_size(prog: Program, size):
    """Bytes a charged slab object of ``size`` costs its memcg (mm/memcontrol.c
    ``obj_full_size``: the object plus its objcg pointer); ``size`` may be a numpy array."""
    return size + objcg_pointer_size(prog)

"""Everything charged to some memcgs, found by scanning all of memory (not by map).

Used to itemise what a memcg's ``memory.current`` holds besides BPF maps: every struct
page is read (the memmap in large chunks), and

* slab pages: the per-object objcg vector (see :mod:`.slab`) is searched for the objcgs;
* other kmem pages (vmalloc, large kmalloc, page tables, ...): ``memcg_data`` with
  ``MEMCG_DATA_KMEM`` holds the objcg; a compound page counts ``PAGE_SIZE << order``;
* LRU (user/page cache) folios: ``memcg_data`` is the memcg itself (5.x-7.0);
* per-CPU chunks: slot ``off >> 2`` of the chunk vector; the size comes from
  ``chunk->bound_map`` (a bit at every allocation start and end).

Cost: one pass over the memmap (64 bytes per page of RAM) plus one vector read per
accounted slab. Meant for reconciliation and tests, not the default snapshot.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from drgn import FaultError, Program

from memtrace.sources.kernel.page import page_layout
from memtrace.sources.kernel.percpu import PCPU_MIN_ALLOC_SHIFT, PercpuResolver
from memtrace.sources.kernel.slab import SlabResolver, _strategy, obj_full_size


def charges_scan(prog: Program, objcgs: set[int], memcgs: set[int], chunk_pages: int = 8192) -> list[dict]:
    """Rows ``{"owner", "kind", "cache", "count", "bytes"}`` (owner: the objcg or memcg
    address) for everything charged to ``objcgs`` (kmem) or ``memcgs`` (LRU folios).
    ``bytes`` is what the charges cost (slab ``s->size + 8``, per-CPU
    ``pcpu_obj_full_size``, pages their size)."""
    lay = page_layout(prog)
    st = _strategy(prog)
    slab = SlabResolver(prog)
    sp = lay.sizeof_page
    assert sp % 8 == 0
    w = sp // 8
    agg: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    objcg_arr = np.array(sorted(objcgs), dtype=np.uint64)
    memcg_arr = np.array(sorted(memcgs), dtype=np.uint64)
    mask = np.uint64(~lay.memcg_data_flags_mask & 0xFFFFFFFFFFFFFFFF)
    kmem = np.uint64(lay.memcg_data_kmem)
    t = lay.slab_test
    faults = 0
    for start in range(0, lay.max_pfn, chunk_pages):
        n = min(chunk_pages, lay.max_pfn - start)
        base = lay.vmemmap_base + start * sp
        try:
            raw = prog.read(base, n * sp)
        except FaultError:
            faults += 1
            continue
        a = np.frombuffer(raw, dtype="<u8").reshape(n, w)
        ch = a[:, lay.off_compound_head // 8]
        tail = (ch & np.uint64(1)) != 0
        md = a[:, lay.off_memcg_data // 8] if lay.off_memcg_data is not None else np.zeros(n, np.uint64)
        if t[0] == "flag":
            is_slab = (a[:, lay.off_flags // 8] & np.uint64(t[1])) != 0
        else:
            word = a[:, t[1] // 8]
            v = (word >> np.uint64(32)) if t[1] % 8 else (word & np.uint64(0xFFFFFFFF))
            is_slab = v == np.uint64(t[2])
        is_slab &= ~tail
        # kmem (non-slab) head pages charged to a target objcg
        kp = (~tail) & (~is_slab) & ((md & kmem) != 0)
        if kp.any():
            oc = md[kp] & mask
            hit = np.isin(oc, objcg_arr)
            for i in np.nonzero(kp)[0][hit].tolist():
                order = _order(a, i, n, lay, prog, base)
                agg[(int(md[i] & mask), "kmem_page", f"order{order}")][0] += 1
                agg[(int(md[i] & mask), "kmem_page", f"order{order}")][1] += lay.page_size << order
        # LRU folios charged to a target memcg (memcg_data = memcg, no flag bits)
        lp = (~tail) & (~is_slab) & ((md & np.uint64(lay.memcg_data_flags_mask)) == 0) & (md != 0)
        if lp.any() and len(memcg_arr):
            hit = np.isin(md[lp], memcg_arr)
            for i in np.nonzero(lp)[0][hit].tolist():
                order = _order(a, i, n, lay, prog, base)
                key = (int(md[i]), "lru_folio", f"order{order}")
                agg[key][0] += 1
                agg[key][1] += lay.page_size << order
        # slabs with an objcg vector
        sv = a[:, st.off_vec // 8] if st.off_vec is not None else None
        if sv is not None:
            cand = np.nonzero(is_slab & ((sv & np.uint64(st.vec_required_bit)) != 0))[0]
            for i in cand.tolist():
                head = base + i * sp
                try:
                    info = slab.head_info(head)
                except FaultError:
                    faults += 1
                    continue
                if info.vec is None or info.cache is None:
                    continue
                hit = np.isin(info.vec, objcg_arr)
                if hit.any():
                    for o in np.unique(info.vec[hit]).tolist():
                        c = int((info.vec == np.uint64(o)).sum())
                        key = (int(o), "slab_object", info.cache.name)
                        agg[key][0] += c
                        agg[key][1] += c * obj_full_size(prog, info.cache.size)
                slab._heads.pop(head, None)  # keep memory flat
    # per-CPU
    pr = PercpuResolver(prog)
    for caddr in pr.chunk_addr.tolist():
        vec = pr._vec(caddr)
        if vec is None:
            continue
        hit = np.nonzero(np.isin(vec, objcg_arr))[0]
        if not len(hit):
            continue
        from drgn import Object

        chunk = Object(prog, "struct pcpu_chunk *", caddr)
        nbits = len(vec)
        bm = np.frombuffer(prog.read(chunk.bound_map.value_(), ((nbits + 1 + 63) // 64) * 8), dtype="<u8")
        bits = np.unpackbits(bm.view(np.uint8), bitorder="little")[: nbits + 1]
        starts = np.nonzero(bits)[0]
        for s in hit.tolist():
            j = np.searchsorted(starts, s, side="right")
            end = int(starts[j]) if j < len(starts) else nbits
            size = (end - s) << PCPU_MIN_ALLOC_SHIFT
            key = (int(vec[s]), "percpu", f"size{size}")
            agg[key][0] += 1
            agg[key][1] += pr.full_size(size)
    rows = [{"owner": k[0], "kind": k[1], "cache": k[2], "count": v[0], "bytes": v[1]} for k, v in agg.items()]
    if faults:
        rows.append({"owner": 0, "kind": "faults", "cache": "", "count": faults, "bytes": 0})
    return rows


def _order(a: np.ndarray, i: int, n: int, lay, prog: Program, base: int) -> int:
    """Order of the compound page at row i (0 if the next page is not its tail)."""
    if i + 1 < n:
        ch1 = int(a[i + 1, lay.off_compound_head // 8])
        if not (ch1 & 1) or ch1 - 1 != base + i * lay.sizeof_page:
            return 0
    from memtrace.sources.kernel.page import page_compound_order

    return page_compound_order(prog, base + i * lay.sizeof_page)

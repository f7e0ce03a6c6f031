"""Per-CPU allocations -> the objcg they are charged to.

A dynamic per-CPU allocation lives in a ``struct pcpu_chunk``; its objcg is slot
``off >> PCPU_MIN_ALLOC_SHIFT`` of the chunk's vector:

* 5.9-6.9: ``chunk->obj_cgroups`` (``struct obj_cgroup **``); Linux kernel commit
  3c7be18ac9a0 ("mm: memcg/percpu: account percpu memory to memory cgroups") (in v5.9).
* 6.10+: ``chunk->obj_exts`` (``struct pcpuobj_ext { struct obj_cgroup *cgroup; ... }``);
  Linux kernel commit 24e44cc22aa3 ("mm: percpu: enable per-cpu allocation tagging") (in
  v6.10).

The first chunk has no vector (``obj_cgroups == NULL``): an accounted allocation placed
there is charged and at once uncharged by ``pcpu_memcg_post_alloc_hook``, so it is not
charged. A charged allocation of ``size`` bytes costs ``pcpu_obj_full_size(size) =
size * num_possible_cpus() + size / PCPU_MIN_ALLOC_SIZE * sizeof(void *)`` (5.15 charged
``size * num_possible_cpus()``; we report the 5.16+ formula).
"""

from __future__ import annotations

import numpy as np
from drgn import Object, Program, offsetof
from drgn.helpers.linux.cpumask import num_possible_cpus
from drgn.helpers.linux.list import list_for_each_entry

#: mm/percpu-internal.h ``PCPU_MIN_ALLOC_SHIFT``: a #define, so neither DWARF nor BTF can
#: say it; 2 (4-byte units), as kernel-notes §3.4 reads it from the 6.1 and 6.12 sources
PCPU_MIN_ALLOC_SHIFT = 2


class PercpuResolver:
    """Maps ``void __percpu *`` pointers to (chunk, objcg). One per snapshot."""

    def __init__(self, prog: Program):
        self.prog = prog
        self.ncpu = num_possible_cpus(prog)
        self.page_size = prog["PAGE_SIZE"].value_()
        self.delta = prog["pcpu_base_addr"].value_() - prog.symbol("__per_cpu_start").address
        ct = prog.type("struct pcpu_chunk")
        # 6.10+ obj_exts; 5.9-6.9 obj_cgroups; older: no memcg accounting of per-CPU memory
        try:
            self.off_vec = offsetof(ct, "obj_exts")
            self.stride = prog.type("struct pcpuobj_ext").size
        except LookupError:
            try:
                self.off_vec = offsetof(ct, "obj_cgroups")
                self.stride = 8
            except LookupError:
                self.off_vec = None
                self.stride = 8
        chunks: dict[int, tuple[int, int]] = {}
        first = prog["pcpu_first_chunk"].value_()
        for name in ("pcpu_first_chunk", "pcpu_reserved_chunk"):
            c = prog[name]
            if c.value_():
                chunks[c.value_()] = (c.base_addr.value_(), c.nr_pages.value_())
        lists = prog["pcpu_chunk_lists"]
        nslots = prog["pcpu_nr_slots"].value_()
        for i in range(nslots):
            for c in list_for_each_entry("struct pcpu_chunk", lists[i].address_of_(), "list"):
                chunks[c.value_()] = (c.base_addr.value_(), c.nr_pages.value_())
        items = sorted(chunks.items(), key=lambda kv: kv[1][0])
        self.chunk_addr = np.array([k for k, _ in items], dtype=np.uint64)
        self.chunk_base = np.array([v[0] for _, v in items], dtype=np.uint64)
        self.chunk_len = np.array([v[1] * self.page_size for _, v in items], dtype=np.uint64)
        self.first_chunk = first
        self._vecs: dict[int, np.ndarray | None] = {}

    def _vec(self, chunk: int) -> np.ndarray | None:
        if chunk in self._vecs:
            return self._vecs[chunk]
        v = None
        if self.off_vec is not None:
            ptr = self.prog.read_u64(chunk + self.off_vec)
            if ptr:
                i = int(np.nonzero(self.chunk_addr == np.uint64(chunk))[0][0])
                nslots = int(self.chunk_len[i]) >> PCPU_MIN_ALLOC_SHIFT
                raw = self.prog.read(ptr, nslots * self.stride)
                v = np.frombuffer(raw, dtype="<u8")[:: self.stride // 8].copy()
        self._vecs[chunk] = v
        return v

    def resolve(self, ptrs) -> tuple[np.ndarray, np.ndarray]:
        """(chunk address or 0, objcg or 0) for each ``__percpu`` pointer."""
        ptrs = np.asarray(ptrs, dtype=np.uint64)
        addrs = ptrs + np.uint64(self.delta & 0xFFFFFFFFFFFFFFFF)
        i = np.searchsorted(self.chunk_base, addrs, side="right") - 1
        chunk = np.zeros(len(ptrs), dtype=np.uint64)
        objcg = np.zeros(len(ptrs), dtype=np.uint64)
        valid = i >= 0
        ic = np.where(valid, i, 0)
        off = addrs - self.chunk_base[ic]
        valid &= off < self.chunk_len[ic]
        valid &= ptrs != 0
        chunk[valid] = self.chunk_addr[ic[valid]]
        for c in np.unique(chunk[valid]).tolist():
            vec = self._vec(c)
            if vec is None:
                continue
            sel = np.nonzero(chunk == np.uint64(c))[0]
            slots = (off[sel] >> np.uint64(PCPU_MIN_ALLOC_SHIFT)).astype(np.int64)
            good = slots < len(vec)
            objcg[sel[good]] = vec[slots[good]]
        return chunk, objcg

    def full_size(self, size: int) -> int:
        """``pcpu_obj_full_size(size)``: what a charged allocation of ``size`` bytes costs."""
        return pcpu_obj_full_size(self.prog, (size + 3) & ~3, self.ncpu)

    def footprint(self, size: int) -> int:
        """Bytes an allocation of ``size`` occupies over all possible CPUs (uncharged)."""
        return ((size + 3) & ~3) * self.ncpu


def per_cpu_ptr_addr(prog: Program, ptr: int, cpu: int) -> int:
    """Address of ``cpu``'s copy of the ``__percpu`` pointer ``ptr``."""
    from drgn.helpers.linux.percpu import per_cpu_ptr

    return per_cpu_ptr(Object(prog, "void *", ptr), cpu).value_()


def pcpu_obj_full_size(prog: Program, size, ncpu: int):
    """mm/percpu.c ``pcpu_obj_full_size()``: bytes a charged per-CPU allocation of ``size``
    costs its memcg: its copy on every possible CPU plus one objcg pointer per
    PCPU_MIN_ALLOC_SIZE bytes (the chunk's objcg vector); ``size`` may be a numpy array."""
    from memtrace.sources.kernel.slab import objcg_pointer_size

    return size * ncpu + (size >> PCPU_MIN_ALLOC_SHIFT) * objcg_pointer_size(prog)

"""vmalloc areas -> their pages -> the objcg each page is charged to.

vmalloc charges order-0 pages one at a time (the bulk allocator refuses accounted
requests), each through ``__memcg_kmem_charge_page``: ``page->memcg_data = objcg |
MEMCG_DATA_KMEM``. ``vm->pages`` itself is allocated without ``__GFP_ACCOUNT``
(``nested_gfp`` masks it out), so it is never charged.

``vmap()`` areas (ringbuf) have no ``vm->pages``; their owners keep the page array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from drgn import Program
from drgn.helpers.linux.mm import find_vmap_area

from memtrace.sources.kernel.page import page_layout


@dataclass
class VmArea:
    va_start: int
    size: int  # va_end - va_start (includes the guard page on older kernels)
    vm: int  # struct vm_struct *, 0 if none
    pages_array: int  # vm->pages, 0 if none
    pages: np.ndarray  # uint64 struct page * per page (may be empty)


def vmalloc_area(prog: Program, addr: int) -> VmArea | None:
    """The vmalloc area containing ``addr`` with its pages, or None.

    :param addr: any address inside a vmalloc/vmap area
    """
    va = find_vmap_area(prog, addr)
    if not va:
        return None
    start = va.va_start.value_()
    size = va.va_end.value_() - start
    vm = va.vm
    pages = np.zeros(0, dtype=np.uint64)
    parr = 0
    if vm:
        parr = vm.pages.value_()
        n = vm.nr_pages.value_()
        if parr and n:
            pages = np.frombuffer(prog.read(parr, 8 * n), dtype="<u8").copy()
    return VmArea(start, size, vm.value_(), parr, pages)


def pages_objcgs(prog: Program, pages) -> np.ndarray:
    """objcg (0 = not charged) of each ``struct page *`` in ``pages``, from
    ``page->memcg_data`` with ``MEMCG_DATA_KMEM``."""
    lay = page_layout(prog)
    pages = np.asarray(pages, dtype=np.uint64)
    out = np.zeros(len(pages), dtype=np.uint64)
    if lay.off_memcg_data is None:
        return out
    rd = prog.read_u64
    off = lay.off_memcg_data
    kmem = lay.memcg_data_kmem
    mask = ~lay.memcg_data_flags_mask & 0xFFFFFFFFFFFFFFFF
    vals = [rd(p + off) for p in pages.tolist()]
    md = np.array(vals, dtype=np.uint64)
    charged = (md & np.uint64(kmem)) != 0
    out[charged] = md[charged] & np.uint64(mask)
    return out

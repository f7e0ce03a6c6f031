"""struct page arithmetic without Objects: direct-map address -> page, compound head, memcg_data.

Everything here works on plain ints (addresses) so that the per-page and per-object loops
of a snapshot stay cheap: one ``prog.read_u64`` per field, no ``drgn.Object`` per page.
The layout is read once per Program from the debug info and kept in ``prog.cache``.

Supported: x86-64 with SPARSEMEM_VMEMMAP (every Debian kernel). Tested on Debian
6.1.0-56 and 6.12.117.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drgn import Program, offsetof

from memtrace.errors import EnvironmentProblem


@dataclass(frozen=True)
class PageLayout:
    page_size: int
    page_shift: int
    sizeof_page: int
    vmemmap_base: int
    page_offset_base: int
    max_pfn: int
    off_flags: int
    off_compound_head: int
    off_memcg_data: int | None  # None: no memcg_data (CONFIG_MEMCG off, or 5.10's mem_cgroup)
    memcg_data_flags_mask: int  # low bits of page->memcg_data that are flags
    memcg_data_kmem: int  # MEMCG_DATA_KMEM
    slab_test: tuple  # ("flag", mask) or ("mapcount", value) or ("type", shift, value)

    def virt_to_page(self, addr: int) -> int:
        """``struct page *`` (as an int) of a direct-map address."""
        return self.vmemmap_base + ((addr - self.page_offset_base) >> self.page_shift) * self.sizeof_page

    def page_to_virt(self, page: int) -> int:
        return self.page_offset_base + (((page - self.vmemmap_base) // self.sizeof_page) << self.page_shift)

    def in_direct_map(self, addr: int) -> bool:
        return self.page_offset_base <= addr < self.page_offset_base + (self.max_pfn << self.page_shift)


def page_layout(prog: Program) -> PageLayout:
    """The page layout of ``prog``'s kernel, computed once."""
    try:
        return prog.cache["memtrace_page_layout"]
    except KeyError:
        pass
    page_t = prog.type("struct page")
    page_size = prog["PAGE_SIZE"].value_()
    page_shift = prog["PAGE_SHIFT"].value_()
    try:
        off_memcg_data = offsetof(page_t, "memcg_data")
    except LookupError:
        off_memcg_data = None
    # The compound_head member was renamed compound_info by Linux kernel commit
    # d50569612c29 ("mm: rename the 'compound_head' field in the 'struct page' to
    # 'compound_info'") (in v7.1); drgn's mm.py handles the same rename.
    try:
        off_ch = offsetof(page_t, "compound_head")
    except LookupError:
        off_ch = offsetof(page_t, "compound_info")
    # page->memcg_data and its flag enum came together (5.11); a kernel with the field but
    # not the enumerators is not one memtrace knows, and guessing the bits would misread
    # every page, so say so instead
    flags_mask = kmem = 0
    if off_memcg_data is not None:
        try:
            flags_mask = prog["__NR_MEMCG_DATA_FLAGS"].value_() - 1
            kmem = prog["MEMCG_DATA_KMEM"].value_()
        except KeyError as e:
            raise EnvironmentProblem(
                f"the kernel's type info has page->memcg_data but not {e.args[0]}: memtrace cannot read its flags"
            ) from None
    # Linux kernel commit 46df8e73a4a3 ("mm: free up PG_slab") (in v6.10) made slab a page
    # type; drgn's PageSlab reads the same VMCOREINFO number.
    vmcoreinfo = prog["VMCOREINFO"].string_()
    m = re.search(rb"^NUMBER\(PAGE_SLAB_MAPCOUNT_VALUE\)=(-?[0-9]+)$", vmcoreinfo, flags=re.M)
    if m:
        slab_test = ("mapcount", offsetof(page_t, "_mapcount"), int(m.group(1)) & 0xFFFFFFFF)
    else:
        slab_test = ("flag", 1 << prog["PG_slab"].value_())
    lay = PageLayout(
        page_size=page_size,
        page_shift=page_shift,
        sizeof_page=page_t.size,
        vmemmap_base=prog["vmemmap"].value_(),
        # a variable with CONFIG_RANDOMIZE_MEMORY (every Debian build); without it, x86-64's
        # compile-time __PAGE_OFFSET_BASE_L4 (arch/x86/include/asm/page_64_types.h)
        page_offset_base=prog["page_offset_base"].value_() if has_symbol(prog, "page_offset_base") else 0xFFFF888000000000,
        max_pfn=prog["max_pfn"].value_(),
        off_flags=offsetof(page_t, "flags"),
        off_compound_head=off_ch,
        off_memcg_data=off_memcg_data,
        memcg_data_flags_mask=flags_mask,
        memcg_data_kmem=kmem,
        slab_test=slab_test,
    )
    prog.cache["memtrace_page_layout"] = lay
    return lay


def has_symbol(prog: Program, name: str) -> bool:
    try:
        prog[name]
        return True
    except KeyError:
        return False


def compound_head_addr(prog: Program, page: int) -> int:
    """Head ``struct page *`` of ``page`` (itself when it is not a tail page)."""
    lay = page_layout(prog)
    ch = prog.read_u64(page + lay.off_compound_head)
    return ch - 1 if ch & 1 else page


def page_is_slab(prog: Program, head: int) -> bool:
    """PageSlab() of a head page, from raw memory."""
    lay = page_layout(prog)
    t = lay.slab_test
    if t[0] == "flag":
        return bool(prog.read_u64(head + lay.off_flags) & t[1])
    return prog.read_u32(head + t[1]) == t[2]


def page_compound_order(prog: Program, head: int) -> int:
    """Order of a head page (0 when it is not compound)."""
    from drgn import Object
    from drgn.helpers.linux.mm import compound_order

    return compound_order(Object(prog, "struct page *", head)).value_()


def page_kmem_objcg(prog: Program, page: int) -> int:
    """``struct obj_cgroup *`` a kmem page is charged to (``memcg_data`` with the KMEM
    bit, 5.15+), or 0 when it is not charged."""
    lay = page_layout(prog)
    if lay.off_memcg_data is None:
        return 0
    md = prog.read_u64(page + lay.off_memcg_data)
    if md & lay.memcg_data_kmem:
        return md & ~lay.memcg_data_flags_mask & 0xFFFFFFFFFFFFFFFF
    return 0

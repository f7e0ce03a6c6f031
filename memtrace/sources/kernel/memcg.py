"""Memory cgroups: enumeration (dying ones included), state, counters, objcgs, stocks.

* Enumeration: ``css_for_each_descendant_pre(&root_mem_cgroup->css)`` visits offline
  memcgs until ``css_release_work_fn`` unlinks them, so dying memcgs are included. The
  memcg id idr/xarray is not used: ids are dropped at offline.
* An objcg is reparented iff its percpu_ref was killed (``__PERCPU_REF_DEAD``): only
  ``memcg_reparent_objcgs`` kills it. Linux kernel commit bf4f059954dc ("mm: memcg/slab:
  obj_cgroup API") (in v5.9) introduced objcgs.
* ``memcg->orig_objcg`` survives reparenting (6.7+; Linux kernel commit e86828e5446d ("mm:
  kmem: make memcg keep a reference to the original objcg") (in v6.7)). It is how a
  reparented objcg finds the memcg it came from while that memcg is not yet freed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from drgn import Object, Program, cast, container_of
from drgn.helpers.linux.cgroup import cgroup_path, css_for_each_descendant_pre
from drgn.helpers.linux.cpumask import for_each_possible_cpu
from drgn.helpers.linux.list import list_for_each_entry
from drgn.helpers.linux.percpu import per_cpu



def kernel_constant(prog: Program, name: str) -> int:
    """An enumerator of the kernel (``CSS_ONLINE``, ``__PERCPU_REF_DEAD``, ...) read from its
    own type info, once per program: the values are the kernel's, not copied here."""
    cache = prog.cache.setdefault("memtrace_constants", {})
    if name not in cache:
        cache[name] = prog.constant(name).value_()
    return cache[name]

PAGE_COUNTER_MAX_PAGES = (1 << 63) - 1


def root_mem_cgroup(prog: Program) -> Object:
    """``struct mem_cgroup *`` of the root."""
    return prog["root_mem_cgroup"]


def memcg_for_each(prog: Program) -> Iterator[Object]:
    """Every ``struct mem_cgroup *``: the root, then descendants pre-order, offline
    (dying) ones included."""
    root = root_mem_cgroup(prog)
    for css in css_for_each_descendant_pre(root.css.address_of_()):
        yield container_of(css, "struct mem_cgroup", "css")


def memcg_cgroup_id(memcg: Object) -> int:
    """cgroup id (cgroup2 inode number, ``kn->id``) of a memcg's cgroup."""
    return memcg.css.cgroup.kn.id.value_()


def memcg_path(memcg: Object) -> str:
    """cgroup path of a memcg ("/" for the root). For a dying memcg this is its old path."""
    p = cgroup_path(memcg.css.cgroup).decode(errors="replace")
    return p or "/"


def memcg_is_online(memcg: Object) -> bool:
    return bool(memcg.css.flags.value_() & kernel_constant(memcg.prog_, "CSS_ONLINE"))


def memcg_populated(memcg: Object) -> bool:
    """Whether the memcg's cgroup (or a descendant) has tasks (``cgroup_is_populated``)."""
    cg = memcg.css.cgroup
    n = cg.nr_populated_csets.value_() + cg.nr_populated_domain_children.value_()
    try:
        n += cg.nr_populated_threaded_children.value_()
    except AttributeError:
        pass
    return n > 0


def memcg_usage_pages(memcg: Object) -> int:
    """``page_counter_read(&memcg->memory)``: memory.current in pages."""
    return memcg.memory.usage.counter.value_()


def memcg_max_pages(memcg: Object) -> int | None:
    """memory.max in pages, None for "max"."""
    v = memcg.memory.max.value_()
    return None if v >= PAGE_COUNTER_MAX_PAGES // memcg.prog_["PAGE_SIZE"].value_() else v


def memcg_high_pages(memcg: Object) -> int | None:
    """memory.high in pages, None for "max" (``memcg->memory.high``, a page_counter field on
    6.1 and 6.12)."""
    v = memcg.memory.high.value_()
    return None if v >= PAGE_COUNTER_MAX_PAGES // memcg.prog_["PAGE_SIZE"].value_() else v


#: memory.stat keys memtrace reads, and the kernel stat items they sum (enum node_stat_item
#: or enum memcg_stat_item names; the unit is in the name: _B bytes, _KB KiB, else pages)
MEMORY_STAT_ITEMS = {
    "anon": ("NR_ANON_MAPPED",),
    "file": ("NR_FILE_PAGES",),
    "kernel": ("MEMCG_KMEM",),
    "slab": ("NR_SLAB_RECLAIMABLE_B", "NR_SLAB_UNRECLAIMABLE_B"),
    "percpu": ("MEMCG_PERCPU_B",),
    "vmalloc": ("MEMCG_VMALLOC",),
    "sock": ("MEMCG_SOCK",),
    "shmem": ("NR_SHMEM",),
}


def memcg_stat_bytes(memcg: Object) -> dict[str, int]:
    """memory.stat's ``MEMORY_STAT_ITEMS`` in bytes, hierarchical (the memcg and its
    descendants), as last flushed by rstat: ``memcg->vmstats->state``. 6.1 indexes it by
    the stat item itself; 6.12 compacts the array and maps items through
    ``mem_cgroup_stats_index[]`` (feature-detected by that variable). Items the kernel
    lacks are left out."""
    layout = _stat_layout(memcg.prog_)
    state = memcg.vmstats.state
    out: dict[str, int] = {}
    for key, slots in layout.items():
        out[key] = sum(state[i].value_() * unit for i, unit in slots)
    return out


def _stat_layout(prog: Program) -> dict[str, list[tuple[int, int]]]:
    """memory.stat key -> [(index into vmstats->state, bytes per unit)], once per program (in
    the program's own cache: a module dict keyed by id(prog) handed a later program, of
    another kernel, the layout of a freed one that had the same id)."""
    if "memtrace_stat_layout" in prog.cache:
        return prog.cache["memtrace_stat_layout"]
    enum: dict[str, int] = {}
    for en in ("enum node_stat_item", "enum memcg_stat_item"):
        enum.update(dict(prog.type(en).enumerators))
    try:
        index = prog["mem_cgroup_stats_index"]  # 6.12: a compacted array
    except KeyError:
        index = None  # 6.1: indexed by the item
    size = prog.type("struct memcg_vmstats").member("state").type.length
    page = prog["PAGE_SIZE"].value_()
    layout: dict[str, list[tuple[int, int]]] = {}
    for key, items in MEMORY_STAT_ITEMS.items():
        slots = []
        for name in items:
            if name not in enum:
                continue
            i = enum[name] if index is None else index[enum[name]].value_()
            if i >= size:  # not tracked per memcg on this kernel
                continue
            slots.append((i, 1 if name.endswith("_B") else 1024 if name.endswith("_KB") else page))
        if slots:
            layout[key] = slots
    prog.cache["memtrace_stat_layout"] = layout
    return layout


def memcg_events(memcg: Object, local: bool = False) -> dict[str, int]:
    """memory.events (or memory.events.local) as {"low": n, "high": n, "max": n, ...}."""
    prog = memcg.prog_
    arr = memcg.memory_events_local if local else memcg.memory_events
    out = {}
    et = prog.type("enum memcg_memory_event")
    for name, value in et.enumerators:
        if name == "MEMCG_NR_MEMORY_EVENTS":
            continue
        out[name.removeprefix("MEMCG_").lower()] = arr[value].counter.value_()
    return out


def objcg_memcg(objcg: Object) -> Object:
    """``obj_cgroup_memcg()``: the memcg an objcg charges now (after reparenting: the
    nearest online ancestor)."""
    return objcg.memcg.read_()


def objcg_is_reparented(objcg: Object) -> bool:
    """Whether ``memcg_reparent_objcgs`` killed this objcg (its percpu_ref is DEAD)."""
    return bool(objcg.refcnt.percpu_count_ptr.value_() & kernel_constant(objcg.prog_, "__PERCPU_REF_DEAD"))


def memcg_objcg(memcg: Object) -> Object | None:
    """The memcg's live objcg (NULL once offline), or None when the kernel has none."""
    try:
        return memcg.objcg.read_()
    except AttributeError:
        return None


def memcg_orig_objcg(memcg: Object) -> Object | None:
    """``memcg->orig_objcg`` (6.7+), else None."""
    try:
        return memcg.orig_objcg.read_()
    except AttributeError:
        return None


def memcg_objcgs_for_each(memcg: Object) -> Iterator[Object]:
    """Every objcg that charges this memcg: its own plus the reparented ones on
    ``objcg_list``. An offline memcg has none: ``memcg_reparent_objcgs`` (5.9-7.0, at
    offline) moves its list to the parent with ``list_splice``, not ``list_splice_init``,
    so the dying memcg's head still points into the parent's list and a walk from it
    never comes back to it (seen on 6.1 and 6.12 with a dying memcg kept by tmpfs pages).
    7.1 keeps the objcgs per node (``nodeinfo[nid]``); this reads the 5.9-7.0 fields."""
    own = memcg_objcg(memcg)
    if own is not None and own.value_():
        yield own
    if not memcg.css.flags.value_() & kernel_constant(memcg.prog_, "CSS_ONLINE"):
        return
    try:
        head = memcg.objcg_list.address_of_()
    except AttributeError:
        return
    seen = set()
    me = memcg.value_()
    for o in list_for_each_entry("struct obj_cgroup", head, "list"):
        a = o.value_()
        if o.memcg.value_() != me:
            # offline under a live walk: the list was spliced into the parent's (objcg->memcg
            # is set to the parent before the splice), and CSS_ONLINE is cleared only after
            return
        if a in seen:  # a list changing under a live walk
            raise ValueError(f"objcg_list of memcg 0x{me:x} does not come back to its head")
        seen.add(a)
        yield o


@dataclass
class StockEntry:
    cpu: int
    cached_memcg: int  # struct mem_cgroup * whose pages are in the stock, 0 if none
    nr_pages: int
    cached_objcg: int  # struct obj_cgroup * of the byte stock, 0 if none
    nr_bytes: int


def memcg_stock_for_each(prog: Program) -> Iterator[StockEntry]:
    """The per-CPU charge stocks (``memcg_stock``). 5.x-7.0 layout: one cached memcg and
    one cached objcg per CPU. 7.1 (several cached memcgs, separate ``obj_stock``) is
    read from ``cached[]``/``nr_pages[]`` and ``obj_stock`` when those exist. A kernel
    without ``memcg_stock`` raises LookupError: its stocks are unknown, not zero."""
    try:
        var = prog["memcg_stock"]
    except KeyError:
        raise LookupError("the kernel has no memcg_stock variable") from None
    obj_var = None
    try:
        obj_var = prog["obj_stock"]
    except KeyError:
        pass
    for cpu in for_each_possible_cpu(prog):
        st = per_cpu(var, cpu)
        cached = st.cached
        nr = st.nr_pages
        if cached.type_.kind.name == "ARRAY":
            for i in range(len(cached)):
                yield StockEntry(cpu, cached[i].value_(), nr[i].value_(), 0, 0)
            cm, np_ = 0, 0
        else:
            cm, np_ = cached.value_(), nr.value_()
        ost = per_cpu(obj_var, cpu) if obj_var is not None else st
        try:
            co, nb = ost.cached_objcg.value_(), ost.nr_bytes.value_()
        except AttributeError:
            co, nb = 0, 0
        yield StockEntry(cpu, cm, np_, co, nb)


def cast_objcg(prog: Program, addr: int) -> Object:
    return cast("struct obj_cgroup *", Object(prog, "unsigned long", addr))

"""`memtrace snapshot` source: open a kernel with drgn and build the snapshot tables.

Targets: the running kernel (``/proc/kcore``), a vmcore (ELF), or a QEMU guest through
its QMP socket. Debug info comes from ``--vmlinux`` (checked against the kernel's
VMCOREINFO ``BUILD-ID``) or drgn's default search.

Live kernels change under the walk: every per-map and per-memcg step is guarded, drgn
faults are counted and reported, and the maps they touched are marked incomplete.
"""

from __future__ import annotations

import os
import stat
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from memtrace.errors import EnvironmentProblem, InputError
from memtrace.tables.snapshot import Snapshot, coerce

Progress = Callable[[str, int, int], None]

#: the running kernel's memory, for --live (a module constant so tests can point it elsewhere)
KCORE = Path("/proc/kcore")


# -- opening a target ------------------------------------------------------------------


def _check_elf_core(path: Path) -> None:
    """One-line InputError if ``path`` is not a readable, complete ELF core."""
    from memtrace.sources.elf import ET_CORE, ElfFile

    with ElfFile(
        path, what="vmcore",
        not_elf="not an ELF vmcore (kdump-compressed and flattened formats are not supported here)",
    ) as elf:
        if elf.e_type != ET_CORE:
            raise elf.error(f"ELF file is not a core dump (e_type {elf.e_type})")
        segments = elf.segments()
        if not segments:
            raise elf.error("ELF core has no program headers, so no memory to read")
        end = max(s.offset + s.filesz for s in segments)
        if end > elf.size:
            raise elf.error(f"truncated vmcore ({elf.size:,} bytes, its segments need {end:,})")


def _vmcoreinfo(prog) -> dict[str, str]:
    raw = prog["VMCOREINFO"].string_().decode(errors="replace")
    return dict(line.split("=", 1) for line in raw.splitlines() if "=" in line)


def open_target(
    *, live: bool = False, vmcore: Path | None = None, qmp: Path | None = None, vmlinux: Path | None = None
):
    """Return ``(prog, target)`` with debug info loaded; ``target`` describes it (dict)."""
    import drgn

    prog = drgn.Program()
    if live:
        kcore = KCORE
        if not kcore.exists():
            raise EnvironmentProblem(
                f"{kcore}: missing; this kernel (or container) has no /proc/kcore (CONFIG_PROC_KCORE, or /proc "
                "is masked), so --live cannot read it (use --vmcore FILE or --qmp SOCKET)"
            )
        if not os.access(kcore, os.R_OK):
            raise EnvironmentProblem(f"{kcore}: permission denied; live mode needs root (or use --vmcore FILE)")
        try:
            prog.set_kernel()
        except (OSError, ValueError) as e:
            raise EnvironmentProblem(f"{kcore}: cannot open the running kernel: {e}") from None
        target = {"kind": "live", "path": str(kcore)}
    elif vmcore is not None:
        vmcore = Path(vmcore)
        _check_elf_core(vmcore)
        try:
            prog.set_core_dump(str(vmcore))
        # the scope is one drgn call decoding the file: BadDataError (a VMCOREINFO BUILD-ID that
        # is not hex), OverflowError (a number in VMCOREINFO too large), and a plain Exception
        # for what libelf rejects ("libelf error: invalid ELF file data")
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{vmcore}: drgn cannot open it as a vmcore: {e}") from None
        target = {"kind": "vmcore", "path": str(vmcore)}
    elif qmp is not None:
        qmp = Path(qmp)
        try:
            mode = qmp.stat().st_mode
        except FileNotFoundError:
            raise InputError(f"{qmp}: no such QMP socket") from None
        except OSError as e:
            raise InputError(f"{qmp}: cannot stat the QMP socket: {e.strerror}") from None
        if not stat.S_ISSOCK(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode) else "a special file"
            raise InputError(f"{qmp}: is {kind}, not a socket; --qmp wants a QEMU QMP socket (-qmp unix:PATH,server)")
        try:
            prog.set_qemu_qmp(str(qmp))
        except (OSError, ValueError) as e:
            raise EnvironmentProblem(f"{qmp}: cannot attach to the QEMU guest: {e}") from None
        target = {"kind": "qmp", "path": str(qmp)}
    else:
        raise InputError("no target: pass --live, --vmcore FILE, --qmp SOCKET or --from FILE")
    try:
        info = _vmcoreinfo(prog)
    except (KeyError, LookupError, drgn.FaultError):
        raise InputError(f"{target['path']}: no VMCOREINFO; not a Linux kernel image drgn can read") from None
    release = info.get("OSRELEASE", "?")
    build_id = info.get("BUILD-ID")
    if vmlinux is not None:
        from memtrace.sources.elf import read_build_id

        vmlinux = Path(vmlinux)
        if not vmlinux.is_file():
            raise InputError(f"{vmlinux}: no such vmlinux")
        file_id = read_build_id(vmlinux)
        if build_id and file_id != build_id.lower():
            raise InputError(
                f"{vmlinux}: build id {file_id} does not match the kernel's {build_id} ({release}); pass the matching vmlinux"
            )
        try:
            prog.load_debug_info([str(vmlinux)])
        except drgn.MissingDebugInfoError as e:
            raise InputError(f"{vmlinux}: drgn could not use it: {str(e).splitlines()[0]}") from None
    else:
        try:
            prog.load_default_debug_info()
        except drgn.MissingDebugInfoError:
            try:
                prog["init_task"]
            except KeyError:
                raise EnvironmentProblem(
                    f"no debug info found for kernel {release} (build id {build_id}); pass --vmlinux FILE"
                ) from None
    target.update(kernel_release=release, build_id=build_id, vmlinux=str(vmlinux) if vmlinux else None)
    return prog, target


# -- the walk ------------------------------------------------------------------------------


def _nullable(v: int) -> int | None:
    return v if v else None


def take_snapshot(prog, target: dict, progress: Progress | None = None) -> Snapshot:
    """Walk every BPF map and memcg of ``prog`` and return the snapshot tables."""
    return _Walk(prog, target, progress).snapshot()


class _Walk:
    """One snapshot's walk, a method per kernel concept: memcgs, per-CPU stocks, maps (their
    owner and state, their memory), then the allocation table and the sums. Faults and
    notes collect here; ``snapshot()`` runs the steps in order."""

    def __init__(self, prog, target: dict, progress: Progress | None) -> None:
        import drgn

        from memtrace.sources.kernel import bpf as kbpf
        from memtrace.sources.kernel import memcg as kmemcg

        self.prog, self.target = prog, target
        self.kbpf, self.kmemcg = kbpf, kmemcg
        self.say = progress or (lambda stage, done, total: None)
        self.t0 = time.time()
        # live and qmp targets run on under the walk: memory freed meanwhile reads as garbage
        # (sizes, counts, pointers), which fails in more ways than a drgn fault; a vmcore
        # holds still, so there anything but a fault is a bug and is raised
        self.volatile = target["kind"] != "vmcore"
        self.read_errors: tuple = (drgn.FaultError,)
        if self.volatile:
            self.read_errors += (ValueError, OverflowError, MemoryError, IndexError, LookupError)
        self.faults = 0
        self.notes: list[str] = []
        self.page_size = prog["PAGE_SIZE"].value_()
        self.memcg_rows: dict[int, dict] = {}
        self.root_addr = kmemcg.root_mem_cgroup(prog).value_()
        self._objcg_memcg: dict[int, int] = {}
        self.walker = kbpf.MapMemoryWalker(prog)
        self.map_rows: list[dict] = []
        self.batches: list = []
        self.vanished = 0

    def snapshot(self) -> Snapshot:
        self.walk_memcgs()  # first: the maps refer to them
        self.add_stocks()
        self.walk_maps()
        alloc = self.allocations()
        self.memcg_states()
        return self.tables(alloc)

    # -- memcgs --------------------------------------------------------------------------

    def walk_memcgs(self) -> None:
        """One row per memcg (dying ones included): state flags, counters, limits, events,
        objcgs' pre-charged bytes and memory.stat."""
        prog, kmemcg, page_size = self.prog, self.kmemcg, self.page_size
        self.say("memcgs", 0, 0)
        try:
            for m in kmemcg.memcg_for_each(prog):
                try:
                    addr = m.value_()
                    flags = m.css.flags.value_()
                    online = bool(flags & kmemcg.kernel_constant(prog, "CSS_ONLINE"))
                    ev = kmemcg.memcg_events(m)
                    mx = kmemcg.memcg_max_pages(m)
                    hi = kmemcg.memcg_high_pages(m)
                    oc = kmemcg.memcg_objcg(m)
                    orig = kmemcg.memcg_orig_objcg(m)
                    charged = 0
                    for o in kmemcg.memcg_objcgs_for_each(m):
                        charged += o.nr_charged_bytes.counter.value_()
                    self.memcg_rows[addr] = {
                        "cgroup_id": kmemcg.memcg_cgroup_id(m),
                        "path": kmemcg.memcg_path(m),
                        "memcg_address": addr,
                        "css_flags": flags,
                        "online": online,
                        "dying": (not online or bool(flags & kmemcg.kernel_constant(prog, "CSS_DYING")))
                        and not flags & kmemcg.kernel_constant(prog, "CSS_RELEASED"),
                        "populated": kmemcg.memcg_populated(m),
                        "memory_current_bytes": kmemcg.memcg_usage_pages(m) * page_size,
                        "memory_max_bytes": None if mx is None else mx * page_size,
                        "memory_high_bytes": None if hi is None else hi * page_size,
                        "events_max": ev.get("max", 0),
                        "events_oom": ev.get("oom", 0),
                        "events_oom_kill": ev.get("oom_kill", 0),
                        "events_high": ev.get("high", 0),
                        "objcg": _nullable(oc.value_()) if oc is not None else None,
                        "orig_objcg": _nullable(orig.value_()) if orig is not None else None,
                        "stock_bytes": 0,
                        "obj_stock_bytes": 0,
                        "objcg_charged_bytes": charged,
                        "bpf_bytes": 0,
                        "bpf_maps_owned": 0,
                        **{f"stat_{k}_bytes": v for k, v in kmemcg.memcg_stat_bytes(m).items()},
                    }
                except self.read_errors:
                    self.faults += 1
        except self.read_errors:
            self.faults += 1
            self.notes.append("the memcg tree walk faulted; memcgs may be missing")

    def objcg_to_memcg(self, objcg: int) -> int:
        """``objcg->memcg`` (0 when it cannot be read), once per objcg."""
        if objcg not in self._objcg_memcg:
            try:
                self._objcg_memcg[objcg] = self.kmemcg.cast_objcg(self.prog, objcg).memcg.value_()
            except self.read_errors:
                self._objcg_memcg[objcg] = 0
        return self._objcg_memcg[objcg]

    def memcg_id(self, memcg: int) -> int | None:
        """The cgroup id of a memcg address (None for NULL or unreadable)."""
        from drgn import Object

        if not memcg:
            return None
        row = self.memcg_rows.get(memcg)
        if row:
            return row["cgroup_id"]
        try:
            return self.kmemcg.memcg_cgroup_id(Object(self.prog, "struct mem_cgroup *", memcg))
        except self.read_errors:
            return None

    def add_stocks(self) -> None:
        """Pages and bytes pre-charged in the per-CPU stocks, to the memcg they belong to."""
        try:
            for s in self.kmemcg.memcg_stock_for_each(self.prog):
                if s.cached_memcg in self.memcg_rows:
                    self.memcg_rows[s.cached_memcg]["stock_bytes"] += s.nr_pages * self.page_size
                if s.cached_objcg:
                    mc = self.objcg_to_memcg(s.cached_objcg)
                    if mc in self.memcg_rows:
                        self.memcg_rows[mc]["obj_stock_bytes"] += s.nr_bytes
        except self.read_errors:
            self.faults += 1
            self.notes.append("reading the per-CPU charge stocks faulted; stock bytes may be missing")
        except LookupError as e:
            self.notes.append(f"per-CPU charge stocks unknown ({e}): stock_bytes and obj_stock_bytes are 0, not measured")

    def memcg_states(self) -> None:
        """root | dying | ghost (online, unpopulated, holds BPF charges) | online."""
        for addr, r in self.memcg_rows.items():
            if addr == self.root_addr:
                r["state"] = "root"
            elif not r["online"]:
                r["state"] = "dying"
            elif not r["populated"] and r["bpf_bytes"] > 0:
                r["state"] = "ghost"
            else:
                r["state"] = "online"

    # -- maps ------------------------------------------------------------------------------

    def walk_maps(self) -> None:
        """Every map in map_idr: its row (owner, state, pins, memlock) and its memory batches."""
        prog, kbpf = self.prog, self.kbpf
        self.say("pins", 0, 0)
        try:
            pins = kbpf.bpf_map_pins(prog)
        except self.read_errors:
            self.faults += 1
            pins = {}
            self.notes.append("reading bpffs pins faulted; pins may be missing")
        maps = []
        try:
            for m in kbpf.bpf_maps(prog):  # keep what was listed before a fault
                maps.append(m)
        except self.read_errors:
            self.faults += 1
            self.notes.append("walking map_idr faulted; maps may be missing")
        for i, m in enumerate(maps):
            self.say("maps", i, len(maps))
            self._walk_map(m, pins)
        self.say("maps", len(maps), len(maps))

    def _walk_map(self, m, pins: dict) -> None:
        prog, kbpf, walker, stats = self.prog, self.kbpf, self.walker, self.walker.stats
        addr = m.value_()  # the pointer map_idr gave; reading through it may not work by now
        complete = True
        map_faults = 0  # counted once the map is known to be still there
        mid = None
        row = None
        map_batches: list = []
        before = stats.truncated_chains
        faults_before = stats.faults  # faults the walker caught and walked past
        notes_before = len(stats.notes)
        owner_memcg = orig_memcg = 0
        state = "none"
        try:
            mid = m.id.value_()
            try:
                map_batches = walker.walk(m)
            except self.read_errors:
                map_faults += 1
                complete = False
                walker.forget_map(mid)  # its batches are lost: what it claimed is free for later maps
            if stats.truncated_chains != before or stats.faults != faults_before:
                complete = False
            kind, owner = kbpf.bpf_map_owner(m)
            row = {
                "map_id": mid,
                "name": m.name.string_().decode(errors="replace"),
                "type": kbpf.bpf_map_type_name(m),
                "flags": m.map_flags.value_(),
                "key_size": m.key_size.value_(),
                "value_size": m.value_size.value_(),
                "max_entries": m.max_entries.value_(),
                "pins": ";".join(pins.get(addr, [])),
                "map_address": addr,
                "owner_kind": kind,
                "owner_objcg": _nullable(owner) if kind == "objcg" else None,
            }
            try:
                row["mem_usage_bytes"] = kbpf.bpf_map_mem_usage(m)
                row["memlock_bytes"] = kbpf.bpf_map_memlock(m)
            except self.read_errors:
                map_faults += 1
                row["mem_usage_bytes"] = row["memlock_bytes"] = None
            state, owner_memcg, orig_memcg, owner_complete = self._owner(kind, owner)
            if not owner_complete:
                map_faults += 1
                complete = False
        except self.read_errors:
            row = None
        # A map freed under the walk (it left map_idr) was read as garbage, or as whatever
        # reused its memory: leave it out, and count it, whatever the reads gave.
        if self.volatile and mid is not None:
            try:
                listed = kbpf.bpf_map_listed(prog, mid, addr)
            except self.read_errors:
                map_faults += 1
                listed, complete = True, False
            if not listed:
                # its garbage reads are no cut chains or unknown areas: it is just gone
                stats.truncated_chains = before
                stats.faults = faults_before
                del stats.notes[notes_before:]
                walker.forget_map(mid)
                self.vanished += 1
                self.notes.append(f"a map at {addr:#x} (read as id {mid}) was freed during the walk; left out")
                return
        self.faults += map_faults
        if row is None:
            self.faults += 1
            self.notes.append(f"map at {addr:#x} could not be read")
            return
        self.batches += map_batches
        rows = self.memcg_rows
        if owner_memcg in rows:
            rows[owner_memcg]["bpf_maps_owned"] += 1
        row.update(
            owner_cgroup_id=self.memcg_id(owner_memcg),
            owner_path=rows[owner_memcg]["path"] if owner_memcg in rows else None,
            owner_state=state,
            original_cgroup_id=self.memcg_id(orig_memcg),
            original_path=rows[orig_memcg]["path"] if orig_memcg in rows else None,
            complete=complete,
        )
        self.map_rows.append(row)

    def _owner(self, kind: str, owner: int) -> tuple[str, int, int, bool]:
        """(owner state, memcg charged now, original memcg, read completely) of a map whose
        ``map->objcg`` (6.0+) or ``map->memcg`` (5.11-5.19) is ``owner``."""
        state, owner_memcg, orig_memcg, ok = "none", 0, 0, True
        if kind == "objcg" and owner:
            try:
                oc = self.kmemcg.cast_objcg(self.prog, owner)
                owner_memcg = oc.memcg.value_()
                if self.kmemcg.objcg_is_reparented(oc):
                    state = "reparented"
                    # 6.7+: a not yet freed memcg's orig_objcg still names the objcg
                    for maddr, r in self.memcg_rows.items():
                        if r["orig_objcg"] == owner:
                            orig_memcg = maddr
                            break
                else:
                    orig_memcg = owner_memcg
            except self.read_errors:
                ok = False
        elif kind == "memcg" and owner:
            owner_memcg = orig_memcg = owner
        if owner_memcg and state == "none":
            r = self.memcg_rows.get(owner_memcg)
            if r is None or not r["online"]:
                state = "dying"
            elif not r["populated"] and owner_memcg != self.root_addr:
                state = "ghost"
            else:
                state = "online"
        return state, owner_memcg, orig_memcg, ok

    # -- tables ----------------------------------------------------------------------------

    def allocations(self) -> pd.DataFrame:
        """The allocation table from the maps' batches: what each charge costs, and the
        cgroup each is charged to now; adds the BPF bytes to the memcg rows."""
        from memtrace.sources.kernel.percpu import pcpu_obj_full_size
        from memtrace.sources.kernel.slab import obj_full_size

        prog, batches, ncpu = self.prog, self.batches, self.walker.ncpu
        if batches:
            alloc = pd.DataFrame(
                {
                    "map_id": np.concatenate([np.full(len(b), b.map_id, dtype=np.int64) for b in batches]),
                    "role": np.concatenate([np.full(len(b), b.role, dtype=object) for b in batches]),
                    "kind": np.concatenate([b.kind for b in batches]).astype(str),
                    "address": np.concatenate([b.address for b in batches]).astype(np.uint64),
                    "size_bytes": np.concatenate([b.size for b in batches]).astype(np.int64),
                    "objcg": np.concatenate([b.objcg for b in batches]).astype(np.uint64),
                    "slab_cache": np.concatenate([b.cache for b in batches]),
                }
            )
        else:
            alloc = pd.DataFrame(
                {k: pd.Series([], dtype=t) for k, t in [("map_id", "int64"), ("role", object), ("kind", object), ("address", "uint64"), ("size_bytes", "int64"), ("objcg", "uint64"), ("slab_cache", object)]}
            )
        charged = alloc["objcg"].to_numpy() != 0
        k = alloc["kind"].to_numpy()
        sz = alloc["size_bytes"].to_numpy()
        is_slab = k == "slab_object"
        is_pcpu = k == "percpu"
        full = np.where(is_slab, obj_full_size(prog, sz), np.where(is_pcpu, pcpu_obj_full_size(prog, sz, ncpu), sz))
        alloc["charged_bytes"] = np.where(charged, full, 0).astype(np.int64)
        alloc["size_bytes"] = np.where(is_pcpu, sz * ncpu, sz).astype(np.int64)
        uniq = np.unique(alloc["objcg"].to_numpy()[charged])
        oc2memcg = {int(o): self.objcg_to_memcg(int(o)) for o in uniq}
        oc2id = {o: self.memcg_id(mc) for o, mc in oc2memcg.items()}
        oc_np = alloc["objcg"].to_numpy()
        alloc["charged_cgroup_id"] = _map_nullable(oc_np, oc2id)
        alloc["objcg"] = pd.arrays.IntegerArray(oc_np.astype(np.uint64), ~charged)
        alloc["slab_cache"] = alloc["slab_cache"].where(alloc["slab_cache"] != "", None)
        alloc = coerce("allocations", alloc)
        # per-memcg and per-map sums
        by_oc = pd.Series(alloc["charged_bytes"].to_numpy()[charged]).groupby(oc_np[charged]).sum()
        for o, total in by_oc.items():
            mc = oc2memcg.get(int(o))
            if mc in self.memcg_rows:
                self.memcg_rows[mc]["bpf_bytes"] += int(total)
        per_map = alloc.groupby("map_id").agg(
            charged_bytes=("charged_bytes", "sum"), size_bytes=("size_bytes", "sum"), allocations=("address", "size")
        )
        unch = alloc[alloc["charged_bytes"] == 0].groupby("map_id")["size_bytes"].sum()
        for row in self.map_rows:
            mid = row["map_id"]
            row["charged_bytes"] = int(per_map["charged_bytes"].get(mid, 0))
            row["uncharged_bytes"] = int(unch.get(mid, 0))
            row["allocations"] = int(per_map["allocations"].get(mid, 0))
        return alloc

    def tables(self, alloc: pd.DataFrame) -> Snapshot:
        from memtrace.tables.snapshot import frame

        maps_df = frame("maps", self.map_rows)
        memcgs_df = frame("memcgs", list(self.memcg_rows.values()))
        stats = self.walker.stats
        # faults counts every reason the snapshot is incomplete: reads that failed, chains cut
        # short, maps freed under the walk (so exit 5 comes with a nonzero count, always)
        faults = self.faults + stats.faults + stats.truncated_chains + self.vanished
        notes = self.notes + stats.notes
        if stats.truncated_chains:
            notes.append(f"{stats.truncated_chains} list/chain walks were cut (loop or live change)")
        t = self.target
        header = {
            "kernel": {"release": t.get("kernel_release"), "build_id": t.get("build_id"), "vmlinux": t.get("vmlinux")},
            "target": {"kind": t["kind"], "path": t["path"]},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "walk_s": round(time.time() - self.t0, 3),
            "faults": faults,
            "complete": faults == 0 and bool(maps_df["complete"].all() if len(maps_df) else True),
            "page_size": self.page_size,
            "possible_cpus": self.walker.ncpu,
            "notes": notes,
        }
        return Snapshot(header=header, maps=maps_df, allocations=alloc, memcgs=memcgs_df)


def _map_nullable(objcgs: np.ndarray, oc2id: dict) -> pd.arrays.IntegerArray:
    """objcg -> cgroup id, vectorised: NULL for 0 or unknown."""
    out = np.zeros(len(objcgs), dtype=np.int64)
    mask = np.ones(len(objcgs), dtype=bool)
    for o, cid in oc2id.items():
        if cid is None:
            continue
        sel = objcgs == np.uint64(o)
        out[sel] = cid
        mask[sel] = False
    return pd.arrays.IntegerArray(out, mask)

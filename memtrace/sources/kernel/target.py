"""What a kernel lets a tracer do, found from the kernel itself: a vmlinux, a BTF file, or a
live host's tracefs.

* traceable functions: ``available_filter_functions`` on a live host; for a vmlinux, the
  functions that own an ``__fentry__`` call site listed between ``__start_mcount_loc`` and
  ``__stop_mcount_loc``. Debian's kernels set ``CONFIG_DYNAMIC_FTRACE=y`` without
  ``CONFIG_KPROBE_EVENTS_ON_NOTRACE``, so trace_kprobe refuses ("Could not probe notrace
  function") any function outside that set.
* probe-event features, read from the tracefs README text (on a live host the file; in a
  vmlinux the same string in ``.rodata``): BTF-typed arguments ("<argname>[->field...",
  CONFIG_PROBE_EVENTS_BTF_ARGS, upstream v6.6 with member access; Debian 6.12 has it, 6.1
  does not) and entry arguments at return probes ("kernel return probes support: $retval,
  $arg<N>", about v6.9).
* tracepoints: ``events/<system>/<event>`` on a live host; ``__tracepoint_<event>`` symbols in
  a vmlinux.
"""

from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from memtrace.errors import EnvironmentProblem, InputError
from memtrace.sources.elf import SHT_NOBITS, ElfFile
from memtrace.sources.kernel.typeinfo import BtfTypes, DwarfTypes, TypeInfo

README_BTF_ARGS = b"<argname>[->field"
README_RETPROBE_ARGS = b"kernel return probes support: $retval, $arg<N>"
README_KPROBES = b"place: [<module>:]<symbol>"


@dataclass
class KernelTarget:
    """The kernel probes are generated for."""

    description: str
    types: TypeInfo
    #: function names that ftrace (and so trace_kprobe) can attach to; None = unknown
    traceable: set[str] | None
    traceable_source: str
    #: probe-event features; None = unknown (treated as absent)
    btf_args: bool | None = None
    retprobe_args: bool | None = None
    kprobe_events: bool | None = None
    #: "system:event" (live) or bare event names (vmlinux symbols); None = unknown
    tracepoints: set[str] | None = None
    release: str | None = None
    notes: list[str] = field(default_factory=list)

    def has_tracepoint(self, system: str, event: str) -> bool | None:
        if self.tracepoints is None:
            return None
        return f"{system}:{event}" in self.tracepoints or event in self.tracepoints

    def clones_of(self, func: str) -> list[str]:
        if not self.traceable:
            return []
        return sorted(f for f in self.traceable if f.startswith(func + "."))


# -- vmlinux ------------------------------------------------------------------------------


def _symbols(elf: ElfFile) -> tuple[list[tuple[int, int, str]], dict[str, int]]:
    """(sorted function symbols (addr, size, name), all symbol name -> addr) from .symtab."""
    symtab, strtab = elf.section_data(".symtab"), elf.section_data(".strtab")
    if symtab is None or strtab is None:
        raise elf.error("vmlinux has no .symtab (stripped?)")
    funcs = []
    addrs: dict[str, int] = {}
    n = len(symtab) // 24
    for i, (name_off, info, _other, _shndx, value, size) in enumerate(struct.iter_unpack("<IBBHQQ", symtab[: n * 24])):
        if not name_off:
            continue
        j = strtab.find(b"\0", name_off) if name_off < len(strtab) else -1
        if j < 0:
            raise elf.error(f"bad .symtab: symbol {i}'s name (offset {name_off}) is outside .strtab")
        name = strtab[name_off:j].decode(errors="replace")
        addrs.setdefault(name, value)
        if info & 0xF == 2:  # STT_FUNC
            funcs.append((value, size, name))
    funcs.sort()
    return funcs, addrs


def _read_va(elf: ElfFile, va: int, size: int) -> bytes:
    for s in elf.sections():
        if s.type != SHT_NOBITS and s.addr and s.addr <= va and va + size <= s.addr + s.size:
            return elf.bytes_at(s.offset + va - s.addr, size, f"{size:,} bytes at address {va:#x} in section {s.name}")
    raise elf.error(f"vmlinux: address {va:#x} is in no section with file contents")


def vmlinux_target(vmlinux: str | Path, *, use_dwarf: bool = True) -> KernelTarget:
    """Everything probe generation needs, from a vmlinux with symbols (+ DWARF and/or BTF)."""
    path = Path(vmlinux)
    with ElfFile(path, what="vmlinux") as elf:
        sections = elf.sections()
        funcs, addrs = _symbols(elf)
        traceable = _fentry_functions(elf, funcs, addrs)
        ro = elf.section_data(".rodata") or b""
        btf_data = elf.section_data(".BTF")
        btf = BtfTypes(btf_data, f"BTF section of {path}") if btf_data is not None else None
        del btf_data
        release = _banner_release(ro)
        has_dwarf = any(s.name == ".debug_info" for s in sections)
    types: TypeInfo
    notes = []
    if use_dwarf and has_dwarf:
        types = DwarfTypes(path, btf=btf, release=release, swapper_pg_dir=addrs.get("swapper_pg_dir"))
    elif btf is not None:
        types = btf
        if use_dwarf:
            notes.append("no DWARF in the vmlinux; offsets from its .BTF section")
    else:
        raise InputError(f"{path}: neither DWARF nor BTF: cannot compute offsets")
    tps = {name.removeprefix("__tracepoint_") for name in addrs if name.startswith("__tracepoint_")}
    return KernelTarget(
        description=f"vmlinux {path}",
        types=types,
        traceable=traceable,
        traceable_source="__fentry__ call sites in __mcount_loc",
        btf_args=README_BTF_ARGS in ro and btf is not None,
        retprobe_args=README_RETPROBE_ARGS in ro,
        kprobe_events=README_KPROBES in ro,
        tracepoints=tps,
        release=release,
        notes=notes,
    )


def _banner_release(rodata: bytes) -> str | None:
    i = rodata.find(b"Linux version ")
    if i < 0:
        return None
    return rodata[i + 14 : rodata.index(b" ", i + 14)].decode(errors="replace")


def _fentry_functions(elf: ElfFile, funcs, addrs) -> set[str]:
    start, stop = addrs.get("__start_mcount_loc"), addrs.get("__stop_mcount_loc")
    if start is None or stop is None:
        raise elf.error("vmlinux has no __start_mcount_loc/__stop_mcount_loc (built without CONFIG_DYNAMIC_FTRACE?)")
    if stop < start or (stop - start) % 8:
        raise elf.error(f"vmlinux: __mcount_loc runs from {start:#x} to {stop:#x}, not a list of addresses")
    sites = [a for (a,) in struct.iter_unpack("<Q", _read_va(elf, start, stop - start))]
    starts = [f[0] for f in funcs]
    out = set()
    for site in sites:
        i = bisect.bisect_right(starts, site) - 1
        # several symbols may share an address (aliases); take every one that covers the site
        j = i
        while j >= 0 and funcs[j][0] == funcs[i][0]:
            addr, size, name = funcs[j]
            if addr <= site < addr + max(size, 1):
                out.add(name)
            j -= 1
    if not out:
        raise elf.error("vmlinux: __mcount_loc lists no sites inside functions (relocations not applied?)")
    return out


# -- a BTF file alone ---------------------------------------------------------------------


def btf_target(btf_file: str | Path) -> KernelTarget:
    """Offsets from a BTF file; traceability and probe features unknown (nothing to read them from)."""
    types = BtfTypes.from_file(btf_file)
    return KernelTarget(
        description=types.source,
        types=types,
        traceable=None,
        traceable_source="unknown (a BTF file does not say which functions have an __fentry__ site); "
        "install failures are reported per probe",
        btf_args=None,
        retprobe_args=None,
        tracepoints=None,
        notes=["BTF-typed args not used: a BTF file cannot tell whether the kernel's tracefs supports them"],
    )


# -- a live host ---------------------------------------------------------------------------

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def find_tracefs(explicit: str | Path | None = None) -> Path:
    """The mounted tracefs: ``explicit``, else from /proc/mounts, else the usual paths."""
    if explicit is not None:
        p = Path(explicit)
        if not (p / "events").is_dir():
            raise EnvironmentProblem(f"{p}: not a tracefs mount (no events/)")
        return p
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "tracefs" and (Path(parts[1]) / "events").is_dir():
                    if parts[1] in TRACEFS_CANDIDATES:
                        return Path(parts[1])
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "tracefs" and (Path(parts[1]) / "events").is_dir():
                    return Path(parts[1])
    except OSError:
        pass
    for c in TRACEFS_CANDIDATES:
        if (Path(c) / "events").is_dir():
            return Path(c)
    raise EnvironmentProblem(
        "no tracefs mounted; mount it with: mount -t tracefs nodev /sys/kernel/tracing (needs root)"
    )


def live_target(tracefs: str | Path | None = None, btf_file: str | Path = "/sys/kernel/btf/vmlinux") -> KernelTarget:
    """The running kernel: BTF from sysfs, traceability and features from tracefs."""
    t = find_tracefs(tracefs)
    if not Path(btf_file).exists():
        raise EnvironmentProblem(f"{btf_file}: missing; the running kernel has no BTF (CONFIG_DEBUG_INFO_BTF)")
    types = BtfTypes.from_file(btf_file)
    try:
        readme = (t / "README").read_bytes()
    except OSError as e:
        raise EnvironmentProblem(f"{t}/README: {e.strerror}; live probe generation needs root") from None
    traceable = None
    source = f"unknown ({t}/available_filter_functions unreadable)"
    try:
        with open(t / "available_filter_functions") as f:
            traceable = {line.split()[0] for line in f if line.strip()}
        source = f"{t}/available_filter_functions"
    except OSError:
        pass
    tps = set()
    ev = t / "events"
    for sysdir in ev.iterdir():
        if sysdir.is_dir():
            for e in sysdir.iterdir():
                if e.is_dir():
                    tps.add(f"{sysdir.name}:{e.name}")
    return KernelTarget(
        description=f"live kernel {os.uname().release}",
        types=types,
        traceable=traceable,
        traceable_source=source,
        btf_args=README_BTF_ARGS in readme,
        retprobe_args=README_RETPROBE_ARGS in readme,
        kprobe_events=(t / "kprobe_events").exists(),
        tracepoints=tps,
        release=os.uname().release,
    )

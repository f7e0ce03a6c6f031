"""The kernel's own type information: struct member offsets and function parameters.

Two independent channels, same small interface (:class:`TypeInfo`):

* :class:`BtfTypes`: a small pure-Python reader of BTF, from ``/sys/kernel/btf/vmlinux``
  (a live host), a raw ``.btf`` file, or the ``.BTF`` section of a vmlinux.
* :class:`DwarfTypes`: drgn over the DWARF of a vmlinux (``-dbg`` packages).

Offsets are never copied from tables: every number a probe uses is read here from the
kernel it is meant for. Tests compare the two channels against each other and against
``bpftool btf dump``.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from memtrace.errors import InputError

# -- a C type, reduced to what fetch-args need -------------------------------------------


@dataclass(frozen=True)
class CType:
    """kind: int, bool, enum, ptr, struct, union, array, func, void, other."""

    kind: str
    name: str = ""
    size: int = 0
    signed: bool = False
    #: for ptr/array: the pointee / element type (resolved lazily by the owner)
    target: object = None

    def fetch_type(self) -> str:
        """The kprobe fetch type that prints this value faithfully."""
        if self.kind == "ptr":
            return "x64"
        if self.kind in ("int", "enum", "bool") and self.size in (1, 2, 4, 8):
            return f"{'s' if self.signed else 'u'}{self.size * 8}"
        raise InputError(f"no kprobe fetch type for a {self.kind} {self.name!r} of {self.size} bytes")


class TypeInfo:
    """What probe generation asks of a kernel's type information."""

    #: where the information came from, for reports ("BTF /sys/kernel/btf/vmlinux", "DWARF vmlinux")
    source: str = ""

    def struct_type(self, name: str):  # -> opaque handle
        raise NotImplementedError

    def member(self, struct_handle, member: str) -> tuple[int, object]:
        """(byte offset, member type handle) of ``member`` (one name, anonymous members searched)."""
        raise NotImplementedError

    def ctype(self, handle) -> CType:
        raise NotImplementedError

    def pointee(self, handle):
        """The type a pointer handle points to (typedefs and qualifiers stripped)."""
        raise NotImplementedError

    def func_params(self, name: str) -> list[tuple[str, object]] | None:
        """Parameter (name, type handle) list of function ``name``, or None if unknown."""
        raise NotImplementedError

    def enum_value(self, name: str) -> int:
        raise NotImplementedError

    def has_func_record(self, name: str) -> bool:
        """True if the kernel's BTF has a FUNC record (needed for BTF-typed probe args)."""
        raise NotImplementedError

    # convenience
    def offsetof(self, struct_name: str, path: str) -> int:
        """offsetof(struct struct_name, a.b.c)."""
        h = self.struct_type(struct_name)
        total = 0
        for part in path.split("."):
            off, h = self.member(h, part)
            total += off
        return total


# -- BTF ----------------------------------------------------------------------------------

BTF_MAGIC = 0xEB9F
(K_INT, K_PTR, K_ARRAY, K_STRUCT, K_UNION, K_ENUM, K_FWD, K_TYPEDEF, K_VOLATILE, K_CONST, K_RESTRICT,
 K_FUNC, K_FUNC_PROTO, K_VAR, K_DATASEC, K_FLOAT, K_DECL_TAG, K_TYPE_TAG, K_ENUM64) = range(1, 20)
_QUALS = (K_TYPEDEF, K_VOLATILE, K_CONST, K_RESTRICT, K_TYPE_TAG)


@dataclass
class _BtfType:
    kind: int
    name: str
    size_or_type: int
    vlen: int
    kflag: bool
    extra: object = None  # int encoding / members / params / enum values / array


#: bytes after the 12-byte common header: (fixed, per vlen item); kinds not listed are unknown
_BTF_EXTRA = {
    K_INT: (4, 0), K_PTR: (0, 0), K_ARRAY: (12, 0), K_STRUCT: (0, 12), K_UNION: (0, 12), K_ENUM: (0, 8),
    K_FWD: (0, 0), K_TYPEDEF: (0, 0), K_VOLATILE: (0, 0), K_CONST: (0, 0), K_RESTRICT: (0, 0), K_FUNC: (0, 0),
    K_FUNC_PROTO: (0, 8), K_VAR: (4, 0), K_DATASEC: (0, 12), K_FLOAT: (0, 0), K_DECL_TAG: (4, 0),
    K_TYPE_TAG: (0, 0), K_ENUM64: (0, 12),
}

#: kinds whose size_or_type is a type id
_REFERS = frozenset((K_PTR, K_TYPEDEF, K_VOLATILE, K_CONST, K_RESTRICT, K_FUNC, K_TYPE_TAG))


class BtfTypes(TypeInfo):
    """A minimal BTF reader (the kernel's ``include/uapi/linux/btf.h`` format, little-endian).

    Every offset is checked: a cut or corrupt BTF blob is an InputError naming ``source`` and
    the byte offset where it went wrong, not an IndexError or struct.error."""

    def __init__(self, data: bytes, source: str):
        self.source = source
        mv = memoryview(data)
        size = len(mv)
        if size == 0:
            raise InputError(f"{source}: empty file, not BTF")
        if size < 2:
            raise InputError(f"{source}: not BTF (1 byte)")
        magic = struct.unpack_from("<H", mv, 0)[0]
        if magic != BTF_MAGIC:
            raise InputError(f"{source}: not BTF (magic {magic:#x} at offset 0, want {BTF_MAGIC:#x})")
        if size < 24:
            raise InputError(f"{source}: truncated BTF: {size} bytes, the header needs 24")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", mv, 0)
        if hdr_len < 24 or hdr_len > size:
            raise InputError(f"{source}: corrupt BTF header: header length {hdr_len} (file {size} bytes)")
        for what, off, ln in (("type", type_off, type_len), ("string", str_off, str_len)):
            if hdr_len + off + ln > size:
                raise InputError(
                    f"{source}: truncated BTF: the {what} section at offset {hdr_len + off:#x} ({ln:,} bytes) "
                    f"ends past the end of the data ({size:,} bytes)"
                )
        strs = bytes(mv[hdr_len + str_off : hdr_len + str_off + str_len])
        nstrs = len(strs)
        self._strs = strs
        types: list[_BtfType | None] = [None]  # id 0 is void
        p = hdr_len + type_off
        end = p + type_len
        u = struct.unpack_from
        extra_of = _BTF_EXTRA
        # the largest type id any record refers to, and that record (id, offset): checked at the end
        max_ref, max_ref_at = 0, (0, 0)
        while p < end:
            at = p
            if p + 12 > end:
                raise InputError(f"{source}: truncated BTF: type {len(types)} at offset {at:#x} is cut off by the end of the type section ({end:#x})")
            name_off, info, st = u("<III", mv, p)
            p += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kflag = bool(info >> 31)
            extra_len = extra_of.get(kind)
            if extra_len is None:
                raise InputError(f"{source}: unknown BTF kind {kind} at type {len(types)} (offset {at:#x})")
            need = extra_len[0] + extra_len[1] * vlen
            if p + need > end:
                raise InputError(
                    f"{source}: truncated BTF: type {len(types)} (kind {kind}) at offset {at:#x} needs {12 + need} bytes, "
                    f"the type section ends at {end:#x}"
                )
            j = strs.find(b"\0", name_off) if name_off < nstrs else -1
            if j < 0:
                raise InputError(
                    f"{source}: corrupt BTF: type {len(types)} at offset {at:#x} has name offset {name_off}, "
                    f"outside the string section ({nstrs:,} bytes)"
                )
            t = _BtfType(kind, strs[name_off:j].decode(errors="replace"), st, vlen, kflag)
            ref = 0
            if kind == K_INT:
                t.extra = u("<I", mv, p)[0]
            elif kind == K_ARRAY:
                t.extra = u("<III", mv, p)
                ref = max(t.extra[0], t.extra[1])
            elif kind in (K_STRUCT, K_UNION):
                t.extra = [u("<III", mv, p + 12 * i) for i in range(vlen)]
                if vlen:
                    ref = max(m[1] for m in t.extra)
            elif kind == K_ENUM:
                t.extra = [u("<Ii", mv, p + 8 * i) for i in range(vlen)]
            elif kind == K_ENUM64:
                t.extra = [(a, b | (c << 32)) for a, b, c in (u("<III", mv, p + 12 * i) for i in range(vlen))]
            elif kind == K_FUNC_PROTO:
                t.extra = [u("<II", mv, p + 8 * i) for i in range(vlen)]
                ref = max(st, *(a[1] for a in t.extra)) if vlen else st
            elif kind in _REFERS:
                ref = st
            if ref > max_ref:
                max_ref, max_ref_at = ref, (len(types), at)
            p += need
            types.append(t)
        if max_ref >= len(types):
            raise InputError(
                f"{source}: corrupt BTF: type {max_ref_at[0]} at offset {max_ref_at[1]:#x} refers to type {max_ref}, "
                f"but there are {len(types) - 1} types"
            )
        self._types = types
        self._by_name: dict[tuple[int, str], int] = {}
        for i, t in enumerate(types):
            if t is not None and t.name:
                self._by_name.setdefault((t.kind, t.name), i)
        self._enums: dict[str, int] | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> "BtfTypes":
        """Raw BTF (``/sys/kernel/btf/vmlinux``, ``bpftool btf dump`` input) or an ELF's ``.BTF``."""
        from memtrace.sources.elf import ElfFile

        path = Path(path)
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"{path}: is a directory, not a BTF file") from None
        except OSError as e:
            raise InputError(f"{path}: {e.strerror}") from None
        if magic == b"\x7fELF":
            with ElfFile(path) as elf:
                sec = elf.section_data(".BTF")
            if sec is None:
                raise InputError(f"{path}: ELF file has no .BTF section (kernel built without CONFIG_DEBUG_INFO_BTF?)")
            return cls(sec, f"BTF section of {path}")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError(f"{path}: {e.strerror}") from None
        return cls(data, f"BTF {path}")

    def _str(self, off: int) -> str:
        j = self._strs.find(b"\0", off) if off < len(self._strs) else -1
        if j < 0:
            raise InputError(f"{self.source}: corrupt BTF: string offset {off} is outside the string section ({len(self._strs):,} bytes)")
        return self._strs[off:j].decode(errors="replace")

    def _strip(self, tid: int) -> int:
        start, steps = tid, 0
        while tid and self._types[tid].kind in _QUALS:
            tid = self._types[tid].size_or_type
            steps += 1
            if steps > 64:
                raise InputError(f"{self.source}: corrupt BTF: type {start} is a loop of typedefs/qualifiers")
        return tid

    def struct_type(self, name: str) -> int:
        kind = K_UNION if name.startswith("union ") else K_STRUCT
        bare = name.removeprefix("struct ").removeprefix("union ")
        tid = self._by_name.get((kind, bare))
        if tid is None:
            raise LookupError(f"{self.source}: no {name!r}")
        return tid

    def _members(self, tid: int) -> Iterable[tuple[str, int, int]]:
        t = self._types[self._strip(tid)]
        if t is None or t.kind not in (K_STRUCT, K_UNION):  # void, or a corrupt member type: no members
            return
        for name_off, mtype, moff in t.extra or ():
            bit = (moff & 0xFFFFFF) if t.kflag else moff
            yield self._str(name_off), mtype, bit

    def member(self, handle: int, member: str) -> tuple[int, int]:
        found = self._find_member(handle, member)
        if found is None:
            t = self._types[self._strip(handle)]
            raise LookupError(f"{self.source}: {(t.name if t else 'void') or 'anonymous type'} has no member {member!r}")
        bit, mtype = found
        if bit % 8:
            raise LookupError(f"{self.source}: member {member!r} is a bitfield")
        return bit // 8, mtype

    def _find_member(self, tid: int, member: str):
        for name, mtype, bit in self._members(tid):
            if name == member:
                return bit, mtype
            sub_t = self._types[self._strip(mtype)]  # None: void (a corrupt member type)
            if not name and sub_t is not None and sub_t.kind in (K_STRUCT, K_UNION):
                sub = self._find_member(mtype, member)
                if sub is not None:
                    return bit + sub[0], sub[1]
        return None

    def ctype(self, handle: int) -> CType:
        tid = self._strip(handle)
        if tid == 0:
            return CType("void")
        t = self._types[tid]
        if t.kind == K_INT:
            enc = (t.extra >> 24) & 0xF
            if enc & 4:
                return CType("bool", t.name, t.size_or_type)
            return CType("int", t.name, t.size_or_type, bool(enc & 1))
        if t.kind in (K_ENUM, K_ENUM64):
            return CType("enum", t.name, t.size_or_type, t.kflag)
        if t.kind == K_PTR:
            return CType("ptr", "", 8, target=t.size_or_type)
        if t.kind in (K_STRUCT, K_UNION):
            return CType("struct" if t.kind == K_STRUCT else "union", t.name, t.size_or_type)
        if t.kind == K_ARRAY:
            return CType("array", "", 0, target=t.extra[0])
        return CType("other", t.name)

    def pointee(self, handle: int) -> int:
        t = self._types[self._strip(handle)]
        if t.kind != K_PTR:
            raise LookupError(f"{self.source}: not a pointer")
        return t.size_or_type

    def func_params(self, name: str):
        tid = self._by_name.get((K_FUNC, name))
        if tid is None:
            return None
        proto = self._types[self._types[tid].size_or_type]
        if proto is None or proto.kind != K_FUNC_PROTO:
            raise InputError(f"{self.source}: corrupt BTF: FUNC {name} (type {tid}) does not refer to a FUNC_PROTO")
        return [(self._str(n), ptype) for n, ptype in proto.extra]

    def has_func_record(self, name: str) -> bool:
        return (K_FUNC, name) in self._by_name

    def enum_value(self, name: str) -> int:
        if self._enums is None:
            self._enums = {}
            for t in self._types:
                if t is not None and t.kind in (K_ENUM, K_ENUM64):
                    for n, v in t.extra:
                        self._enums.setdefault(self._str(n), v)
        try:
            return self._enums[name]
        except KeyError:
            raise LookupError(f"{self.source}: no enumerator {name!r}") from None


# -- DWARF, through drgn -------------------------------------------------------------------


class DwarfTypes(TypeInfo):
    """drgn over a vmlinux's DWARF. BTF FUNC records are looked up in the same file's .BTF."""

    def __init__(self, vmlinux: str | Path, *, btf: BtfTypes | None = None, release: str | None = None, swapper_pg_dir: int | None = None
    ):
        import drgn

        from memtrace.sources.elf import read_build_id

        self._drgn = drgn
        self.source = f"DWARF {vmlinux}"
        build_id = read_build_id(Path(vmlinux))
        prog = drgn.Program(
            drgn.Platform(drgn.Architecture.X86_64, drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)
        )
        # drgn 0.3.0 refuses a bare vmlinux as a main module ("no loadable segment containing
        # e_phoff"); as a Linux kernel program with the vmlinux's build id in a minimal
        # VMCOREINFO it matches the file by build id and reads its DWARF. No memory is read.
        vmcoreinfo = f"OSRELEASE={release or 'unknown'}\nBUILD-ID={build_id}\nPAGESIZE=4096\nKERNELOFFSET=0\nSYMBOL(swapper_pg_dir)={swapper_pg_dir or 0xFFFFFFFF82000000:x}\n"
        prog.set_linux_kernel_custom(vmcoreinfo, False)
        log = logging.getLogger("drgn")
        level = log.level
        log.setLevel(logging.ERROR)  # "can't find kernel modules": there is no memory to read
        try:
            prog.load_debug_info([str(vmlinux)], default=False, main=True)
        except drgn.MissingDebugInfoError as e:
            raise InputError(f"{vmlinux}: no usable DWARF: {e}") from None
        finally:
            log.setLevel(level)
        self.prog = prog
        self._btf = btf

    def _strip(self, t):
        while t.kind in (self._drgn.TypeKind.TYPEDEF,) or t.qualifiers:
            t = t.type if t.kind == self._drgn.TypeKind.TYPEDEF else t.unqualified()
        return t

    def struct_type(self, name: str):
        try:
            return self.prog.type(name)
        except LookupError:
            raise LookupError(f"{self.source}: no {name!r}") from None

    def member(self, handle, member: str):
        t = self._strip(handle)
        try:
            m = t.member(member)
        except LookupError:
            raise LookupError(f"{self.source}: {t.type_name()} has no member {member!r}") from None
        if m.bit_field_size or m.bit_offset % 8:
            raise LookupError(f"{self.source}: member {member!r} is a bitfield")
        return m.bit_offset // 8, m.type

    def ctype(self, handle) -> CType:
        K = self._drgn.TypeKind
        t = self._strip(handle)
        if t.kind == K.VOID:
            return CType("void")
        if t.kind == K.BOOL:
            return CType("bool", t.name, t.size)
        if t.kind == K.INT:
            return CType("int", t.name, t.size, t.is_signed)
        if t.kind == K.ENUM:
            cmp = t.type
            return CType("enum", t.tag or "", t.size, bool(cmp is not None and cmp.is_signed))
        if t.kind == K.POINTER:
            return CType("ptr", "", t.size, target=t.type)
        if t.kind in (K.STRUCT, K.UNION):
            return CType("struct" if t.kind == K.STRUCT else "union", t.tag or "", t.size)
        if t.kind == K.ARRAY:
            return CType("array", "", 0, target=t.type)
        return CType("other", str(t))

    def pointee(self, handle):
        t = self._strip(handle)
        if t.kind != self._drgn.TypeKind.POINTER:
            raise LookupError(f"{self.source}: not a pointer")
        return t.type

    def func_params(self, name: str):
        try:
            f = self.prog.function(name)
        except (LookupError, KeyError):
            return None
        return [(p.name, p.type) for p in f.type_.parameters]

    def has_func_record(self, name: str) -> bool:
        return self._btf.has_func_record(name) if self._btf else False

    def enum_value(self, name: str) -> int:
        try:
            return self.prog.constant(name).value_()
        except LookupError:
            raise LookupError(f"{self.source}: no enumerator {name!r}") from None

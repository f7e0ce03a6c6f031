"""memtrace's one ELF reader: headers, sections, program headers and notes of a 64-bit
little-endian ELF file (a vmlinux, a vmcore), with every offset checked against the file.

Everything a malformed or cut file can get wrong (too short for its header, a section or
program header table past the end, a name outside the string table, a section whose bytes
the file does not hold) is an :class:`InputError` naming the file and what is wrong, not an
IndexError or struct.error. The file is mapped, not read: a vmlinux is 600 MB and a vmcore
may be larger.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from memtrace.errors import EnvironmentProblem, InputError

NT_GNU_BUILD_ID = 3
ET_CORE = 4
SHT_NOTE = 7
SHT_NOBITS = 8
SHN_XINDEX = 0xFFFF
EHDR_SIZE = 64
SHDR_SIZE = 64
PHDR_SIZE = 56


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int


@dataclass(frozen=True)
class Segment:
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


class ElfFile:
    """A mapped 64-bit little-endian ELF file. Use as a context manager; slices handed out
    (:meth:`bytes_at`, :meth:`section_data`) are copies, so closing is always allowed."""

    def __init__(self, path: str | Path, *, what: str = "ELF file", not_elf: str = "not an ELF file"):
        self.path = Path(path)
        self.what = what
        self._not_elf = not_elf
        self._mm: mmap.mmap | None = None
        try:
            st = os.stat(self.path)
            if stat.S_ISDIR(st.st_mode):
                raise InputError(f"{self.path}: is a directory, not {_a(what)}")
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"{self.path}: not a regular file, so not {_a(what)}")
            self.size = st.st_size
            if self.size == 0:
                raise InputError(f"{self.path}: empty file, not {_a(what)}")
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        except FileNotFoundError:
            raise InputError(f"{self.path}: no such file") from None
        except PermissionError:
            raise EnvironmentProblem(f"{self.path}: permission denied") from None
        except OSError as e:
            raise InputError(f"{self.path}: cannot read: {e.strerror}") from None
        try:
            self._parse_header()
        except BaseException:
            self.close()
            raise

    # -- plumbing ------------------------------------------------------------------------

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self) -> "ElfFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def error(self, what: str) -> InputError:
        return InputError(f"{self.path}: {what}")

    def _unpack(self, fmt: str, off: int, what: str) -> tuple:
        n = struct.calcsize(fmt)
        if off < 0 or off + n > self.size:
            raise self.error(f"truncated {self.what}: {what} at offset {off:#x} needs {n} bytes, the file has {self.size:,}")
        return struct.unpack_from(fmt, self._mm, off)

    def bytes_at(self, off: int, size: int, what: str) -> bytes:
        """``size`` bytes at file offset ``off``, or InputError saying ``what`` is cut off."""
        if off < 0 or size < 0 or off + size > self.size:
            raise self.error(
                f"truncated {self.what}: {what} (offset {off:#x}, {size:,} bytes) ends past the end of the file ({self.size:,} bytes)"
            )
        return self._mm[off : off + size]

    # -- the header ----------------------------------------------------------------------

    def _parse_header(self) -> None:
        mm = self._mm
        if mm[:4] != b"\x7fELF":
            raise self.error(self._not_elf)
        if self.size < EHDR_SIZE:
            raise self.error(f"truncated {self.what}: {self.size} bytes, an ELF header needs {EHDR_SIZE}")
        if mm[4] != 2:
            raise self.error(f"not a 64-bit ELF file (EI_CLASS {mm[4]})")
        if mm[5] != 1:
            raise self.error(f"not a little-endian ELF file (EI_DATA {mm[5]})")
        (self.e_type, self.e_machine, _ver, _entry, self.e_phoff, self.e_shoff, _flags, _ehsize,
         self.e_phentsize, self.e_phnum, self.e_shentsize, self.e_shnum, self.e_shstrndx) = struct.unpack_from(
            "<HHIQQQIHHHHHH", mm, 16
        )

    # -- sections ------------------------------------------------------------------------

    def _shdr(self, i: int) -> tuple:
        return self._unpack("<IIQQQQII", self.e_shoff + i * self.e_shentsize, f"section header {i}")

    def sections(self) -> list[Section]:
        """Every section, names resolved; InputError if the table or a name is out of bounds."""
        if getattr(self, "_sections", None) is not None:
            return self._sections
        if self.e_shoff == 0:
            raise self.error("ELF file has no section headers (e_shoff 0)")
        if self.e_shentsize < SHDR_SIZE:
            raise self.error(f"bad ELF header: section header size {self.e_shentsize}, want {SHDR_SIZE}")
        shnum, shstrndx = self.e_shnum, self.e_shstrndx
        if shnum == 0 or shstrndx == SHN_XINDEX:  # extended numbering: the real values are in section 0
            s0 = self._shdr(0)
            shnum = shnum or s0[5]
            if shstrndx == SHN_XINDEX:
                shstrndx = s0[6]
        if shnum == 0:
            raise self.error("ELF file has no sections (e_shnum 0)")
        end = self.e_shoff + shnum * self.e_shentsize
        if end > self.size:
            raise self.error(
                f"truncated {self.what}: its {shnum} section headers at {self.e_shoff:#x} end at {end:#x}, "
                f"past the end of the file ({self.size:,} bytes)"
            )
        if shstrndx >= shnum:
            raise self.error(f"bad ELF header: section name table index {shstrndx}, but there are {shnum} sections")
        rows = [self._shdr(i) for i in range(shnum)]
        _, st_type, _, _, soff, ssize, _, _ = rows[shstrndx]
        if st_type == SHT_NOBITS:
            raise self.error("bad ELF file: the section name table has no contents")
        names = self.bytes_at(soff, ssize, "the section name table")
        out = []
        for i, (name_off, sh_type, flags, addr, off, size, link, info) in enumerate(rows):
            j = names.find(b"\0", name_off) if name_off < len(names) else -1
            if j < 0:
                raise self.error(f"bad ELF file: section {i}'s name (offset {name_off}) is outside the section name table")
            out.append(Section(names[name_off:j].decode(errors="replace"), sh_type, flags, addr, off, size, link, info))
        self._sections = out
        return out

    def section(self, name: str) -> Section | None:
        """The first section called ``name`` that has file contents (not NOBITS), or None."""
        return next((s for s in self.sections() if s.name == name and s.type != SHT_NOBITS), None)

    def section_data(self, sec: Section | str) -> bytes | None:
        """A section's bytes (a copy); None for a name the file lacks."""
        if isinstance(sec, str):
            sec = self.section(sec)
            if sec is None:
                return None
        if sec.type == SHT_NOBITS:
            return b""
        return self.bytes_at(sec.offset, sec.size, f"section {sec.name or '(unnamed)'}")

    # -- program headers -----------------------------------------------------------------

    def segments(self) -> list[Segment]:
        if self.e_phnum == 0:
            return []
        if self.e_phentsize < PHDR_SIZE:
            raise self.error(f"bad ELF header: program header size {self.e_phentsize}, want {PHDR_SIZE}")
        end = self.e_phoff + self.e_phnum * self.e_phentsize
        if end > self.size:
            raise self.error(
                f"truncated {self.what}: its {self.e_phnum} program headers at {self.e_phoff:#x} end at {end:#x}, "
                f"past the end of the file ({self.size:,} bytes)"
            )
        return [
            Segment(*self._unpack("<IIQQQQQ", self.e_phoff + i * self.e_phentsize, f"program header {i}"))
            for i in range(self.e_phnum)
        ]

    # -- notes ---------------------------------------------------------------------------

    def notes(self):
        """(name, type, desc) of every note in SHT_NOTE sections (bounds-checked)."""
        for sec in self.sections():
            if sec.type != SHT_NOTE:
                continue
            data = self.section_data(sec)
            yield from iter_notes(data, lambda what, s=sec: self.error(f"bad note in section {s.name}: {what}"))

    def build_id(self) -> str | None:
        for name, ntype, desc in self.notes():
            if name == b"GNU" and ntype == NT_GNU_BUILD_ID:
                return desc.hex()
        return None


def iter_notes(data: bytes, error=None):
    """(name, type, desc) of each ELF note in ``data``; a note that runs past the end raises
    ``error(what)`` (a callable returning the exception), or stops if ``error`` is None."""
    off = 0
    while off + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, off)
        off += 12
        nend = off + ((namesz + 3) & ~3)
        dend = nend + ((descsz + 3) & ~3)
        if off + namesz > len(data) or nend + descsz > len(data):
            if error is None:
                return
            raise error(f"note at {off - 12:#x} ({namesz}+{descsz} bytes) runs past the end ({len(data)} bytes)")
        yield bytes(data[off : off + namesz]).rstrip(b"\0"), ntype, bytes(data[nend : nend + descsz])
        off = dend


def _a(what: str) -> str:
    return f"an {what}" if what[:1].lower() in "aeiou" else f"a {what}"


def read_build_id(path: Path) -> str:
    """Hex GNU build id of a 64-bit little-endian ELF file (vmlinux)."""
    with ElfFile(path, what="vmlinux") as elf:
        bid = elf.build_id()
    if bid is None:
        raise InputError(f"{path}: ELF file has no GNU build id note")
    return bid

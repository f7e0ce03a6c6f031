"""Minimal ELF note reading: the GNU build id of a vmlinux or a vmcore's notes."""

from __future__ import annotations

import struct
from pathlib import Path

from memtrace.errors import InputError

NT_GNU_BUILD_ID = 3


def _iter_notes(data: bytes):
    off = 0
    while off + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, off)
        off += 12
        name = data[off : off + namesz].rstrip(b"\0")
        off += (namesz + 3) & ~3
        desc = data[off : off + descsz]
        off += (descsz + 3) & ~3
        yield name, ntype, desc


def read_build_id(path: Path) -> str:
    """Hex GNU build id of a 64-bit little-endian ELF file (vmlinux)."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if ident[:4] != b"\x7fELF":
            raise InputError(f"{path}: not an ELF file")
        if ident[4] != 2 or ident[5] != 1:
            raise InputError(f"{path}: not a 64-bit little-endian ELF file")
        shoff, = struct.unpack_from("<Q", ident, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", ident, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        for i in range(shnum):
            sh_type, = struct.unpack_from("<I", table, i * shentsize + 4)
            if sh_type != 7:  # SHT_NOTE
                continue
            offset, size = struct.unpack_from("<QQ", table, i * shentsize + 0x18)
            f.seek(offset)
            for name, ntype, desc in _iter_notes(f.read(size)):
                if name == b"GNU" and ntype == NT_GNU_BUILD_ID:
                    return desc.hex()
    raise InputError(f"{path}: ELF file has no GNU build id note")

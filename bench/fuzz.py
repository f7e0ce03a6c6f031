"""Fuzz every file input memtrace reads (issue 9), in-process, through the library entry
points the CLI uses.

    python bench/fuzz.py [--kind KIND ...] [--count 100000] [--seed 1] [--max-seconds 600]
                         [--json-out bench/fuzz-results.json]
    python bench/fuzz.py --repro KIND:INDEX [--seed 1] [--write FILE]

For each input kind, seeds come from real files (the repo's fixtures, /bin/ls, the host's
/sys/kernel/btf/vmlinux, a snapshot file written by memtrace, perfetto traces encoded with the
perfetto package's protos, `trace-cmd report` text of the committed trace.dat) plus small
synthetic ones (an ELF core with a VMCOREINFO note, a vmlinux-shaped ELF, a BTF blob). Each
generated input is a seed with 1-5 mutations (bit flips, truncation, random or structural bytes
inserted, spans duplicated or deleted, numbers replaced by number-like garbage, 32/64-bit
fields overwritten; JSON kinds also get tree edits), written to a temporary file and handed to
the reader. Input ``i`` of kind ``K`` depends only on (--seed, K, i): ``--repro K:i``
rebuilds it and raises whatever the reader raises, with its traceback.

Outcomes per kind: ``ok`` (warnings counted), ``input_error`` (InputError/EnvironmentProblem
whose message is one line naming the file), ``bad_message`` (such an error with a message of
several lines or without the file's path), ``crash`` (any other exception: memtrace's bug)
and, for trace.dat, ``tool_timeout`` (trace-cmd itself ran over 20 s on an input; it runs
under a wrapper with a time and memory limit). Crashes and bad messages are grouped by
(exception type, raising line) with the first few reproducing indices.

The same generator runs a few thousand inputs in tests/test_fuzz.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from memtrace.errors import EnvironmentProblem, InputError  # noqa: E402

CAPTURES = REPO / "fixtures" / "captures"
TRACES = REPO / "fixtures" / "traces"
LAB = REPO / "fixtures" / "lab"
MEMCG_TOML = REPO / "memtrace" / "probes" / "memcg.toml"
#: how long trace-cmd may take on one fuzzed trace.dat before the wrapper ends it
TOOL_TIMEOUT_S = 20

# -- mutation ----------------------------------------------------------------------------------

INTERESTING32 = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE]
INTERESTING64 = [0, 1 << 32, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF]
NUMBER_GARBAGE = [
    b"0", b"-0", b"-1", b"00000000", b"4294967295", b"4294967296", b"18446744073709551615", b"18446744073709551616",
    b"9223372036854775808", b"-9223372036854775809", b"99999999999999999999999999999", b"1e999", b"-1e999",
    b"nan", b"NaN", b"inf", b"-inf", b"0x", b"0xffffffffffffffffff", b"1.", b".5", b"1e", b"+", b"-", b"",
    b"\xd9\xa1\xd9\xa2", b"1_000", b"0b101", b"1.2.3", b"--1", b"3" * 400,
]
_DIGITS = re.compile(rb"[-+]?(?:0x[0-9a-fA-F]+|\d+(?:\.\d+)?(?:e[-+]?\d+)?)")

TEXT_TOKENS = [b"\n", b"\r\n", b" ", b"\t", b":", b": ", b"[", b"]", b"[000]", b"-", b"=", b"(", b")", b"#", b"<-",
               b"0x", b"\x00", b"\xff", b"\xc3", b"cpus=2\n", b"# tracer: nop\n", b"print: ", b"tracing_mark_write: ",
               b"=(nil) ", b"memtrace_step 7 x", b"->", b"+0x0/0x60", b"(nil)", b"%s", b"\\", b"\"", b"'", b"...", b"|"]
JSON_TOKENS = [b"{", b"}", b"[", b"]", b"\"", b":", b",", b"null", b"true", b"1e999", b"-", b"\\u0000", b"\\ud800",
               b"NaN", b"Infinity", b"\xff", b"{}", b"[]", b"\"\"", b"\n", b"[" * 3000, b"{\"a\":" * 3000]
TOML_TOKENS = [b"[[probe]]\n", b"[[probe.attach]]\n", b"[[tracepoints]]\n", b"name = ", b"kind = ", b"function = ",
               b"args = ", b"\"", b"'", b"[", b"]", b"=", b",", b"\n", b"#", b"\"\"\"", b"true", b"1979-05-27",
               b"inf", b"nan", b"{", b"}", b"->", b"$retval", b"container_of(", b"struct ", b"\\u00", b"\xff", b"."]
BIN_TOKENS = [b"\x00" * 8, b"\xff" * 8, b"\x7fELF", b"\x9f\xeb", b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06",
              b"\x17\x08\x44tracing", b"\x0a", b"\x0a\xff\xff\xff\xff\x0f", b"\x80" * 10, b"\x08\x96\x01",
              b"\x12\x00", b"\x1a\x80\x80\x04", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80"]


def _pos(rng: random.Random, n: int) -> int:
    # half uniformly, half near the start (headers live there)
    return rng.randrange(n + 1) if rng.random() < 0.5 else min(n, int(rng.expovariate(1 / 64)))


def _flip(rng, b: bytearray, tokens):
    if b:
        for _ in range(rng.randint(1, 8)):
            i = _pos(rng, len(b) - 1)
            b[i] ^= 1 << rng.randrange(8)


def _byte_set(rng, b, tokens):
    if b:
        for _ in range(rng.randint(1, 4)):
            b[_pos(rng, len(b) - 1)] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))


def _truncate(rng, b, tokens):
    del b[rng.randrange(len(b) + 1):]


def _insert_random(rng, b, tokens):
    i = _pos(rng, len(b))
    b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))


def _insert_token(rng, b, tokens):
    i = _pos(rng, len(b))
    b[i:i] = rng.choice(tokens) * rng.choice((1, 1, 1, 2, 16))


def _duplicate(rng, b, tokens):
    if b:
        a = rng.randrange(len(b))
        e = min(len(b), a + rng.choice((1, 8, 64, 512, 4096)))
        i = _pos(rng, len(b))
        b[i:i] = b[a:e] * rng.choice((1, 1, 2, 10))


def _delete(rng, b, tokens):
    if b:
        a = _pos(rng, len(b) - 1)
        del b[a: a + rng.choice((1, 4, 64, 1024))]


def _numbers(rng, b, tokens):
    """Replace numbers found near a random place with number-like garbage."""
    if not b:
        return
    for _ in range(rng.randint(1, 3)):
        start = _pos(rng, len(b) - 1)
        m = _DIGITS.search(b, start, start + 4096) or _DIGITS.search(b, 0, 4096)
        if m is None:
            return
        b[m.start(): m.end()] = rng.choice(NUMBER_GARBAGE) if rng.random() < 0.8 else str(rng.randrange(-2**70, 2**70)).encode()


def _int_field(rng, b, tokens):
    """Overwrite an aligned 2/4/8-byte field with an interesting value (headers, offsets, counts)."""
    if len(b) < 8:
        return
    size = rng.choice((2, 4, 4, 8))
    lim = min(len(b) - size, 4096 if rng.random() < 0.7 else len(b) - size)
    i = rng.randrange(0, lim + 1) & ~(size - 1)
    if size == 8:
        v = rng.choice(INTERESTING64 + [rng.getrandbits(64)])
    else:
        v = rng.choice(INTERESTING32 + [rng.getrandbits(32)]) & ((1 << (8 * size)) - 1)
    b[i: i + size] = v.to_bytes(size, "little")


def _lines(rng, b, tokens):
    """Line-level edits: drop, duplicate or swap lines."""
    lines = bytes(b).split(b"\n")
    if len(lines) < 2:
        return
    for _ in range(rng.randint(1, 4)):
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        op = rng.randrange(3)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(j, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
        if len(lines) < 2:
            break
    b[:] = b"\n".join(lines)


BYTE_MUTATORS = [_flip, _byte_set, _truncate, _insert_random, _insert_token, _duplicate, _delete, _numbers]
BIN_MUTATORS = BYTE_MUTATORS + [_int_field, _int_field, _int_field]
TEXT_MUTATORS = BYTE_MUTATORS + [_lines, _lines, _numbers]


def json_tree_mutate(rng: random.Random, doc):
    """A structurally plausible JSON document: one node replaced, deleted or given a new key."""
    import copy

    doc = copy.deepcopy(doc)
    junk = [None, True, False, 0, -1, 1.5, 2**64, -(2**63) - 1, 1e308, "", "x", "/", "max", [], {}, [1], {"a": 1},
            "\ud800", "a\nb", "1e999", float("inf"), float("nan")]
    for _ in range(rng.randint(1, 3)):
        # walk to a random container
        node, parents = doc, []
        while isinstance(node, (dict, list)) and node and rng.random() < 0.8:
            key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
            parents.append((node, key))
            node = node[key]
        if not parents:
            if rng.random() < 0.1:
                return rng.choice(junk)
            continue
        parent, key = parents[-1]
        op = rng.randrange(4)
        if op == 0:
            parent[key] = rng.choice(junk)
        elif op == 1:
            del parent[key]
        elif op == 2 and isinstance(parent, dict):
            parent[rng.choice(["index", "name", "id", "cgroups", "steps", "schema", "trace", "max", "uptime_s", "",
                               "kprobe_events_installed", "memory.max", "memory.events"])] = rng.choice(junk)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            parent[key] = rng.choice([-node, node * 2**40, str(node), None, int(node) ^ (1 << 63) if isinstance(node, int) else node])
        else:
            parent[key] = [node] if rng.random() < 0.5 else {"x": node}
    return doc


@dataclass
class Seed:
    name: str
    data: bytes
    #: the parsed JSON document, for tree mutations (JSON kinds)
    doc: object = None


def mutate(rng: random.Random, seed: Seed, mutators, tokens) -> bytes:
    if seed.doc is not None and rng.random() < 0.6:
        doc = json_tree_mutate(rng, seed.doc)
        try:
            data = json.dumps(doc, indent=rng.choice((None, 1)), allow_nan=True).encode("utf-8", "surrogatepass")
        except (ValueError, TypeError):
            data = seed.data
        if rng.random() < 0.6:
            return data
        b = bytearray(data)
        mutators[rng.randrange(len(mutators))](rng, b, tokens)
        return bytes(b)
    b = bytearray(seed.data)
    n = 1 + min(4, int(rng.expovariate(1.0)))
    for _ in range(n):
        mutators[rng.randrange(len(mutators))](rng, b, tokens)
    return bytes(b)


# -- seeds -------------------------------------------------------------------------------------


def _excerpts(data: bytes, *, lines: int, count: int, rng: random.Random, header_lines: int = 0) -> list[bytes]:
    """The file's header lines plus ``count`` windows of ``lines`` lines (small, fast seeds)."""
    all_lines = data.split(b"\n")
    head = [ln for ln in all_lines[:200] if ln.startswith(b"#")][:header_lines] if header_lines else []
    body = [ln for ln in all_lines if not ln.startswith(b"#")]
    out = []
    for _ in range(count):
        i = rng.randrange(max(1, len(body) - lines))
        out.append(b"\n".join(head + body[i: i + lines]) + b"\n")
    return out


def elf_file(*, e_type: int, sections: list[tuple] = (), phdrs: list[tuple] = (), blobs: bytes = b"",
             blob_off: int = 0) -> bytes:
    """A 64-bit little-endian x86-64 ELF: header, program headers, ``blobs`` at ``blob_off``,
    then section headers. ``sections``: (name, type, flags, addr, offset, size, link, info,
    entsize); a .shstrtab is appended; ``phdrs``: (type, flags, offset, vaddr, paddr, filesz, memsz)."""
    names = b"\0"
    name_offs = []
    for s in list(sections) + [(".shstrtab",)]:
        name_offs.append(len(names))
        names += s[0].encode() + b"\0"
    phoff = 64
    body_off = max(blob_off, phoff + 56 * len(phdrs))
    shstr_off = body_off + len(blobs)
    shoff = (shstr_off + len(names) + 7) & ~7
    shnum = len(sections) + 2
    h = bytearray(64)
    h[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHIQQQIHHHHHH", h, 16, e_type, 62, 1, 0, phoff if phdrs else 0, shoff, 0, 64, 56, len(phdrs),
                     64, shnum, shnum - 1)
    out = bytearray(h)
    for p in phdrs:
        out += struct.pack("<IIQQQQQQ", *p, 0x1000)
    out += bytes(body_off - len(out))
    out += blobs + names
    out += bytes(shoff - len(out))
    out += bytes(64)  # section 0
    for s, n in zip(sections, name_offs):
        _, typ, flags, addr, off, size, link, info, entsize = s
        out += struct.pack("<IIQQQQIIQQ", n, typ, flags, addr, off, size, link, info, 1, entsize)
    out += struct.pack("<IIQQQQIIQQ", name_offs[-1], 3, 0, 0, shstr_off, len(names), 0, 0, 1, 0)
    return bytes(out)


def btf_blob(types: bytes, strings: bytes) -> bytes:
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings)) + types + strings


def small_btf() -> bytes:
    """A small BTF with the shapes probe generation walks: ints, pointers, a struct with an
    anonymous union and a bitfield, an enum, typedefs, a FUNC_PROTO and FUNCs named as
    memcg.toml's attach points."""
    strs = bytearray(b"\0")

    def s(name: str) -> int:
        off = len(strs)
        strs.extend(name.encode() + b"\0")
        return off

    t = bytearray()

    def ty(name_off, kind, vlen, st, extra=b"", kflag=0):
        t.extend(struct.pack("<III", name_off, (kflag << 31) | (kind << 24) | vlen, st) + extra)

    ty(s("long"), 1, 0, 8, struct.pack("<I", (1 << 24) | 64))  # 1 signed long
    ty(s("unsigned int"), 1, 0, 4, struct.pack("<I", 32))  # 2
    ty(0, 2, 0, 5)  # 3 ptr -> 5
    ty(s("bool"), 1, 0, 1, struct.pack("<I", (4 << 24) | 8))  # 4
    members = [(s("usage"), 1, 0), (s("max"), 1, 64), (s("parent"), 3, 128), (0, 7, 192), (s("flag"), 2, 257)]
    ty(s("page_counter"), 4, len(members), 40, b"".join(struct.pack("<III", *m) for m in members), kflag=1)  # 5
    ty(s("mem_cgroup"), 4, 2, 64, struct.pack("<III", s("memory"), 5, 0) + struct.pack("<III", s("id"), 2, 320 * 8 // 8))  # 6
    ty(0, 5, 2, 8, struct.pack("<III", s("a"), 1, 0) + struct.pack("<III", s("b"), 2, 0))  # 7 anon union
    ty(s("gfp_t"), 8, 0, 2)  # 8 typedef
    ty(0, 10, 0, 8)  # 9 const gfp_t
    ty(0, 2, 0, 6)  # 10 ptr -> mem_cgroup
    ty(0, 13, 3, 4, struct.pack("<II", s("counter"), 3) + struct.pack("<II", s("nr_pages"), 1)
       + struct.pack("<II", s("fail"), 3))  # 11 func proto
    for fn in ("page_counter_try_charge", "page_counter_charge", "page_counter_uncharge", "try_charge_memcg",
               "obj_cgroup_charge", "__memcg_kmem_charge_page", "bpf_map_kmalloc_node"):
        ty(s(fn), 12, 1, 11)
    ty(s("memcg_stat_item"), 6, 2, 4, struct.pack("<Ii", s("MEMCG_SOCK"), 3) + struct.pack("<Ii", s("MEMCG_KMEM"), -1))
    ty(s("u64x"), 19, 1, 8, struct.pack("<III", s("BIG"), 1, 2))  # enum64
    ty(0, 3, 0, 0, struct.pack("<III", 1, 2, 16))  # array of long
    return btf_blob(bytes(t), bytes(strs))


def real_btf_head(limit: int = 48 * 1024) -> bytes | None:
    """The first ``limit`` bytes of the host's BTF types (whole records), their references past
    the cut set to void, and the string section up to the last name they use: real BTF records
    under a valid header."""
    try:
        d = Path("/sys/kernel/btf/vmlinux").read_bytes()
    except OSError:
        return None
    from memtrace.sources.kernel import typeinfo as ti

    _m, _v, _f, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", d, 0)
    base = hdr_len + type_off
    p, end = base, base + min(type_len, limit)
    recs = []  # (start, end, [ref positions])
    max_name = 0
    while p + 12 <= end:
        name_off, info, st = struct.unpack_from("<III", d, p)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        fixed, per = ti._BTF_EXTRA[kind]
        q = p + 12
        nxt = q + fixed + per * vlen
        if nxt > end:
            break
        refs = []
        if kind in ti._REFERS or kind in (ti.K_VAR, ti.K_DECL_TAG, ti.K_FUNC_PROTO):
            refs.append(p + 8)
        if kind == ti.K_ARRAY:
            refs += [q, q + 4]
        if kind in (ti.K_STRUCT, ti.K_UNION):
            refs += [q + 12 * i + 4 for i in range(vlen)]
            max_name = max([max_name] + [struct.unpack_from("<I", d, q + 12 * i)[0] for i in range(vlen)])
        if kind == ti.K_FUNC_PROTO:
            refs += [q + 8 * i + 4 for i in range(vlen)]
            max_name = max([max_name] + [struct.unpack_from("<I", d, q + 8 * i)[0] for i in range(vlen)])
        if kind in (ti.K_ENUM, ti.K_ENUM64):
            w = 8 if kind == ti.K_ENUM else 12
            max_name = max([max_name] + [struct.unpack_from("<I", d, q + w * i)[0] for i in range(vlen)])
        if kind == ti.K_DATASEC:
            refs += [q + 12 * i for i in range(vlen)]
        max_name = max(max_name, name_off)
        recs.append((p, nxt, refs))
        p = nxt
    n = len(recs)
    types = bytearray(d[base: recs[-1][1]])
    for _, _, refs in recs:
        for r in refs:
            if struct.unpack_from("<I", d, r)[0] > n:
                struct.pack_into("<I", types, r - base, 0)
    s0 = hdr_len + str_off
    strs = d[s0: s0 + str_len]
    cut = strs.find(b"\0", max_name)
    return btf_blob(bytes(types), strs[: cut + 1])


def vmlinux_like(btf: bytes) -> bytes:
    """A small vmlinux-shaped ELF: .text with functions, __mcount_loc listing call sites in them,
    .rodata with the banner and tracefs README strings, .symtab/.strtab, a build-id note, .BTF."""
    text_addr, mloc_addr, ro_addr = 0xFFFFFFFF81000000, 0xFFFFFFFF83000000, 0xFFFFFFFF82000000
    funcs = ["page_counter_try_charge", "page_counter_uncharge", "try_charge_memcg", "obj_cgroup_charge",
             "page_counter_charge"]
    strtab = bytearray(b"\0")
    syms = bytearray(bytes(24))

    def sym(name, value, size, typ, shndx=1):
        off = len(strtab)
        strtab.extend(name.encode() + b"\0")
        syms.extend(struct.pack("<IBBHQQ", off, (1 << 4) | typ, 0, shndx, value, size))

    for i, f in enumerate(funcs):
        sym(f, text_addr + 0x40 * i, 0x40, 2)
    sym("__start_mcount_loc", mloc_addr, 0, 0, 3)
    sym("__stop_mcount_loc", mloc_addr + 8 * len(funcs), 0, 0, 3)
    sym("__tracepoint_kmalloc", ro_addr + 0x800, 8, 1, 2)
    sym("__tracepoint_cgroup_mkdir", ro_addr + 0x808, 8, 1, 2)
    sym("swapper_pg_dir", ro_addr + 0x1000, 8, 1, 2)
    text = bytes(0x40 * len(funcs))
    rodata = (b"\0Linux version 6.1.0-fuzz (builder@x) (gcc 12) #1 SMP\0"
              b"place: [<module>:]<symbol>\0<argname>[->field[->field|.field...]]\0"
              b"kernel return probes support: $retval, $arg<N>\0").ljust(0x1100, b"\0")
    mloc = b"".join(struct.pack("<Q", text_addr + 0x40 * i + 4) for i in range(len(funcs)))
    note = struct.pack("<III", 4, 20, 3) + b"GNU\0" + hashlib.sha1(b"fuzz").digest()
    parts = [(".text", 1, 6, text_addr, text, 0), (".rodata", 1, 2, ro_addr, rodata, 0),
             ("__mcount_loc", 1, 2, mloc_addr, mloc, 0), (".notes", 7, 2, 0, note, 0), (".BTF", 1, 0, 0, btf, 0),
             (".symtab", 2, 0, 0, bytes(syms), 24), (".strtab", 3, 0, 0, bytes(strtab), 0)]
    blob_off = 0x100
    blobs = bytearray()
    sections = []
    for name, typ, flags, addr, data, entsize in parts:
        off = blob_off + len(blobs)
        link = 7 if name == ".symtab" else 0  # .strtab's index (1-based after section 0)
        sections.append((name, typ, flags, addr, off, len(data), link, 0, entsize))
        blobs += data + bytes((-len(data)) % 8)
    return elf_file(e_type=2, sections=sections, blobs=bytes(blobs), blob_off=blob_off)


def elf_core() -> bytes:
    """A small ELF core as QEMU's dump-guest-memory writes: a PT_NOTE with a VMCOREINFO note
    and a PT_LOAD of 8 KiB of memory."""
    info = (b"OSRELEASE=6.1.0-fuzz\nPAGESIZE=4096\nBUILD-ID=" + hashlib.sha1(b"fuzz").hexdigest().encode()
            + b"\nSYMBOL(swapper_pg_dir)=ffffffff82001000\nKERNELOFFSET=0\nNUMBER(phys_base)=0\n")
    note = struct.pack("<III", 11, len(info), 0) + b"VMCOREINFO\0\0" + info + bytes((-len(info)) % 4)
    mem = bytes(range(256)) * 32
    note_off = 64 + 56 * 2
    load_off = note_off + len(note)
    phdrs = [(4, 0, note_off, 0, 0, len(note), len(note)), (1, 7, load_off, 0xFFFF888000000000, 0, len(mem), len(mem))]
    h = bytearray(64)
    h[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHIQQQIHHHHHH", h, 16, 4, 62, 1, 0, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    out = bytearray(h)
    for p in phdrs:
        out += struct.pack("<IIQQQQQQ", *p, 0)
    return bytes(out + note + mem)


def head_of(path: str, n: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return None


def _json_seed(name: str, path: Path) -> Seed:
    data = path.read_bytes()
    return Seed(name, data, json.loads(data))


def snapshot_seed(tmp: Path) -> bytes:
    """A snapshot file written by memtrace (tables.snapshot_file.save) with a few rows per table."""
    from memtrace.tables.snapshot import TABLES, Snapshot, frame
    from memtrace.tables.snapshot_file import save

    header = {"kernel": {"release": "6.1.0-fuzz", "build_id": "ab" * 20, "vmlinux": None},
              "target": {"kind": "vmcore", "path": "/x/vmcore"}, "faults": 0, "complete": True, "notes": ["n"]}
    frames = {}
    for t in TABLES:
        try:
            frames[t] = frame(t, [_row(c) for c in TABLES[t]] * 2)
        except Exception:  # a row this builder cannot fill: the empty table (still a valid file)
            frames[t] = frame(t, [])
    p = tmp / "seed.snapshot"
    save(Snapshot(header=header, **frames), p)
    return p.read_bytes()


def _row(cols) -> dict:
    vals = {"string": "x", "bool": True, "boolean": True}
    return {c.name: vals.get(c.dtype, 1) for c in cols}


def perfetto_seeds() -> list[bytes]:
    """Perfetto traces: lab events encoded with the perfetto package's protos (plain and
    deflate-compressed bundles), and a hand-built trace with typed, generic and print events."""
    from memtrace.sources.trace import load_trace
    from memtrace.testing.perfetto import events_to_trace
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb2

    out = []
    for f in (CAPTURES / "force-6.12.page_counter.txt", TRACES / "restart-6.1.excerpt.txt"):
        df, _ = load_trace(str(f))
        out.append(events_to_trace(df.head(60), bundle_size=20))
        out.append(events_to_trace(df.iloc[60:100], compress=True))
    t = pb2.Trace()
    th = t.packet.add().process_tree.threads.add()
    th.tid, th.name = 5, "w"
    bd = t.packet.add().ftrace_events
    bd.cpu = 1
    for i in range(4):
        e = bd.event.add()
        e.timestamp, e.pid = 1000 + i, 5
        e.kmalloc.bytes_alloc, e.kmalloc.ptr, e.kmalloc.gfp_flags = 64, 0xFFFF888000001000 + i, 0x400cc0
    e = bd.event.add()
    e.timestamp, e.pid = 2000, 5
    e.print.buf = "memtrace_step 1 start\n"
    e = bd.event.add()
    e.timestamp, e.pid = 2001, 5
    e.generic.event_name = "pc_try_charge"
    for k, kind, v in (("counter", "uint_value", 0xFFFF888000002000), ("nr", "int_value", 4), ("cgid", "uint_value", 7)):
        fl = e.generic.field.add()
        fl.name = k
        setattr(fl, kind, v)
    e = bd.event.add()
    e.timestamp, e.pid = 2002, 5
    e.mm_page_alloc.order, e.mm_page_alloc.pfn = 2, 0x1234
    out.append(t.SerializeToString())
    return out


# -- kinds -------------------------------------------------------------------------------------


@dataclass
class Kind:
    name: str
    #: (work dir, rng) -> seeds; or a string: why the kind is skipped here
    seeds: Callable[[Path, random.Random], "list[Seed] | str"]
    #: (path) -> warnings counted; raises what the reader raises
    run: Callable[[Path], int]
    filename: str
    mutators: list
    tokens: list
    #: the paths an error message may name (one of them), from the input's path
    names: Callable[[Path], tuple] = lambda p: (p,)
    setup: Callable[[Path], None] | None = None


def _load_trace(p: Path) -> int:
    from memtrace.sources.trace import load_trace

    _, st = load_trace(str(p))
    return len(st.warnings or [])


class _Ctx:
    """State shared by a kind's inputs (built once): a probe target, a stub vmlinux."""

    target = None
    defs = None
    stub_vmlinux: Path | None = None


CTX = _Ctx()


def _btf_run(p: Path) -> int:
    from memtrace.sources.kernel.target import btf_target
    from memtrace.sources.trace import probedefs

    if CTX.defs is None:
        CTX.defs = probedefs.load_definitions([MEMCG_TOML])
    target = btf_target(p)
    ps = probedefs.generate(target, CTX.defs, include_all=True)
    return len(ps.skipped)


def _vmlinux_run(p: Path) -> int:
    from memtrace.sources.kernel.target import vmlinux_target
    from memtrace.sources.trace import probedefs

    if CTX.defs is None:
        CTX.defs = probedefs.load_definitions([MEMCG_TOML])
    target = vmlinux_target(p)  # the CLI's default (--types dwarf; .BTF when there is no DWARF)
    ps = probedefs.generate(target, CTX.defs, include_all=True)
    return len(ps.skipped)


def _vmcore_run(p: Path) -> int:
    from memtrace.sources.snapshot import open_target

    open_target(vmcore=p, vmlinux=CTX.stub_vmlinux)
    return 0


def _defs_run(p: Path) -> int:
    from memtrace.sources.trace import probedefs

    defs = probedefs.load_definitions([p])
    if CTX.target is None:
        from memtrace.sources.kernel.target import btf_target

        CTX.target = btf_target(CTX.btf_path)
    ps = probedefs.generate(CTX.target, defs, include_all=True)
    probedefs.render_kprobe_events(ps)
    return len(ps.skipped)


def _snapshot_run(p: Path) -> int:
    from memtrace.tables.snapshot_file import load

    load(p)
    return 0


def _truth_run(p: Path) -> int:
    from memtrace.tables.lab_truth import load_truth

    load_truth(p)
    return 0


def _lab_truth_run(p: Path) -> int:
    from memtrace.lab.truth import load_truth

    load_truth(p)
    return 0


def _meta_run(p: Path) -> int:
    # the meta.json a lab run leaves beside its trace: read by load_trace for kprobe groups
    n = _load_trace(p.parent / "trace.txt")
    return n


def _meta_setup(d: Path) -> None:
    data = (CAPTURES / "force-6.12.page_counter.txt").read_bytes().split(b"\n")
    head = [ln for ln in data if ln.startswith(b"#")]
    body = [ln for ln in data if not ln.startswith(b"#")][:40]
    (d / "trace.txt").write_bytes(b"\n".join(head + body) + b"\n")


def _seeds_vmlinux(tmp, rng):
    out = [Seed("vmlinux-like", vmlinux_like(small_btf()))]
    for exe in ("/bin/ls", "/bin/sh"):
        h = head_of(exe, 8192)
        if h:
            out.append(Seed(f"{exe}[:8K]", h))
    real = real_btf_head(8 * 1024)
    if real:
        out.append(Seed("vmlinux-like+host BTF", vmlinux_like(real)))
    return out


def _seeds_vmcore(tmp, rng):
    out = [Seed("elf-core", elf_core())]
    h = head_of("/bin/ls", 8192)
    if h:
        b = bytearray(h)
        b[16:18] = (4).to_bytes(2, "little")  # ET_CORE
        out.append(Seed("/bin/ls[:8K] as ET_CORE", bytes(b)))
    return out


def _seeds_btf(tmp, rng):
    out = [Seed("small-btf", small_btf())]
    real = real_btf_head()
    if real:
        out.append(Seed("host-btf-48K", real))
    return out


def _seeds_defs(tmp, rng):
    CTX.btf_path = tmp / "defs-target.btf"
    CTX.btf_path.write_bytes(small_btf())
    return [Seed("memcg.toml", MEMCG_TOML.read_bytes())]


def _seeds_snapshot(tmp, rng):
    return [Seed("memtrace-snapshot", snapshot_seed(tmp))]


def _seeds_truth(tmp, rng):
    files = sorted(CAPTURES.glob("*.truth.json")) + sorted(LAB.glob("*/truth.json"))
    return [_json_seed(str(f.relative_to(REPO)), f) for f in files]


def _seeds_meta(tmp, rng):
    files = sorted(CAPTURES.glob("*.meta.json")) + sorted(LAB.glob("*/meta.json"))
    return [_json_seed(str(f.relative_to(REPO)), f) for f in files]


def _seeds_ftrace(tmp, rng):
    out = []
    for f in sorted(TRACES.glob("*.txt")) + sorted(CAPTURES.glob("*.page_counter.txt")):
        for i, e in enumerate(_excerpts(f.read_bytes(), lines=60, count=4, rng=rng, header_lines=12)):
            out.append(Seed(f"{f.name}#{i}", e))
    return out


def _seeds_report(tmp, rng):
    exe = shutil.which("trace-cmd")
    if not exe:
        return "trace-cmd is not installed: no trace-cmd report text can be made from the committed trace.dat"
    out = []
    variants = [["-t", "-N"], [], ["-l"], ["-R"], ["--ts-diff"]]
    for dat in sorted(CAPTURES.glob("*.trace.dat")):
        for v in variants:
            p = subprocess.run([exe, "report", *v, "-i", str(dat)], capture_output=True, timeout=300)
            if p.returncode != 0 or not p.stdout:
                continue
            lines = p.stdout.split(b"\n")
            first = lines[0] + b"\n" if lines[0].startswith(b"cpus=") or lines[0].startswith(b"version") else b""
            for i, e in enumerate(_excerpts(b"\n".join(lines[1:] if first else lines), lines=60, count=2, rng=rng)):
                out.append(Seed(f"report {' '.join(v)} {dat.name}#{i}", (first if i == 0 else b"") + e))
    return out or "trace-cmd report gave no text for the committed trace.dat files"


def _seeds_tracedat(tmp, rng):
    if not shutil.which("trace-cmd"):
        return "trace-cmd is not installed"
    return [Seed(f.name, f.read_bytes()) for f in sorted(CAPTURES.glob("*.trace.dat"))]


def _seeds_perfetto(tmp, rng):
    try:
        return [Seed(f"perfetto#{i}", b) for i, b in enumerate(perfetto_seeds())]
    except ImportError as e:
        return f"the perfetto package is not importable: {e}"


def _tracedat_setup(d: Path) -> None:
    """trace-cmd, as load_trace_dat finds it on PATH, behind a wrapper with a time and memory
    limit: a fuzzed trace.dat may make the tool itself loop or allocate without bound."""
    real = shutil.which("trace-cmd")
    if not real:
        return
    wrap = d / "bin"
    wrap.mkdir(exist_ok=True)
    (wrap / "trace-cmd").write_text(
        "#!/bin/sh\nulimit -v 2000000\n"
        f"timeout -k 2 {TOOL_TIMEOUT_S} {real} \"$@\"\nrc=$?\n"
        f"[ $rc -eq 124 ] || [ $rc -eq 137 ] && echo \"$*\" >> {d}/tool-timeouts\nexit $rc\n")
    (wrap / "trace-cmd").chmod(0o755)
    os.environ["PATH"] = f"{wrap}{os.pathsep}{os.environ.get('PATH', '')}"


def _vmcore_setup(d: Path) -> None:
    import logging

    logging.getLogger("drgn").setLevel(logging.ERROR)  # "did not match any loaded modules", per input
    CTX.stub_vmlinux = d / "stub-vmlinux"
    CTX.stub_vmlinux.write_bytes(vmlinux_like(small_btf()))


KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("vmlinux", _seeds_vmlinux, _vmlinux_run, "vmlinux", BIN_MUTATORS, BIN_TOKENS),
    # a VMCOREINFO build id that does not match is the --vmlinux file's error: it names that
    Kind("vmcore", _seeds_vmcore, _vmcore_run, "vmcore", BIN_MUTATORS, BIN_TOKENS, setup=_vmcore_setup,
         names=lambda p: (p, p.parent / "stub-vmlinux")),
    Kind("btf", _seeds_btf, _btf_run, "vmlinux.btf", BIN_MUTATORS, BIN_TOKENS),
    Kind("snapshot", _seeds_snapshot, _snapshot_run, "fuzz.snapshot", BIN_MUTATORS, BIN_TOKENS + JSON_TOKENS),
    Kind("probedefs", _seeds_defs, _defs_run, "defs.toml", TEXT_MUTATORS, TOML_TOKENS),
    Kind("truth", _seeds_truth, _truth_run, "truth.json", TEXT_MUTATORS, JSON_TOKENS),
    Kind("lab-truth", _seeds_truth, _lab_truth_run, "truth.json", TEXT_MUTATORS, JSON_TOKENS),
    Kind("meta", _seeds_meta, _meta_run, "meta.json", TEXT_MUTATORS, JSON_TOKENS, setup=_meta_setup),
    Kind("ftrace-text", _seeds_ftrace, _load_trace, "trace.txt", TEXT_MUTATORS, TEXT_TOKENS),
    Kind("tracecmd-report", _seeds_report, _load_trace, "report.txt", TEXT_MUTATORS, TEXT_TOKENS),
    Kind("perfetto", _seeds_perfetto, _load_trace, "trace.pftrace", BIN_MUTATORS, BIN_TOKENS),
    Kind("trace.dat", _seeds_tracedat, _load_trace, "trace.dat", BIN_MUTATORS, BIN_TOKENS, setup=_tracedat_setup),
]}


# -- running -----------------------------------------------------------------------------------


def input_rng(seed: int, kind: str, i: int) -> random.Random:
    return random.Random(f"{seed}:{kind}:{i}")


def make_input(kind: Kind, seeds: list[Seed], seed: int, i: int) -> tuple[Seed, bytes]:
    rng = input_rng(seed, kind.name, i)
    s = seeds[rng.randrange(len(seeds))]
    return s, mutate(rng, s, kind.mutators, kind.tokens)


def _where(tb) -> str:
    fr = traceback.extract_tb(tb)
    mine = [f for f in fr if "/memtrace/" in f.filename] or fr
    f = mine[-1]
    return f"{os.path.relpath(f.filename, REPO) if f.filename.startswith(str(REPO)) else f.filename}:{f.lineno} ({f.name})"


@dataclass
class Result:
    kind: str
    seeds: list[str] = field(default_factory=list)
    skipped: str | None = None
    inputs: int = 0
    ok: int = 0
    ok_with_warnings: int = 0
    warnings: int = 0
    input_error: int = 0
    environment_problem: int = 0
    bad_message: int = 0
    crash: int = 0
    tool_timeout: int = 0
    seconds: float = 0.0
    #: (type, where) -> {"count", "message", "indices"}
    findings: dict = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)

    def add_finding(self, what: str, exc: BaseException, where: str, i: int, seed_name: str) -> None:
        key = f"{what}: {type(exc).__name__} at {where}"
        f = self.findings.setdefault(key, {"count": 0, "message": _short(exc), "seed_file": seed_name, "indices": []})
        f["count"] += 1
        if len(f["indices"]) < 5:
            f["indices"].append(i)

    def as_dict(self, count_wanted: int, max_seconds: float) -> dict:
        rate = self.inputs / self.seconds if self.seconds else None
        d = {
            "kind": self.kind, "seeds": self.seeds, "inputs": self.inputs, "seconds": round(self.seconds, 1),
            "inputs_per_s": round(rate, 1) if rate else None, "ok": self.ok, "ok_with_warnings": self.ok_with_warnings,
            "warnings": self.warnings, "warnings_are": WARNINGS_ARE.get(self.kind, "load_trace's IngestStats warnings"),
            "input_error": self.input_error, "environment_problem": self.environment_problem,
            "bad_message": self.bad_message, "crash": self.crash, "findings": self.findings,
            "error_samples": self.error_samples,
        }
        if self.kind == "trace.dat":
            d["tool_timeout"] = self.tool_timeout
        if self.skipped:
            d = {"kind": self.kind, "skipped": self.skipped}
        elif self.inputs < count_wanted:
            d["short_of_count"] = (
                f"{self.inputs:,} of {count_wanted:,} inputs ran in the {max_seconds:g} s allowed; at "
                f"{rate or 0:.1f} inputs/s, {count_wanted:,} would take {count_wanted / (rate or 1) / 60:.0f} min")
        return d


#: what a kind's "warnings" count (the rest: load_trace's IngestStats warnings)
WARNINGS_ARE = {k: "probes generate() skipped, with their reasons" for k in ("vmlinux", "btf", "probedefs")}
WARNINGS_ARE.update({k: "none (a result or an error)" for k in ("vmcore", "snapshot", "truth", "lab-truth")})


def _short(e: BaseException, n: int = 300) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= n else s[:n] + "..."


def run_kind(kind: Kind, *, count: int, seed: int, max_seconds: float, workdir: Path,
             progress: Callable[[Result], None] | None = None) -> Result:
    res = Result(kind.name)
    d = workdir / re.sub(r"\W", "_", kind.name)
    d.mkdir(parents=True, exist_ok=True)
    seeds = kind.seeds(d, random.Random(f"{seed}:{kind.name}:seeds"))
    if isinstance(seeds, str):
        res.skipped = seeds
        return res
    res.seeds = [f"{s.name} ({len(s.data):,} bytes)" for s in seeds]
    if kind.setup:
        kind.setup(d)
    path = d / kind.filename
    must_name = kind.names(path)
    timeouts = d / "tool-timeouts"
    t0 = time.monotonic()
    last = t0
    for i in range(count):
        s, data = make_input(kind, seeds, seed, i)
        path.write_bytes(data)
        res.inputs += 1
        try:
            w = kind.run(path)
        except (InputError, EnvironmentProblem) as e:
            msg = e.message
            if isinstance(e, EnvironmentProblem):
                res.environment_problem += 1
            else:
                res.input_error += 1
            if "\n" in msg or not any(str(n) in msg for n in must_name):
                # the trace behind a meta.json is named instead of the meta.json: also fine
                if not (kind.name == "meta" and "\n" not in msg and str(path.parent) in msg):
                    res.bad_message += 1
                    res.add_finding("bad message", e, _where(e.__traceback__), i, s.name)
            elif len(res.error_samples) < 12 and rng_sample(i):
                res.error_samples.append(msg.replace(str(d), "DIR"))
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - memtrace's bug: record it and go on
            res.crash += 1
            res.add_finding("crash", e, _where(e.__traceback__), i, s.name)
        else:
            res.ok += 1
            if w:
                res.ok_with_warnings += 1
                res.warnings += w
        if timeouts.exists():
            res.tool_timeout += len(timeouts.read_text().splitlines())
            res.findings.setdefault("trace-cmd timed out", {"count": 0, "indices": []})
            res.findings["trace-cmd timed out"]["count"] += 1
            if len(res.findings["trace-cmd timed out"]["indices"]) < 5:
                res.findings["trace-cmd timed out"]["indices"].append(i)
            timeouts.unlink()
        now = time.monotonic()
        if progress and now - last > 10:
            last = now
            res.seconds = now - t0
            progress(res)
        if now - t0 > max_seconds:
            break
    res.seconds = time.monotonic() - t0
    return res


def rng_sample(i: int) -> bool:
    return i % 97 == 0


def repro(kind_name: str, i: int, seed: int, write: str | None) -> None:
    kind = KINDS[kind_name]
    with tempfile.TemporaryDirectory(prefix="memtrace-fuzz-") as w:
        d = Path(w)
        seeds = kind.seeds(d, random.Random(f"{seed}:{kind.name}:seeds"))
        if isinstance(seeds, str):
            sys.exit(f"{kind_name}: skipped: {seeds}")
        if kind.setup:
            kind.setup(d)
        s, data = make_input(kind, seeds, seed, i)
        path = d / kind.filename
        path.write_bytes(data)
        if write:
            Path(write).write_bytes(data)
        print(f"{kind_name}:{i} from seed {s.name}, {len(data):,} bytes -> {path}", file=sys.stderr)
        print("result:", kind.run(path))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", action="append", choices=list(KINDS), help="input kind (repeatable; default: all)")
    ap.add_argument("--count", type=int, default=100_000, help="inputs per kind (default 100000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=600, help="time allowed per kind (default 600)")
    ap.add_argument("--json-out", default=str(REPO / "bench" / "fuzz-results.json"))
    ap.add_argument("--repro", metavar="KIND:INDEX", help="rebuild one input and run it, traceback and all")
    ap.add_argument("--write", metavar="FILE", help="with --repro: also write the input here")
    a = ap.parse_args(argv)
    if a.repro:
        k, _, i = a.repro.rpartition(":")
        repro(k, int(i), a.seed, a.write)
        return 0
    kinds = a.kind or list(KINDS)
    results = []
    started = time.time()
    hdr = f"{'kind':<16} {'inputs':>8} {'in/s':>8} {'ok':>7} {'warned':>7} {'error':>7} {'badmsg':>6} {'crash':>6}"
    print(hdr, file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="memtrace-fuzz-") as w:
        for name in kinds:
            def progress(r):
                print(f"  .. {r.kind}: {r.inputs:,} inputs, {r.inputs / r.seconds:.0f}/s, crash {r.crash}, "
                      f"bad message {r.bad_message}", file=sys.stderr)

            r = run_kind(KINDS[name], count=a.count, seed=a.seed, max_seconds=a.max_seconds, workdir=Path(w),
                         progress=progress)
            results.append(r)
            if r.skipped:
                print(f"{name:<16} skipped: {r.skipped}", file=sys.stderr)
                continue
            rate = r.inputs / r.seconds if r.seconds else 0
            print(f"{name:<16} {r.inputs:>8,} {rate:>8.0f} {r.ok:>7,} {r.ok_with_warnings:>7,} "
                  f"{r.input_error + r.environment_problem:>7,} {r.bad_message:>6,} {r.crash:>6,}", file=sys.stderr)
            for k, f in r.findings.items():
                print(f"    {k} x{f['count']}: {f.get('message', '')[:160]} (indices {f['indices']})", file=sys.stderr)
    doc = {
        "schema": "memtrace.bench.fuzz/1",
        "command": "python bench/fuzz.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": a.seed, "count_per_kind": a.count, "max_seconds_per_kind": a.max_seconds,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "host": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "python": sys.version.split()[0],
                 "trace_cmd": _tool_version()},
        "kinds": [r.as_dict(a.count, a.max_seconds) for r in results],
    }
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {a.json_out}", file=sys.stderr)
    return 1 if any(r.crash or r.bad_message for r in results) else 0


def _tool_version() -> str | None:
    exe = shutil.which("trace-cmd")
    if not exe:
        return None
    p = subprocess.run([exe, "--version"], capture_output=True, text=True)
    m = re.search(r"version ([\d.]+)", p.stdout + p.stderr)
    return m.group(1) if m else None


if __name__ == "__main__":
    sys.exit(main())

"""Bad input ends in one line naming the file and what is wrong, exit 2, never a traceback
(issue 9). Every case runs the real CLI (``python3 -m memtrace``) in a subprocess on files
made here: cut and stub ELF files, damaged BTF, damaged snapshot zips, broken probe
definitions. Kernel-free and fast; no lab guest."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from memtrace.errors import InputError
from memtrace.tables.snapshot import TABLES, Snapshot, frame
from memtrace.tables.snapshot_file import load, save

REPO = Path(__file__).resolve().parent.parent


def run(*args, prelude: str | None = None) -> subprocess.CompletedProcess:
    """``python3 -m memtrace ARGS``; with ``prelude``, that Python code runs first (a test hook)."""
    if prelude is None:
        cmd = [sys.executable, "-m", "memtrace", *map(str, args)]
    else:
        cmd = [sys.executable, "-c", f"{prelude}\nimport sys\nsys.argv[0] = 'memtrace'\nfrom memtrace.cli.app import main\nmain()", *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k != "MEMTRACE_DEBUG"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO, env=env)


def one_line_error(r: subprocess.CompletedProcess, path, *words: str, code: int = 2) -> str:
    """Assert exit ``code``, no traceback, and stderr one ``memtrace: error:`` line naming
    ``path`` and containing ``words``; returns that line."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("memtrace: error: "), line
    assert str(path) in line, line
    for w in words:
        assert w in line, (w, line)
    return line


# -- files made here -----------------------------------------------------------------------


def elf_header(*, e_type=2, phoff=0, shoff=0, phnum=0, shnum=0, shstrndx=0) -> bytearray:
    """A 64-byte ELF64 little-endian x86-64 header."""
    h = bytearray(64)
    h[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHIQQQIHHHHHH", h, 16, e_type, 62, 1, 0, phoff, shoff, 0, 64, 56, phnum, 64, shnum, shstrndx)
    return h


def btf(types: bytes = b"", strings: bytes = b"\0", *, type_len: int | None = None, str_len: int | None = None) -> bytes:
    """A raw BTF blob: header, type section, string section (lengths overridable to lie)."""
    tl = len(types) if type_len is None else type_len
    sl = len(strings) if str_len is None else str_len
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, tl, len(types), sl) + types + strings


def btf_type(name_off: int, kind: int, vlen: int, size_or_type: int) -> bytes:
    return struct.pack("<III", name_off, (kind << 24) | vlen, size_or_type)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    (tmp_path / "elf4").write_bytes(b"\x7fELF")
    (tmp_path / "stub.elf").write_bytes(elf_header())
    return tmp_path


@pytest.fixture
def good_btf(tmp_path) -> Path:
    """The smallest valid BTF: one 4-byte int."""
    p = tmp_path / "good.btf"
    p.write_bytes(btf(btf_type(1, 1, 0, 4) + struct.pack("<I", 32), b"\0int\0"))
    return p


# -- 1. snapshot --vmcore ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,words",
    [
        ("elf4", ["truncated vmcore", "4 bytes", "ELF header needs 64"]),
        ("empty", ["empty file"]),
        ("dir", ["is a directory"]),
        ("stub.elf", ["not a core dump"]),
    ],
)
def test_snapshot_vmcore_bad_file(files, name, words):
    one_line_error(run("snapshot", "--vmcore", files / name, "--vmlinux", files / "stub.elf"), files / name, *words)


def test_snapshot_vmcore_cut_program_headers(tmp_path):
    p = tmp_path / "core"
    p.write_bytes(elf_header(e_type=4, phoff=64, phnum=3) + bytes(56))
    one_line_error(run("snapshot", "--vmcore", p), p, "truncated vmcore", "3 program headers", "past the end")
    p.write_bytes(elf_header(e_type=4, phoff=64, phnum=1) + struct.pack("<IIQQQQQQ", 1, 0, 0x1000, 0, 0, 0x2000, 0x2000, 0))
    one_line_error(run("snapshot", "--vmcore", p), p, "truncated vmcore", "segments need")


# -- 2. snapshot --from --------------------------------------------------------------------


@pytest.fixture
def snap_members(tmp_path) -> dict[str, bytes]:
    """The members of a good snapshot file (empty tables), written and read back by memtrace."""
    header = {"kernel": {"release": "6.1.0-test"}, "target": {"kind": "vmcore", "path": "x"},
              "faults": 0, "complete": True, "notes": []}
    p = tmp_path / "good.zip"
    save(Snapshot(header=header, **{t: frame(t, []) for t in TABLES}), p)
    load(p)
    with zipfile.ZipFile(p) as z:
        return {n: z.read(n) for n in z.namelist()}


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    return path


def _header(members, **changes) -> bytes:
    h = json.loads(members["header.json"])
    h.update(changes)
    return json.dumps(h).encode()


@pytest.mark.parametrize(
    "case,words",
    [
        ("not a zip", ["not a memtrace snapshot file"]),
        ("header not json", ["header.json is not JSON"]),
        ("header a list", ["header.json is a JSON list"]),
        ("header notes a number", ["'notes' is int, want list"]),
        ("no header", ["no header.json"]),
        ("parquet cut", ["maps.parquet is not a readable Parquet table"]),
        ("parquet zeroed", ["memcgs.parquet is not a readable Parquet table"]),
        ("parquet is text", ["allocations.parquet is not a readable Parquet table"]),
        ("bad crc", ["cannot read maps.parquet"]),
        ("table missing", ["lacks table 'memcgs'"]),
    ],
)
def test_snapshot_from_damaged_file(tmp_path, snap_members, case, words):
    m = dict(snap_members)
    p = tmp_path / "bad.zip"
    if case == "not a zip":
        p.write_bytes(b"PK\x03\x04 this is not a zip")
    elif case == "header not json":
        _zip(p, {**m, "header.json": b'{"schema": "memtrace.snapshot/1",'})
    elif case == "header a list":
        _zip(p, {**m, "header.json": b"[1, 2]"})
    elif case == "header notes a number":
        _zip(p, {**m, "header.json": _header(m, notes=3)})
    elif case == "no header":
        del m["header.json"]
        _zip(p, m)
    elif case == "parquet cut":
        _zip(p, {**m, "maps.parquet": m["maps.parquet"][: len(m["maps.parquet"]) // 2]})
    elif case == "parquet zeroed":
        b = m["memcgs.parquet"]
        _zip(p, {**m, "memcgs.parquet": b[:8] + bytes(len(b) - 16) + b[-8:]})
    elif case == "parquet is text":
        _zip(p, {**m, "allocations.parquet": b"map_id,role\n7,buckets\n"})
    elif case == "bad crc":
        good = _zip(tmp_path / "good2.zip", m).read_bytes()
        i = good.index(m["maps.parquet"][:64]) + 32  # a byte inside the stored maps.parquet
        p.write_bytes(good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :])
    elif case == "table missing":
        del m["memcgs.parquet"]
        _zip(p, m)
    one_line_error(run("snapshot", "--from", p), p, *words)


def test_snapshot_from_directory(files):
    one_line_error(run("snapshot", "--from", files / "dir"), files / "dir", "is a directory")


# -- 3. probes --vmlinux / --btf ----------------------------------------------------------


@pytest.mark.parametrize(
    "name,words",
    [
        ("empty", ["empty file, not a vmlinux"]),
        ("dir", ["is a directory, not a vmlinux"]),
        ("stub.elf", ["no section headers"]),
        ("elf4", ["truncated vmlinux", "ELF header needs 64"]),
    ],
)
def test_probes_vmlinux_bad_file(files, name, words):
    one_line_error(run("probes", "--vmlinux", files / name), files / name, *words)


def test_probes_vmlinux_section_table_past_end(tmp_path):
    p = tmp_path / "vmlinux"
    p.write_bytes(elf_header(shoff=64, shnum=5, shstrndx=1) + bytes(100))
    one_line_error(run("probes", "--vmlinux", p), p, "truncated vmlinux", "5 section headers at 0x40", "past the end")


def test_probes_vmlinux_section_name_table_index(tmp_path):
    p = tmp_path / "vmlinux"
    p.write_bytes(elf_header(shoff=64, shnum=1, shstrndx=7) + bytes(64))
    one_line_error(run("probes", "--vmlinux", p), p, "section name table index 7")


@pytest.mark.parametrize(
    "blob,words",
    [
        (b"", ["empty file, not BTF"]),
        (b"\x9f\xeb\x01\x00\x18\x00", ["truncated BTF", "6 bytes, the header needs 24"]),
        (b"\x7fELG" + bytes(30), ["not BTF (magic 0x457f at offset 0"]),
        # the header promises 100 bytes of types, the data ends after the header
        (btf(b"", b"", type_len=100, str_len=10)[:24], ["truncated BTF", "type section at offset 0x18", "(100 bytes)"]),
        # an INT record cut short: 14 bytes of the 16 it needs
        (btf(btf_type(1, 1, 0, 4) + b"\x20\x00", b"\0int\0"), ["truncated BTF", "type 1 (kind 1) at offset 0x18", "needs 16 bytes"]),
        # a struct with 3 members and room for one
        (btf(btf_type(0, 4, 3, 8) + bytes(12)), ["truncated BTF", "type 1 (kind 4) at offset 0x18", "needs 48 bytes"]),
        (btf(btf_type(0, 25, 0, 0)), ["unknown BTF kind 25", "offset 0x18"]),
        (btf(btf_type(99, 2, 0, 0)), ["corrupt BTF", "offset 0x18", "name offset 99"]),
        (btf(btf_type(0, 2, 0, 0) + btf_type(0, 2, 0, 40)), ["corrupt BTF", "type 2 at offset 0x24 refers to type 40"]),
    ],
    ids=["empty", "short-header", "bad-magic", "sections-past-end", "cut-int", "cut-struct", "unknown-kind", "bad-name", "bad-ref"],
)
def test_probes_btf_bad_file(tmp_path, blob, words):
    p = tmp_path / "bad.btf"
    p.write_bytes(blob)
    one_line_error(run("probes", "--btf", p), p, *words)


def test_probes_btf_directory_and_stub_elf(files):
    one_line_error(run("probes", "--btf", files / "dir"), files / "dir", "is a directory")
    one_line_error(run("probes", "--btf", files / "stub.elf"), files / "stub.elf", "no section headers")


# -- 4. probes --defs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,words",
    [
        (bytes(range(256)) * 4, ["not a TOML text file", "offset 128"]),
        ("[[probe]]\nname = 5\n", ["probe #1", "missing or invalid name (the number 5)"]),
        ('probe = 3\n', ["probe must be an array of tables"]),
        ('[[probe]]\nname = "x"\nattach = "kprobe"\n', ["probe #1 (x)", "probe.attach must be an array of tables"]),
        ('[[probe]]\nname = "x"\n[[probe.attach]]\nkind = 1\nfunction = "f"\n', ["attach kind must be a string or a list of strings"]),
        ('[[probe]]\nname = "x"\n[[probe.attach]]\nkind = "kprobe"\nfunction = "f"\nargs = "a = b"\n', ["attach args must be a list of strings, not the string 'a = b'"]),
        ('[[probe]]\nname = "x"\ndefault = "yes"\n[[probe.attach]]\nkind = "kprobe"\nfunction = "f"\n', ["default must be true or false"]),
        ("[[tracepoints]]\nevents = 3\n", ["tracepoints #1", "events must be a list of strings, not the number 3"]),
        ("[[tracepoints]]\nwhy = \"x\"\n", ["tracepoints #1: no events"]),
        ("[[probe]\n", ["invalid TOML"]),
    ],
    ids=["binary", "name-int", "probe-int", "attach-str", "kind-int", "args-str", "default-str", "events-int",
         "no-events", "bad-toml"],
)
def test_probes_defs_bad_file(tmp_path, good_btf, text, words):
    p = tmp_path / "defs.toml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    one_line_error(run("probes", "--btf", good_btf, "--defs", p), p, *words)


# -- 5. CLI --------------------------------------------------------------------------------


def test_version():
    from memtrace import __version__

    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"memtrace {__version__}", (r.stdout, r.stderr)


def test_probes_types_rejects_unknown(files):
    # a usage error: click's usage lines and the error, exit 2; the file is never opened
    r = run("probes", "--vmlinux", files / "stub.elf", "--types", "bogus")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    err = [ln for ln in r.stderr.splitlines() if "Error" in ln]
    assert len(err) == 1 and "--types" in err[0] and "'bogus'" in err[0], r.stderr
    assert "'dwarf'" in err[0] and "'btf'" in err[0], err[0]


# -- 6. snapshot --live without /proc/kcore, --qmp on a file that is no socket --------------


def test_snapshot_live_without_kcore(tmp_path):
    kcore = tmp_path / "no" / "kcore"
    r = run(
        "snapshot", "--live",
        prelude=f"from pathlib import Path\nimport memtrace.sources.snapshot as s\ns.KCORE = Path({str(kcore)!r})",
    )
    line = one_line_error(r, kcore, "missing", code=3)  # the machine lacks it: environment, exit 3
    assert "needs root" not in line


@pytest.mark.parametrize("name,kind", [("empty", "a regular file"), ("dir", "a directory")])
def test_snapshot_qmp_not_a_socket(files, name, kind):
    one_line_error(run("snapshot", "--qmp", files / name), files / name, f"is {kind}, not a socket")


def test_a_broken_meta_json_beside_a_trace_is_a_warning_not_silence(tmp_path):
    """A meta.json beside a trace is read for the lab's kprobe groups; one that is not JSON
    is named in a warning (the trace still loads), where it used to be skipped silently."""
    import shutil

    src = Path(__file__).resolve().parent.parent / "fixtures" / "captures" / "force-6.1.page_counter.txt"
    trace = tmp_path / "trace.txt"
    shutil.copy(src, trace)
    (tmp_path / "meta.json").write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "memtrace", "ingest", str(trace)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{tmp_path / 'meta.json'}: not a lab meta.json, its kprobe groups are not used (JSONDecodeError" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_snapshot_file_from_before_a_nullable_column_loads_with_it_null(tmp_path, snap_members):
    """Columns added later as nullable (memory.high, memory.stat) are null in an older file,
    with a note; a missing column that may not be null is still an error naming it."""
    import io

    import pandas as pd

    memcgs = pd.read_parquet(io.BytesIO(snap_members["memcgs.parquet"]))
    old = memcgs.drop(columns=["memory_high_bytes", "stat_anon_bytes"])
    buf = io.BytesIO()
    old.to_parquet(buf, index=False)
    f = _zip(tmp_path / "old.zip", {**snap_members, "memcgs.parquet": buf.getvalue()})
    s = load(f)
    assert list(s.memcgs.columns) == [c.name for c in TABLES["memcgs"]]
    assert any("predates column(s) memory_high_bytes, stat_anon_bytes of table 'memcgs'" in n for n in s.header["notes"])
    worse = memcgs.drop(columns=["memory_current_bytes"])
    buf = io.BytesIO()
    worse.to_parquet(buf, index=False)
    f = _zip(tmp_path / "worse.zip", {**snap_members, "memcgs.parquet": buf.getvalue()})
    with pytest.raises(InputError, match="table 'memcgs' lacks column\\(s\\) memory_current_bytes$"):
        load(f)


def test_a_snapshot_member_flagged_encrypted_is_a_one_line_error(tmp_path, snap_members):
    """bench/fuzz.py (seed 2) found it: zipfile raises RuntimeError ('password required') for a
    member whose encryption flag is set (bit 0 of the general purpose flags, set here in every
    local and central directory header)."""
    good = _zip(tmp_path / "good.zip", snap_members).read_bytes()
    raw = bytearray(good)
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = raw.find(sig)
        while i >= 0:
            raw[i + off] |= 0x1
            i = raw.find(sig, i + 4)
    f = tmp_path / "enc.zip"
    f.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="is encrypted, password required"):
        load(f)

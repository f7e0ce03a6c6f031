"""The C line scanner (`_ftrace_scan.c`) against the reference parser (a regex per line): random and
mutated real lines, every header shape near the line between the scanner's own reading and the
regex it hands odd lines to, field lists and numbers at their limits, NUL bytes, huge lines, and
misuse of the extension's API. Frames and stats must be identical, and nothing may crash."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from memtrace.errors import EXIT_ENVIRONMENT, EnvironmentProblem, InputError
from memtrace.sources.trace import ftrace_text as ft
from memtrace.testing.ftrace_reference import parse_ftrace_text_reference

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "traces"
EXCERPTS = [FIX / "restart-6.1.excerpt.txt", FIX / "restart-6.12.excerpt.txt"]
KPROBES = {"pc_try_charge": "memtrace", "pc_try_charge_ret": "memtrace"}


def _body():
    out = []
    for p in EXCERPTS:
        out += [ln.encode() for ln in p.read_text().splitlines() if ln and not ln.startswith("#")]
    return out


BODY = _body()


def same(data: bytes, *, chunk_bytes=None, kprobe_groups=KPROBES):
    """Scanner and reference agree on frame and stats, or both refuse the input; the scanner's result."""
    out = []
    for fast in (True, False):
        try:
            out.append(ft._run(ft._chunks_of(data, chunk_bytes or ft.CHUNK_BYTES), path="<buffer>", fmt="ftrace-text",
                               kprobe_groups=kprobe_groups, stats=None, fast=fast))
        except InputError as e:
            out.append(str(e))
    a, b = out
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
        return None
    pd.testing.assert_frame_equal(a[0], b[0], check_exact=True)
    assert a[1].to_dict() == b[1].to_dict()
    return a


# --- lines near the header rules ----------------------------------------------------------------

HEADERS = [
    b"            init-1       [001] .....     2.355314: ",
    b"init-1 [001] ..... 2.355314: ",
    b"init-1 [001] 2.355314: ",  # no flags column
    b"init-1\t[001]\t.....\t2.355314:\t",
    b"  jbd2/vda1-8-123  [000] d..1.   100.000001: ",  # dash and digits in comm, not before a blank
    b"  a-1 b-2  [000] .....   1.5: ",  # dash, digits and a blank inside comm: the regex decides
    b"  (sd-pam)-77  [000] .....   1.5: ",
    b"  -5  [000] .....   1.5: ",  # empty comm
    b"  x-5  (  123) [000] .....   1.5: ",  # tgid column
    b"  x-5  (-----) [000] .....   1.5: ",
    b"  x-5  [ 0] .....   1.5: ",
    b"  x-5  [0]..... 1.5: ",
    b"  sleep-3946  [001]111264306005: ",  # trace-cmd's "%12llu" filled: no blank after [cpu]
    b"  sleep-3946  [001]100000.123456789: ",  # "%5llu." filled
    b"  x-5  [0]1.5 : ",
    b"  x-5  [0] .....1.5: ",
    b"  x-5  [0] ..... 1.5:x ",
    b"  x-5  [0] ..... 1.: ",
    b"  x-5  [0] ..... .5: ",
    b"  x-5  [0] ..... 1.5.6: ",
    b"  x-5  [0] ..... 12345678901234567890: ",  # integer timestamp, too big
    b"  x-5  [0] ..... 9223372036854775807: ",
    b"  x-5  [0] ..... 9223372036854775808: ",
    b"  x-5  [0] ..... 9223372036.854775807: ",
    b"  x-5  [0] ..... 9223372036.854775808: ",
    b"  x-5  [0] ..... 9223372037.0: ",
    b"  x-5  [0] ..... 00000000000000000000000001.1234567891234: ",
    b"  x-2147483647  [2147483647] ..... 1.0: ",
    b"  x-2147483648  [0] ..... 1.0: ",
    b"  x-5  [2147483648] ..... 1.0: ",
    b"  x-00000000000000000005  [000000000000000000001] ..... 1.0: ",
    b"\x00x\x00-5  [0] \x00 1.0: ",
    b"  x-5  [0] ..... 1.0:  ",
    b"  x-5  [0] ..... 1.0:",
    b"\x0b\x0cx-5\x0b[0]\x0c.....\x0b1.0:\x0c",
    b"  caf\xc3\xa9-5  [0] ..... 1.0: ",
    b"  \xff\xfe-5  [0] ..... 1.0: ",
]
EVENTS = [b"kmalloc", b"mm_page_alloc", b"kmem_cache_free", b"percpu_alloc_percpu", b"alloc_vmap_area", b"cgroup_mkdir",
          b"pc_try_charge", b"pc_try_charge_ret", b"print", b"tracing_mark_write", b"my_event", b"\xff", b"\xfe", b"a:b",
          b"kfree", b"mm_page_free_batched", b"try_charge"]
FIELDS = [
    b"call_site=__fput+0x100/0x250 ptr=ffff8d4301a7ffa8 bytes_req=64 bytes_alloc=64 gfp_flags=GFP_KERNEL node=-1 accounted=true",
    b"page=fffff54fc0409980 pfn=0x10266 order=1 migratetype=0 gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO",
    b"(page_counter_try_charge+0x0/0xb0) counter=0xa0 nr=64 cgid=5",
    b"(try_charge_memcg+0xc7/0x780 <- page_counter_try_charge) ok=1",
    b"va_start=0xffffc90000000000 size=8192 align=4096",
    b"(not a probe) size=1",
    b"0xffffc90000001000-0xffffc90000003000 size=8192",
    b"0xffffc9 size=1",
    b"root=1 id=5 level=1 path=/pod a/b c",
    b"ptr=0x ptr=1 bytes_alloc=-0x5 bytes_req=-9223372036854775808 order=-2147483649 map_id=4294967296 ret=-1",
    b"ptr=ffffffffffffffff pfn=18446744073709551615 gfp=18446744073709551616 bytes=99999999999999999999",
    b"ptr=1ffffffffffffffff pfn=0x1ffffffffffffffff cgid=-18446744073709551615 order=2147483647 map_id=4294967295",
    b"gfp_flags=0x400cc0 gfp=0x1", b"gfp=0x1 gfp_flags=0x400cc0", b"gfp_flags=0xzz gfp=7",
    # numbers that do not fit their column: null, counted, `key=value` into args in line order
    b"gfp=0x1ffffffffffffffff gfp_flags=0x400cc0", b"gfp_flags=0x400cc0 gfp=0x1ffffffffffffffff",
    b"gfp_flags=-0x10000000000000000 gfp=-18446744073709551615",
    b"va_start: 18446744073709551616 size=1 ptr=1", b"va_start: 0000000000000000000000000001 ptr=0x1ffffffffffffffff",
    b"nr=99999999999999999999 nr=5 order=00000000000000000000000000031 map_id=-0 ret=-0x8000000000000001",
    b"nr=000000000000000000000000000000000000000000099999999999999999999 size=0x00000000000000000000ffffffffffffffff",
    b"nr=9223372036854775808 bytes_alloc=18446744073709551615 order=4294967296 map_id=-1 cgid=-1 ret=0x8000000000000000",
    b"nr=99999999999999999999999abc order=2147483648x cgid=- size=-0x map_id=0x",
    b"accounted=TRUE", b"accounted=0", b"accounted=\x11", b"accounted=", b"accounted=maybe",
    b"a=1  b=2   c=3", b"a=1\tb=2", b"a=1 \tb=2", b"=1 a=", b"a==b", b"a= =b c", b"x.y->z=1 9a=2 _b=3 -c=4",
    b"note=a=b path=/a b=c", b"size=1 size=2 size=3", b"hello world", b"", b"  ", b"a=\x00 b=\xff\xfe c=\xc3\xa9",
    b"(+0x <- ) nr=1", b"( <- ", b"(x+0x1)", b"(x) nr=1 order=3", b"nr_pages=4 order=70 order=2",
]


def _header_lines(rnd: random.Random, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        h = rnd.choice(HEADERS)
        out.append(h + rnd.choice(EVENTS) + b":" + rnd.choice([b" ", b"", b"  ", b"\t"]) + rnd.choice(FIELDS)
                   + rnd.choice([b"", b" ", b"\t", b"\r", b" \x0b"]))
    return out


def test_header_and_field_shapes():
    rnd = random.Random(11)
    lines = _header_lines(rnd, 3000) + [b"CPU:1 [LOST 17 EVENTS]", b"cpus=2", b"# c", b"\r", b"junk"]
    rnd.shuffle(lines)
    df, st = same(b"\n".join(lines) + b"\n")
    assert st.malformed > 0 and st.unknown_events > 0 and st.lost_events == 17 and st.values_out_of_range > 0
    assert df["args"].notna().any() and df["marker"].notna().any()


# --- mutated real lines ---------------------------------------------------------------------------

ALPHABET = b" =:[]()-.\t\r\x0b\x000x9fF\xff\xc3\xa9_>"


def _mutate(ln: bytes, rnd: random.Random) -> bytes:
    b = bytearray(ln)
    for _ in range(rnd.randint(1, 4)):
        p = rnd.randrange(len(b) + 1)
        r = rnd.random()
        if r < 0.3 and p < len(b):
            b[p] = rnd.choice(ALPHABET)
        elif r < 0.5:
            b[p:p] = bytes(rnd.choice(ALPHABET) for _ in range(rnd.randint(1, 3)))
        elif r < 0.65:
            b[p:p] = b"9" * rnd.randint(1, 25)
        elif r < 0.8:
            del b[p : p + rnd.randint(1, 6)]
        elif r < 0.9:
            b[p:p] = rnd.choice([b" x=", b"=", b" ", b"-1 ", b" (", b" <- ", b"+0x", b"0x", b"-"])
        else:
            b[p:p] = rnd.randbytes(rnd.randint(1, 8))
    return bytes(b).replace(b"\n", b" ")


@pytest.mark.parametrize("seed", range(6))
def test_mutated_real_lines(seed):
    rnd = random.Random(seed)
    lines = [_mutate(ln, rnd) if rnd.random() < 0.5 else ln for ln in rnd.choices(BODY, k=2500)]
    data = b"\n".join(lines) + b"\n"
    same(data, chunk_bytes=rnd.choice([None, 997, 65536]))


def _edge_number(rnd: random.Random) -> bytes:
    """A number near a column's limits (2^31, 2^32, 2^63, 2^64), decimal or hex, with a sign, leading
    zeros or a stray byte now and then."""
    v = (1 << rnd.choice([0, 31, 32, 63, 64, 65, 80])) + rnd.choice([-2, -1, 0, 1])
    neg = rnd.random() < 0.3
    hexa = rnd.random() < 0.4
    digits = b"%x" % v if hexa else b"%d" % v
    digits = b"0" * rnd.choice([0, 0, 1, 3, 17, 40]) + digits
    t = (b"-" if neg else b"") + (b"0x" if hexa else b"") + digits
    r = rnd.random()
    if r < 0.05:
        t += rnd.choice([b"g", b"-", b"x", b"\xff"])
    elif r < 0.1:
        t = t[: rnd.randint(0, len(t))]
    return t


def test_numbers_at_the_edges():
    """Every numeric column, through every way a number reaches it (a field, a vmalloc prefix, a
    gfp_flags printed as a number), with values just inside and outside its range."""
    rnd = random.Random(3)
    keys = [b"nr", b"nr_pages", b"order", b"map_id", b"cgid", b"id", b"ret", b"ok", b"size", b"bytes_alloc", b"bytes_req",
            b"ptr", b"pfn", b"gfp", b"gfp_flags"]
    lines = []
    for i in range(3000):
        head = b"  x-5  [0] ..... 1.%06d: " % i
        ev = rnd.choice([b"try_charge: (try_charge_memcg+0x0/0x40) ", b"kmalloc: ", b"mm_page_alloc: ",
                         b"percpu_alloc_percpu: ", b"cgroup_mkdir: ", b"alloc_vmap_area: va_start: " + _edge_number(rnd) + b" "])
        fields = b" ".join(rnd.choice(keys) + b"=" + _edge_number(rnd) for _ in range(rnd.randint(1, 5)))
        lines.append(head + ev + fields)
    lines.append(b"  x-5  [0] ..... 2.0: try_charge: (x+0x0/0x4) nr=" + b"0" * 100000 + b"7 cgid=0x" + b"0" * 70000 + b"1f"
                 + b" order=" + b"9" * 50000)
    df, st = same(b"\n".join(lines) + b"\n", chunk_bytes=4096)
    assert st.values_out_of_range > 500
    last = df[df["ts_ns"] == 2_000_000_000].iloc[0]  # leading zeros do not count; 50000 nines do
    assert (last["pages"], last["cgroup_id"]) == (7, 31) and pd.isna(last["order"])
    assert last["args"] == "(x+0x0/0x4) order=" + "9" * 50000


def test_random_bytes():
    rnd = random.Random(5)
    parsed = 0
    for _ in range(20):
        k = rnd.randint(0, 3000)
        data = rnd.randbytes(k) + b"\n" + b"\n".join(rnd.choices(BODY, k=20)) + b"\n" + rnd.randbytes(rnd.randint(0, 50))
        r = same(data, chunk_bytes=rnd.choice([None, 64, 1000]))
        parsed += r is not None and len(r[0]) > 0
        same(bytes(rnd.choice(b" \n=-:[]0123456789.x") for _ in range(k)) + b"\n")
    # not two equal refusals only: the real lines amid the noise are read by both parsers
    assert parsed >= 15, parsed


def test_nul_bytes_and_cut_lines():
    good = BODY[0]
    data = b"\n".join([good, good.replace(b" ", b"\x00", 3), b"\x00" * 50, good[:40], good + b"\x00 x=\x00", good]) + b"\n"
    same(data)
    for cut in (1, len(data) // 2, len(data) - 1):
        same(data[:cut])


def test_huge_lines(tmp_path):
    head = b"  x-5  [0] ..... 1.0: "
    kv = head + b"my_event: " + b" ".join(b"k%d=%d" % (i, i) for i in range(60000))
    long_comm = b" " * 100000 + b"a" * 300000 + b"-5 [0] ..... 1.0: kmalloc: ptr=1"
    eqs = head + b"kmalloc: " + b"=" * 200000 + b" ptr=" + b"f" * 100000
    marker = head + b"print: " + b"m" * 500000
    data = b"\n".join([BODY[0], kv, long_comm, eqs, marker, BODY[1]]) + b"\n"
    df, _ = same(data, chunk_bytes=4096)
    assert len(df) == 6 and len(df["marker"].dropna().iloc[0]) == 500000
    p = tmp_path / "t.txt"
    p.write_bytes(data)
    a, sa = ft.load_ftrace_text(str(p), chunk_bytes=1000)
    pd.testing.assert_frame_equal(a, df, check_exact=True)


def test_one_capture_fed_in_pieces_anywhere():
    """Regions handed to the scanner end at any newline: the lines are the same."""
    data = b"\n".join(BODY) + b"\n"
    whole, _ = ft.parse_ftrace_text(data)
    rnd = random.Random(3)
    for _ in range(5):
        cb = rnd.randint(1, 5000)
        got, _ = ft._run(ft._chunks_of(data, cb), path="<buffer>", fmt="ftrace-text", kprobe_groups=None, stats=None)
        pd.testing.assert_frame_equal(got, whole, check_exact=True)


# --- the extension's API: misuse raises, never crashes ---------------------------------------------


def _scanner(**kw):
    mod = ft._scan_module()
    args = dict(num_kinds=(0, 2), num_bases=(0, 16), cat_twins=(-1, -1), va_col=1, markers=(b"print",))
    args.update(kw)
    ev = kw.pop("event_cb", lambda name, kprobe: (0, True, False, {b"a": 0, b"p": 1, b"c": mod.COL_CAT0 + 1}))
    hd = kw.pop("header_cb", lambda line: None)
    args.pop("event_cb", None)
    args.pop("header_cb", None)
    return mod, mod.Scanner(ev, hd, **args)


def test_scanner_api_misuse():
    mod, sc = _scanner()
    line = b"x-1 [0] . 1.0: e: a=5 p=ff c=zz\n"
    with pytest.raises(ValueError):
        sc.feed(line, 0, len(line) + 1)
    with pytest.raises(ValueError):
        sc.feed(line, 5, 4)
    with pytest.raises(TypeError):
        sc.feed("text", 0, 1)
    sc.feed(line, 0, len(line))
    sc.feed(line, 0, len(line) - 1)  # no newline: nothing read
    r = sc.finish()
    assert r["n"] == 1 and r["lines_read"] == 1 and r["cat"][1][1] == [b"zz"]
    with pytest.raises(RuntimeError):
        sc.finish()
    with pytest.raises(RuntimeError):
        sc.feed(line, 0, len(line))
    for bad in (dict(num_kinds=(9,), num_bases=(0,)), dict(num_bases=(0, 8)), dict(cat_twins=(5,)), dict(va_col=7),
                dict(markers=("print",)), dict(cat_twins=())):
        with pytest.raises((ValueError, TypeError)):
            _scanner(**bad)
    _, sc = _scanner(event_cb=lambda n, k: (0, True, False, {b"a": 99}))
    with pytest.raises(ValueError, match="column id"):
        sc.feed(line, 0, len(line))
    _, sc = _scanner(event_cb=lambda n, k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        sc.feed(line, 0, len(line))
    _, sc = _scanner(event_cb=lambda n, k: (-1, True, False, {}))
    with pytest.raises(ValueError):
        sc.feed(line, 0, len(line))
    odd = b"x-1 (5) [0] . 1.0: e: a=5\n"
    for ret in ((0, 0, 0, 0, 0, 0, 0, 0, 999), (0, 0, 0, 3, 2, 0, 0, 0, 0), (-1, 0, 0, 0, 0, 0, 0, 0, 0),
                (0, 1 << 31, 0, 0, 0, 0, 0, 0, 0), ("x",), None):
        _, sc = _scanner(header_cb=lambda line, ret=ret: ret)
        if ret is None:
            sc.feed(odd, 0, len(odd))
            assert sc.finish()["n"] == 0
            continue
        with pytest.raises((ValueError, TypeError)):
            sc.feed(odd, 0, len(odd))
    box = []
    _, sc = _scanner(header_cb=lambda line: box[0].feed(odd, 0, len(odd)))
    box.append(sc)
    with pytest.raises(RuntimeError, match="busy"):
        sc.feed(odd, 0, len(odd))
    del box
    # a buffer the callback tries to resize while the scanner reads it
    buf = bytearray(odd * 3)
    _, sc = _scanner(header_cb=lambda line: buf.extend(b"x" * 100000))
    with pytest.raises(BufferError):
        sc.feed(buf, 0, len(buf))
    # results outlive the scanner; buffers are writable (numpy) and zero-copy (arrow)
    mod, sc = _scanner()
    sc.feed(line * 1000, 0, len(line) * 1000)
    r = sc.finish()
    del sc
    import numpy as np

    ts = np.frombuffer(r["ts"], np.int64)
    assert ts.flags.writeable and (ts == 1_000_000_000).all()


def test_missing_extension_is_an_environment_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, globals=None, locals=None, fromlist=(), level=0):
        if fromlist and "_ftrace_scan" in fromlist:
            raise ImportError("No module named 'memtrace.sources.trace._ftrace_scan'")
        return real(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.setattr(ft, "_SCAN_OK", [])
    with pytest.raises(EnvironmentProblem, match=r"not built .*pip install -e ") as e:
        ft.parse_ftrace_text(BODY[0] + b"\n")
    assert e.value.exit_code == EXIT_ENVIRONMENT
    assert "\n" not in e.value.message
    df, _ = parse_ftrace_text_reference(BODY[0] + b"\n")  # the reference needs no extension
    assert len(df) == 1


def test_missing_extension_cli_exit_3(tmp_path):
    f = tmp_path / "trace.txt"
    f.write_bytes(BODY[0] + b"\n")
    code = ("import sys; sys.modules['memtrace.sources.trace._ftrace_scan'] = None\n"
            f"sys.argv = ['memtrace', 'ingest', {str(f)!r}]\n"
            "from memtrace.cli.app import main; main()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == EXIT_ENVIRONMENT, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"memtrace: error: .*not built.*pip install -e ", lines[0]), p.stderr


def test_many_names_and_keys_memory_in_proportion():
    """Garbage with a new event name and a new key on every line: the scanner's memory grows with
    the (name, key) pairs met, not with names x keys (30000 x 30000 would be gigabytes)."""
    code = r"""
import sys
from memtrace.sources.trace import ftrace_text as ft
def hwm():
    for l in open('/proc/self/status'):
        if l.startswith('VmHWM:'): return int(l.split()[1])
lines = [b'  x-5  [0] ..... 1.%06d: ev%d: k%d=%d v=1' % (i, i, i, i) for i in range(30000)]
data = b'\n'.join(lines) + b'\n'
base = hwm()
df, st = ft.parse_ftrace_text(data)
assert len(df) == 30000 and st.unknown_events == 30000
print(hwm() - base)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) < 200_000, p.stdout  # kB
    lines = [b"  x-5  [0] ..... 1.%06d: ev%d: k%d=%d v=1" % (i, i % 700, i, i) for i in range(3000)]
    same(b"\n".join(lines) + b"\n")


def test_stale_build_is_an_environment_error(monkeypatch):
    """A build from another version of _ftrace_scan.c (the checkout changed after `pip install -e`)
    is refused, naming the rebuild, rather than run."""
    mod = ft._scan_module()
    assert len(mod.SOURCE_SHA256) == 64
    monkeypatch.setattr(ft, "_SCAN_OK", [])
    monkeypatch.setattr(mod, "SOURCE_SHA256", "0" * 64)
    with pytest.raises(EnvironmentProblem, match=r"built from another version of .*_ftrace_scan\.c; rebuild it with: "):
        ft.parse_ftrace_text(BODY[0] + b"\n")

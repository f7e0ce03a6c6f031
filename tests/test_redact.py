"""--redact (issue 10): kernel addresses never reach redacted JSON or files, equal addresses get
equal tokens across tables, nothing else changes, and a redacted snapshot file still loads
and reports run on it. The reports' own outputs are checked to hold no addresses at all.

No kernel: the tables are built the way tests/test_snapshot_unit.py builds them."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from memtrace.tables.redact import KERNEL_HALF, for_json, is_redacted, redact, token
from memtrace.tables.snapshot import ADDRESS_COLUMNS, TABLES, Snapshot, frame, validate
from memtrace.tables.snapshot_file import load, save

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "fixtures" / "captures"
LAB = ROOT / "fixtures" / "lab"

# distinct kernel addresses; some shared between tables as in a real snapshot
MAP7, MAP9 = 0xFFFF8A3D8645AB00, 0xFFFF8A3D86460000
OBJCG_POD, OBJCG_GEN2, OBJCG_ROOT = 0xFFFF8A3D81230040, 0xFFFF8A3D81230080, 0xFFFF8A3D812300C0
MEMCG_ROOT, MEMCG_POD, MEMCG_GEN2 = 0xFFFF8A3D80001000, 0xFFFF8A3D80002000, 0xFFFF8A3D80003000
VM_PAGE = 0xFFFFB1C2C0001000
PCPU = 0x3A000  # a __percpu pointer: small, still a kernel address
FREED_MAP = 0xFFFF8A3D8999F000  # only in a note: a map freed during the walk
ADDRS = {MAP7, MAP9, OBJCG_POD, OBJCG_GEN2, OBJCG_ROOT, MEMCG_ROOT, MEMCG_POD, MEMCG_GEN2, VM_PAGE, PCPU, FREED_MAP}


def _map(map_id, name, addr, objcg, cgid, path, state, charged):
    return {
        "map_id": map_id, "name": name, "type": "hash", "flags": 0, "key_size": 8, "value_size": 100,
        "max_entries": 64, "pins": f"/sys/fs/bpf/{name}", "map_address": addr, "owner_kind": "objcg",
        "owner_objcg": objcg, "owner_cgroup_id": cgid, "owner_path": path, "owner_state": state,
        "original_cgroup_id": None, "original_path": None, "mem_usage_bytes": None, "memlock_bytes": 8192,
        "charged_bytes": charged, "uncharged_bytes": 8, "allocations": 3, "complete": True,
    }


def _memcg(cgid, path, addr, objcg, orig, state, current, bpf, owned):
    return {
        "cgroup_id": cgid, "path": path, "memcg_address": addr, "css_flags": 10, "online": True, "dying": False,
        "populated": state != "ghost", "state": state, "memory_current_bytes": current, "memory_max_bytes": None,
        "memory_high_bytes": None, "events_max": 0, "events_oom": 0, "events_oom_kill": 0, "events_high": 0,
        "objcg": objcg, "orig_objcg": orig, "stock_bytes": 0, "obj_stock_bytes": 0, "objcg_charged_bytes": 0,
        "bpf_bytes": bpf, "bpf_maps_owned": owned, "stat_kernel_bytes": current // 2,
    }


def _snap() -> Snapshot:
    maps = frame("maps", [
        _map(7, "old", MAP7, OBJCG_POD, 23, "/pod", "ghost", 5128),
        _map(9, "new", MAP9, OBJCG_GEN2, 24, "/pod/gen2", "online", 1032),
    ])
    allocations = frame("allocations", [
        {"map_id": 7, "role": "map_struct", "kind": "slab_object", "address": MAP7, "size_bytes": 1024,
         "charged_bytes": 1032, "objcg": OBJCG_POD, "charged_cgroup_id": 23, "slab_cache": "kmalloc-cg-1k"},
        {"map_id": 7, "role": "buckets", "kind": "vmalloc_page", "address": VM_PAGE, "size_bytes": 4096,
         "charged_bytes": 4096, "objcg": OBJCG_POD, "charged_cgroup_id": 23, "slab_cache": None},
        {"map_id": 7, "role": "map_locked", "kind": "percpu", "address": PCPU, "size_bytes": 8,
         "charged_bytes": 0, "objcg": None, "charged_cgroup_id": None, "slab_cache": None},
        {"map_id": 9, "role": "map_struct", "kind": "slab_object", "address": MAP9, "size_bytes": 1024,
         "charged_bytes": 1032, "objcg": OBJCG_GEN2, "charged_cgroup_id": 24, "slab_cache": "kmalloc-cg-1k"},
    ])
    memcgs = frame("memcgs", [
        _memcg(1, "/", MEMCG_ROOT, OBJCG_ROOT, None, "root", 1 << 22, 0, 0),
        _memcg(23, "/pod", MEMCG_POD, OBJCG_POD, OBJCG_POD, "ghost", 1 << 21, 5128, 1),
        _memcg(24, "/pod/gen2", MEMCG_GEN2, OBJCG_GEN2, None, "online", 1 << 20, 1032, 1),
    ])
    header = {"kernel": {"release": "6.1.0-test", "build_id": "ab12"}, "target": {"kind": "vmcore", "path": "vmcore"},
              "faults": 0, "complete": True,
              "notes": [f"a map at {FREED_MAP:#x} (read as id 5) was freed during the walk; left out",
                        f"map 7: buckets at {VM_PAGE:#x} is in no known area"]}
    return Snapshot(header=header, maps=maps, allocations=allocations, memcgs=memcgs)


# -- the leak detector ---------------------------------------------------------------------------

_KPTR_TEXT = re.compile(r"0x[fF]{4}[0-9a-fA-F]*|\bffff[0-9a-f]{12}\b", re.I)


def _leaks_in_text(text: str, addrs=ADDRS) -> list[str]:
    """Kernel-address spellings in ``text``: any 0xffff..., any of ``addrs`` in hex or decimal
    (PCPU is too short to look for in decimal text without false hits; its hex is checked)."""
    found = _KPTR_TEXT.findall(text)
    low = text.lower()
    for a in addrs:
        if f"{a:x}" in low:
            found.append(f"{a:#x}")
        if a >= KERNEL_HALF and str(a) in text:
            found.append(str(a))
    return found


def _ints(v):
    if isinstance(v, bool):
        return
    if isinstance(v, int):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from _ints(x)
    elif isinstance(v, list):
        for x in v:
            yield from _ints(x)


def _leaks_in_json(doc, addrs=ADDRS) -> list:
    bad = [i for i in _ints(doc) if i >= KERNEL_HALF or i in addrs]
    return bad + _leaks_in_text(json.dumps(doc), addrs)


def _leaks_in_frame(df: pd.DataFrame, addrs=ADDRS) -> list:
    bad = []
    for c in df.columns:
        s = df[c]
        if pd.api.types.is_integer_dtype(s.dtype):
            vals = {int(v) for v in s.dropna()}
            bad += [(c, v) for v in vals if v >= KERNEL_HALF or v in addrs]
        else:
            bad += [(c, x) for v in s.dropna().astype(str) for x in _leaks_in_text(v, addrs)]
    return bad


def _leaks_in_parquet(blob: bytes, addrs=ADDRS) -> list:
    table = pq.read_table(io.BytesIO(blob))
    meta = json.dumps({k.decode(errors="replace"): v.decode(errors="replace")
                       for k, v in (table.schema.metadata or {}).items()})
    return _leaks_in_frame(table.to_pandas(), addrs) + _leaks_in_text(meta, addrs)


def _leaks_in_snapshot_file(path: Path, addrs=ADDRS) -> list:
    bad = []
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            blob = z.read(name)
            bad += [(name, x) for x in (_leaks_in_text(blob.decode()) if name.endswith(".json")
                                        else _leaks_in_parquet(blob, addrs))]
    return bad


def test_the_detector_sees_the_raw_snapshot(tmp_path):
    """The checks below can fail: the unredacted outputs are full of addresses."""
    s = _snap()
    for t in TABLES:
        assert _leaks_in_frame(s.table(t)), t
    from memtrace.render.snapshot import json_envelope

    assert _leaks_in_json(json.loads(json_envelope(s)))
    save(s, tmp_path / "raw.snapshot")
    assert {n for n, _ in _leaks_in_snapshot_file(tmp_path / "raw.snapshot")} == {
        "header.json", "maps.parquet", "allocations.parquet", "memcgs.parquet"}


# -- the address columns -------------------------------------------------------------------------


def test_address_columns_are_the_schemas_pointers():
    assert ADDRESS_COLUMNS == {
        "maps": {"map_address", "owner_objcg"},
        "allocations": {"address", "objcg"},
        "memcgs": {"memcg_address", "objcg", "orig_objcg"},
    }
    # a pointer column added later without unit "address" would escape redaction
    for t, cols in TABLES.items():
        for c in cols:
            named = c.unit != "bytes" and re.search(r"addr|objcg|ptr|counter|kptr|page$", c.name)
            if named or re.search(r"struct \w+ \*|__percpu pointer", c.meaning):
                assert c.name in ADDRESS_COLUMNS[t], f"{t}.{c.name} looks like a pointer"
                assert c.dtype in ("uint64", "UInt64"), f"{t}.{c.name}: {c.dtype}"


# -- redact() ------------------------------------------------------------------------------------


def _pairs(before: Snapshot, after: Snapshot) -> list[tuple[int, int]]:
    """(address, token number) for every non-null address cell, in the fixed order."""
    out = []
    for t in TABLES:
        cols = [c.name for c in TABLES[t] if c.name in ADDRESS_COLUMNS[t]]
        for i in range(len(before.table(t))):  # row by row, the row's columns in schema order
            for c in cols:
                a, b = before.table(t)[c].iloc[i], after.table(t)[c].iloc[i]
                assert (a is pd.NA) == (b is pd.NA), f"{t}.{c}: NULL must stay NULL"
                if a is not pd.NA:
                    out.append((int(a), int(b)))
    return out


def test_redacted_tables_hold_no_address():
    r = redact(_snap())
    for t in TABLES:
        assert _leaks_in_frame(r.table(t)) == [], t
        assert validate(t, r.table(t)) == [], t  # still the schema: --from loads it
    assert _leaks_in_json(r.header) == []
    assert r.header["notes"][0].startswith("a map at kaddr-")
    assert is_redacted(r) and not is_redacted(_snap())


def test_equal_addresses_equal_tokens_different_addresses_different_tokens():
    s = _snap()
    r = redact(s)
    pairs = _pairs(s, r)
    tok = {}
    for a, n in pairs:
        assert tok.setdefault(a, n) == n, f"{a:#x} got two tokens"
    assert len(set(tok.values())) == len(tok), "two addresses share a token"
    # numbered in order of first appearance: maps row by row, then allocations, then memcgs
    first = list(dict.fromkeys(a for a, _ in pairs))
    assert [tok[a] for a in first] == list(range(1, len(first) + 1))
    assert tok[MAP7] == 1 and tok[OBJCG_POD] == 2 and tok[MAP9] == 3
    # the same objcg in all three tables: the joins hold
    assert int(r.maps["owner_objcg"][0]) == int(r.allocations["objcg"][0]) == int(r.memcgs["objcg"][1]) == tok[OBJCG_POD]
    assert int(r.allocations["address"][0]) == int(r.maps["map_address"][0])
    j_before = s.maps.merge(s.memcgs, left_on="owner_objcg", right_on="objcg")[["map_id", "cgroup_id"]]
    j_after = r.maps.merge(r.memcgs, left_on="owner_objcg", right_on="objcg")[["map_id", "cgroup_id"]]
    pd.testing.assert_frame_equal(j_before, j_after)
    # an address only in the notes numbers after the tables'; one also in a table shares its token
    assert r.header["notes"][0] == f"a map at {token(len(tok) + 1)} (read as id 5) was freed during the walk; left out"
    assert r.header["notes"][1] == f"map 7: buckets at {token(tok[VM_PAGE])} is in no known area"
    assert r.header["redacted"]["tokens"] == len(tok) + 1


def test_non_address_columns_and_header_are_unchanged():
    s = _snap()
    r = redact(s)
    for t in TABLES:
        keep = [c.name for c in TABLES[t] if c.name not in ADDRESS_COLUMNS[t]]
        pd.testing.assert_frame_equal(r.table(t)[keep], s.table(t)[keep])
        assert list(r.table(t).columns) == list(s.table(t).columns)
    assert {k: v for k, v in r.header.items() if k not in ("notes", "redacted")} == {
        k: v for k, v in s.header.items() if k != "notes"}
    assert list(r.header)[:-1] == list(s.header)  # key order kept, the marker last
    # the input is not modified
    assert int(s.maps["map_address"][0]) == MAP7 and "kaddr" not in s.header["notes"][0]


def test_deterministic_and_idempotent():
    a, b = redact(_snap()), redact(_snap())
    for t in TABLES:
        pd.testing.assert_frame_equal(a.table(t), b.table(t))
    assert a.header == b.header
    assert redact(a) is a


def test_empty_snapshot():
    from memtrace.tables.snapshot import empty

    s = Snapshot(header={"notes": []}, maps=empty("maps"), allocations=empty("allocations"), memcgs=empty("memcgs"))
    r = redact(s)
    assert r.header["redacted"]["tokens"] == 0
    for t in TABLES:
        assert validate(t, r.table(t)) == []
        assert for_json(r).table(t).empty


def test_for_json_renders_token_strings():
    r = for_json(redact(_snap()))
    assert list(r.maps["map_address"]) == ["kaddr-0001", "kaddr-0003"]
    assert r.allocations["objcg"].tolist()[2] is None
    assert for_json(_snap()).maps["map_address"].dtype == "uint64"  # unredacted: untouched


def test_many_addresses_are_fast_and_distinct():
    """A million allocation rows (a real host's size) redact in one vectorised pass."""
    import time

    import numpy as np

    n = 1_000_000
    s = _snap()
    big = pd.DataFrame({c: s.allocations[c].iloc[[0] * n].reset_index(drop=True) for c in s.allocations.columns})
    big["address"] = pd.Series(np.uint64(0xFFFF8B0000000000) + np.arange(n, dtype=np.uint64) * np.uint64(64))
    s.allocations = big
    t0 = time.perf_counter()
    r = redact(s)
    took = time.perf_counter() - t0
    toks = r.allocations["address"].to_numpy()
    assert len(set(toks.tolist())) == n and int(toks.max()) < KERNEL_HALF
    assert took < 30, took  # generous: a guard against a per-row Python loop, not a benchmark


# -- the command line ----------------------------------------------------------------------------


def _cli(*args):
    from memtrace.cli.app import _register, app

    _register()
    return CliRunner().invoke(app, [str(a) for a in args], standalone_mode=False, catch_exceptions=True)


@pytest.fixture
def raw_file(tmp_path) -> Path:
    p = tmp_path / "raw.snapshot"
    save(_snap(), p)
    return p


def test_snapshot_redact_json_and_file(tmp_path, raw_file):
    out = tmp_path / "red.snapshot"
    r = _cli("snapshot", "--from", raw_file, "--redact", "--json", "-o", out)
    assert r.exception is None, r.exception
    doc = json.loads(r.stdout)
    assert _leaks_in_json(doc) == []
    assert _leaks_in_snapshot_file(out) == []
    assert "0x" not in r.stderr and "kaddr-" in r.stderr  # the notes, said on stderr, are redacted too
    # the JSON's tokens are the file's numbers: one numbering per output
    red = load(out)
    assert is_redacted(red)
    assert [m["map_address"] for m in doc["maps"]] == [token(v) for v in red.maps["map_address"]]
    assert [m["objcg"] for m in doc["memcgs"]] == [token(v) for v in red.memcgs["objcg"]]
    assert doc["maps"][0]["owner_objcg"] == doc["memcgs"][1]["objcg"] == "kaddr-0002"
    assert doc["header"]["redacted"]["scheme"] == "memtrace.redact/1"
    # the non-address fields equal the unredacted run's
    plain = json.loads(_cli("snapshot", "--from", raw_file, "--json").stdout)
    for table in ("maps", "memcgs"):
        for a, b in zip(plain[table], doc[table]):
            keep = {k for k in a if k not in ADDRESS_COLUMNS[table]}
            assert {k: a[k] for k in keep} == {k: b[k] for k in keep}
    assert plain["allocation_summary"] == doc["allocation_summary"]
    assert _leaks_in_json(plain)  # and that one is full of addresses


def test_a_redacted_file_loads_and_reports_run_on_it(tmp_path, raw_file):
    red = tmp_path / "red.snapshot"
    assert _cli("snapshot", "--from", raw_file, "--redact", "-o", red).exception is None
    # loaded without --redact, its JSON still shows tokens, never the token numbers as addresses
    doc = json.loads(_cli("snapshot", "--from", red, "--json").stdout)
    assert doc["maps"][0]["map_address"] == "kaddr-0001" and _leaks_in_json(doc) == []
    # reports: the same answers as on the raw file
    for args in (["report", "leftover", "--json"], ["report", "recharge", "--to", "/pod/gen2", "--map", "7", "--json"]):
        a, b = _cli(*args, "--from", raw_file), _cli(*args, "--from", red)
        assert (a.exception, b.exception) == (None, None), (a.exception, b.exception)
        ja, jb = json.loads(a.stdout), json.loads(b.stdout)
        ja.pop("snapshot", None), jb.pop("snapshot", None)
        assert ja == jb, args
    # diff matches by path, pin and name, never by address: a file and its redaction are the same
    d = _cli("diff", raw_file, red, "--json")
    assert d.exception is None, d.exception
    assert json.loads(d.stdout)["verdict"]["passed"] and "(0 changed," in json.loads(d.stdout)["verdict"]["line"]
    # redacting again changes nothing
    again = tmp_path / "again.snapshot"
    assert _cli("snapshot", "--from", red, "--redact", "-o", again).exception is None
    x, y = load(red), load(again)
    for t in TABLES:
        pd.testing.assert_frame_equal(x.table(t), y.table(t))


@pytest.mark.parametrize("redact_flag", [[], ["--redact"]])
@pytest.mark.parametrize("args", [
    ["report", "leftover"],
    ["report", "leftover", "--cgroup", "/pod"],
    ["report", "leftover", "--map", "7"],
    ["report", "recharge", "--to", "/pod/gen2", "--map", "7", "--map", "9"],
])
def test_snapshot_reports_output_no_addresses(tmp_path, raw_file, args, redact_flag):
    """leftover's --help says its JSON holds no kernel addresses: checked, JSON and Parquet,
    on an unredacted snapshot full of them (and the same for recharge's what-if)."""
    pq_out = tmp_path / "out.parquet"
    r = _cli(*args, "--from", raw_file, "--json", "-o", pq_out, *redact_flag)
    assert r.exception is None or getattr(r.exception, "exit_code", 0) in (0, 1), r.exception
    doc = json.loads(r.stdout)
    assert doc["maps"]  # something was reported
    assert _leaks_in_json(doc) == []
    assert _leaks_in_parquet(pq_out.read_bytes()) == []


def _capture_addresses(path: Path) -> set[int]:
    return {int(m, 16) for m in re.findall(r"\b(?:counter|ptr)=(0x[0-9a-fA-F]+)", path.read_text())}


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_capture_reports_output_no_addresses(tmp_path, kernel):
    """force and recharge effects read captures, whose events carry page_counter and object
    addresses: none reaches their JSON or Parquet (so they take no --redact)."""
    cap = CAPTURES / f"force-{kernel}.page_counter.txt"
    addrs = _capture_addresses(cap)
    assert addrs and max(addrs) >= KERNEL_HALF  # the input does hold addresses
    pq_out = tmp_path / "force.parquet"
    r = _cli("report", "force", cap, "--json", "-o", pq_out)
    assert r.exception is None, r.exception
    assert _leaks_in_json(json.loads(r.stdout), addrs) == []
    assert _leaks_in_parquet(pq_out.read_bytes(), addrs) == []
    truth = LAB / f"recharge-{kernel}" / "truth.json"
    r = _cli("report", "recharge", "--truth", truth, "--old", "/pod", "--new", "/pod/gen2", "--json", "-o", pq_out)
    assert r.exception is None, r.exception
    assert _leaks_in_json(json.loads(r.stdout)) == []
    assert _leaks_in_parquet(pq_out.read_bytes()) == []


def _command(*path):
    import click
    import typer.main

    from memtrace.cli.app import _register, app

    _register()
    cmd = typer.main.get_command(app)
    ctx = click.Context(cmd)
    for n in path:
        cmd = cmd.get_command(ctx, n)
    return cmd


def test_help_says_the_json_holds_raw_addresses():
    assert ("The JSON holds raw kernel addresses (they reveal the KASLR base); "
            "--redact replaces them with stable tokens.") in " ".join(_command("snapshot").help.split())
    opts = {n: {o for p in _command("report", n).params for o in p.opts} for n in ("leftover", "recharge", "force")}
    assert "--redact" in opts["leftover"] and "--redact" in opts["recharge"] and "--redact" not in opts["force"]
    (json_opt,) = [p for p in _command("report", "leftover").params if "--json" in p.opts]
    assert "holds no kernel addresses" in json_opt.help  # checked by test_snapshot_reports_output_no_addresses

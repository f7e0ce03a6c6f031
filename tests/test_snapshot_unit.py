"""memtrace snapshot without a kernel: schema, snapshot file, rendering, CLI errors."""

from __future__ import annotations

import json
import zipfile

import pandas as pd
import pytest
from typer.testing import CliRunner

from memtrace.analyses.snapshot import allocation_summary, memcg_reconciliation
from memtrace.render.snapshot import json_envelope, maps_table
from memtrace.tables.snapshot import TABLES, Snapshot, frame, schema_markdown, validate
from memtrace.tables.snapshot_file import load, save

BIG = 0xFFFF8A3D8645ABC0  # an address above 2**63: must survive without a float detour


def _snap() -> Snapshot:
    maps = frame(
        "maps",
        [
            {
                "map_id": 7, "name": "[red]x", "type": "hash", "flags": 0, "key_size": 8, "value_size": 100,
                "max_entries": 4099, "pins": "/sys/fs/bpf/[b]a", "map_address": BIG, "owner_kind": "objcg",
                "owner_objcg": BIG, "owner_cgroup_id": 23, "owner_path": "/pod", "owner_state": "reparented",
                "original_cgroup_id": None, "original_path": None, "mem_usage_bytes": None, "memlock_bytes": 462848,
                "charged_bytes": 5128, "uncharged_bytes": 32, "allocations": 3, "complete": True,
            }
        ],
    )
    allocs = frame(
        "allocations",
        [
            {"map_id": 7, "role": "map_struct", "kind": "slab_object", "address": BIG, "size_bytes": 1024,
             "charged_bytes": 1032, "objcg": BIG, "charged_cgroup_id": 23, "slab_cache": "kmalloc-cg-1k"},
            {"map_id": 7, "role": "buckets", "kind": "vmalloc_page", "address": BIG + 4096, "size_bytes": 4096,
             "charged_bytes": 4096, "objcg": BIG, "charged_cgroup_id": 23, "slab_cache": None},
            {"map_id": 7, "role": "map_locked", "kind": "percpu", "address": 0x3A000, "size_bytes": 8,
             "charged_bytes": 0, "objcg": None, "charged_cgroup_id": None, "slab_cache": None},
        ],
    )
    memcgs = frame(
        "memcgs",
        [
            {"cgroup_id": 1, "path": "/", "memcg_address": BIG, "css_flags": 11, "online": True, "dying": False,
             "populated": True, "state": "root", "memory_current_bytes": 1 << 20, "memory_max_bytes": None,
             "events_max": 0, "events_oom": 0, "events_oom_kill": 0, "events_high": 0, "objcg": None,
             "orig_objcg": None, "stock_bytes": 0, "obj_stock_bytes": 0, "objcg_charged_bytes": 0, "bpf_bytes": 0,
             "bpf_maps_owned": 0},
            {"cgroup_id": 23, "path": "/pod", "memcg_address": BIG + 64, "css_flags": 10, "online": True,
             "dying": False, "populated": False, "state": "ghost", "memory_current_bytes": 12288,
             "memory_max_bytes": 65536, "events_max": 2, "events_oom": 0, "events_oom_kill": 0, "events_high": 0,
             "objcg": BIG, "orig_objcg": None, "stock_bytes": 4096, "obj_stock_bytes": 0,
             "objcg_charged_bytes": 100, "bpf_bytes": 5128, "bpf_maps_owned": 1},
        ],
    )
    header = {"kernel": {"release": "6.1.0-test", "build_id": "ab"}, "target": {"kind": "vmcore", "path": "x"},
              "faults": 0, "complete": True, "notes": []}
    return Snapshot(header=header, maps=maps, allocations=allocs, memcgs=memcgs)


def test_frames_match_schema():
    s = _snap()
    for t in TABLES:
        assert validate(t, s.table(t)) == []
    assert int(s.maps["owner_objcg"][0]) == BIG
    assert s.allocations["objcg"].isna().tolist() == [False, False, True]


def test_file_roundtrip(tmp_path):
    s = _snap()
    save(s, tmp_path / "s.zip")
    r = load(tmp_path / "s.zip")
    assert r.header["schema"] == "memtrace.snapshot/1"
    for t in TABLES:
        pd.testing.assert_frame_equal(r.table(t), s.table(t))


def test_file_errors(tmp_path):
    from memtrace.errors import InputError

    (tmp_path / "junk").write_text("hello")
    with pytest.raises(InputError, match="not a memtrace snapshot"):
        load(tmp_path / "junk")
    with zipfile.ZipFile(tmp_path / "old.zip", "w") as z:
        z.writestr("header.json", json.dumps({"schema": "memtrace.snapshot/0"}))
    with pytest.raises(InputError, match="schema"):
        load(tmp_path / "old.zip")
    with pytest.raises(InputError, match="no such file"):
        load(tmp_path / "missing.zip")


def test_render_escapes_kernel_strings():
    from rich.console import Console

    c = Console(record=True, width=300)
    c.print(maps_table(_snap()))
    text = c.export_text()
    assert "[red]x" in text and "/sys/fs/bpf/[b]a" in text


def test_json_envelope():
    env = json.loads(json_envelope(_snap()))
    assert env["maps"][0]["owner_objcg"] == BIG
    assert env["maps"][0]["original_cgroup_id"] is None
    summ = {(r["role"], r["charged_cgroup_id"]): r["charged_bytes"] for r in env["allocation_summary"]}
    assert summ == {("buckets", 23): 4096, ("map_struct", 23): 1032, ("map_locked", None): 0}


def test_analyses():
    s = _snap()
    assert allocation_summary(s.allocations)["count"].sum() == 3
    rec = memcg_reconciliation(s.memcgs).set_index("path")
    assert rec.loc["/pod", "other_bytes"] == 12288 - 5128 - 4096 - 100
    assert rec.loc["/", "children_bytes"] == 12288


def test_schema_doc_lists_every_column():
    md = schema_markdown()
    for cols in TABLES.values():
        for c in cols:
            assert f"`{c.name}`" in md


def _cli(args):
    from memtrace.cli.app import _register, app

    _register()
    return CliRunner().invoke(app, args, standalone_mode=False, catch_exceptions=True)


def test_cli_from_file(tmp_path):
    save(_snap(), tmp_path / "s.zip")
    r = _cli(["snapshot", "--from", str(tmp_path / "s.zip"), "--json"])
    assert r.exception is None, r.exception
    assert json.loads(r.stdout)["maps"][0]["name"] == "[red]x"


@pytest.mark.parametrize(
    "args,msg",
    [
        ([], "choose exactly one"),
        (["--vmcore", "/nonexistent/vmcore"], "no such file"),
        (["--from", "/nonexistent.zip"], "no such file"),
        (["--qmp", "/nonexistent.sock"], "no such QMP socket"),
    ],
)
def test_cli_errors_are_one_line(args, msg):
    from memtrace.errors import MemtraceError

    r = _cli(["snapshot", *args])
    assert isinstance(r.exception, MemtraceError)
    assert msg in r.exception.message and "\n" not in r.exception.message

"""`memtrace ingest`: stdout is data, errors are one line naming the file, -o is atomic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from memtrace.tables.events import COLUMN_NAMES, coerce_events, validate_events

EX61 = Path(__file__).resolve().parent.parent / "fixtures" / "traces" / "restart-6.1.excerpt.txt"


def run(*args):
    return subprocess.run([sys.executable, "-m", "memtrace", "ingest", *map(str, args)], capture_output=True, text=True)


def test_json_summary_and_parquet(tmp_path):
    out = tmp_path / "ev.parquet"
    p = run(EX61, "--json", "-o", out)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    lines = [ln for ln in EX61.read_text().splitlines() if ln and not ln.startswith("#")]
    assert s["ingest"]["events_parsed"] == len(lines) == sum(e["count"] for e in s["events"])
    df = pd.read_parquet(out)
    assert tuple(df.columns) == COLUMN_NAMES and len(df) == len(lines)
    assert validate_events(coerce_events(df)) == []
    assert [f.name for f in tmp_path.iterdir()] == ["ev.parquet"]


def test_table_on_stdout():
    p = run(EX61)
    assert p.returncode == 0 and "kmem:kmalloc" in p.stdout and "lost events" in p.stdout


def test_errors_are_one_line_exit_2(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    for f, why in ((empty, "empty file"), (garbage, "not a"), (tmp_path / "missing", "no such file"), (tmp_path, "directory")):
        p = run(f, "-o", tmp_path / "x.parquet")
        assert p.returncode == 2, (f, p.stderr)
        assert p.stdout == ""
        assert p.stderr.count("\n") == 1 and str(f) in p.stderr and why in p.stderr
    assert not (tmp_path / "x.parquet").exists()
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] == []


def test_output_dir_missing(tmp_path):
    p = run(EX61, "-o", tmp_path / "nope" / "x.parquet")
    assert p.returncode == 2 and "does not exist" in p.stderr

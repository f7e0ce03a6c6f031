"""`memtrace diff` on committed real data (issue 10): lab truth of restart on 6.1 and 6.12, the
force recordings of both kernels, a capture against itself; and the bad inputs (kinds with
nothing in common, malformed rules files and rules, unmatched memcgs, maps and steps)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from memtrace.analyses.diff import match_maps, step_keys
from memtrace.analyses.diff_rules import (
    default_rules,
    default_rules_text,
    parse_limits,
    parse_rule,
    parse_rules_text,
    rule_for,
)
from memtrace.diffing import diff_inputs
from memtrace.errors import InputError
from memtrace.tables.diff import DIFF_COLUMN_NAMES

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "fixtures" / "lab"
CAP = ROOT / "fixtures" / "captures"
DAT61, DAT612 = CAP / "force-6.1.trace.dat", CAP / "force-6.12.trace.dat"
TXT61 = CAP / "force-6.1.page_counter.txt"
#: a kernel address as a hex number (16 digits, or ffff... of any length over 8)
ADDRESS = re.compile(r"(?i)\b(?:0x)?ffff[0-9a-f]{8,}\b|\b0x[0-9a-f]{12,}\b")


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "memtrace", "diff", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=dict(os.environ, COLUMNS="200"), timeout=300)


def _row(rows: pd.DataFrame, **kw) -> pd.Series:
    sel = rows
    for k, v in kw.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, (kw, sel)
    return sel.iloc[0]


# --- restart: 6.1 against 6.12 (the documented example, docs/diff.md) -----------------------


@pytest.fixture(scope="module")
def restart():
    return diff_inputs(LAB / "restart-6.1", LAB / "restart-6.12")


def test_restart_kernels_match_everything(restart):
    assert list(restart.rows.columns) == list(DIFF_COLUMN_NAMES)
    assert restart.compared == ["truth"]
    assert restart.unmatched.empty
    # the ten pinned maps by pin, the five inner arrays (unpinned, named) by name
    how = restart.maps.set_index("key")["matched_by"]
    assert (how == "pin").sum() == 10 and (how == "name").sum() == 5
    assert set(how[how == "name"].index) == {f"inner{i}" for i in range(5)}


def test_restart_kernels_what_changed(restart):
    """What changed between 6.1 and 6.12 in restart: the maps' memlock accounting (6.4+
    map_mem_usage), not the charges: /pod's memory.current agrees to a page at every step."""
    rows = restart.rows
    crossed = rows[rows["crossed"]]
    assert set(zip(crossed["entity"], crossed["name"], crossed["metric"])) == {
        ("map", "/sys/fs/bpf/hash_prealloc", "memlock_bytes"), ("map", "/sys/fs/bpf/lru_hash", "memlock_bytes"),
        ("map", "/sys/fs/bpf/ringbuf", "memlock_bytes")}
    r = _row(rows, name="/sys/fs/bpf/lru_hash", metric="memlock_bytes")
    assert (r["base"], r["new"]) == (430_080, 592_064)
    r = _row(rows, name="/sys/fs/bpf/hash_prealloc", metric="memlock_bytes")
    assert (r["base"], r["new"]) == (462_848, 788_208)
    r = _row(rows, name="/sys/fs/bpf/ringbuf", metric="memlock_bytes")
    assert (r["base"], r["new"]) == (0, 275_736)
    pod = rows[(rows["name"] == "/pod") & (rows["metric"] == "memory_current_bytes")]
    assert len(pod) == 22 and pod["delta"].abs().max() <= 4096
    gen2 = _row(rows, name="/pod/gen2", step="gen2-updated", metric="memory_current_bytes")
    assert gen2["status"] in ("same", "changed") and abs(int(gen2["delta"])) <= 4096
    # changed rows come first: every crossed row precedes every unchanged one
    assert rows["crossed"].iloc[: len(crossed)].all()
    assert rows.index[rows["status"].ne("same")].max() < rows.index[rows["status"].eq("same")].min()
    assert not restart.passed and restart.verdict().startswith("FAIL: 3 row(s)")


def test_restart_cli_exit_1_and_markdown(restart):
    r = _run(LAB / "restart-6.1", LAB / "restart-6.12", "--format", "markdown")
    assert r.returncode == 1, r.stderr
    md = r.stdout
    first = md.splitlines()[0]
    assert first.startswith("### ❌ memtrace diff: FAIL: 3 row(s) cross their rules")
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| | facet | entity | name")
    # the crossed rows first, then the other changed rows
    assert "hash_prealloc" in table[1] and "lru_hash" in table[2] and "ringbuf" in table[3] and table[3].startswith("| ❌")
    assert not ADDRESS.search(md), ADDRESS.search(md)


def test_restart_json_envelope():
    r = _run(LAB / "restart-6.1", LAB / "restart-6.12", "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "memtrace.diff/1"
    assert doc["verdict"]["passed"] is False and doc["verdict"]["crossed"] == 3
    assert doc["base"]["kernel"] == "6.1.0-56-cloud-amd64" and doc["new"]["kernel"].startswith("6.12.117")
    assert set(doc["rows"][0]) == set(DIFF_COLUMN_NAMES)
    assert doc["unmatched"] == [] and len(doc["maps"]) == 15
    assert not ADDRESS.search(r.stdout)


def test_a_rule_on_the_command_line_loosens_the_default():
    rules = default_rules() + [parse_rule("memlock_bytes:/sys/fs/bpf/*:+100%,+512KiB")]
    res = diff_inputs(LAB / "restart-6.1", LAB / "restart-6.12", rules)
    assert res.passed, res.verdict()
    r = _run(LAB / "restart-6.1", LAB / "restart-6.12", "--rule", "memlock_bytes:/sys/fs/bpf/*:off")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("PASS: no rule crossed")


def test_a_tight_rule_fails_naming_the_rows():
    r = _run(LAB / "restart-6.1", LAB / "restart-6.12", "--no-default-rules", "--rule",
             "memory_current_bytes:/pod:+0", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    crossed = [x for x in doc["rows"] if x["crossed"]]
    assert crossed and {x["name"] for x in crossed} == {"/pod"}
    assert all(x["delta"] > 0 and x["rule"] == "memory_current_bytes:/pod:+0" for x in crossed)


# --- captures ---------------------------------------------------------------------------


def test_a_capture_against_itself_passes_with_no_change():
    res = diff_inputs(DAT61, DAT61)
    assert res.passed and res.compared == ["truth", "capture"]
    assert set(res.rows["status"]) == {"same"} and res.unmatched.empty
    assert (res.rows["delta"] == 0).all()
    # the capture's numbers are there: the 53 forcing calls on /pod/genf at force-charged
    f = _row(res.rows, facet="capture", name="/pod/genf", step="force-charged", metric="forced_charges")
    assert f["base"] == f["new"] == 53
    r = _run(TXT61, TXT61)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("PASS: no rule crossed (0 changed, 0 added, 0 removed")


def test_force_captures_61_against_612():
    res = diff_inputs(DAT61, DAT612)
    assert res.compared == ["truth", "capture"] and res.unmatched.empty
    rows = res.rows
    # both kernels force 53 pages above genf's limit, and say so in memory.events
    for metric in ("forced_charges", "forced_bytes"):
        r = _row(rows, facet="capture", name="/pod/genf", step="force-charged", metric=metric)
        assert r["status"] == "same" and r["base"] == (53 if metric == "forced_charges" else 53 * 4096)
    ev = _row(rows, facet="truth", name="/pod/genf", step="force-charged", metric="events_max")
    assert ev["base"] == ev["new"] == 53
    # net page-counter movement of genf while forcing is the same on both kernels
    net = _row(rows, facet="capture", name="/pod/genf", step="force-charged", metric="net_bytes")
    assert net["status"] == "same"
    # the sockhash's memlock doubled on 6.12 (map_mem_usage), under the default limits
    m = _row(rows, facet="truth", entity="map", name="/sys/fs/bpf/sockhash", metric="memlock_bytes")
    assert (m["base"], m["new"]) == (32_768, 65_872) and not m["crossed"]
    # event counts are compared per step and kind; kfree doubles in two early steps on 6.12
    assert set(rows.loc[rows["crossed"], "metric"]) <= {"event_count"}
    kfree = rows[(rows["facet"] == "capture") & (rows["name"] == "kmem:kfree")]
    assert set(kfree["step"]) >= {"start", "create-sockhash", "limit-set", "force-charged", "sockets-closed"}


def test_capture_with_a_truth_of_another_run_is_refused(tmp_path):
    r = _run(TXT61, DAT61, "--new-truth", LAB / "restart-6.1" / "truth.json")
    assert r.returncode == 2 and "not from the same run" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# --- bad input ------------------------------------------------------------------------------


def _empty_snapshot(path: Path) -> Path:
    from memtrace.tables.snapshot import Snapshot, empty
    from memtrace.tables.snapshot_file import save

    save(Snapshot(header={"kernel": {"release": "none"}, "target": {}, "faults": 0, "complete": True, "notes": []},
                  maps=empty("maps"), allocations=empty("allocations"), memcgs=empty("memcgs")), path)
    return path


def test_a_capture_against_a_snapshot_exits_2_saying_what_compares(tmp_path):
    snap = _empty_snapshot(tmp_path / "x.snapshot")
    # a capture with no truth beside it: only the capture facet
    cap = tmp_path / "alone.txt"
    cap.write_bytes(TXT61.read_bytes())
    r = _run(cap, snap)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("memtrace: error: nothing to compare")
    for s in ("is a capture (capture)", "is a snapshot (snapshot)", "A capture compares with a capture",
              "a snapshot file with a snapshot file"):
        assert s in err[0], err[0]
    with pytest.raises(InputError, match="nothing to compare"):
        diff_inputs(LAB / "restart-6.1", snap)


@pytest.mark.parametrize("text,line,what", [
    ('[[rule]]\nmetric = "net_bytes"\nname = "/pod*\nlimits = "+5%"\n', 3, "line 3"),
    ('[[rule]]\nmetric = "net_bytes"\nname = "/pod*"\nlimits = "+5%"\n\n[[rule]]\nmetric = "x"\nname = "*"\n'
     'limits = "+5 percent"\n', 9, "rule #2"),
    ('[[rule]]\nmetric = "net_bytes"\nname = "/pod*"\nlimit = "+5%"\n', 4, "unknown key 'limit'"),
    ('[[rule]]\nmetric = "net_bytes"\nname = "/pod*"\nlimits = "+5KB"\n', 4, "KB and MB are not used"),
])
def test_a_malformed_rules_file_exits_2_naming_file_and_line(tmp_path, text, line, what):
    f = tmp_path / "rules.toml"
    f.write_text(text)
    r = _run(TXT61, TXT61, "--rules", f)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and str(f) in err[0] and what in err[0], err
    assert f"{f}:{line}:" in err[0] or f"line {line}," in err[0], err[0]


@pytest.mark.parametrize("rule", ["net_bytes:+5%", "net_bytes:/pod:5 pct", "net_bytes:/pod:+5%,+6%", ":/pod:+5%"])
def test_a_malformed_rule_option_exits_2(rule):
    r = _run(TXT61, TXT61, "--rule", rule)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert rule in r.stderr


def test_unmatched_memcgs_maps_and_steps_are_listed():
    """restart against force: different scenarios, so different cgroups, maps and steps: each
    is listed as unmatched and its rows are added or removed, none dropped."""
    res = diff_inputs(LAB / "restart-6.1", LAB / "force-6.1")
    u = res.unmatched
    assert not u.empty
    for side, status in (("base", "removed"), ("new", "added")):
        memcgs = set(u.loc[(u["side"] == side) & (u["entity"] == "memcg"), "name"])
        maps = set(u.loc[(u["side"] == side) & (u["entity"] == "map"), "name"])
        rows = res.rows[res.rows["status"] == status]
        assert memcgs <= set(rows.loc[rows["entity"] == "memcg", "name"])
        assert maps <= set(rows.loc[rows["entity"] == "map", "name"])
    assert {"/sys/fs/bpf/hash_prealloc", "/pod/gen1", "/pod/gen2", "fill-lpm_trie"} <= set(u.loc[u["side"] == "base", "name"])
    assert {"/sys/fs/bpf/sockhash", "/pod/genf", "force-charged"} <= set(u.loc[u["side"] == "new", "name"])
    assert set(u["entity"]) == {"memcg", "map", "step"}
    r = _run(LAB / "restart-6.1", LAB / "force-6.1", "--format", "markdown", "--max-rows", "1000")
    assert "**Unmatched** (on one side only):" in r.stdout
    for name in u["name"]:
        assert f"`{name}`" in r.stdout


def test_output_parquet_is_written(tmp_path):
    out = tmp_path / "d.parquet"
    r = _run(TXT61, TXT61, "-o", out)
    assert r.returncode == 0, r.stderr
    back = pd.read_parquet(out)
    assert list(back.columns) == list(DIFF_COLUMN_NAMES) and len(back) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["d.parquet"]


# --- rules and matching, as functions --------------------------------------------------------


def test_both_limits_must_be_crossed():
    r = parse_rule("net_bytes:/pod*:+5%,+64KiB")
    assert r.judge(2_000_000, 2_000_000 + 65 * 1024) is None  # over 64 KiB, under 5 %
    assert r.judge(100_000, 160_000) is None  # over 5 %, under 64 KiB
    assert r.judge(1_000_000, 1_100_000) is not None  # over both
    assert r.judge(1_100_000, 0) is None  # shrinking is not limited by + limits
    assert r.judge(None, 70 * 1024) is not None  # added: from 0, over both
    grow, shrink, off = parse_limits("10%,-1K")
    assert grow.rel == 0.10 and grow.abs is None and shrink.rel == 0.10 and shrink.abs == 1024 and not off


def test_the_last_matching_rule_decides():
    rules = parse_rules_text('[[rule]]\nmetric = "*"\nname = "*"\nlimits = "+0"\n'
                             '[[rule]]\nmetric = "net_bytes"\nname = "/pod*"\nstep = "fill-*"\nlimits = "off"\n',
                             "r.toml")
    assert rule_for(rules, "capture", "memcg", "/pod/gen1", "fill-array", "net_bytes").off
    assert rule_for(rules, "capture", "memcg", "/pod/gen1", "create-array", "net_bytes").text == "r.toml:1"


def test_the_default_rules_parse_and_name_the_noise_they_were_calibrated_on():
    text = default_rules_text()
    assert "bench/diff-noise.json" in text and "TO BE CALIBRATED" not in text
    rules = default_rules()
    assert rule_for(rules, "capture", "memcg", "/pod", "x", "net_bytes").judge(0, 4096) is None


def test_maps_match_by_pin_then_name_then_type():
    def maps(rows):
        return pd.DataFrame(rows, columns=["map_id", "name", "type", "pins"])

    b = maps([(1, "a", "hash", ("/sys/fs/bpf/a",)), (2, "x", "array", ()), (3, "", "ringbuf", ()),
              (4, "gone", "lpm_trie", ())])
    n = maps([(7, "renamed", "hash", ("/sys/fs/bpf/a",)), (9, "x", "array", ()), (8, "", "ringbuf", ()),
              (5, "", "percpu_array", ())])
    table, bk, nk = match_maps(b, n)
    got = dict(zip(table["key"], table["matched_by"]))
    assert got == {"/sys/fs/bpf/a": "pin", "x": "name", "ringbuf#1": "type", "gone": "base only",
                   "percpu_array#1": "new only"}
    assert bk[1] == nk[7] and bk[2] == nk[9] and bk[3] == nk[8]


def test_repeated_step_names_are_numbered():
    assert step_keys(["start", "fill", "fill", "end", "fill"]) == ["start", "fill", "fill#2", "end", "fill#3"]

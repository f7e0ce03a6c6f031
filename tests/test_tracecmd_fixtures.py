"""Real trace.dat files (fixtures/captures/force-<kernel>.trace.dat) read through
`trace-cmd report` (memtrace.sources.trace.tracecmd), checked against the run's own
truth.json and against facts read off the files by hand.

Recorded by `trace-cmd record` 3.1.6 inside the lab guest (`fixtures/make-lab-fixtures
--trace-dat`, fixtures/captures/README.md): the force scenario with memtrace's default probes
installed, trace-cmd recording the page_counter and try_charge probes, cgroup life cycle and
kmem:kfree, in the tracefs instance `memtrace-tc`, clock boot.

`trace-cmd report` text a user hands in (single lines of these files and whole reports of
them): tests/test_tracecmd_report.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from memtrace.analyses.charges import charges_by_step, step_markers
from memtrace.sources.trace import load_trace
from memtrace.sources.trace.tracecmd import buffers
from memtrace.tables.lab_truth import load_truth

CAPTURES = Path(__file__).resolve().parent.parent / "fixtures" / "captures"
KERNELS = ("6.1", "6.12")

pytestmark = pytest.mark.skipif(shutil.which("trace-cmd") is None,
                                reason="reading a trace.dat needs trace-cmd (Debian package trace-cmd; scripts/setup installs it)")

#: events by name, counted in `trace-cmd report` of each file
COUNTS = {
    "6.1": {"kmem:kfree": 21692, "memtrace:try_charge": 357, "memtrace:try_charge_ret": 357,
            "memtrace:pc_try_charge": 117, "memtrace:pc_try_charge_ret": 117, "memtrace:force_charge": 53,
            "memtrace:uncharge": 32, "ftrace:print": 5, "cgroup:cgroup_mkdir": 3},
    "6.12": {"kmem:kfree": 27118, "memtrace:try_charge": 380, "memtrace:try_charge_ret": 380,
             "memtrace:pc_try_charge": 117, "memtrace:pc_try_charge_ret": 117, "memtrace:force_charge": 53,
             "memtrace:uncharge": 44, "ftrace:print": 5, "cgroup:cgroup_mkdir": 3},
}
#: cgroup ids (cgroup_mkdir's id= and truth.json's inode numbers)
IDS = {"6.1": {"/pod": 23, "/pod/genf": 56, "/memtrace-settle": 89},
       "6.12": {"/pod": 27, "/pod/genf": 62, "/memtrace-settle": 97}}
#: (step, path) -> charged, forced, uncharged pages of the page counter
ROWS = {
    "6.1": {1: (64, 0, 62), 2: (128, 0, 111), 3: (0, 0, 0), 4: (0, 53, 0), 5: (0, 0, 44)},
    "6.12": {1: (64, 0, 62), 2: (128, 0, 111), 3: (0, 0, 0), 4: (0, 53, 0), 5: (0, 0, 53)},
}
#: the probes' ip as tracefs prints it (6.12's kprobes sit after the ENDBR64: +0x4)
FORCE_IP = {"6.1": "(page_counter_charge+0x0/0x60)", "6.12": "(page_counter_charge+0x4/0x80)"}
RET_IP = {"6.1": "(try_charge_memcg+0xc7/0x780 <- page_counter_try_charge)",
          "6.12": "(try_charge_memcg+0xcd/0x650 <- page_counter_try_charge)"}
#: kfree(NULL) calls: `ptr=(nil)` lines in trace-cmd report
KFREE_NULL = {"6.1": 1983, "6.12": 6546}


def _load(kernel: str):
    ev, st = load_trace(str(CAPTURES / f"force-{kernel}.trace.dat"))
    return ev, st, load_truth(CAPTURES / f"force-{kernel}.trace.dat.truth.json")


def _report(kernel: str) -> bytes:
    return subprocess.run(["trace-cmd", "report", "-t", "-N", "-i", str(CAPTURES / f"force-{kernel}.trace.dat")],
                          capture_output=True, check=True).stdout


@pytest.mark.parametrize("kernel", KERNELS)
def test_fixture_is_small_and_one_instance_buffer(kernel):
    p = CAPTURES / f"force-{kernel}.trace.dat"
    assert p.stat().st_size < 1_600_000
    # `trace-cmd record -B memtrace-tc` writes the (empty) top level too: two buffers
    assert buffers(str(p)) == [{"name": "", "clock": "boot", "cpus": 0, "bytes": 0},
                               {"name": "memtrace-tc", "clock": "boot", "cpus": 2,
                                "bytes": {"6.1": 111356, "6.12": 141035}[kernel]}]


@pytest.mark.parametrize("kernel", KERNELS)
def test_event_counts_by_name(kernel):
    ev, st, _ = _load(kernel)
    assert st.format == "trace.dat"
    assert (st.malformed, st.lost_events, st.unknown_events, st.warnings) == (0, 0, 0, None)
    assert ev["event"].astype(str).value_counts().to_dict() == COUNTS[kernel]
    assert st.events_parsed == sum(COUNTS[kernel].values())


@pytest.mark.parametrize("kernel", KERNELS)
def test_cgroup_ids_match_truth(kernel):
    ev, _, truth = _load(kernel)
    mk = ev[ev["event"].astype(str).eq("cgroup:cgroup_mkdir")]
    got = dict(zip(mk["cgroup_path"].astype(str), mk["cgroup_id"].astype(int)))
    assert got == IDS[kernel]
    for path, cid in IDS[kernel].items():
        assert set(truth[truth["path"] == path]["cgroup_id"].astype(int)) == {cid}
    # every page_counter probe names a cgroup of the run
    pc = ev[ev["event"].astype(str).isin(["memtrace:pc_try_charge", "memtrace:force_charge", "memtrace:uncharge"])]
    assert set(pc["cgroup_id"].astype(int)) <= set(truth["cgroup_id"].astype(int))


@pytest.mark.parametrize("kernel", KERNELS)
def test_force_charge(kernel):
    """genf's limit is its usage; 3000 GFP_ATOMIC sockhash inserts by mapctl force 53 pages
    over it, one page per forcing call, each after two failed tries; 53 `max` events."""
    ev, _, truth = _load(kernel)
    genf = IDS[kernel]["/pod/genf"]
    f = ev[ev["event"].astype(str).eq("memtrace:force_charge")]
    assert set(f["cgroup_id"].astype(int)) == {genf}
    assert f["pages"].astype(int).tolist() == [1] * 53
    assert set(f["comm"].astype(str)) == {"mapctl"}
    assert f["args"].astype(str).str.startswith(FORCE_IP[kernel] + " counter=0x").all()
    row = lambda step, path: truth[(truth["step_name"] == step) & (truth["path"] == path)].iloc[0]  # noqa: E731
    lim, now = row("limit-set", "/pod/genf"), row("force-charged", "/pod/genf")
    assert int(now["memory_current_bytes"]) - int(now["memory_max_bytes"]) == 53 * 4096 == 217088
    assert int(now["events_max"]) - int(lim["events_max"]) == 53
    r = charges_by_step(ev, truth)
    g = r[(r["step_name"] == "force-charged") & (r["path"] == "/pod/genf")].iloc[0]
    assert (g["force_charges"], g["failed_try_charges"], g["forced_pages"]) == (53, 106, 53)


@pytest.mark.parametrize("kernel", KERNELS)
def test_page_counter_reconciles_with_truth(kernel):
    ev, _, truth = _load(kernel)
    r = charges_by_step(ev, truth)
    assert r.attrs["unpaired_entries"] == 0 and r.attrs["unpaired_returns"] == 0
    assert r.attrs["entry_return_mismatches"] == 0 and r.attrs["unknown_cgroup_ids"] == []
    for path in ("/pod", "/pod/genf"):
        got = r[r["path"] == path].set_index("step")
        want = dict(ROWS[kernel])
        if path == "/pod/genf":
            want[1] = (0, 0, 0)  # genf is created in step 1 and charged from step 2 on
        assert {s: tuple(int(x) for x in got.loc[s, ["charged_pages", "forced_pages", "uncharged_pages"]])
                for s in want} == want
        checked = got[got["delta_memory_current_bytes"].notna()]
        assert len(checked) == 4 and (checked["residual_bytes"] == 0).all()


@pytest.mark.parametrize("kernel", KERNELS)
def test_kprobe_text_and_markers_read_as_tracefs_prints_them(kernel):
    ev, _, truth = _load(kernel)
    ret = ev[ev["event"].astype(str).eq("memtrace:pc_try_charge_ret")]["args"].astype(str)
    assert ret.str.startswith(RET_IP[kernel]).all()
    m = step_markers(ev)
    assert m["step_name"].tolist() == ["start", "create-sockhash", "limit-set", "force-charged", "sockets-closed"]
    marks = ev[ev["event"].astype(str).eq("ftrace:print")]["marker"].astype(str).tolist()
    assert marks == [f"memtrace_step {i:03d} {n}" for i, n in zip(m["step"], m["step_name"])]
    # nanosecond timestamps (trace-cmd prints the boot clock as a raw count): each marker
    # precedes the /proc/uptime the guest read right after it, by less than a second
    up = truth.drop_duplicates("step").set_index("step")["uptime_ns"]
    for s, ts in zip(m["step"], m["ts_ns"]):
        assert 0 <= int(up[s]) + 10_000_000 - int(ts) < 1_000_000_000
    kf = ev[ev["event"].astype(str).eq("kmem:kfree")]
    assert kf["ptr"].notna().all() and int((kf["ptr"] == 0).sum()) == KFREE_NULL[kernel]
    assert kf["call_site"].astype(str).str.contains(r"\+0x[0-9a-f]+/0x[0-9a-f]+$").mean() > 0.99


def test_trace_cmd_without_dump_still_reads_the_events(tmp_path):
    """A trace-cmd with no `dump` command (older ones): the events are still read, the
    metadata steps that need it are skipped, each with a warning (not an error)."""
    fake = tmp_path / "trace-cmd"
    fake.write_text('#!/bin/sh\n[ "$1" = dump ] && { echo "trace-cmd: unknown command dump" >&2; exit 1; }\n'
                    f'exec {shutil.which("trace-cmd")} "$@"\n')
    fake.chmod(0o755)
    from memtrace.sources.trace.tracecmd import load_trace_dat

    ev, st = load_trace_dat(str(CAPTURES / "force-6.1.trace.dat"), trace_cmd=str(fake))
    assert st.events_parsed == sum(COUNTS["6.1"].values()) and st.malformed == 0
    assert len(st.warnings) == 3 and all("trace-cmd dump failed" in w for w in st.warnings)
    assert int(ev["event"].astype(str).eq("kmem:kfree").sum()) == COUNTS["6.1"]["kmem:kfree"]
    # what needs no `dump` is still done: buffer prefixes found in the text, markers, kprobes
    # known by name (their ips stay addresses without the kallsyms), groups from `report -E`
    assert ev["event"].astype(str).value_counts().to_dict() == COUNTS["6.1"] and st.unknown_events == 0
    assert not ev["comm"].astype(str).str.startswith("memtrace-tc").any()
    assert ev[ev["event"].astype(str).eq("memtrace:force_charge")]["args"].str.match(r"\(0xffffffff[0-9a-f]{8}\+0x0\) ").all()

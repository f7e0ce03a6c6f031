"""`memtrace capture` end to end on real kernels: run by the guest itself, with real kprobes.

tests/scenarios/capture_live.sh (a `lab run --live-snapshot` guest, so the host's Python and
memtrace run in the guest) starts `memtrace capture`, creates and fills two maps in /pod/p1,
and stops the capture with SIGTERM. Checked here: the probes it installed are those memtrace
generates for that kernel from its vmlinux, tracefs is left as found (kprobe_events and
instances/ before, during, after), and the capture, ingested on the host, reconciles with
the guest's own memory.current. Set MEMTRACE_LAB_RUNS=DIR to reuse DIR/capture_live-<kernel>.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from conftest import p1_filled_reconciliation
from memtrace.sources.trace import load_trace

pytestmark = pytest.mark.lab

SCENARIO = Path(__file__).parent / "scenarios" / "capture_live.sh"
#: the probes whose events the page-counter reconciliation adds up
PAGE_COUNTER_PROBES = {"memtrace/pc_try_charge", "memtrace/pc_try_charge_ret", "memtrace/force_charge", "memtrace/uncharge"}


def _run(kernel: str, root: Path) -> Path:
    from conftest import session_run
    from memtrace.lab.run import run

    return session_run("capture_live", kernel, root, "files/capture.rc", lambda out: run(
        str(SCENARIO), kernel, out, live_snapshot=True, vmcore=False, force=True))


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("capture-live")


def _expected_probes(kernel: str) -> set[str]:
    from memtrace.lab import kernels
    from memtrace.sources.kernel.target import vmlinux_target
    from memtrace.sources.trace import probedefs

    k = kernels.cached(kernel) or kernels.fetch(kernel)
    ps = probedefs.generate(vmlinux_target(Path(k.vmlinux)))
    return {p.event for p in ps.installable}


def _lines(p: Path) -> list[str]:
    return [ln for ln in p.read_text().splitlines() if ln.strip()]


def test_capture_in_guest_installs_records_and_cleans_up(kernel, runs_root):
    d = _run(kernel, runs_root) / "files"
    rc = int((d / "capture.rc").read_text().strip().removeprefix("rc="))
    summary = json.loads((d / "capture.json").read_text())
    err = (d / "capture.err").read_text()
    want = _expected_probes(kernel)
    # the guest generated its probes from its own BTF; the host from the same kernel's DWARF
    assert set(summary["probes_installed"]) == want and len(want) >= 15
    assert summary["probes_failed"] == [] and summary["probes_skipped"] == []
    assert summary["tracepoints_failed"] == [] and summary["lost_events_total"] == 0
    assert summary["interrupted"] is True  # stopped by SIGTERM, which is not "incomplete"
    # exit 5 only for what the summary names; the one seen here: kprobe hits missed (6.1)
    if rc == 5:
        assert summary["incomplete"] and summary["incomplete_reasons"]
        assert all("probe hit(s) missed" in r for r in summary["incomplete_reasons"]), summary["incomplete_reasons"]
        assert summary["probe_misses_total"] > 0 and "capture incomplete" in err
        warnings.warn(f"{kernel}: capture missed probe hits: {summary['probe_misses']}")
    else:
        assert rc == 0 and not summary["incomplete"] and summary["probe_misses_total"] == 0, (rc, err)
    # tracefs: memtrace's kprobes and its instance exist while recording, and only then
    during = _lines(d / "kprobe_events.during")
    assert {re.match(r"[pr]\d*:(\S+) ", ln).group(1) for ln in during} == want
    assert _lines(d / "kprobe_events.before") == [] and _lines(d / "kprobe_events.after") == []
    inst = summary["instance"]
    assert inst and inst.startswith("memtrace-")
    assert _lines(d / "instances.during") == [inst]
    assert _lines(d / "instances.before") == [] and _lines(d / "instances.after") == []


def test_capture_in_guest_reconciles_with_memory_current(kernel, runs_root):
    """Net page_counter movement of /pod/p1 in the guest's own capture equals its
    memory.current change between the steps around the workload (docs/charges.md)."""
    run_dir = _run(kernel, runs_root)
    summary = json.loads((run_dir / "files" / "capture.json").read_text())
    ev, st = load_trace(str(run_dir / "files" / "capture.txt"))
    assert st.malformed == 0 and st.lost_events == 0 and not st.truncated
    names = set(ev["event"].astype(str))
    assert {"memtrace:pc_try_charge", "memtrace:pc_try_charge_ret", "memtrace:uncharge"} <= names, names
    missed = {p: n for p, n in summary["probe_misses"].items() if p in PAGE_COUNTER_PROBES and n}
    delta, net_pages, mv = p1_filled_reconciliation(ev, run_dir)
    assert mv.attrs["entry_return_mismatches"] == 0 and mv.attrs["unpaired_entries"] == 0
    assert delta > 100_000  # the hash elements and the array were charged to p1
    if not missed:
        assert net_pages * 4096 == delta
    else:
        # a missed page-counter hit leaves the sum short by what it carried: whole pages,
        # at most MAX_PAGES_PER_COUNTER_CALL per miss (conftest)
        from conftest import MAX_PAGES_PER_COUNTER_CALL

        warnings.warn(f"{kernel}: page-counter probe hits missed ({missed}); residual {delta - net_pages * 4096} B")
        assert abs(delta - net_pages * 4096) <= sum(missed.values()) * MAX_PAGES_PER_COUNTER_CALL * 4096

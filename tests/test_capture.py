"""memtrace capture against this host's real tracefs.

The lab guests have no Python, so capture cannot run inside them; these tests run where a
writable tracefs exists (mounted, or mountable by root) and skip otherwise. On a host without
kprobe events (e.g. a kernel built without CONFIG_KPROBE_EVENTS) the kprobe lines generated
for a lab kernel exercise the "probe refused: counted, others continue, nothing left" path.

Exit status (README): 0 complete, 5 incomplete (a probe skipped or refused, a tracepoint not
enabled or missing, events lost, probe hits missed), 0 again with --allow-partial. Every
case but the missed hits runs on the real tracefs; misses need kprobes, which this host may
lack, so that case injects a kprobe_profile reading (the real file's format and its matching
to kprobe_events are checked on the lab kernels in tests/test_localstorage_lab.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from memtrace.errors import EnvironmentProblem
from memtrace.sources.kernel.target import find_tracefs, live_target
from memtrace.sources.trace import capture as capmod
from memtrace.sources.trace import probedefs
from memtrace.sources.trace.capture import Capture


@pytest.fixture(scope="module")
def tracefs():
    try:
        root = find_tracefs()
        yield root
        return
    except EnvironmentProblem:
        pass
    if os.geteuid() != 0:
        pytest.skip("no tracefs mounted and not root")
    d = tempfile.mkdtemp(prefix="memtrace-tracefs-")
    r = subprocess.run(["mount", "-t", "tracefs", "nodev", d], capture_output=True, text=True)
    if r.returncode != 0:
        os.rmdir(d)
        pytest.skip(f"no writable tracefs on this host: {r.stderr.strip()}")
    try:
        yield Path(d)
    finally:
        subprocess.run(["umount", d])
        os.rmdir(d)


def _state(t: Path) -> dict:
    def rd(rel):
        try:
            return (t / rel).read_text()
        except OSError:
            return None

    return {
        "instances": sorted(p.name for p in (t / "instances").iterdir()) if (t / "instances").is_dir() else None,
        "kprobe_events": rd("kprobe_events"),
        "dynamic_events": rd("dynamic_events"),
        "tracing_on": rd("tracing_on"),
        "buffer_size_kb": rd("buffer_size_kb"),
        "set_event": rd("set_event"),
        "trace_clock": rd("trace_clock"),
    }


def _live(tracefs):
    return probedefs.generate(live_target(tracefs))


def test_capture_records_and_leaves_tracefs_as_found(tracefs, tmp_path):
    before = _state(tracefs)
    out = tmp_path / "cap.txt"
    res = Capture(tracefs, _live(tracefs), out, duration=1.0, buffer_kb=1024).run()
    assert _state(tracefs) == before
    assert res.path == out and out.exists()
    assert not list(tmp_path.glob(".cap.txt.*")), "temp files left behind"
    text = out.read_text()
    assert text.startswith("# tracer: nop\n") and "# memtrace capture" in text
    assert res.tracepoints_enabled and "kmem:kmalloc" in res.tracepoints_enabled
    assert set(res.lost_events) and all("overrun" in v for v in res.lost_events.values())
    assert res.cleanup_errors == []
    # this test process itself allocates: some kmem event must be there
    assert " kmalloc: " in text or " kmem_cache_alloc: " in text or " kfree: " in text


def test_refused_probes_are_counted_and_none_left(tracefs, tmp_path):
    """kprobe lines for a lab kernel: refused here (other kernel, or no kprobe events);
    whatever happens, every one is accounted for and none survives the capture."""
    from memtrace.lab import kernels

    k = kernels.cached("6.1")
    if k is None:
        if os.environ.get("MEMTRACE_LAB") == "0":
            pytest.skip("lab kernel 6.1 not cached and MEMTRACE_LAB=0")
        k = kernels.fetch("6.1")
    from memtrace.sources.kernel.target import vmlinux_target

    ps = probedefs.generate(vmlinux_target(k.vmlinux, use_dwarf=False))
    before = _state(tracefs)
    res = Capture(tracefs, ps, tmp_path / "cap.txt", duration=0.3, buffer_kb=256).run()
    assert len(res.probes_installed) + len(res.probes_failed) == len(ps.installable)
    assert all(f["error"] for f in res.probes_failed)
    assert res.cleanup_errors == []
    after = _state(tracefs)
    assert after == before
    for f in ("kprobe_events", "dynamic_events"):
        assert "memtrace/" not in (after[f] or "")


def test_sigterm_ends_capture_cleanly(tracefs, tmp_path):
    """SIGTERM is how a capture without --duration ends: a complete capture still exits 0."""
    before = _state(tracefs)
    out = tmp_path / "sig.txt"
    p = subprocess.Popen(
        [sys.executable, "-m", "memtrace", "capture", "--tracefs", str(tracefs), "-o", str(out), "--buffer-kb", "512",
         "--defs", str(_defs(tmp_path, ["kmem:kmalloc", "kmem:kfree"]))],
        stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 60
    line = ""
    while time.time() < deadline:
        line = p.stderr.readline()
        if "recording" in line or not line:
            break
    assert "recording" in line, line
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    rest = p.stderr.read()
    assert p.wait(30) == 0, rest
    assert out.exists() and "# interrupted: yes" in out.read_text()
    assert _state(tracefs) == before


def test_no_tracefs_is_one_line_exit_3(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "memtrace", "capture", "--tracefs", str(tmp_path), "-o", str(tmp_path / "x.txt")],
        capture_output=True, text=True,
    )
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("memtrace: error:")
    assert r.stdout == ""


# -- complete or not: exit 0 / 5 ----------------------------------------------------------------


def _defs(tmp_path: Path, events: list[str], *, optional: list[str] = (), probe_fn: str | None = None) -> Path:
    """A definitions file: one required tracepoint group, maybe an optional one and a probe."""
    text = "[[tracepoints]]\nevents = [" + ", ".join(f'"{e}"' for e in events) + "]\n"
    if optional:
        text += "[[tracepoints]]\noptional = true\nevents = [" + ", ".join(f'"{e}"' for e in optional) + "]\n"
    if probe_fn:
        text += f"""
[[probe]]
name = "mt_test_probe"
group = "memtrace"
  [[probe.attach]]
  kind = "kprobe"
  function = ["{probe_fn}"]
  args = []
"""
    p = tmp_path / f"defs-{len(list(tmp_path.glob('defs-*')))}.toml"
    p.write_text(text)
    return p


def _cli(tracefs, out: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "memtrace", "capture", "--tracefs", str(tracefs), "-o", str(out), "--buffer-kb", "4096",
         "-d", "0.3", *args],
        capture_output=True, text=True, timeout=120,
    )


def _last_error(stderr: str) -> str:
    return [l for l in stderr.splitlines() if l.startswith("memtrace: error:")][-1]


def test_complete_capture_exits_0_with_its_summary_in_the_header(tracefs, tmp_path):
    import json

    from memtrace.sources.trace import load_trace

    out = tmp_path / "ok.txt"
    # a gentle workload, so the 0.3 s hold events even on an idle host (and no overrun: a
    # tight loop overran 256 KiB per CPU once, which rightly made the capture incomplete)
    load = subprocess.Popen([sys.executable, "-c", "import time\nfor i in range(20000): open('/proc/self/stat').read(); time.sleep(0.001)"])
    try:
        r = _cli(tracefs, out, "--defs", str(_defs(tmp_path, ["kmem:kmalloc", "kmem:kfree"], optional=["memtrace_none:x"])),
                 "--json", "--buffer-kb", "8192")
    finally:
        load.kill()
        load.wait()
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr
    d = json.loads(r.stdout)
    assert d["incomplete"] is False and d["incomplete_reasons"] == [] and d["probe_misses_total"] == 0
    text = out.read_text()
    assert "# complete: yes\n" in text
    h = capmod.read_capture_header(out)
    assert h["schema"] == capmod.CAPTURE_SCHEMA and h["incomplete"] is False
    assert h["tracepoints_enabled"] == ["kmem:kmalloc", "kmem:kfree"] and h["tracepoints_missing"] == []
    # the header is only comments to the text reader
    _, st = load_trace(str(out))
    assert st.malformed == 0


def test_missing_required_tracepoint_is_incomplete_exit_5(tracefs, tmp_path):
    out = tmp_path / "miss-tp.txt"
    defs = str(_defs(tmp_path, ["kmem:kmalloc", "memtrace_none:no_such_event"]))
    r = _cli(tracefs, out, "--defs", defs)
    assert r.returncode == 5, r.stderr
    assert "1 tracepoint(s) missing from the kernel (memtrace_none:no_such_event)" in _last_error(r.stderr)
    assert out.exists() and "# complete: no: 1 tracepoint(s) missing" in out.read_text()
    r = _cli(tracefs, out, "--defs", defs, "--allow-partial")
    assert r.returncode == 0, r.stderr
    assert "capture incomplete (accepted by --allow-partial)" in r.stderr and "memtrace: error" not in r.stderr


def test_skipped_or_refused_probe_is_incomplete_exit_5(tracefs, tmp_path):
    """A probe on a function this kernel does not have: skipped at generation where the kernel
    lists its traceable functions, else refused by kprobe_events. Either way: file, exit 5."""
    before = _state(tracefs)
    out = tmp_path / "refused.txt"
    r = _cli(tracefs, out, "--defs", str(_defs(tmp_path, ["kmem:kmalloc"], probe_fn="memtrace_no_such_function")), "--json")
    assert r.returncode == 5, r.stderr
    line = _last_error(r.stderr)
    assert "memtrace/mt_test_probe" in line and ("skipped" in line or "refused" in line), line
    assert line.endswith("(the file is written; --allow-partial accepts it)")
    assert out.exists()
    import json

    assert json.loads(r.stdout)["incomplete"] is True
    assert _state(tracefs) == before


def test_refused_probe_line_and_failed_tracepoint_through_the_api(tracefs, tmp_path):
    """The kernel refuses a kprobe line and a tracepoint enable: both named, nothing left."""
    t = live_target(tracefs)
    bad = probedefs.Probe(name="mt_refused", group="memtrace", kind="kprobe", function="memtrace_no_such_function",
                          form="numeric", line="p:memtrace/mt_refused memtrace_no_such_function")
    ps = probedefs.ProbeSet(t, [bad], ["kmem:kmalloc"], [], [])
    # a tracepoint the ProbeSet claims but the kernel has not: its enable fails (ENOENT)
    ps.tracepoints.append("memtrace_none:no_such_event")
    before = _state(tracefs)
    res = Capture(tracefs, ps, tmp_path / "api.txt", duration=0.3, buffer_kb=256).run()
    assert [f["probe"] for f in res.probes_failed] == ["memtrace/mt_refused"]
    assert [f["event"] for f in res.tracepoints_failed] == ["memtrace_none:no_such_event"]
    reasons = res.incomplete_reasons
    assert any(r.startswith("1 probe(s) refused (memtrace/mt_refused)") for r in reasons), reasons
    assert any(r.startswith("1 tracepoint(s) not enabled (memtrace_none:no_such_event)") for r in reasons), reasons
    assert res.cleanup_errors == [] and _state(tracefs) == before
    h = capmod.read_capture_header(tmp_path / "api.txt")
    assert h["probes_failed"] == ["memtrace/mt_refused"] and h["tracepoints_failed"] == ["memtrace_none:no_such_event"]


class _NoDrainCapture(Capture):
    """Reads nothing while recording, so a small ring buffer must overrun."""

    @staticmethod
    def _drain(pipe, fd_out, once=False):
        return 0 if once else Capture._drain(pipe, fd_out)


def test_lost_events_are_counted_incomplete_and_carried_to_ingest(tracefs, tmp_path):
    from memtrace.sources.trace import load_trace
    from memtrace.tables.events import IngestStats

    ps = probedefs.ProbeSet(live_target(tracefs), [], ["kmem:kmalloc", "kmem:kfree", "kmem:kmem_cache_alloc",
                                                     "kmem:kmem_cache_free"], [], [])
    burst = subprocess.Popen([sys.executable, "-c", "import os\nfor i in range(40000): os.stat('/proc/self/status'); open('/proc/self/stat').read()"])
    try:
        res = _NoDrainCapture(tracefs, ps, tmp_path / "lost.txt", duration=1.5, buffer_kb=8,
                              stop_after=lambda: burst.poll() is not None).run()
    finally:
        burst.wait(60)
    assert res.lost_total > 0, res.lost_events
    assert any("event(s) lost" in r for r in res.incomplete_reasons)
    text = (tmp_path / "lost.txt").read_text()
    assert f"# lost events (overrun + dropped): {res.lost_total}\n" in text
    h = capmod.read_capture_header(tmp_path / "lost.txt")
    assert h["lost_events_total"] == res.lost_total
    # ingest: the header's count wins over the body's LOST lines (the same overruns, seen later)
    _, st = load_trace(str(tmp_path / "lost.txt"))
    st2 = IngestStats(lost_events=st.lost_events)
    capmod.apply_capture_summary(st2, h)
    assert st2.lost_events == max(st.lost_events, res.lost_total)


def test_missed_probe_hits_make_exit_5(tracefs, tmp_path, monkeypatch):
    """kprobe_profile misses (injected: this host may have no kprobes) reach the JSON, the
    header, stderr and the exit status; --allow-partial accepts them."""
    import json

    from typer.testing import CliRunner

    from memtrace.cli.app import _register, app

    def fake_profile(self, res):
        res.probe_profile = {"memtrace/try_charge_ret": {"hits": 120, "misses": 7},
                             "memtrace/pc_try_charge_ret": {"hits": 80, "misses": 0}}

    monkeypatch.setattr(Capture, "_read_profile", fake_profile)
    _register()
    defs = str(_defs(tmp_path, ["kmem:kmalloc"]))
    out = tmp_path / "missed.txt"
    args = ["capture", "--tracefs", str(tracefs), "-o", str(out), "-d", "0.2", "--buffer-kb", "4096", "--defs", defs, "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 5, r.stderr
    d = json.loads(r.stdout)
    assert d["probe_misses"] == {"memtrace/try_charge_ret": 7} and d["probe_misses_total"] == 7
    assert "7 probe hit(s) missed (memtrace/try_charge_ret=7)" in d["incomplete_reasons"]
    assert "memtrace: warning: 7 probe hits missed" in r.stderr
    assert "memtrace: error: capture incomplete: " in r.stderr and "7 probe hit(s) missed (memtrace/try_charge_ret=7)" in r.stderr
    text = out.read_text()
    assert "# probe misses (kretprobe maxactive exhausted, or a kprobe hit while another ran): 7 (memtrace/try_charge_ret=7)" in text
    h = capmod.read_capture_header(out)
    assert h["probe_misses_total"] == 7 and h["probe_misses"] == {"memtrace/try_charge_ret": 7}
    from memtrace.tables.events import IngestStats

    st = IngestStats()
    capmod.apply_capture_summary(st, h)
    assert any("missed 7 hits" in w for w in st.warnings)
    r = CliRunner().invoke(app, args[:-1] + ["--allow-partial"])
    assert r.exit_code == 0, r.stderr


# -- kprobe_profile: the kernel's format -------------------------------------------------------

#: kprobe_profile and kprobe_events as a 6.1 lab guest printed them (tests/test_localstorage_lab.py
#: reads them live on 6.1 and 6.12)
PROFILE = (
    "  try_charge                                             5461               0\n"
    "  try_charge_ret                                         5461               3\n"
    "  nanosleep_ret                                             3               1\n"
)
EVENTS = (
    "p:memtrace/try_charge try_charge_memcg cgid=+1160(+64(+0($arg1))):u64\n"
    "r:memtrace/try_charge_ret try_charge_memcg ret=$retval:s32\n"
    "r1:mtmiss/nanosleep_ret hrtimer_nanosleep\n"
)


def test_kprobe_profile_is_matched_by_position_and_name():
    assert capmod.parse_kprobe_profile(PROFILE)[1] == ("try_charge_ret", 5461, 3)
    found, left = capmod.match_kprobe_profile(PROFILE, ["memtrace/try_charge_ret", "memtrace/try_charge"], EVENTS)
    assert found == {"memtrace/try_charge": {"hits": 5461, "misses": 0}, "memtrace/try_charge_ret": {"hits": 5461, "misses": 3}}
    assert left == []
    # the same name in two groups: only kprobe_events' order can tell them apart
    prof2 = PROFILE + "  try_charge                                                9               4\n"
    ev2 = EVENTS + "p:other/try_charge try_charge_memcg\n"
    found, left = capmod.match_kprobe_profile(prof2, ["memtrace/try_charge"], ev2)
    assert found == {"memtrace/try_charge": {"hits": 5461, "misses": 0}} and left == []
    found, left = capmod.match_kprobe_profile(prof2, ["memtrace/try_charge"], None)
    assert found == {} and left == ["memtrace/try_charge"]


def test_read_profile_reports_what_it_cannot_match(tmp_path):
    class FakeFS:
        root = tmp_path

        def __init__(self, files):
            self.files = files

        def exists(self, rel):
            return rel in self.files

        def read(self, rel):
            return self.files[rel]

    cap = Capture.__new__(Capture)
    res = capmod.CaptureResult(None, 0, 0.0, False, None)
    res.probes_installed = ["memtrace/try_charge_ret", "memtrace/gone"]
    cap.t = FakeFS({"kprobe_profile": PROFILE, "kprobe_events": EVENTS})
    cap._read_profile(res)
    assert res.probe_profile == {"memtrace/try_charge_ret": {"hits": 5461, "misses": 3}}
    assert res.probe_profile_error == "not in kprobe_profile or ambiguous: memtrace/gone"
    assert any(r.startswith("probe misses unknown") for r in res.incomplete_reasons)
    cap.t = FakeFS({})
    res.probe_profile, res.probe_profile_error = {}, None
    cap._read_profile(res)
    assert "kprobe_profile does not exist" in res.probe_profile_error


def test_probes_are_disabled_before_their_misses_are_read(tmp_path):
    """Recording off, the probes still fire until disabled: capture disables its own kprobe
    events (only those) before it reads kprobe_profile."""
    writes = []

    class FakeFS:
        root = tmp_path

        def write(self, rel, text, *, append=False):
            writes.append((rel, text))

    cap = Capture.__new__(Capture)
    cap.t = FakeFS()
    cap._instance = "memtrace-1"
    cap._enabled = ["memtrace/try_charge", "kmem/kfree", "memtrace/uncharge"]
    res = capmod.CaptureResult(None, 0, 0.0, False, None)
    res.probes_installed = ["memtrace/try_charge", "memtrace/uncharge", "memtrace/refused_later"]
    cap._stop_probes(res)
    assert writes == [("instances/memtrace-1/events/memtrace/try_charge/enable", "0"),
                      ("instances/memtrace-1/events/memtrace/uncharge/enable", "0")]
    import inspect

    src = inspect.getsource(Capture.run)
    assert src.index("self._stop_probes(res)") < src.index("self._read_profile(res)")


def test_a_damaged_header_summary_is_read_for_what_is_well_typed(tmp_path):
    """A hand-edited summary line (wrong types) gives no error: the fields that are not what
    they must be are dropped, the rest is used."""
    from memtrace.sources.trace import load_trace

    f = tmp_path / "cap.txt"
    f.write_bytes(b"# tracer: nop\n# memtrace capture (memtrace.capture/1) of live kernel x\n# memtrace capture summary: "
                  b'{"probe_misses": [1], "probe_misses_total": "7", "lost_events_total": 3, '
                  b'"probes_installed": ["memtrace/uncharge", 5], "probes_failed": [{"probe": "memtrace/x"}]}\n'
                  b"#\n   sh-1 [000] ..... 1.0: uncharge: (page_counter_uncharge+0x0/0x70) counter=0x1 nr=2 cgid=9\n")
    h = capmod.read_capture_header(f)
    assert "probe_misses" not in h and "probe_misses_total" not in h and h["lost_events_total"] == 3
    assert h["probes_installed"] == ["memtrace/uncharge", "5"] and h["probes_failed"] == ["memtrace/x"]
    ev, st = load_trace(str(f))
    assert ev["event"].astype(str).tolist() == ["memtrace:uncharge"] and st.lost_events == 3 and st.probe_misses == 0
    assert any("memtrace/x" in w for w in st.warnings)


def test_header_of_an_older_capture_still_reads():
    old = (b"# tracer: nop\n#\n# memtrace capture (memtrace.capture/1) of live kernel x\n"
           b"# probes installed: memtrace/try_charge memtrace/uncharge\n# probes failed: -\n"
           b"# lost events (overrun + dropped): 12\n#\n   sh-1 [000] ..... 1.0: kfree: ptr=0x1\n")
    h = capmod.read_capture_header(old)
    assert h == {"probes_installed": ["memtrace/try_charge", "memtrace/uncharge"], "lost_events_total": 12}
    assert capmod.capture_kprobe_groups(h) == {"try_charge": "memtrace", "uncharge": "memtrace"}
    assert capmod.read_capture_header(b"# tracer: nop\n   sh-1 [000] ..... 1.0: kfree: ptr=0x1\n") is None


def test_ingest_carries_the_capture_header(tmp_path):
    """load_trace of a capture file: the header's probe groups name its kprobe events, its
    lost events and probe misses reach IngestStats. Needs the header read in
    ftrace_text.load_ftrace_text (proposed to the ingest owner); skipped until then."""
    from memtrace.sources.trace import load_trace
    from memtrace.tables.events import IngestStats

    if not hasattr(IngestStats(), "probe_misses"):
        pytest.skip("ingest does not read the capture header yet (IngestStats has no probe_misses)")
    res = capmod.CaptureResult(None, 0, 0.0, False, None)
    res.probes_installed = ["memtrace/try_charge", "memtrace/try_charge_ret"]
    res.tracepoints_enabled = ["kmem:kfree"]
    res.lost_events = {"cpu0": {"overrun": 5, "dropped events": 0}}
    res.probe_profile = {"memtrace/try_charge": {"hits": 2, "misses": 0}, "memtrace/try_charge_ret": {"hits": 1, "misses": 3}}
    body = (
        "CPU:0 [LOST 2 EVENTS]\n"
        "              sh-77      [000] ..... 10.000001: try_charge: (try_charge_memcg+0x0/0x780) cgid=56 gfp=0xcc0 nr=64\n"
        "              sh-77      [000] ..... 10.000002: try_charge_ret: (obj_cgroup_charge+0x5a/0x160 <- try_charge_memcg) ret=0\n"
        "              sh-77      [000] ..... 10.000003: kfree: call_site=x+0x1/0x2 ptr=0xffff888001234560\n"
    )
    f = tmp_path / "cap.txt"
    header = ["# tracer: nop", "#", f"# memtrace capture ({capmod.CAPTURE_SCHEMA}) of test",
              capmod.SUMMARY_PREFIX + __import__("json").dumps(res.summary()), "#"]
    f.write_text("\n".join(header) + "\n" + body)
    ev, st = load_trace(str(f))
    assert st.malformed == 0
    assert set(ev["event"].astype(str)) == {"memtrace:try_charge", "memtrace:try_charge_ret", "kmem:kfree"}
    assert st.lost_events == 5  # the header's 5, not 5 + the body's 2
    assert st.probe_misses == 3 and st.to_dict()["probe_misses"] == 3
    assert any("missed 3 hits" in w and "memtrace/try_charge_ret=3" in w for w in st.warnings)


def test_maxactive_is_set_on_kretprobe_lines_only(tracefs, tmp_path):
    assert capmod.with_maxactive("r:memtrace/a f x=$retval:s32", 64) == "r64:memtrace/a f x=$retval:s32"
    assert capmod.with_maxactive("r10:memtrace/a f", 128) == "r128:memtrace/a f"
    assert capmod.with_maxactive("p:memtrace/a f", 64) == "p:memtrace/a f"
    assert capmod.with_maxactive("r:memtrace/a f", None) == "r:memtrace/a f"
    # through a capture: the line as written to kprobe_events (refused here: no such function)
    t = live_target(tracefs)
    ret = probedefs.Probe(name="mt_ret", group="memtrace", kind="kretprobe", function="memtrace_no_such_function",
                          form="numeric", line="r:memtrace/mt_ret memtrace_no_such_function ret=$retval:s32")
    ps = probedefs.ProbeSet(t, [ret], ["kmem:kmalloc"], [], [])
    res = Capture(tracefs, ps, tmp_path / "m.txt", duration=0.1, buffer_kb=256, maxactive=64).run()
    assert [f["line"] for f in res.probes_failed] == ["r64:memtrace/mt_ret memtrace_no_such_function ret=$retval:s32"]

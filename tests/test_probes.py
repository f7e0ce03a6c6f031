"""Probe generation for the lab's Debian 6.1 and 6.12 kernels, from their own vmlinux.

Offsets are cross-checked across three channels: DWARF through drgn, memtrace's BTF reader,
and `bpftool btf dump format raw`. The lab test boots each kernel, installs every generated
probe in the guest and checks the events carry the cgroup ids of truth.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

from memtrace.sources.kernel.target import vmlinux_target
from memtrace.sources.kernel.typeinfo import BtfTypes
from memtrace.sources.trace import probedefs

KERNELS = ("6.1", "6.12")
SCENARIO = Path(__file__).parent / "scenarios" / "probes.sh"


def _vmlinux(series: str) -> Path:
    """The lab kernel's vmlinux; skip only when it is not cached AND MEMTRACE_LAB=0."""
    from memtrace.lab import kernels

    k = kernels.cached(series)
    if k is None:
        if os.environ.get("MEMTRACE_LAB") == "0":
            pytest.skip(f"lab kernel {series} not cached and MEMTRACE_LAB=0")
        k = kernels.fetch(series)
    return Path(k.vmlinux)


@lru_cache(maxsize=None)
def _target(series: str, dwarf: bool = True):
    return vmlinux_target(_vmlinux(series), use_dwarf=dwarf)


@lru_cache(maxsize=None)
def _bpftool_structs(series: str) -> dict[str, dict[str, int]]:
    """struct name -> member -> byte offset, from `bpftool btf dump file VMLINUX format raw`."""
    if not shutil.which("bpftool"):
        pytest.skip("bpftool not installed")
    text = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(_vmlinux(series)), "format", "raw"],
        capture_output=True, text=True, check=True,
    ).stdout
    out: dict[str, dict[str, int]] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"\[\d+\] STRUCT '([^']+)' size=\d+ vlen=\d+", line)
        if m:
            cur = out.setdefault(m.group(1), {}) if m.group(1) not in out else None
            continue
        if not line.startswith("\t"):
            cur = None
            continue
        m = re.match(r"\t'([^']*)' type_id=\d+ bits_offset=(\d+)", line)
        if m and cur is not None and m.group(1):
            cur[m.group(1)] = int(m.group(2)) // 8
    return out


CHAINS = [
    ("struct mem_cgroup", "css"), ("struct mem_cgroup", "memory"), ("struct cgroup_subsys_state", "cgroup"),
    ("struct cgroup", "kn"), ("struct kernfs_node", "id"), ("struct obj_cgroup", "memcg"),
    ("struct bpf_map", "id"), ("struct bpf_map", "objcg"), ("struct page", "memcg_data"),
]


@pytest.mark.parametrize("series", KERNELS)
def test_offsets_agree_across_dwarf_btf_and_bpftool(series):
    dwarf = _target(series, True).types
    btf = _target(series, False).types
    assert type(dwarf).__name__ == "DwarfTypes" and isinstance(btf, BtfTypes)
    raw = _bpftool_structs(series)
    for struct, member in CHAINS:
        d = dwarf.offsetof(struct, member)
        b = btf.offsetof(struct, member)
        assert d == b, (series, struct, member, d, b)
        bare = struct.removeprefix("struct ")
        if member in raw.get(bare, {}):  # page.memcg_data sits in an anonymous union member
            assert raw[bare][member] == d, (series, struct, member)
    for fn in ("try_charge_memcg", "obj_cgroup_charge", "page_counter_charge", "bpf_map_kmalloc_node"):
        assert [n for n, _ in dwarf.func_params(fn)] == [n for n, _ in btf.func_params(fn)]


@pytest.mark.parametrize("series", KERNELS)
def test_every_default_probe_generates(series):
    t = _target(series)
    ps = probedefs.generate(t)
    assert not ps.skipped, [(p.name, p.skipped) for p in ps.skipped]
    names = {p.name for p in ps.installable}
    assert {"try_charge", "try_charge_ret", "force_charge", "uncharge", "objcg_charge", "objcg_uncharge",
            "kmem_charge_page", "kmem_uncharge_page", "pcpu_post_alloc", "map_kmalloc", "map_kzalloc",
            "map_kvcalloc", "map_alloc_percpu", "map_area_alloc", "pc_try_charge_ret"} <= names
    assert "kmem:kmalloc" in ps.all_tracepoints and "cgroup:cgroup_mkdir" in ps.all_tracepoints
    # no memcg:* tracepoints on 6.1/6.12 (feature-detected from the vmlinux symbols)
    assert "memcg:mod_memcg_state" in ps.tracepoints_missing


def test_numeric_chains_match_bpftool_offsets():
    """Debian 6.1 (no BTF args in its tracefs): numeric chains built from the kernel's offsets."""
    t = _target("6.1")
    assert t.btf_args is False and t.retprobe_args is False
    raw = _bpftool_structs("6.1")
    kn, cg, css = raw["kernfs_node"]["id"], raw["cgroup"]["kn"], raw["cgroup_subsys_state"]["cgroup"]
    mem, objmc, objcg, mid = raw["mem_cgroup"]["memory"], raw["obj_cgroup"]["memcg"], raw["bpf_map"]["objcg"], raw["bpf_map"]["id"]
    lines = {p.name: p.line for p in probedefs.generate(t).installable}
    assert f"cgid=+{kn}(+{cg}(+{css}($arg1))):u64" in lines["try_charge"]
    assert f"cgid=+{kn}(+{cg}(+{css}(+{objmc}($arg1)))):u64" in lines["objcg_charge"]
    assert f"cgid=+{kn}(+{cg}(-{mem - css}($arg1))):u64" in lines["force_charge"]
    assert f"map_id=+{mid}($arg1):u32" in lines["map_kmalloc"]
    assert f"cgid=+{kn}(+{cg}(+{css}(+{objmc}(+{objcg}($arg1))))):u64" in lines["map_kmalloc"]
    # no entry args at 6.1 return probes: the optional ones are dropped with a note
    ret = next(p for p in probedefs.generate(t).installable if p.name == "kmem_charge_page_ret")
    assert set(ret.args) == {"ret"} and ret.notes


def test_btf_args_on_6_12():
    t = _target("6.12")
    assert t.btf_args is True and t.retprobe_args is True
    by = {p.name: p for p in probedefs.generate(t).installable}
    assert by["try_charge"].form == "btf"
    assert "cgid=memcg->css.cgroup->kn->id:u64" in by["try_charge"].line
    assert "cgid=objcg->memcg->css.cgroup->kn->id:u64" in by["objcg_charge"].line
    # container_of has no BTF spelling: numeric, from the same kernel's offsets
    assert re.search(r"cgid=\+\d+\(\+\d+\(-256\(\$arg1\)\)\):u64", by["force_charge"].line)
    assert set(by["kmem_charge_page_ret"].args) == {"ret", "page", "cgid"}


def test_untraceable_and_unknown_are_skipped_with_reasons(tmp_path):
    defs = tmp_path / "x.toml"
    defs.write_text(
        """
[[probe]]
name = "inline_one"
  [[probe.attach]]
  kind = "kprobe"
  function = ["memcg_memory_event"]
  args = ["cgid = memcg->css.cgroup->kn->id"]
[[probe]]
name = "bad_member"
  [[probe.attach]]
  kind = "kprobe"
  function = ["try_charge_memcg"]
  args = ["x = memcg->no_such_member : u64"]
[[probe]]
name = "renamed"
  [[probe.attach]]
  kind = "kprobe"
  function = ["bpf_map_kmalloc_node_noprof_does_not_exist", "bpf_map_kmalloc_node"]
  args = ["map_id = map->id"]
"""
    )
    ps = probedefs.generate(_target("6.1"), probedefs.load_definitions([defs]))
    by = {p.name: p for p in ps.probes}
    assert by["inline_one"].kind == "skipped" and "not traceable" in by["inline_one"].skipped
    assert by["bad_member"].kind == "skipped" and "no_such_member" in by["bad_member"].skipped
    assert by["renamed"].function == "bpf_map_kmalloc_node" and by["renamed"].args["map_id"].endswith(":u32")


@pytest.mark.parametrize("series", KERNELS)
def test_perfetto_traceconfig_parses(series):
    from google.protobuf import text_format
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TraceConfig

    ps = probedefs.generate(_target(series))
    cfg = text_format.Parse(probedefs.render_perfetto(ps), TraceConfig())
    evs = list(cfg.data_sources[0].config.ftrace_config.ftrace_events)
    assert cfg.data_sources[0].config.name == "linux.ftrace"
    assert "memtrace/try_charge" in evs and "kmem/kmalloc" in evs
    assert len(evs) == len(ps.all_tracepoints) + len(ps.installable)


def test_trace_cmd_script_is_valid_shell():
    text = probedefs.render_trace_cmd(probedefs.generate(_target("6.1")))
    subprocess.run(["sh", "-n"], input=text, text=True, check=True)
    assert "trace-cmd record" in text and "-e memtrace:try_charge " in text and "-:memtrace/try_charge'" in text


def test_cli_probes_json():
    from typer.testing import CliRunner

    from memtrace.cli.app import _register, app

    _register()
    r = CliRunner().invoke(app, ["probes", "--vmlinux", str(_vmlinux("6.12")), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout[r.stdout.index("{"):])
    assert d["kernel"]["btf_args"] is True
    assert any(p["name"] == "try_charge" and p["form"] == "btf" for p in d["probes"])


# -- real kernels ----------------------------------------------------------------------------

#: probes the probes.sh scenario does not reach: only local-storage maps allocate through
#: bpf_map_kzalloc / bpf_map_kvcalloc. They must still install here; they fire, with the
#: map's id and its creator's memcg, in tests/test_localstorage_lab.py (mapctl's sk_storage map)
NOT_EXERCISED = {"map_kzalloc", "map_kvcalloc"}


@pytest.mark.lab
@pytest.mark.parametrize("series", KERNELS)
def test_lab_probes_install_and_fire(series, tmp_path):
    from memtrace.lab.run import run

    ps = probedefs.generate(_target(series), include_all=True)
    text = probedefs.render_kprobe_events(ps)
    res = run(str(SCENARIO), series, tmp_path / "run", vmcore=False, kprobe_events=text, force=True)
    meta = res.meta["trace"]
    assert meta["probe_errors"] == []
    assert len(meta["kprobe_events_installed"]) == len(ps.installable)
    truth = json.loads((res.out / "truth.json").read_text())
    ids = {path: cg["id"] for s in truth["steps"] for path, cg in s["cgroups"].items()}
    p1 = ids["/pod/p1"]
    trace = (res.out / "trace.txt").read_text()
    counts: dict[str, int] = {}
    cgids: dict[str, set[int]] = {}
    for m in re.finditer(r" (\w+): \([^)]*\)(.*)", trace):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
        c = re.search(r"\bcgid=(\d+)", m.group(2))
        if c:
            cgids.setdefault(m.group(1), set()).add(int(c.group(1)))
    for p in ps.installable:
        if p.name in NOT_EXERCISED:
            continue
        assert counts.get(p.name, 0) > 0, f"{p.event} never fired on {series}"
    # the memcg of the maps' cgroup is seen by name-resolved chains, through every route
    for name in ("try_charge", "objcg_charge", "map_kmalloc", "force_charge", "uncharge", "refill_obj_stock"):
        assert p1 in cgids.get(name, set()), (name, sorted(cgids.get(name, set())))
    # every non-zero cgid is a real cgroup of the run (0: NULL objcg, e.g. map helpers during map_alloc)
    known = set(ids.values())
    for name, seen in cgids.items():
        assert seen - {0} <= known, (name, sorted(seen - known))
    # each force charge raises one memory.events max of the limited cgroup (6.0+: raised_max_event);
    # non-forced charges that hit the limit and reclaimed add more
    ev = [s["cgroups"]["/pod/p1"]["memory.events"]["max"] for s in truth["steps"] if "/pod/p1" in s["cgroups"]]
    fc = sum(1 for m in re.finditer(r" force_charge: .* cgid=(\d+)", trace) if int(m.group(1)) == p1)
    assert 0 < fc <= max(ev), (fc, ev)


def test_kprobe_event_defs_one_reader_for_every_caller():
    """kprobe_events lines are read in one place (probedefs.kprobe_event_defs): the capture's
    kprobe_profile matching, the lab's trace-cmd event list and ingest's group hints."""
    from memtrace.lab.initramfs import trace_cmd_events
    from memtrace.sources.trace.capture import defined_kprobes
    from memtrace.sources.trace.ftrace_text import kprobe_groups_from_defs
    from memtrace.sources.trace.probedefs import kprobe_event_defs

    text = ("p:memtrace/pc_try_charge page_counter_try_charge counter=%di\n"
            "r64:foo bar\n"                      # no group: kprobes
            "p baz\n"                            # no name: the kernel makes one
            "f:fp/x y\n"                         # an fprobe (not in kprobe_profile)
            "f:z w\n"                            # fprobe without group: fprobes
            "-:memtrace/old\n# p:no/no x\n"      # a removal, a comment
            "r1:mtmiss/nanosleep_ret hrtimer_nanosleep\n")
    assert kprobe_event_defs(text) == [("memtrace", "pc_try_charge"), ("kprobes", "foo"), ("fp", "x"),
                                       ("fprobes", "z"), ("mtmiss", "nanosleep_ret")]
    assert kprobe_event_defs(text.splitlines()) == kprobe_event_defs(text)
    assert defined_kprobes(text) == ["memtrace/pc_try_charge", "kprobes/foo", "mtmiss/nanosleep_ret"]
    assert kprobe_groups_from_defs(text.splitlines()) == {"pc_try_charge": "memtrace", "foo": "kprobes", "x": "fp",
                                                          "z": "fprobes", "nanosleep_ret": "mtmiss"}
    assert trace_cmd_events(text)[-3:] == ["memtrace:pc_try_charge", "kprobes:foo", "mtmiss:nanosleep_ret"]
    assert kprobe_event_defs(None) == [] and kprobe_event_defs("") == []

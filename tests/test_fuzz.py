"""Fuzzed file inputs end in a result, a counted warning or a one-line error naming the file,
never another exception (issue 9). The generator is bench/fuzz.py's, with a fixed seed and a
few hundred inputs per kind (bench/fuzz.py runs 100k per kind on demand); plus the bugs it
found, as regression tests. Not lab: no guest, no QEMU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from memtrace.errors import InputError

REPO = Path(__file__).resolve().parent.parent



# -- bugs the fuzzer found ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,words",
    [
        (b'{"schema": "memtrace.lab.truth/1", "steps": [{"\x80": 1}]}', ["not JSON"]),
        (b"[1, 2]", ["not a lab truth document", "a JSON list"]),
        (b'{"schema": "x"}', ["not a lab truth document", "schema 'x'"]),
        (b"[" * 5000, ["not JSON", "nested too deeply"]),
        (b'{"schema": "memtrace.lab.truth/1", "steps": 3}', ["steps is a JSON int"]),
        (b'{"schema": "memtrace.lab.truth/1", "steps": [{"cgroups": {"/": {"id": 1}}}]}', ["step #1 lacks 'index'"]),
        (b'{"schema": "memtrace.lab.truth/1", "steps": [{"index": 1, "name": "a", "uptime_s": "x", "cgroups": {"/": {"id": 1}}}]}',
         ["step #1", "could not convert string to float"]),
        (b'{"schema": "memtrace.lab.truth/1", "steps": [{"index": 1, "name": "a", "uptime_s": 1e999, "cgroups": {"/": {"id": 1}}}]}',
         ["step #1", "infinity"]),
        (b'{"schema": "memtrace.lab.truth/1", "steps": [{"index": 1, "name": "a", "uptime_s": 1, "cgroups": {"/": {"id": 1, "memory.max": 1e300}}}]}',
         ["memory_max_bytes"]),
    ],
    ids=["not-utf8", "a-list", "schema", "deep", "steps-int", "no-index", "uptime-str", "uptime-inf", "max-float"],
)
def test_lab_truth_damaged(tmp_path, raw, words):
    """tables.lab_truth.load_truth (`report force/recharge --truth`): a damaged truth.json was a
    UnicodeDecodeError, AttributeError, KeyError, TypeError, ValueError or OverflowError, and a
    wrong schema an error without the file's name."""
    from memtrace.tables.lab_truth import load_truth

    p = tmp_path / "truth.json"
    p.write_bytes(raw)
    with pytest.raises(InputError) as ei:
        load_truth(p)
    msg = ei.value.message
    assert "\n" not in msg and msg.startswith(f"{p}: "), msg
    for w in words:
        assert w in msg, (w, msg)


def test_meta_json_nested_too_deeply_is_a_warning(tmp_path):
    """A meta.json beside a trace nested too deeply for json (RecursionError) was a traceback;
    it is a warning naming it, as any other unreadable meta.json is, and the trace loads."""
    import shutil

    from memtrace.sources.trace import load_trace

    trace = tmp_path / "trace.txt"
    shutil.copy(REPO / "fixtures" / "traces" / "restart-6.1.excerpt.txt", trace)
    (tmp_path / "meta.json").write_bytes(b'{"trace": ' + b"[" * 100000)
    df, st = load_trace(str(trace))
    assert len(df) > 0
    assert [w for w in st.warnings if w.startswith(f"{tmp_path / 'meta.json'}: not a lab meta.json") and "RecursionError" in w]


def test_vmcore_with_unparsable_vmcoreinfo(tmp_path):
    """An ELF core whose VMCOREINFO note drgn cannot parse (a BUILD-ID that is not hex) was
    drgn's BadDataError, a traceback; it is a one-line InputError naming the file."""
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    import fuzz
    from memtrace.sources.snapshot import open_target

    core = fuzz.elf_core()
    i = core.index(b"BUILD-ID=") + len(b"BUILD-ID=")
    p = tmp_path / "vmcore"
    p.write_bytes(core[:i] + b"zz" + core[i + 2:])
    with pytest.raises(InputError) as ei:
        open_target(vmcore=p)
    msg = ei.value.message
    assert "\n" not in msg and msg.startswith(f"{p}: drgn cannot open it as a vmcore"), msg
    assert "BUILD-ID" in msg


@pytest.mark.parametrize(
    "arg,words",
    [
        ("counter = $retval : u+", ["probe pc: cannot parse fetch-arg expression"]),
        ("no equals sign", ["probe pc: cannot parse arg 'no equals sign'"]),
    ],
)
def test_probe_definition_arg_errors_name_the_file(tmp_path, arg, words):
    """An arg of a probe definition the expression parser rejects was an error without the
    definition file's name (raised while generating, after the file was read)."""
    from memtrace.sources.kernel.target import btf_target
    from memtrace.sources.trace import probedefs

    sys.path.insert(0, str(REPO / "bench"))
    import fuzz

    btf = tmp_path / "k.btf"
    btf.write_bytes(fuzz.small_btf())
    p = tmp_path / "defs.toml"
    p.write_text(f'[[probe]]\nname = "pc"\n[[probe.attach]]\nkind = "kprobe"\nfunction = "page_counter_charge"\n'
                 f'args = ["{arg}"]\n')
    with pytest.raises(InputError) as ei:
        probedefs.generate(btf_target(btf), probedefs.load_definitions([p]))
    msg = ei.value.message
    assert "\n" not in msg and msg.startswith(f"{p}: "), msg
    for w in words:
        assert w in msg, (w, msg)


def test_duplicate_probe_names_name_the_file(tmp_path):
    from memtrace.sources.trace import probedefs

    p = tmp_path / "defs.toml"
    p.write_text('[[probe]]\nname = "a"\n[[probe.attach]]\nkind = "kprobe"\nfunction = "f"\n' * 2)
    with pytest.raises(InputError) as ei:
        probedefs.load_definitions([p])
    assert ei.value.message == f"{p}: duplicate probe names: memtrace/a"


def test_btf_anonymous_member_of_void_type(tmp_path):
    """A struct whose anonymous member has type 0 (void) made the member lookup of probe
    generation an AttributeError; such a member has no members, and generation goes on."""
    import struct

    from memtrace.sources.kernel.typeinfo import BtfTypes

    sys.path.insert(0, str(REPO / "bench"))
    import fuzz

    ty = struct.pack("<III", 1, (4 << 24) | 2, 16) + struct.pack("<III", 0, 0, 0) + struct.pack("<III", 3, 2, 64)
    ty += struct.pack("<III", 5, (1 << 24), 8) + struct.pack("<I", 64)
    b = BtfTypes(fuzz.btf_blob(ty, b"\0s\0x\0long\0"), "BTF x")
    assert b.offsetof("struct s", "x") == 8
    with pytest.raises(LookupError):
        b.member(b.struct_type("struct s"), "nope")
    with pytest.raises(LookupError):
        b.member(0, "x")


@pytest.mark.parametrize("kind,index,words", [
    ("snapshot", 7592, ["not a memtrace snapshot file", "codec can't decode"]),   # a member name flagged UTF-8 that is not
    ("snapshot", 10907, ["cannot read header.json", "codec can't decode"]),
    ("snapshot", 23123, ["not a memtrace snapshot file (zip file version"]),      # zipfile's NotImplementedError
    ("vmcore", 751, ["drgn cannot open it as a vmcore: libelf error"]),            # drgn's plain Exception
    ("vmcore", 11738, ["drgn cannot open it as a vmcore: number in VMCOREINFO is too large"]),  # OverflowError
])
def test_fuzzer_found(tmp_path, kind, index, words):
    """Inputs bench/fuzz.py (seed 1) found raising other exceptions: each is one line naming the file."""
    import random

    sys.path.insert(0, str(REPO / "bench"))
    import fuzz

    k = fuzz.KINDS[kind]
    seeds = k.seeds(tmp_path, random.Random(f"1:{kind}:seeds"))
    if k.setup:
        k.setup(tmp_path)
    _, data = fuzz.make_input(k, seeds, 1, index)
    p = tmp_path / k.filename
    p.write_bytes(data)
    with pytest.raises(InputError) as ei:
        k.run(p)
    msg = ei.value.message
    assert "\n" not in msg and msg.startswith(f"{p}: "), msg
    for w in words:
        assert w in msg, (w, msg)


# -- the generator, a fixed seed ---------------------------------------------------------------

#: inputs per kind here (bench/fuzz.py: 100k). trace.dat goes through trace-cmd (about 1 s an
#: input), so it gets a handful.
PER_KIND = {"trace.dat": 20}
DEFAULT_PER_KIND = 500


def _kinds():
    sys.path.insert(0, str(REPO / "bench"))
    import fuzz

    return fuzz


def _params():
    fuzz = _kinds()
    out = []
    for name in fuzz.KINDS:
        marks = []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("kind", _params())
def test_fuzzed_inputs(tmp_path, kind):
    """Fixed-seed fuzzed inputs of one kind: each loads (warnings counted), or raises InputError /
    EnvironmentProblem with one line naming the file; any other exception fails, with the
    index that rebuilds the input (python bench/fuzz.py --repro KIND:INDEX --seed 9)."""
    fuzz = _kinds()
    n = PER_KIND.get(kind, DEFAULT_PER_KIND)
    r = fuzz.run_kind(fuzz.KINDS[kind], count=n, seed=9, max_seconds=120, workdir=tmp_path)
    if r.skipped:
        pytest.skip(r.skipped)
    assert r.inputs == n
    assert r.crash == 0 and r.bad_message == 0, json.dumps(r.findings, indent=1)
    assert r.ok + r.input_error + r.environment_problem == n

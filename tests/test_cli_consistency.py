"""One command line (issue 9): every command spells its output option --output/-o, names the
values its options take (FILE, DIR, N, ...) rather than their Python types, has an example in
its help, and rejects a value outside a closed set with exit 2, one error line naming the
valid choices, before it does anything (no guest is booted: QEMU is kept off PATH)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_docs import _commands

ROOT = Path(__file__).resolve().parent.parent

#: the metavars typer derives from a type when none is given: click's (PATH, TEXT, INTEGER, ...)
#: and typer 0.29's own (<path>, <str>, <int range>, <list[Path]>, ...)
TYPE_METAVARS = re.compile(
    r"^(PATH|TEXT|INTEGER|FLOAT|FILENAME|DIRECTORY|INTEGER RANGE|FLOAT RANGE)$"
    r"|^<(path|file|directory|str|int|float|int range|float range|list\[.*\]|tuple.*)>$"
)
#: option names that say "this is where output goes"
OUTPUT_NAMES = {"--out", "--output", "--outdir", "--out-dir", "--output-dir", "--dest", "--write", "-o"}


COMMANDS = dict(_commands())  # every leaf command, as test_docs walks them


def _ctx(cmd):
    return cmd.make_context("memtrace", [], resilient_parsing=True)


def _help(name: str) -> str:
    r = subprocess.run([sys.executable, "-m", "memtrace", *name.split(), "--help"], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, COLUMNS="200"), timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_commands_are_all_there():
    assert {"lab run", "lab kernels", "lab scenarios", "lab drift", "snapshot", "ingest", "probes", "capture",
            "report leftover", "report force", "report recharge"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_output_is_spelled_output_o(name):
    """An option that writes output is --output/-o; an old spelling may remain, hidden."""
    cmd = COMMANDS[name]
    for p in cmd.params:
        if p.param_type_name != "option" or not OUTPUT_NAMES & set(p.opts):
            continue
        if p.hidden:
            assert p.opts == ["--out"], f"memtrace {name}: hidden output alias {p.opts}"
            continue
        assert sorted(p.opts) == ["--output", "-o"], f"memtrace {name}: output option spelled {p.opts}"


@pytest.mark.parametrize("name", ["lab run", "lab drift", "snapshot", "ingest", "capture",
                                  "report leftover", "report force", "report recharge"])
def test_commands_that_write_have_output(name):
    opts = {o for p in COMMANDS[name].params if not p.hidden for o in p.opts}
    assert {"--output", "-o"} <= opts, f"memtrace {name} has no --output/-o"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_metavars_name_the_value(name):
    """Every option that takes a value shows a metavar naming it (FILE, DIR, N, a|b), never a
    type; every argument has a name of its own (its type column is typer's and cannot be set)."""
    cmd = COMMANDS[name]
    ctx = _ctx(cmd)
    for p in cmd.params:
        if p.hidden:
            continue
        if p.param_type_name == "argument":
            assert p.metavar and p.metavar.strip("[]").isupper(), f"memtrace {name}: argument {p.name} has no metavar"
            continue
        if getattr(p, "is_flag", False) or p.type_descriptor.annotation is bool:
            continue  # a flag takes no value
        shown = p.display_type_rich(ctx=ctx)
        assert shown and not TYPE_METAVARS.match(shown), f"memtrace {name} {p.opts}: metavar {shown!r}"
    text = _help(name)
    for word in ("PATH", "TEXT", "INTEGER", "<path>", "<str>", "<int range>", "<float>", "<list["):
        rows = [ln for ln in text.splitlines() if ln.lstrip("│ *").startswith("-") and word in ln]
        assert not rows, f"memtrace {name} --help shows {word}: {rows}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_has_an_example(name):
    assert re.search(r"^\s*Examples?: memtrace ", COMMANDS[name].help or "", re.M), f"memtrace {name}: no Example line"


#: commands whose docstrings still break lines inside paragraphs (memtrace/cli/report.py is
#: being edited elsewhere); drop them from here when they are reflowed
HARD_BREAKS_PENDING: set[str] = set()


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - HARD_BREAKS_PENDING))
def test_help_paragraphs_are_one_line(name):
    """typer keeps a docstring's line breaks: a paragraph is one line (or a \\b block)."""
    for para in (COMMANDS[name].help or "").strip().split("\n\n"):
        if para.startswith("\b"):
            continue
        assert "\n" not in para.strip(), f"memtrace {name}: a line break inside {para[:60]!r}..."


def test_recorder_choices_are_the_labs():
    from memtrace.cli import lab
    from memtrace.lab.initramfs import RECORDERS

    assert lab.RECORDERS == RECORDERS


def _run(*args):
    # QEMU off PATH: were a bad value not caught first, the run would stop at exit 3, never boot
    env = dict(os.environ, PATH="/nonexistent")
    return subprocess.run([sys.executable, "-m", "memtrace", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def _bad_choices():
    from memtrace.cli.probes import Format, Types
    from memtrace.lab.kernels import kernel_names
    from memtrace.lab.initramfs import RECORDERS
    from memtrace.lab.qemu import ACCELS

    cases = [
        (["lab", "kernels", "--fetch", "--kernel", "9.9"], "9.9", kernel_names()),
        (["lab", "drift", "--kernel", "9.9", "-o", "{out}"], "9.9", kernel_names()),
        (["probes", "--format", "nope"], "nope", [f.value for f in Format]),
        (["probes", "--types", "nope"], "nope", [t.value for t in Types]),
    ]
    for out_opt in ("--output", "--out"):  # --out: lab run's old spelling, still accepted
        cases += [
            (["lab", "run", "restart", "--kernel", "9.9", out_opt, "{out}"], "9.9", kernel_names()),
            (["lab", "run", "restart", "--accel", "kvm", out_opt, "{out}"], "kvm", list(ACCELS)),
            (["lab", "run", "restart", "--recorder", "perf", out_opt, "{out}"], "perf", list(RECORDERS)),
        ]
    return cases


@pytest.mark.parametrize("args,bad,choices", [pytest.param(*c, id=" ".join(a for a in c[0] if a != "{out}")) for c in _bad_choices()])
def test_a_bad_choice_exits_2_naming_the_choices(tmp_path, args, bad, choices):
    out = tmp_path / "o"
    r = _run(*(a.replace("{out}", str(out)) for a in args))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, r.stderr
    assert bad in errors[0] and all(c in errors[0] for c in choices), errors[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["lab", "run", "restart"], ["capture"]])
def test_output_is_required_and_named(args):
    r = _run(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [f"memtrace: error: missing option --output/-o {'DIR' if args[0] == 'lab' else 'FILE'}"]


@pytest.mark.parametrize("args", [["lab", "run", "restart"], ["capture"]])
def test_output_and_its_old_spelling_together_are_refused(tmp_path, args):
    r = _run(*args, "-o", str(tmp_path / "a"), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "memtrace: error: give --output once (--out is its old spelling)"], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_old_spelling_is_hidden():
    for name in ("lab run", "capture"):
        text = _help(name)
        assert "--output" in text and not re.search(r"--out(?!put)", text), text


@pytest.mark.parametrize("args,schema", [
    (["lab", "kernels", "--json"], "memtrace.lab.kernels/1"),
    (["lab", "scenarios", "--json"], "memtrace.lab.scenarios/1"),
])
def test_json_is_an_envelope_with_a_schema(args, schema):
    import json

    r = _run(*args)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["schema"] == schema

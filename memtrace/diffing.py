"""`diff_inputs`: load two inputs and diff them, for the CLI and for tests.

The one place that joins the layers for `memtrace diff`: the sources load each side
(``memtrace.sources.diff_input``), the analyses match and compare them
(``memtrace.analyses.diff``) under rules (``memtrace.analyses.diff_rules``).
"""

from __future__ import annotations

from pathlib import Path

from memtrace.analyses.diff import DiffResult, compare
from memtrace.analyses.diff_rules import Rule, default_rules
from memtrace.errors import InputError
from memtrace.sources.diff_input import load_diff_input
from memtrace.tables.diff import DiffInput


def check_same_run(inp: DiffInput) -> None:
    """A capture and a truth of different runs would give nonsense rows: refuse them (exit 2)."""
    if inp.events is None or inp.truth is None:
        return
    from memtrace.analyses.charges import MARKER_EVENT
    from memtrace.analyses.force import check_same_run as same_run

    if not inp.events["event"].astype(str).eq(MARKER_EVENT).any():
        raise InputError(f"{inp.sources['capture']} has no step markers: it cannot be matched with the truth "
                         f"{inp.sources['truth']} (give a capture of its run, or diff the capture alone)")
    same_run(inp.events, inp.truth, inp.sources["capture"], inp.sources["truth"])


def load_input(path: str | Path, *, truth: str | Path | None = None, vmlinux: str | Path | None = None) -> DiffInput:
    inp = load_diff_input(path, truth=truth, vmlinux=vmlinux)
    check_same_run(inp)
    return inp


def diff_inputs(base_path: str | Path, new_path: str | Path, rules: list[Rule] | None = None, *,
                base_truth: str | Path | None = None, new_truth: str | Path | None = None,
                base_vmlinux: str | Path | None = None, new_vmlinux: str | Path | None = None) -> DiffResult:
    """Diff BASE and NEW (each a capture, a lab output folder, a truth.json or a snapshot file)
    under ``rules`` (default: the shipped ``memtrace/diff-rules.toml``). Bad input is an
    InputError; the verdict is ``result.passed``."""
    base = load_input(base_path, truth=base_truth, vmlinux=base_vmlinux)
    new = load_input(new_path, truth=new_truth, vmlinux=new_vmlinux)
    return compare(base, new, default_rules() if rules is None else rules)


__all__ = ["diff_inputs", "load_input", "check_same_run"]

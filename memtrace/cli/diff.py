"""`memtrace diff BASE NEW`: what changed between two captures, lab runs or snapshots, and whether it crosses the rules."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from memtrace.cli.app import app, err, out
from memtrace.cli.snapshot import PLOT
from memtrace.errors import EXIT_FINDING


class Format(str, Enum):
    rich = "rich"
    markdown = "markdown"


@app.command("diff")
def diff_cmd(
    base: Path = typer.Argument(..., metavar="BASE", help="A capture (any format 'memtrace ingest' reads), a lab output folder, a truth.json or a snapshot file."),
    new: Path = typer.Argument(..., metavar="NEW", help="The same kinds as BASE."),
    rule: Optional[list[str]] = typer.Option(None, "--rule", metavar="METRIC:NAME:LIMITS", help="A rule (repeatable), e.g. 'net_bytes:/pod*:+5%,+64KiB'; later rules win (docs/diff.md)."),
    rules_file: Optional[list[Path]] = typer.Option(None, "--rules", metavar="FILE.toml", help="Rules file (repeatable) used instead of the shipped defaults; --rule options still apply after it."),
    no_defaults: bool = typer.Option(False, "--no-default-rules", help="Start from no rules at all (only --rules and --rule apply)."),
    fmt: Format = typer.Option(Format.rich, "--format", metavar="rich|markdown", help="rich: a table for people; markdown: a GitHub job summary (no kernel addresses)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON envelope (schema memtrace.diff/1; holds no kernel addresses)."),
    show_all: bool = typer.Option(False, "--all", help="Show unchanged rows too (after the changed ones)."),
    max_rows: int = typer.Option(100, "--max-rows", metavar="N", min=1, help="Markdown: at most N rows in the table (the rest are counted)."),
    base_truth: Optional[Path] = typer.Option(None, "--base-truth", metavar="FILE", help="truth.json of BASE's run, when BASE is a capture without one beside it."),
    new_truth: Optional[Path] = typer.Option(None, "--new-truth", metavar="FILE", help="truth.json of NEW's run."),
    vmlinux: Optional[Path] = typer.Option(None, "--vmlinux", metavar="FILE", help="vmlinux to walk a lab folder's vmcore with (both sides)."),
    base_vmlinux: Optional[Path] = typer.Option(None, "--base-vmlinux", metavar="FILE", help="vmlinux for BASE's vmcore (another kernel than NEW's)."),
    new_vmlinux: Optional[Path] = typer.Option(None, "--new-vmlinux", metavar="FILE", help="vmlinux for NEW's vmcore."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", metavar="FILE.parquet", help="Write the diff table as Parquet (atomically)."),
    plot: Optional[Path] = PLOT,
) -> None:
    """Compare two inputs per memcg, map, event kind and step, and check the changes against rules; exit 1 when a rule is crossed.

    Memcgs are matched by path, maps by pin, then name, then type, steps by marker name (ids and addresses differ between runs); what one side lacks is listed as unmatched. Compared: event counts, net charged bytes, forced and refused charges (captures); memory.current and memory.events max per step (truth.json); bytes per map by allocation kind, per memcg and leftover (snapshots). A rule crosses when a change exceeds every limit it gives in its direction; the last matching rule decides. Exit 0: no rule crossed; 1: some rule crossed; 2: bad input, or inputs with nothing in common.

    Example: memtrace diff fixtures/lab/restart-6.1 fixtures/lab/restart-6.12 --format markdown

    Example: memtrace diff base/trace.txt new/trace.txt --rule 'net_bytes:/pod*:+5%,+64KiB'
    """
    from memtrace.analyses.diff_rules import default_rules, load_rules, parse_rule
    from memtrace.diffing import diff_inputs
    from memtrace.render import diff as render

    if plot is not None:
        from memtrace.render.plots import check_plot_path

        check_plot_path(plot)
    rules = [] if (no_defaults or rules_file) else default_rules()
    for f in rules_file or []:
        rules += load_rules(f)
    rules += [parse_rule(r) for r in rule or []]
    result = diff_inputs(base, new, rules, base_truth=base_truth, new_truth=new_truth,
                         base_vmlinux=base_vmlinux or vmlinux, new_vmlinux=new_vmlinux or vmlinux)
    if output is not None:
        from memtrace.tables.atomic import write_parquet

        write_parquet(result.rows, output, {"schema": "memtrace.diff/1", "base": result.base, "new": result.new,
                                            "verdict": result.verdict()}, meta_key="memtrace.diff")
        err.print(f"memtrace: wrote {len(result.rows)} rows to {output}", markup=False)
    if plot is not None:
        from memtrace.render.plots import diff_series, plot_diff

        try:
            b, n, ylabel = diff_series(result.rows)
        except ValueError as e:
            from memtrace.errors import InputError

            raise InputError(f"--plot: {e}") from None
        plot_diff(b, n, plot, base_title=f"base: {base.name}", new_title=f"new: {new.name}", ylabel=ylabel,
                  title=result.verdict().split(",")[0])
        err.print(f"wrote {plot}", markup=False)
    if json_out:
        out.print(render.json_envelope(result), markup=False, soft_wrap=True)
    elif fmt == Format.markdown:
        out.print(render.markdown(result, show_all, max_rows), markup=False, soft_wrap=True, end="")
    else:
        for line in render.header_lines(result):
            out.print(line, markup=False)
        out.print(render.rich_table(result, show_all))
        t = render.unmatched_table(result)
        if t is not None:
            out.print(t)
        for n in result.notes:
            err.print(f"memtrace: note: {n}", markup=False)
        out.print(result.verdict(), markup=False)
    if not result.passed:
        raise typer.Exit(EXIT_FINDING)

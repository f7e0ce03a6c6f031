"""memtrace's command line: thin. Parse, call the stages, map errors to exit codes.

stdout carries data (tables, JSON); stderr carries progress, warnings and errors.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from memtrace.errors import EXIT_BUG, EXIT_INTERRUPTED, MemtraceError

app = typer.Typer(
    name="memtrace",
    help="BPF map memory versus memory cgroups, on real kernels.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: stdout is data (tables are not squeezed to 80 columns when piped to a file)
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
#: stderr is everything else
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        from memtrace import __version__

        out.print(f"memtrace {__version__}", markup=False, highlight=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print memtrace's version and exit."
    ),
) -> None:
    """BPF map memory versus memory cgroups, on real kernels."""


#: The old spelling of ``--output`` (lab run and capture had ``--out``): still accepted so that
#: scripts keep working, but not shown in help. Pair it with an optional ``--output`` and
#: :func:`required_output`.
OUT_ALIAS = typer.Option(None, "--out", hidden=True)


def required_output(output, out_alias, metavar: str):
    """The value of a required ``--output/-o`` that also takes its hidden old spelling ``--out``."""
    from memtrace.errors import InputError

    if output is not None and out_alias is not None:
        raise InputError("give --output once (--out is its old spelling)")
    value = output if output is not None else out_alias
    if value is None:
        raise InputError(f"missing option --output/-o {metavar}")
    return value


def _register() -> None:
    # Each command group lives in its own module and adds itself to `app`.
    from memtrace.cli import lab  # noqa: F401
    from memtrace.cli import snapshot  # noqa: F401
    from memtrace.cli import ingest  # noqa: F401
    from memtrace.cli import probes  # noqa: F401
    from memtrace.cli import capture  # noqa: F401
    from memtrace.cli import report  # noqa: F401
    from memtrace.cli import diff  # noqa: F401
    from memtrace.cli import export  # noqa: F401


def main() -> None:
    _register()
    try:
        # Typer (0.29, its own vendored click) returns the exit code in this mode: 130 after
        # Ctrl-C, 1 after an Abort, N after typer.Exit(N); usage errors are raised.
        rc = app(standalone_mode=False)
    except MemtraceError as e:
        err.print(f"memtrace: error: {e.message}", markup=False)
        if e.detail:
            err.print(e.detail, markup=False)
        if os.environ.get("MEMTRACE_DEBUG"):
            raise
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        rc = EXIT_INTERRUPTED
    except typer.Exit as e:
        rc = e.exit_code
    except Exception as e:
        # usage errors (unknown option, bad value): click's message, exit 2
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(2)
        # anything else is memtrace's own bug: its traceback, and an exit code of its own
        import traceback

        traceback.print_exc()
        err.print(f"memtrace: internal error (a bug in memtrace, not in your input; please report it with the "
                  f"traceback above): {type(e).__name__}: {e}", markup=False)
        sys.exit(EXIT_BUG)
    if rc == EXIT_INTERRUPTED:
        err.print("memtrace: interrupted", markup=False)
    sys.exit(rc if isinstance(rc, int) else 0)

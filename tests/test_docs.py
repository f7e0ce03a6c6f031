"""Help and docs cannot drift: every command has help text and is named in the README."""

from __future__ import annotations

from pathlib import Path

import typer.main

from memtrace.cli.app import _register, app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _commands():
    _register()
    root = typer.main.get_command(app)
    stack = [((), root)]
    while stack:
        path, cmd = stack.pop()
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                stack.append((path + (name,), sub))
        elif path:
            yield " ".join(path), cmd


def test_every_command_has_help_and_is_documented():
    cmds = dict(_commands())
    assert {"lab run", "lab kernels", "snapshot", "ingest", "probes", "capture"} <= set(cmds)
    for name, cmd in cmds.items():
        assert (cmd.help or "").strip(), f"memtrace {name} has no help"
        assert f"memtrace {name}" in README, f"memtrace {name} is not in README.md"


def test_exit_codes_are_documented():
    from memtrace import errors

    for const in ("EXIT_OK", "EXIT_FINDING", "EXIT_USAGE", "EXIT_ENVIRONMENT", "EXIT_GUEST", "EXIT_INCOMPLETE", "EXIT_INTERRUPTED"):
        code = getattr(errors, const)
        assert f"| {code} |" in README, f"exit code {code} ({const}) missing from README"
